"""``hwsched up``: a one-machine pool (scheduler, node agent, share agent), optionally with
JupyterLab, each part its own process, on embedded defaults.

It writes the discovery file that lets ``hwrun``, ``%%hwrun`` and ``hwsched status`` run by the
same user find the pool with no settings, and stops every part when it is stopped itself.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

from jupyter_hwsched.agent.gpus import discover, parse_simulated
from jupyter_hwsched.developer.discovery import remove_discovery, write_discovery
from jupyter_hwsched.protocol.pki import init_ca, issue
from jupyter_hwsched.protocol.settings import DEFAULT_SCHEDULER_PORT
from jupyter_hwsched.scheduler.slurm.commands import SlurmCommands, SlurmError
from jupyter_hwsched.scheduler.slurm.local import LocalNode, LocalSlurm, missing_programs

DEFAULT_SIMULATED = "2xA100-80GB"
RUNNERS = {
    "docker": [],
    "host": [
        "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner",
        "--HostRunner.single_user=True",  # the one developer is the machine's own
    ],
    "bwrap": ["--AgentApp.runner_class=jupyter_hwsched.agent.bwrap_runner.BwrapRunner"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A part of the pool running as its own process; its output is echoed with a prefix."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: str | None) -> None:
        self.name = name
        self.ready_marker = ready
        self.ready_line: str | None = None
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if self.ready_marker and line.startswith(self.ready_marker):
                self.ready_line = line
                self.ready.set()
            print(f"[{self.name}] {line}", flush=True)
        self.ready.set()

    def wait_ready(self, timeout: float) -> str:
        if not self.ready.wait(timeout) or self.ready_line is None:
            raise RuntimeError(f"{self.name} did not start (exit status {self.proc.poll()})")
        return self.ready_line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_certificates(directory: Path, node_name: str) -> dict[str, Any]:
    """The one-machine pool's own CA, and certificates for its scheduler and node on
    127.0.0.1 (made anew at each start; the CA is kept, so clients may keep trusting it)."""
    ca = init_ca(directory)
    issued = directory / "issued"
    loopback = ("127.0.0.1", "localhost")
    return {
        "ca": ca.cert,
        "scheduler": issue(directory, "scheduler", "scheduler", issued, loopback),
        "node": issue(directory, node_name, "node", issued, loopback),
        "machine": issue(directory, socket.gethostname(), "machine", issued / "machine"),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsched up", description=__doc__)
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_SCHEDULER_PORT,
        help=f"scheduler port (default {DEFAULT_SCHEDULER_PORT})",
    )
    p.add_argument("--agent-port", type=int, default=8766, help="node agent port (default 8766)")
    p.add_argument(
        "--simulate-gpus", default="", help=f"force simulated GPUs, e.g. {DEFAULT_SIMULATED}"
    )
    p.add_argument("--lease", type=float, default=30.0, help="session lease in seconds")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name in the pool")
    p.add_argument("--share-root", default="/", help="directory exported as the container root")
    p.add_argument(
        "--runner",
        choices=sorted(RUNNERS),
        default="docker",
        help="run work in a container rooted at the share (docker, the default), in a "
        "bubblewrap sandbox rooted at the share (bwrap: for nodes without a container engine), "
        "or as plain processes on this machine (host: for a machine without either, such as a "
        "binder; the environment is this machine's own, so nothing is lost)",
    )
    p.add_argument(
        "--placement",
        choices=("builtin", "slurm"),
        default="builtin",
        help="who places sessions: the pool's own scheduler (builtin, the default) or Slurm "
        "(slurm: the Slurm that SLURM_CONF or /etc/slurm names, if it answers; else a private "
        "one-machine Slurm started here, never writing /etc/slurm)",
    )
    p.add_argument("--lab", action="store_true", help="also run JupyterLab")
    p.add_argument("--lab-port", type=int, default=8888, help="JupyterLab port (default 8888)")
    return p


def up(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    token = os.environ.get("HWSCHED_TOKEN") or secrets.token_hex(16)
    url = f"https://127.0.0.1:{args.port}"
    share_socket = str(Path(jupyter_runtime_dir()) / "hwsched-share.sock")
    tls = make_certificates(Path(jupyter_data_dir()) / "hwsched" / "pki", args.node_name)
    # the pool token is the operator's: the scheduler and the node agent know it; clients,
    # JupyterLab among them, prove who they are with credentials the share agent signs
    env = {k: v for k, v in os.environ.items() if k != "HWSCHED_TOKEN"}
    env.update(HWSCHED_URL=url, HWSCHED_SHARE_SOCKET=share_socket, HWSCHED_CA=str(tls["ca"]))
    operator_env = dict(env, HWSCHED_TOKEN=token)
    me = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]
    db = Path(jupyter_data_dir()) / "hwsched" / "up.sqlite"
    children: list[Child] = []
    slurm: LocalSlurm | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        placement: list[str] = []
        if args.placement == "slurm":
            conf, slurm = slurm_for(args)
            placement = ["--Scheduler.backend=slurm", f"--SlurmBackend.slurm_conf={conf}"]
        children.append(
            Child(
                "scheduler",
                [
                    *me,
                    "scheduler",
                    f"--port={args.port}",
                    f"--db={db}",
                    f"--lease={args.lease}",
                    f"--certfile={tls['scheduler'].cert}",
                    f"--keyfile={tls['scheduler'].key}",
                    f"--ca-file={tls['ca']}",
                    *placement,
                ],
                operator_env,
                "HWSCHED_SCHEDULER_READY",
            )
        )
        children[-1].wait_ready(60)
        gpus = (
            [f"--simulate-gpus={args.simulate_gpus}"]
            if args.simulate_gpus
            else [f"--AgentApp.simulate_if_no_gpu={DEFAULT_SIMULATED}"]
        )
        children.append(
            Child(
                "agent",
                [
                    *me,
                    "agent",
                    "--ip=127.0.0.1",
                    f"--port={args.agent_port}",
                    f"--node-name={args.node_name}",
                    f"--scheduler-url={url}",
                    f"--ServerApp.certfile={tls['node'].cert}",
                    f"--ServerApp.keyfile={tls['node'].key}",
                    "--AgentApp.allow_root=True",  # one machine: the developer may be root
                    # a second's heartbeat: the GPU cluster sidebar shows live use
                    "--AgentApp.heartbeat_interval=1.0",
                    *gpus,
                    *RUNNERS[args.runner],
                ],
                operator_env,
                "HWSCHED_AGENT_READY",
            )
        )
        agent_line = children[-1].wait_ready(120)
        children.append(
            Child(
                "share",
                [
                    *me,
                    "share",
                    f"--socket={share_socket}",
                    f"--scheduler-url={url}",
                    f"--root={args.share_root}",
                    f"--ShareAgentApp.machine_cert={tls['machine'].cert}",
                    f"--ShareAgentApp.machine_key={tls['machine'].key}",
                ],
                env,
                "HWSCHED_SHARE_READY",
            )
        )
        children[-1].wait_ready(60)
        write_discovery(
            {
                "url": url,
                "share_socket": share_socket,
                "ca_file": str(tls["ca"]),
                "pid": os.getpid(),
            }
        )
        lab_url = ""
        if args.lab:
            lab_token = secrets.token_hex(16)
            lab = [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={args.lab_port}",
                f"--IdentityProvider.token={lab_token}",
                # no calls out of the machine for update checks
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ]
            if os.geteuid() == 0:
                lab.append("--allow-root")
            children.append(Child("lab", lab, env, None))
            lab_url = f"http://127.0.0.1:{args.lab_port}/lab?token={lab_token}"
        simulated = "simulated" in agent_line
        print(
            "\n".join(
                [
                    "",
                    "hwsched pool is up on this machine.",
                    f"  scheduler   {url}",
                    f"  node        {agent_line.split(' ', 2)[2]}"
                    + ("  <- SIMULATED GPUs: NVML found no GPU here" if simulated else ""),
                    f"  share       {share_socket}",
                    *(
                        [f"  placement   Slurm: export SLURM_CONF={conf} for squeue, sacct"]
                        if placement
                        else []
                    ),
                    *([f"  JupyterLab  {lab_url}"] if lab_url else []),
                    "Try: hwrun --gpu 1 -- sh -c 'hostname; echo GPUs $CUDA_VISIBLE_DEVICES'",
                    "     in a notebook: %load_ext jupyter_hwsched, then %%hwrun --gpu 1",
                    "Stop with Ctrl-C.",
                    "",
                ]
            ),
            flush=True,
        )
        while not stop.is_set():
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                print(f"hwsched up: {dead[0].name} exited; stopping the pool", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except (RuntimeError, SlurmError) as exc:
        print(f"hwsched up: error: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_discovery()
        for child in reversed(children):
            child.stop()
        if slurm is not None:
            slurm.stop()


def slurm_for(args: argparse.Namespace) -> tuple[str, LocalSlurm | None]:
    """The Slurm to place sessions with: one that already answers (this node must be one of
    its nodes), else a private one started here for this machine's GPUs."""
    existing = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    # only with a configuration file: without one Slurm's clients look for it in DNS
    if os.path.exists(existing) and SlurmCommands(existing, timeout=10).ping():
        print(f"hwsched up: placing with the running Slurm (SLURM_CONF={existing})", flush=True)
        return existing, None
    if args.simulate_gpus:
        gpus = parse_simulated(args.simulate_gpus, args.node_name)
    else:
        inventory = discover("", args.node_name, DEFAULT_SIMULATED)
        gpus = inventory.gpus()
        inventory.close()
    accounting = not missing_programs(accounting=True)
    local = LocalSlurm(
        Path(jupyter_data_dir()) / "hwsched" / "slurm",
        [LocalNode(args.node_name, gpus)],
        accounting,
    )
    print(
        "hwsched up: starting a private Slurm (munged, slurmctld, slurmd"
        + (", slurmdbd over MariaDB" if accounting else "; no accounting: slurmdbd is missing")
        + f") in {local.dir}",
        flush=True,
    )
    local.start()
    return local.conf, local
