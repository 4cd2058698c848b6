"""Starting work in the developer's environment over the share, at modelled network delays.

On a real one-node pool (scheduler, node agent, share agent, dockerd, sshd, sshfs; simulated
GPUs where NVML finds none), with the node's sshfs reaching the developer's sshd through
``benchmarks/relay.py`` as its ssh ProxyCommand (each segment held DELAY ms each way; these
kernels have no netem), and beside the same thing run locally in the same invocation:

* ``import torch``, timed inside a fresh ``hwrun --gpu 1`` (locally: a fresh python);
* the whole ``hwrun --gpu 1 -- python -c "import torch"`` command (the same run: it also
  prints the import's time, which costs nothing);
* ``%%hwrun --gpu 1`` on ``print(1)``: first output in a notebook kernel (locally: a kernel
  start and its first output), as ``benchmarks/first_output.py`` measures it;
* writing 1 GB to a file in the working directory, which is on the developer's disk, from
  open to close (sshfs's close waits for the writes to be acknowledged; the file's size is
  checked on the developer side after the run).

Each case runs as three sessions back to back: "cold" (the node's cache purged and the
developer machine's hot set forgotten first: the node has never seen this developer), then
"warm" (the second session, with an unrelated file in the working directory changed before
it) and "3rd". The node copies what a session reads while it runs (agent/cache), so the
second session reads from the node's disk what the first had copied by its end, and the third
what the second added. ``--no-cache`` turns the node's cache off: every file comes through the
share, as before the cache. The developer side's page cache is warm for all (a local
``import torch`` runs first), as on a developer's machine in use. Delay 0 is the share
without the relay (``--relay-at-zero`` puts the relay in anyway). Medians over ``--runs``;
raw values in a JSON file in the bench directory.

The developer's venv (torch 2.13.0 CPU, numpy, pandas, matplotlib, scikit-learn) is built
once under ``--bench-dir`` (``benchmarks/share_env.py``). Run by hand as root, with
``DOCKER_HOST`` set as for the tests:
``python benchmarks/share.py [--runs 3] [--delays 0,0.25,1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the test harness (tests/harness.py) is not part of the package; the script's folder is on
# sys.path already (relay, report, share_env, first_output)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from first_output import first_output, local_run
from harness import Pool
from jupyter_client.manager import KernelManager
from relay import calibrate, proxy_command
from report import fmt, note, ratio, table
from share_env import DEFAULT_BENCH_DIR, check_bench_dir, ensure_venv, venv_size

from jupyter_hwsched.protocol.clients import AgentClient

IMPORT_TORCH = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
#: open, write, close; the time is printed, then the file is checked and removed outside
WRITE = """
import os, sys, time
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
t = time.perf_counter()
with open(path, "wb") as f:
    for _ in range(mb):
        f.write(block)
print(time.perf_counter() - t)
"""
CASES = {
    "torch": "import torch, inside the run",
    "torch_cmd": "hwrun -- python -c 'import torch'",
    "first_output": "%%hwrun print(1), first output",
    "write": "write {size} to the developer's disk",
}
CASE_NOTES = {
    "torch": "local: a fresh python",
    "torch_cmd": "local: the same python command",
    "first_output": "local: kernel start + print(1)",
    "write": "local: the same write",
}
HWRUN_TIMEOUT = 3600.0
#: local, then three sessions in a row on the pool
KINDS = ("local", "cold", "warm", "3rd")


class Bench:
    """One pool with one delay, a notebook kernel with the extension, and the cases."""

    def __init__(self, args: argparse.Namespace, python: Path, delay_ms: float) -> None:
        self.args = args
        self.python = str(python)
        self.delay_ms = delay_ms
        self.work = args.bench_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)
        self.relayed = delay_ms > 0 or args.relay_at_zero
        #: the relay appends a line per session (per ssh connection) when it ends
        self.stats = args.bench_dir / f"relay-{delay_ms:g}ms.jsonl"
        self.stats.unlink(missing_ok=True)
        self.stats_seen = 0
        options: list[str] = []
        if self.relayed:
            # after the default options
            options.append(f"ProxyCommand={proxy_command(delay_ms, stats=str(self.stats))}")
        agent_args = tuple(f"--AgentApp.sshfs_extra_options={option}" for option in options)
        if args.no_cache:
            agent_args += ("--NodeCache.enabled=False",)
        agent_args += tuple(args.agent_arg)
        self.pool = Pool(Path(tempfile.mkdtemp(prefix="hwsched-bench-")), agent_args=agent_args)
        self.notebook = KernelManager(kernel_name="python3")
        try:
            self.notebook.start_kernel(env=self.pool.env, cwd=str(self.work))
            kc = self.notebook.blocking_client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            kc.execute_interactive("%load_ext jupyter_hwsched", timeout=60)
            kc.stop_channels()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.notebook.shutdown_kernel(now=True)
        except Exception:
            pass
        self.pool.stop()

    def hwrun(self, argv: list[str]) -> tuple[float, str]:
        """``hwrun --gpu 1 -- ARGV`` in the working directory: (whole command, stdout)."""
        start = time.perf_counter()
        done = self.pool.hwrun(
            ["--gpu", "1", "--", *argv], cwd=str(self.work), timeout=HWRUN_TIMEOUT
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"hwrun {argv} failed ({done.returncode}): {done.stderr[-2000:]}")
        return elapsed, done.stdout

    def local(self, argv: list[str]) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=str(self.work), capture_output=True, text=True, check=True)
        return time.perf_counter() - start, done.stdout

    def torch(self, remote: bool) -> dict[str, float]:
        argv = [self.python, "-c", IMPORT_TORCH]
        whole, out = self.hwrun(argv) if remote else self.local(argv)
        return {"torch": float(out.split()[-1]), "torch_cmd": whole}

    def first_output(self, remote: bool) -> dict[str, float]:
        if remote:
            return {"first_output": first_output(self.notebook, "%%hwrun --gpu 1\nprint(1)", "1")}
        return {"first_output": local_run(str(self.work))}

    def write(self, remote: bool) -> dict[str, float]:
        path = self.work / f"write-{os.getpid()}.bin"
        argv = [self.python, "-c", WRITE, path.name, str(self.args.write_mb)]
        try:
            _, out = self.hwrun(argv) if remote else self.local(argv)
            size = path.stat().st_size  # on the developer's disk, now that the run ended
            if size != self.args.write_mb << 20:
                raise RuntimeError(f"{path} has {size} bytes after the run")
        finally:
            path.unlink(missing_ok=True)
        return {"write": float(out.split()[-1])}

    def session_stats(self, timeout: float = 30.0) -> dict[str, Any]:
        """The relay's counts for the session that just ended (its relay writes them when
        the node unmounts, which may come a moment after the client saw the end)."""
        if not self.relayed:
            return {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.stats.read_text().splitlines() if self.stats.exists() else []
            if len(lines) > self.stats_seen:
                self.stats_seen += 1
                return dict(json.loads(lines[self.stats_seen - 1]))
            time.sleep(0.1)
        return {}

    def forget(self) -> None:
        """The node has never seen this developer: its cache purged, the hot set forgotten."""
        agent = AgentClient(f"http://127.0.0.1:{self.pool.agent_port}", self.pool.token)
        if not self.args.no_cache:
            asyncio.run(agent.purge_cache())
        for hot in (self.pool.state / "hot").glob("*"):
            hot.unlink()

    def change_unrelated_file(self) -> None:
        (self.work / "unrelated.txt").write_text(f"changed at {time.time()}\n")


def run_delay(args: argparse.Namespace, python: Path, delay_ms: float) -> dict[str, Any]:
    """{"local"|"cold"|"warm": {case: [seconds per run]}, "requests": {case: [segments per
    session]}, "rtt_ms": measured round trip through the relay} at one delay."""
    results: dict[str, Any] = {kind: {case: [] for case in CASES} for kind in KINDS}
    results["requests"] = {kind: {case: [] for case in CASES} for kind in KINDS[1:]}
    relayed = delay_ms > 0 or args.relay_at_zero
    results["rtt_ms"] = calibrate(delay_ms) * 1000 if relayed else math.nan
    bench = Bench(args, python, delay_ms)
    measures: list[Callable[[bool], dict[str, float]]] = [
        bench.torch,
        bench.first_output,
        bench.write,
    ]
    if args.skip_write:
        measures.remove(bench.write)
    try:
        for run in range(args.runs):
            for measure in measures:
                got: dict[str, dict[str, float]] = {}
                for kind in KINDS:
                    remote = kind != "local"
                    if kind == "cold":
                        bench.forget()
                    if kind == "warm":
                        bench.change_unrelated_file()
                    got[kind] = measure(remote)
                    for case, value in got[kind].items():
                        results[kind][case].append(value)
                    if remote:
                        # the ssh connection's segments towards the developer: SFTP requests
                        # sent together count once, so about the round trips that were waited
                        ups = bench.session_stats().get("up_segments", math.nan)
                        for case in got[kind]:
                            results["requests"][kind][case].append(ups)
                shown = "; ".join(
                    f"{case}: " + ", ".join(f"{kind} {got[kind][case]:.2f}" for kind in got)
                    for case in got["local"]
                )
                print(
                    f"  {delay_ms:g} ms, run {run + 1}/{args.runs}: {shown}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        bench.stop()
    return results


def delay_label(delay_ms: float, relayed: bool) -> str:
    if delay_ms == 0:
        return "0 (relay)" if relayed else "0 (direct)"
    return f"{delay_ms:g} ms"


def print_table(args: argparse.Namespace, all_results: dict[float, Any]) -> None:
    headers = ["case", "delay one way", "RTT", "local"]
    for kind in KINDS[1:]:
        headers += [kind, f"{kind}/local"]
    headers.append("requests cold/warm/3rd")
    rows = []
    size = f"{args.write_mb / 1024:g} GB" if args.write_mb >= 1024 else f"{args.write_mb} MB"
    titles = {case: title.format(size=size) for case, title in CASES.items()}
    for case, title in titles.items():
        for delay_ms, results in all_results.items():
            if not results["local"][case]:
                continue
            med = {kind: statistics.median(results[kind][case]) for kind in KINDS}
            rtt = results["rtt_ms"]
            row = [
                title,
                delay_label(delay_ms, args.relay_at_zero),
                fmt(rtt, 2) + " ms" if not math.isnan(rtt) else "-",
                fmt(med["local"]),
            ]
            for kind in KINDS[1:]:
                row += [fmt(med[kind]), ratio(med[kind], med["local"])]
            counts = []
            for kind in KINDS[1:]:
                seen = [v for v in results["requests"][kind][case] if not math.isnan(v)]
                counts.append(f"{statistics.median(seen):,.0f}" if seen else "-")
            row.append("/".join(counts))
            rows.append(row)
    print(
        f"starting work over the share, seconds, median of {args.runs} runs per cell "
        f"(node cache {'off' if args.no_cache else 'on'}; cold: the node never saw this "
        "developer; warm: the second session, after an unrelated change; 3rd: the third)"
    )
    print(table(headers, rows))
    for case, text in CASE_NOTES.items():
        print(note(f"{titles[case]}: {text}"))
    files, size = venv_size(args.bench_dir)
    print(
        note(
            f"developer venv: {files} files, {size / 1e9:.2f} GB. Delay: each segment held that "
            "long in each direction by benchmarks/relay.py as the node's ssh ProxyCommand; RTT: "
            "a one-byte ping's median round trip through that relay, measured before the runs "
            "(what the relay really adds, its own cost included). requests: median segments "
            "the node's ssh sent to the developer's sshd per session (SFTP requests sent "
            "together count once: about the round trips a session waited for)."
        )
    )


def parse_delays(text: str) -> list[float]:
    delays = [float(part) for part in text.split(",") if part.strip()]
    if not delays or any(d < 0 for d in delays):
        raise argparse.ArgumentTypeError(f"delays in ms, not negative, comma-separated: {text}")
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--delays",
        type=parse_delays,
        default=[0.0, 0.25, 1.0],
        help="one-way delays in ms, comma-separated (default 0,0.25,1)",
    )
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    parser.add_argument("--write-mb", type=int, default=1024)
    parser.add_argument("--skip-write", action="store_true", help="leave out the 1 GB write")
    parser.add_argument(
        "--relay-at-zero", action="store_true", help="put the relay in at delay 0 too"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="the node's cache off (the baseline before it)"
    )
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="a setting for the node agent, e.g. --agent-arg=--NodeCache.fill_workers=1",
    )
    args = parser.parse_args()
    args.bench_dir = check_bench_dir(args.bench_dir)
    python = ensure_venv(args.bench_dir, quiet=True)
    # the developer's page cache: warm, as on a machine in use
    subprocess.run([str(python), "-c", "import torch"], check=True)
    all_results: dict[float, Any] = {}
    for delay_ms in args.delays:
        print(f"delay {delay_ms:g} ms one way ...", file=sys.stderr, flush=True)
        all_results[delay_ms] = run_delay(args, python, delay_ms)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = args.bench_dir / f"results-{stamp}.json"
    raw.write_text(json.dumps({str(d): r for d, r in all_results.items()}, indent=1) + "\n")
    print_table(args, all_results)
    print(note(f"raw values: {raw}"))


if __name__ == "__main__":
    main()
