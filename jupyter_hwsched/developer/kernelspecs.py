"""``hwsched kernelspec``: Remote GPU kernelspecs, one per GPU request and environment.

A kernelspec's ``argv`` is the remote kernel itself (the launcher, by absolute path), so any
front end that starts a local kernel starts this one; its ``kernel_provisioner`` adds queue
phases and restart in place where the front end loads provisioners (JupyterLab). The GPU
request and the interpreter are written once, as the launcher's options in ``argv``; the
provisioner reads them from there too.

    hwsched kernelspec install [--gpu N] [--gpu-type T] [--python P] [--name N] [--user]
    hwsched kernelspec list
    hwsched kernelspec remove NAME
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from jupyter_hwsched.developer.kernel.launcher import MODULE
from jupyter_hwsched.developer.options import add_request_arguments, request_from_args
from jupyter_hwsched.protocol.errors import HwschedError, RequestError
from jupyter_hwsched.protocol.request import HardwareRequest, format_memory

#: the kernelspec the wheel installs; notebooks name it, so it keeps its name
DEFAULT_NAME = "hwsched-remote"
PROVISIONER = "hwsched-remote"
LOGO = Path(__file__).parent / "kernel" / "resources" / "logo-svg.svg"


def request_options(request: HardwareRequest) -> list[str]:
    """The launcher's options for a request (only those that differ from the defaults)."""
    out = ["--gpu", str(request.gpus)]
    for flag, value in (
        ("--gpu-type", request.gpu_type),
        ("--gpu-mem", str(request.gpu_mem) if request.gpu_mem else None),
        ("--timeout", f"{request.timeout:g}" if request.timeout else None),
        ("--node", request.node),
        ("--priority", str(request.priority) if request.priority else None),
        ("--mem", str(request.mem) if request.mem else None),
        ("--cpus", f"{request.cpus:g}" if request.cpus else None),
    ):
        if value:
            out += [flag, value]
    if request.shared:
        out.append("--shared")
    return out


def display_name(request: HardwareRequest, python: str | None) -> str:
    """``Remote GPU (shared env)``, or ``Remote GPU: 2 x A100 (myenv)``."""
    if request == HardwareRequest() and not python:
        return "Remote GPU (shared env)"
    gpus = f"{request.gpus} x {request.gpu_type}" if request.gpu_type else f"{request.gpus} GPU"
    if request.shared and request.gpu_mem:
        gpus = f"{format_memory(request.gpu_mem)} of a shared {request.gpu_type or 'GPU'}"
    elif request.gpu_mem:
        gpus += f" {format_memory(request.gpu_mem)}+"
    env = Path(python).resolve().parent.parent.name if python else "shared env"
    return f"Remote GPU: {gpus} ({env})"


def kernelspec(request: HardwareRequest, python: str | None, name: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", MODULE, "-f", "{connection_file}", *request_options(request)]
    if python:
        argv += ["--python", python]
    return {
        "argv": argv,
        "display_name": display_name(request, python),
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER},
            "hwsched": {"name": name, "request": request.to_json(), "python": python or ""},
        },
    }


def check_python(python: str) -> str:
    """The interpreter's absolute path, once it is known to run ipykernel."""
    path = Path(python).expanduser()
    if not path.is_absolute():
        raise RequestError(f"--python {python}: give the interpreter's absolute path")
    try:
        probe = subprocess.run(
            [str(path), "-c", "import ipykernel"], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise RequestError(f"--python {python} cannot run: {exc}") from None
    if probe.returncode != 0:
        raise RequestError(
            f"--python {python} has no ipykernel, which the kernel runs on: add it with "
            f"'{path} -m pip install ipykernel', then install the kernelspec again"
        )
    return str(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsched kernelspec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="install a Remote GPU kernelspec")
    add_request_arguments(install)
    install.add_argument("--python", help="the environment's interpreter (default: this one)")
    install.add_argument("--name", help="the kernelspec's name (default: from the request)")
    install.add_argument("--user", action="store_true", help="for this user only")
    sub.add_parser("list", help="list the Remote GPU kernelspecs")
    remove = sub.add_parser("remove", help="remove a Remote GPU kernelspec")
    remove.add_argument("name")
    return p


def default_name(request: HardwareRequest, python: str | None) -> str:
    if request == HardwareRequest() and not python:
        return DEFAULT_NAME
    parts = [DEFAULT_NAME, f"{request.gpus}gpu"]
    if request.gpu_type:
        parts.append(request.gpu_type.replace("|", "-").lower())
    if request.shared:
        parts[1] = f"shared-{format_memory(request.gpu_mem or 0).lower()}"
    if python:
        parts.append(Path(python).resolve().parent.parent.name.lower())
    return "-".join(parts)


#: what Jupyter takes as a kernelspec's name (and its folder's): no path, no shell syntax
_NAME_RE = re.compile(r"^[a-z0-9._\-]{1,200}$", re.IGNORECASE)


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise RequestError(
            f"--name {name!r} is not a kernelspec name: use letters, digits, '.', '_' and '-'"
        )
    return name


def install(args: argparse.Namespace, manager: KernelSpecManager) -> str:
    request = request_from_args(args)
    python = check_python(args.python) if args.python else None
    name = check_name(args.name or default_name(request, python))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "kernel.json").write_text(
            json.dumps(kernelspec(request, python, name), indent=1)
        )
        if LOGO.exists():
            (Path(folder) / LOGO.name).write_bytes(LOGO.read_bytes())
        where = manager.install_kernel_spec(
            folder, name, user=args.user, prefix=None if args.user else sys.prefix
        )
    return f"installed {name} ({display_name(request, python)}) in {where}"


def ours(manager: KernelSpecManager) -> dict[str, dict[str, Any]]:
    """The installed kernelspecs that are Remote GPU kernels."""
    found = {}
    for name, entry in manager.get_all_specs().items():
        spec = entry["spec"]
        provisioner = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
        if provisioner.get("provisioner_name") == PROVISIONER:
            found[name] = entry
    return found


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    manager = KernelSpecManager()
    try:
        if args.command == "install":
            print(install(args, manager))
        elif args.command == "list":
            for name, entry in sorted(ours(manager).items()):
                print(f"{name:<32} {entry['spec']['display_name']:<40} {entry['resource_dir']}")
        else:
            if args.name not in ours(manager):
                raise RequestError(f"no Remote GPU kernelspec {args.name!r}: see 'list'")
            manager.remove_kernel_spec(args.name)
            print(f"removed {args.name}")
    except (HwschedError, NoSuchKernel, OSError) as exc:
        print(f"hwsched kernelspec: error: {exc}", file=sys.stderr)
        return 2
    return 0
