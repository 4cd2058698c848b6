"""What a session's work sees, the same with each runner that roots it at the share (Docker,
bubblewrap): the developer's uid and files, its own GPUs' device nodes and no other, a private
/tmp, no capabilities, no network but a loopback, its own PID namespace and limits; and a
Remote GPU kernel's whole life in it. (Limits: test_limits_e2e.py, with both runners.)"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEV_USER, Pool, call_json, ctrl_c, wait_for
from jupyter_client.manager import AsyncKernelManager

pytestmark = pytest.mark.e2e

PROBE = """
import json, os, socket
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
nets = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
open('/tmp/private-probe', 'w').write('x')
mine = open(os.path.join(os.getcwd(), 'from-host')).read()
open(os.path.join(os.getcwd(), 'from-node'), 'w').write('written on the node')
try:
    os.mknod('/dev/nvidia7', 0o20666, os.makedev(195, 7))
    made = 'made'
except OSError as exc:
    made = type(exc).__name__
print(json.dumps({
    'uid': os.getuid(), 'gid': os.getgid(), 'caps': caps, 'nets': nets,
    'devs': sorted(n for n in os.listdir('/dev') if n.startswith('nvidia')),
    'cuda': os.environ['CUDA_VISIBLE_DEVICES'], 'pid': os.getpid(),
    'pids': len([p for p in os.listdir('/proc') if p.isdigit()]),
    'hostname': socket.gethostname(), 'mine': mine, 'made': made,
    'run_dir': os.path.isdir('/.hwsched/run'),
}))
"""


@pytest.fixture
def clean_runner_pool(each_runner_pool: Pool) -> Iterator[Pool]:
    each_runner_pool.assert_clean()
    yield each_runner_pool
    each_runner_pool.assert_clean(timeout=60)


def test_the_work_sees_the_developers_files_and_only_its_own_gpus(
    clean_runner_pool: Pool, dev_workspace: Path
) -> None:
    pool = clean_runner_pool
    user = pwd.getpwnam(DEV_USER)
    (dev_workspace / "from-host").write_text("the developer's file")
    os.chown(dev_workspace / "from-host", user.pw_uid, user.pw_gid)
    done = pool.hwrun(
        ["--gpu", "1", "--", sys.executable, "-c", PROBE], user=DEV_USER, cwd=str(dev_workspace)
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["uid"], seen["gid"]) == (user.pw_uid, user.pw_gid)
    assert int(seen["caps"], 16) == 0  # no capability at all
    assert seen["nets"] == ["lo"]
    assert seen["devs"] == [f"nvidia{seen['cuda']}"]
    assert seen["made"] == "PermissionError"
    assert seen["pid"] < 10 and seen["pids"] < 10  # a PID namespace of its own
    assert seen["hostname"] == os.uname().nodename
    assert seen["mine"] == "the developer's file" and seen["run_dir"]
    assert (dev_workspace / "from-node").read_text() == "written on the node"
    assert not Path("/tmp/private-probe").exists()  # its /tmp was the node's, and is gone


def test_ctrl_c_reaches_a_command_that_runs_under_another_name(
    clean_runner_pool: Pool, workspace: Path
) -> None:
    """A launcher (a pyenv shim, ``sh -c 'exec …'``) replaces itself with the real program,
    whose command line is not the one asked for: the client's Ctrl-C must still reach it."""
    count = (
        "import itertools, time\nfor i in itertools.count(): print(i, flush=True); time.sleep(0.1)"
    )
    proc = clean_runner_pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", 'exec python3 -u -c "$0"', count],
        cwd=str(workspace),
    )
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline() for _ in range(3)] == ["0\n", "1\n", "2\n"]
        ctrl_c(proc)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err  # the command's own end: KeyboardInterrupt
        assert "KeyboardInterrupt" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    clean_runner_pool.assert_clean()


def test_a_remote_kernel_lives_its_whole_life_in_the_sandbox(
    clean_runner_pool: Pool, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = clean_runner_pool
    for name in ("HWSCHED_URL", "HWSCHED_TOKEN", "HWSCHED_SHARE_SOCKET"):
        monkeypatch.setenv(name, pool.env[name])

    async def run(kc: Any, code: str) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await kc.execute_interactive(code, timeout=120, output_hook=hook)
        assert reply["content"]["status"] in ("ok", "error"), reply
        return "".join(out)

    async def scenario() -> None:
        km = AsyncKernelManager(kernel_name="hwsched-remote")
        await km.start_kernel(cwd=str(workspace))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            assert (await run(kc, "import os\nx = 41\nprint(os.getcwd())")).strip() == str(
                workspace
            )
            msg_id = kc.execute("while True: pass")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await kc._async_get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert (await run(kc, "print(x + 1)")).strip() == "42"
            await km.restart_kernel()
            await kc.wait_for_ready(timeout=120)
            assert (await run(kc, "print('x' in globals())")).strip() == "False"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        wait_for(lambda: not pool.held_gpus(), 30, "the GPU to be released")

    asyncio.run(scenario())


def test_a_warm_lease_keeps_what_the_runner_can_keep_and_nothing_else(
    clean_runner_pool: Pool, workspace: Path
) -> None:
    """A container is kept warm (its GPUs taken back from it); a sandbox, which binds its
    devices at its start, is not: its share closes at once, with no lease left open."""
    pool = clean_runner_pool
    done = pool.hwrun(
        ["--gpu", "1", "--", "true"], cwd=str(workspace), env={"HWSCHED_KEEP_WARM": "60"}
    )
    assert done.returncode == 0, done.stderr
    url = pool.pool()["nodes"][0]["url"]
    leases = call_json(url, "GET", "/hwsched/node", pool.token)["leases"]
    if "BwrapRunner" in " ".join(pool.agent_args):
        assert leases == [] and pool.shares() == []
        return
    [lease] = leases
    assert [s["warm_lease"] for s in pool.shares()] == [lease["id"]]  # open for it alone
    ended = subprocess.run(
        [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "warm", "end"],
        env=pool.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lease["id"] in ended.stdout, ended.stderr
