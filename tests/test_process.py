"""The agent's own processes (agent/process.py): what a session's process inherits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: an agent's process started with SIGINT and SIGHUP ignored (``nohup``, a shell's ``&``):
#: it starts a process through the runners' path and reports both sides' ignored signals
PROBE = textwrap.dedent(
    """
    import os, signal, threading
    from jupyter_hwsched.agent.process import pass_default_signals, start_pumped

    def ignored(status):
        line = next(l for l in status.splitlines() if l.startswith("SigIgn:"))
        mask = int(line.split()[1], 16)
        return sorted(s.name for s in (signal.SIGINT, signal.SIGHUP) if mask >> (s - 1) & 1)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    changed = pass_default_signals()
    out, done = [], threading.Event()
    start_pumped(
        ["cat", "/proc/self/status"], "probe",
        lambda stream, data: out.append(data), lambda code: done.set(),
    )
    done.wait(30)
    os.kill(os.getpid(), signal.SIGINT)  # the agent itself still ignores it
    os.kill(os.getpid(), signal.SIGHUP)
    print(sorted(changed), ignored(b"".join(out).decode()), "alive")
    """
)


def test_a_session_process_gets_the_default_action_of_what_the_agent_ignores() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['SIGHUP',", "'SIGINT']", "[]", "alive"], done.stdout
