"""The fault matrix: each fault of the pool's own parts, mid-run, against each runner and
placement (Docker, bubblewrap, Slurm placing onto Docker), with its expected outcome.

The work is ``hwrun --gpu 1`` of a command that prints numbered lines, 10 a second. For each
fault the test checks, and records in the table printed at the end of the run:

* what the user saw: the run's last line on stderr, which must say what happened;
* what was left: no container, mount, share, session process or held GPU, anywhere;
* the scheduler's state: intact (the session's record says how it ended);
* how long until the GPU was back in the pool, from the fault;
* whether the work survived, where the design allows it: its numbered lines go on, none
  lost, repeated or out of order.

Expected outcomes (the design):

============================  =============================================================
fault (``kill -9`` unless     expected
said)
============================  =============================================================
client (``hwrun``)            work lost; the lease lapses and the scheduler ends the session
share agent (then restarted)  work lost: the share agent that starts again closes the shares
                              it finds open, and the run ends saying the share was lost
node agent (then restarted)   work kept: the command's keeper spooled its output on the
                              node, the client reconnects and reads on (a Docker kernel is
                              taken back too: test_agent_restart_e2e.py)
scheduler (then restarted)    work kept: the client and the node retry, the scheduler loads
                              its state (durable: scheduler/commits.py)
the session's sshd            work lost: the share is gone; the run ends saying so
the session's sshfs           work lost: the node sees its mount die, and ends the run saying
                              the share was lost
container engine restarted    Docker: the container dies with the engine; the run ends with
                              its exit status, and the GPU goes back. Slurm: ``slurmd``
                              restarted, the job and the work go on (slurmstepd holds it)
the run's /tmp full           the run sees ENOSPC in its own /tmp (a tmpfs of its limit) and
                              goes on; nothing else on the node is touched
============================  =============================================================

The scheduler's disk full is tested in test_commits.py (a real full tmpfs under the store)
and below on a pool whose state is on one; the link between node and developer machine
down for 5 s and 60 s on the network-namespace hosts in test_links_e2e.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import Pool, Service, assert_nothing_left, ctrl_c, read_rest, wait_for

pytestmark = pytest.mark.e2e

COUNT = (
    "import itertools, time\nfor i in itertools.count(1):\n print(i, flush=True)\n time.sleep(0.1)"
)
READY = {
    "scheduler": "HWSCHED_SCHEDULER_READY",
    "agent": "HWSCHED_AGENT_READY",
    "share": "HWSCHED_SHARE_READY",
}
#: the matrix's rows, printed at the end of the run (conftest.pytest_terminal_summary)
FAULT_ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def pool(each_runner_pool: Pool) -> Pool:
    return each_runner_pool


def kind_of(pool: Pool) -> str:
    if pool.slurm is not None:
        return "slurm"
    return "bwrap" if any("Bwrap" in a for a in pool.agent_args) else "docker"


class Run:
    """One ``hwrun`` of the counting command, read as it goes."""

    def __init__(self, pool: Pool, cwd: str) -> None:
        self.pool = pool
        self.proc = pool.popen_hwrun(
            ["-q", "--gpu", "1", "--", "python3", "-u", "-c", COUNT], cwd=cwd
        )
        self.lines: list[int] = []

    def read(self, n: int) -> None:
        """``n`` more lines; each must be the next number."""
        assert self.proc.stdout is not None
        for _ in range(n):
            line = self.proc.stdout.readline()
            assert line, f"the run ended early: {self.finish()}"
            self.lines.append(int(line))
        assert self.lines == list(range(1, len(self.lines) + 1)), self.lines[-20:]

    def finish(self, timeout: float = 180) -> str:
        """Wait for the run to end; its stderr's last line."""
        try:
            out, err = read_rest(self.proc, timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            more = (exc.output or "").split()
            raise AssertionError(
                f"the run did not end within {timeout} s: {len(more)} more lines came after "
                f"line {len(self.lines)} (the last: {more[-1:]}); it said {exc.stderr!r}"
            ) from None
        self.lines += [int(x) for x in out.split()]
        said = err.strip().splitlines()
        return said[-1] if said else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def run(pool: Pool) -> Iterator[Callable[[], Run]]:
    started: list[Run] = []
    pool.assert_clean()

    def start() -> Run:
        r = Run(pool, "/")
        started.append(r)
        r.read(5)
        return r

    yield start
    for r in started:
        r.kill()


def session_record(pool: Pool) -> dict[str, Any]:
    [record] = pool.api("GET", "/api/sessions?all=1")[-1:]
    return dict(record)


def gpu_back(pool: Pool, since: float) -> float:
    wait_for(lambda: not pool.held_gpus(), 120, "the GPU to go back to the pool")
    return round(time.monotonic() - since, 1)


def record(pool: Pool, fault: str, saw: str, since: float, work: str) -> None:
    back = gpu_back(pool, since)
    pool.assert_clean(timeout=60)
    FAULT_ROWS.append(
        {
            "fault": fault,
            "pool": kind_of(pool),
            "user saw": saw.replace("|", "/")[:160] or "(nothing)",
            "left": "nothing",
            "GPU back (s)": back,
            "work": work,
        }
    )


KEPT = "(nothing: the run went on, and ended by Ctrl-C)"


def stop(r: Run) -> float:
    """End a run that survived its fault with Ctrl-C; when."""
    ctrl_c(r.proc)
    since = time.monotonic()
    r.finish()
    return since


def service(pool: Pool, name: str) -> Service:
    return next(s for s in pool.services if s.name == name)


def restart(pool: Pool, name: str, meanwhile: Callable[[], None] = lambda: None) -> None:
    """``kill -9`` one of the pool's services, do ``meanwhile``, start it again as before."""
    old = service(pool, name)
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait()
    meanwhile()
    log = pool.workdir / f"{name}-again-{time.monotonic_ns()}.log"
    again = Service(name, [str(a) for a in old.proc.args], pool.env, log)  # type: ignore[union-attr]
    pool.services[pool.services.index(old)] = again
    again.wait_line(READY[name])


def processes(pool: Pool, program: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if (
            cmd
            and os.path.basename(cmd[0]).startswith(program)
            and str(pool.state) in " ".join(cmd)
        ):
            found.append(proc)
    return found


# the cases


def test_client_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    since = time.monotonic()
    r.proc.kill()
    r.finish()
    ended = wait_for(lambda: session_record(pool)["state"] == "ended", 60, "the session to end")
    assert ended
    record(pool, "client (hwrun) kill -9", "(the client is gone)", since, "lost (by design)")
    assert "lease" in session_record(pool)["end_reason"], session_record(pool)


def test_share_agent_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    since = time.monotonic()
    restart(pool, "share")
    saw = r.finish()
    assert r.proc.returncode == 125
    assert "share was lost" in saw, saw
    record(pool, "share agent kill -9, restarted", saw, since, "lost (its share was closed)")


def test_node_agent_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    restart(pool, "agent", lambda: None)
    # the command outlives the agent (Docker's exec, or a sandbox that is its keeper's
    # child), its output spooled meanwhile: the client reads on, none lost, none twice
    r.read(30)
    record(pool, "node agent kill -9, restarted", KEPT, stop(r), "kept (output spooled)")


def test_scheduler_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    before = session_record(pool)
    restart(pool, "scheduler")
    r.read(80)  # 8 s: twice the pool's lease, renewed against the new scheduler
    after = session_record(pool)
    assert (after["id"], after["state"]) == (before["id"], "running")
    record(pool, "scheduler kill -9, restarted", KEPT, stop(r), "kept")


def test_session_sshd_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    [server] = pool.share_servers()
    since = time.monotonic()
    for victim in [*server.children(recursive=True), server]:
        with contextlib.suppress(psutil.Error):  # gone with its parent
            victim.kill()
    saw = r.finish()
    assert r.proc.returncode == 125
    assert "share was lost" in saw, saw
    record(pool, "the session's sshd kill -9", saw, since, "lost (its files are gone)")


def test_sshfs_killed(pool: Pool, run: Callable[[], Run]) -> None:
    r = run()
    [sshfs] = processes(pool, "sshfs")
    since = time.monotonic()
    sshfs.kill()
    saw = r.finish()
    assert r.proc.returncode == 125
    assert "share was lost" in saw, saw
    record(pool, "the session's sshfs kill -9", saw, since, "lost (its files are gone)")


def test_engine_restarted(pool: Pool, run: Callable[[], Run]) -> None:
    kind = kind_of(pool)
    if kind == "bwrap":
        pytest.skip("bubblewrap has no engine to restart: its sandboxes are processes of the node")
    r = run()
    if kind == "slurm":
        assert pool.slurm is not None
        restart_slurmd(pool)
        r.read(20)
        record(pool, "slurmd restarted", KEPT, stop(r), "kept")
        return
    since = time.monotonic()
    restart_dockerd()
    saw = r.finish()
    assert r.proc.returncode != 0
    assert "container" in saw, f"the run must end with a line that says why, not {saw!r}"
    record(pool, "dockerd restarted", saw, since, "lost (the container died with it)")


def test_the_runs_tmp_full(pool: Pool, run: Callable[[], Run]) -> None:
    # the run stays with its /tmp full for a few of the agent's limit checks (1 s apart): a
    # full /tmp must not end it
    fill = (
        "import errno, time\ntry:\n with open('/tmp/fill', 'wb') as f:\n"
        "  while True: f.write(b'x' * 65536)\n"
        "except OSError as e:\n print('full' if e.errno == errno.ENOSPC else e, flush=True)\n"
        "time.sleep(3)\nprint('after')"
    )
    done = pool.hwrun(["-q", "--gpu", "1", "--", "python3", "-c", fill], cwd="/")
    since = time.monotonic()  # the run's own end
    assert done.returncode == 0 and done.stdout.split() == ["full", "after"], done
    record(pool, "the run's /tmp full", "ENOSPC in the run, which went on", since, "kept")


# the engines


def restart_dockerd() -> None:
    """Stop the machine's Docker Engine (its containers stop with it), start it again."""
    pidfile = Path("/run/hwsched-docker/docker.pid")
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not psutil.pid_exists(pid), 60, "dockerd to stop")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(["bash", str(repo / "scripts" / "dockerd.sh")], check=True, capture_output=True)


def restart_slurmd(pool: Pool) -> None:
    assert pool.slurm is not None
    for i, (name, proc) in enumerate(pool.slurm.procs):
        if name.startswith("slurmd "):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            node = name.split()[1]
            pool.slurm.procs.pop(i)
            pool.slurm._spawn(name, ["slurmd", "-D", "-N", node])
            break
    wait_for(lambda: slurmd_answers(pool), 60, "slurmd to answer again")


def slurmd_answers(pool: Pool) -> bool:
    assert pool.slurm is not None
    states = pool.slurm.commands.run(["sinfo", "--noheader", "--format=%T"]).split()
    return bool(states) and all(s.rstrip("*") == s and s not in ("down", "unknown") for s in states)


# full disks: pools of their own, whose scheduler's or node's state is on a small tmpfs


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs (outside /tmp: sshd's StrictModes), unmounted after the test."""
    point = Path("/var/lib/hwsched-test") / f"small-disk-{time.monotonic_ns()}"
    point.mkdir(parents=True, mode=0o711)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0711", "hwsched-small", point], check=True
    )
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", point], check=False)
        point.rmdir()


def fill(disk: Path) -> None:
    """Fill a tmpfs to its last page (``filler``; remove it for room)."""
    with open(disk / "filler", "wb", buffering=0) as out:
        for chunk in (b"\0" * 65536, b"\0" * 4096):
            with contextlib.suppress(OSError):
                while True:
                    out.write(chunk)


def test_the_schedulers_disk_full(
    tmp_path_factory: pytest.TempPathFactory, small_disk: Path
) -> None:
    """Expected: a new request is refused with a line that says why (503); the run under way
    goes on, and its node is not taken for dead; with room again, everything works and
    nothing is left."""
    pool = Pool(tmp_path_factory.mktemp("sched-disk"), db=small_disk / "sched.sqlite")
    try:
        r = Run(pool, "/")
        r.read(5)
        fill(small_disk)
        refused = pool.hwrun(["--gpu", "1", "--", "true"], cwd="/")
        said = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode != 0
        assert "could not write its state" in said, refused.stderr
        r.read(60)  # 6 s: longer than the pool's lease and half its node timeout
        (small_disk / "filler").unlink()
        r.read(10)
        since = stop(r)
        again = pool.hwrun(["-q", "--gpu", "1", "--", "echo", "ok"], cwd="/")
        assert (again.returncode, again.stdout) == (0, "ok\n"), again.stderr
        wait_for(lambda: not pool.held_gpus(), 60, "the GPU to go back")
        back = round(time.monotonic() - since, 1)
        pool.assert_clean(timeout=60)
        FAULT_ROWS.append(
            {
                "fault": "the scheduler's disk full",
                "pool": "docker",
                "user saw": said.replace("|", "/")[:160],
                "left": "nothing",
                "GPU back (s)": back,
                "work": "kept (new requests refused until there was room)",
            }
        )
    finally:
        pool.stop()


def test_the_nodes_disk_full(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Expected: a session that cannot start on the node fails with a line that says why,
    its GPU goes back at once, and nothing is left; with room again, runs start."""
    disks: list[Path] = []

    def small_agent_disk(p: Pool) -> None:  # the agent's state directory: a 16 MiB tmpfs
        point = p.state / "agent"
        point.mkdir(mode=0o711)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "hwsched-small", point], check=True
        )
        disks.append(point)

    pool = Pool(
        tmp_path_factory.mktemp("node-disk"),
        before_agent=small_agent_disk,
        agent_args=("--NodeCache.enabled=False",),
    )
    try:
        [disk] = disks
        fill(disk)
        since = time.monotonic()
        failed = pool.hwrun(["--gpu", "1", "--", "true"], cwd="/")
        said = failed.stderr.strip().splitlines()[-1] if failed.stderr.strip() else ""
        assert failed.returncode != 0
        assert "No space left on device" in said, failed.stderr
        wait_for(lambda: not pool.held_gpus(), 60, "the GPU to go back")
        back = round(time.monotonic() - since, 1)

        def left() -> dict[str, Any]:  # the small disk itself is no leftover
            found = pool.leftovers()
            mounts = [m for m in found.pop("mounts", []) if m != str(disk)]
            return {**found, **({"mounts": mounts} if mounts else {})}

        assert_nothing_left(left, 60, "the pool")
        (disk / "filler").unlink()
        again = pool.hwrun(["-q", "--gpu", "1", "--", "echo", "ok"], cwd="/")
        assert (again.returncode, again.stdout) == (0, "ok\n"), again.stderr
        assert_nothing_left(left, 60, "the pool")
        FAULT_ROWS.append(
            {
                "fault": "the node's disk full",
                "pool": "docker",
                "user saw": said.replace("|", "/")[:160],
                "left": "nothing",
                "GPU back (s)": back,
                "work": "not started (the next run, with room, did)",
            }
        )
    finally:
        pool.stop()
        for point in disks:
            subprocess.run(["umount", "-l", point], check=False)
