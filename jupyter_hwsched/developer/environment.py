"""What remote work inherits from the caller: identity, directory and environment."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import Identity

#: variables that only make sense on the caller's machine, or are secrets of the client
LOCAL_ONLY = frozenset(
    {
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XAUTHORITY",
        "SSH_AUTH_SOCK",
        "SSH_AGENT_PID",
        "SSH_CONNECTION",
        "SSH_CLIENT",
        "SSH_TTY",
        "DBUS_SESSION_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "XDG_SESSION_ID",
        "GPG_AGENT_INFO",
        "KRB5CCNAME",
        "TMUX",
        "TMUX_PANE",
        "TERM_SESSION_ID",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "HOSTNAME",
        "HWSCHED_TOKEN",
        "HWSCHED_SHARE_SOCKET",
        "JUPYTER_TOKEN",
        "TMPDIR",
    }
)
LOCAL_ONLY_PREFIXES = ("JPY_", "JUPYTER_SERVER_", "HWSCHED_SESSION", "VSCODE_IPC")


def caller_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    return {
        k: v
        for k, v in env.items()
        if k not in LOCAL_ONLY and not k.startswith(LOCAL_ONLY_PREFIXES)
    }


def identity_of(entry: pwd.struct_passwd) -> Identity:
    """An account of this machine, with its groups as the system lists them."""
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return Identity(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        group=group,
        home=entry.pw_dir,
        groups=tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)))),
    )


def caller_identity() -> Identity:
    """This process's account: who the remote work runs as."""
    uid = os.getuid()
    entry = pwd.getpwuid(uid)
    try:
        group = grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        group = str(os.getgid())
    return Identity(
        name=entry.pw_name,
        uid=uid,
        gid=os.getgid(),
        group=group,
        home=entry.pw_dir,
        groups=tuple(sorted(set(os.getgroups()))),
    )


def caller_host() -> str:
    return socket.gethostname()


#: what each GPU node keeps its own: the caller's files there are not the node's
PRIVATE = "/tmp"


def private(path: str) -> bool:
    """Whether a path lies where the node has its own files, not the caller's."""
    absolute = os.path.abspath(path)
    return absolute == PRIVATE or absolute.startswith(PRIVATE + "/")


def check_visible(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """Refuse, before anything is asked of the pool, a run that needs a path the node cannot
    see: it would run another program there, or none, and say nothing of why."""
    why = "which stays private to each GPU node"
    if private(cwd):
        raise RequestError(
            f"the current directory {cwd} is under {PRIVATE}, {why}: run from a directory "
            "outside it (your home or a project directory)"
        )
    program = argv[0]
    found = program if "/" in program else shutil.which(program, path=env.get("PATH"))
    if found and private(found):
        raise RequestError(
            f"{program} is {found}, under {PRIVATE}, {why}: the node would run another "
            f"{os.path.basename(program)} or none. Install it outside {PRIVATE} (for a venv: "
            "python3 -m venv ~/venvs/NAME)"
        )
