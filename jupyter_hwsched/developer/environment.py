"""What remote work inherits from the caller: identity, directory and environment."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import MAX_SHOWN, Identity

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


#: what each GPU node keeps its own: a session's /tmp is the node's, in memory
PRIVATE = "/tmp"


def private(path: str) -> bool:
    """Whether a path lies where the node has its own files, not the caller's."""
    absolute = os.path.abspath(path)
    return absolute == PRIVATE or absolute.startswith(PRIVATE + "/")


def shown_paths(argv: list[str], env: dict[str, str], cwd: str) -> tuple[str, ...]:
    """What of the caller's ``/tmp`` the run needs, which the node then shows from the share
    at the same paths (its own ``/tmp`` being private): the directory (or file) right under
    ``/tmp`` that holds the working directory, the program, and each ``PATH`` and
    ``PYTHONPATH`` entry that exists here. ``/tmp`` itself cannot be shown: a run from it,
    or that needs it whole, is refused with what to change."""
    needed: list[tuple[str, str]] = [(cwd, "the current directory")]
    program = argv[0] if argv else ""
    found = program if "/" in program else shutil.which(program, path=env.get("PATH"))
    if program and (not found or not os.path.exists(os.path.join(cwd, found))):
        raise RequestError(
            f"{program}: no such program here"
            + ("" if "/" in program else " in PATH")
            + ", so none on the node either: check its name, or install it"
        )
    if found:
        needed.append((found, program))
    for variable in ("PATH", "PYTHONPATH"):
        for entry in env.get(variable, "").split(os.pathsep):
            if entry and os.path.isabs(entry) and os.path.exists(entry):
                needed.append((entry, f"the {variable} entry {entry}"))
    shown: list[str] = []
    for path, what in needed:
        absolute = os.path.normpath(os.path.join(cwd, path))
        if not private(absolute):
            continue
        if absolute == PRIVATE:
            raise RequestError(
                f"{what} is {PRIVATE} itself, which stays private to each GPU node: use a "
                f"directory under it (or outside it) instead"
            )
        top = "/".join(absolute.split("/")[:3])  # /tmp/NAME
        if top not in shown:
            shown.append(top)
    if len(shown) > MAX_SHOWN:
        raise RequestError(
            f"the run needs {len(shown)} paths under {PRIVATE} ({', '.join(shown)}), more than "
            f"{MAX_SHOWN}: move some of them out of {PRIVATE}"
        )
    return tuple(shown)


#: the variable that names the trees a node may cache (":"-separated; empty: none)
CACHE_TREES_VARIABLE = "HWSCHED_CACHE_TREES"


def environment_root(program: str) -> str | None:
    """The virtual environment or conda environment a program lives in: the directory above
    its ``bin`` that holds ``pyvenv.cfg`` or ``conda-meta``, or None."""
    directory = os.path.dirname(os.path.abspath(program))
    if os.path.basename(directory) != "bin":
        return None
    root = os.path.dirname(directory)
    if os.path.exists(os.path.join(root, "pyvenv.cfg")) or os.path.isdir(
        os.path.join(root, "conda-meta")
    ):
        return root
    return None


def cache_trees(argv: list[str], env: dict[str, str], cwd: str) -> list[str]:
    """The read-mostly trees a node may serve from its cache, read-only, for this run:
    ``HWSCHED_CACHE_TREES`` where set, else ``/usr`` and the environment the program lives in.
    A tree that holds the working directory, lies under ``/tmp`` or does not exist is left
    out: the run must be able to write where it works."""
    given = env.get(CACHE_TREES_VARIABLE)
    if given is not None:
        candidates = [p for p in given.split(":") if p and p != "none"]
    else:
        program = argv[0] if argv else ""
        found = program if "/" in program else shutil.which(program, path=env.get("PATH"))
        candidates = ["/usr"]
        root = environment_root(os.path.join(cwd, found)) if found else None
        if root:
            candidates.append(root)
    trees: list[str] = []
    work = os.path.normpath(cwd)
    for path in candidates:
        tree = os.path.normpath(os.path.join(cwd, path))
        holds_cwd = work == tree or work.startswith(tree + "/")
        if tree == "/" or holds_cwd or private(tree) or not os.path.isdir(tree):
            continue
        if any(c in tree for c in ":,\\") or tree in trees:
            continue
        trees.append(tree)
    return trees
