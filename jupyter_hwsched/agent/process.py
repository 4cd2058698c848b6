"""A process of a session's started by a runner itself (not by a container engine): its
output pumped to a callback by threads, its exit reported once both streams have ended."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import IO, Any

import psutil

from jupyter_hwsched.agent.runner import ExecProcess, ExitCallback, OutputCallback

#: signals a session's process must get with their default action, whatever the agent was
#: started with (SIGPIPE and SIGXFSZ are reset by Popen itself; an ignored SIGCHLD means
#: something else)
SESSION_SIGNALS = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def _ignore(signum: int, frame: object) -> None:
    """The agent's own way of ignoring a signal it was started ignoring."""


def pass_default_signals() -> list[str]:
    """Let the processes the runners start take signals as they expect.

    A signal ignored when a program starts stays ignored in every process it starts: an
    agent started with SIGINT ignored (by a shell's ``&`` without job control, by a CI
    harness) starts commands that a client's Ctrl-C cannot interrupt, and one under
    ``nohup`` commands that a client's hang-up cannot end. Each such signal gets a handler
    that does nothing instead: the agent goes on ignoring it, and, as with every handler,
    a program it starts has the default action. Returns the names of the signals changed."""
    changed: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        return changed  # an agent inside another program (a test's server): its own affair
    for signum in SESSION_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, _ignore)
            changed.append(signal.Signals(signum).name)
    return changed


def start_pumped(
    argv: list[str],
    exec_id: str,
    on_output: OutputCallback,
    on_exit: ExitCallback,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], ExecProcess]:
    """Start ``argv`` (``popen``: Popen's other arguments) in a session of its own, its
    stdout and stderr to ``on_output``; ``on_exit`` gets its status (128+N if killed by N)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,
    )
    handle = ExecProcess(proc.pid, exec_id)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", on_output), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", on_output), daemon=True),
    ]
    for pump in pumps:
        pump.start()

    def reap() -> None:
        for pump in pumps:
            pump.join()
        code = proc.wait()
        handle.exit_code = 128 - code if code < 0 else code  # killed by a signal: 128+N
        on_exit(handle.exit_code)

    threading.Thread(target=reap, daemon=True).start()
    return proc, handle


def _pump(stream: IO[bytes], name: str, on_output: OutputCallback) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        on_output(name, chunk)
    stream.close()


def kill_group(pid: int) -> None:
    """SIGKILL a process group, and wait a little for its leader."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        psutil.Process(pid).wait(5)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
