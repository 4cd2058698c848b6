"""A private Slurm on this machine: for ``hwsched up --placement slurm`` and the tests.

It never writes ``/etc/slurm`` or ``/etc/munge``: everything (configuration, MUNGE key and
socket, state, logs, stand-in GPU device files, the accounting database) lives in one
directory, and every command reaches this Slurm through ``SLURM_CONF`` pointing there. Its
daemons are this process's children, on free loopback ports, and stop with it.

Slurm registers a GPU only through a device file (``gres.conf`` ``File=``); a simulated GPU
gets a stand-in made with ``/dev/null``'s numbers (``mknod c 1 3``), so that Slurm's GRES
indices are exactly the node agent's GPU indices, simulated or real.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_hwsched.protocol.records import GpuRecord
from jupyter_hwsched.scheduler.slurm.commands import SlurmCommands, SlurmError

#: every daemon a local Slurm may run, and its Debian package
PROGRAMS = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "slurmdbd": "slurmdbd",
    "mariadbd": "mariadb-server",
}
#: more CPUs than the machine has, so that sessions are limited by GPUs, not by cores
CPUS = 64


def gres_type(gpu: GpuRecord) -> str:
    """The GRES type of a GPU: its model's family, lower case (``A100-80GB`` -> ``a100``)."""
    return gpu.model.split("-")[0].lower() or "gpu"


def missing_programs(accounting: bool) -> list[str]:
    wanted = [p for p in PROGRAMS if accounting or p not in ("slurmdbd", "mariadbd")]
    return [f"{p} (Debian: {PROGRAMS[p]})" for p in wanted if shutil.which(p) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalNode:
    name: str  # the node agent's name, and Slurm's
    gpus: list[GpuRecord]


class LocalSlurm:
    """munged, slurmctld and slurmd (and, with ``accounting``, MariaDB and slurmdbd) in a
    private directory; ``start()``, then ``conf`` is the ``SLURM_CONF`` to use."""

    def __init__(self, directory: Path, nodes: list[LocalNode], accounting: bool = False) -> None:
        self.dir = directory
        self.nodes = nodes
        self.accounting = accounting
        self.conf = str(directory / "slurm.conf")
        # munged wants every directory above its socket open to all (a home may not be), and
        # a socket path is short: the sockets live in /run, one directory per local Slurm
        tag = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
        self.run_dir = Path("/run/hwsched-slurm") / tag
        self.munge_socket = self.run_dir / "munge.sock"
        self.commands = SlurmCommands(self.conf, timeout=15)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    # configuration

    def _paths(self) -> None:
        for sub in ("state", "spool", "log", "run", "dev", "db"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.run_dir.parent, self.run_dir):
            os.chmod(path, 0o755)  # munged: every user's clients must reach its socket
        os.chmod(self.dir / "db", 0o700)

    def _device_files(self, node: LocalNode) -> list[str]:
        """One device file per GPU, in index order: a real GPU's own, else a stand-in."""
        files = []
        for gpu in node.gpus:
            if not gpu.simulated:
                files.append(f"/dev/nvidia{gpu.index if gpu.minor is None else gpu.minor}")
                continue
            path = self.dir / "dev" / f"{node.name}-nvidia{gpu.index}"
            if not path.exists():
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            files.append(str(path))
        return files

    def write_config(self) -> None:
        self._paths()
        d = self.dir
        auth = f"socket={self.munge_socket}"
        lines = [
            "# written by jupyter-hwsched for a private one-machine Slurm; not /etc/slurm",
            "ClusterName=hwsched",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo={auth}",
            "CredType=cred/munge",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}/%n",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            # start a batch job at the next pass, not up to 3 s later; estimate starts every second
            "SchedulerParameters=batch_sched_delay=0,bf_interval=1",
            "SlurmdParameters=config_overrides",
            "GresTypes=gpu",
            # a node an operator sets down stays down; one that stopped answering comes back
            "ReturnToService=1",
            "MinJobAge=300",
            "KillWait=5",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.dbd_port}",
                # with slurmdbd, this names the MUNGE socket for it (its own, not the default)
                f"AccountingStoragePass={self.munge_socket}",
                "AccountingStorageTRES=gres/gpu",
                "JobAcctGatherType=jobacct_gather/none",
            ]
        gres = ["AutoDetect=off"]
        memory = max(1024, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 20)
        for node in self.nodes:
            types: dict[str, int] = {}
            for gpu in node.gpus:
                types[gres_type(gpu)] = types.get(gres_type(gpu), 0) + 1
            features = sorted({f"gpumem{round(g.memory / 1024**3)}g" for g in node.gpus})
            lines.append(
                f"NodeName={node.name} NodeHostname=localhost NodeAddr=127.0.0.1 "
                f"Port={free_port()} CPUs={CPUS} RealMemory={memory} "
                f"Gres={','.join(f'gpu:{t}:{n}' for t, n in types.items())} "
                f"Features={','.join(features)} State=UNKNOWN"
            )
            for gpu, path in zip(node.gpus, self._device_files(node), strict=True):
                gres.append(f"NodeName={node.name} Name=gpu Type={gres_type(gpu)} File={path}")
        names = ",".join(n.name for n in self.nodes)
        lines.append(f"PartitionName=gpu Nodes={names} Default=YES MaxTime=INFINITE State=UP")
        (d / "slurm.conf").write_text("\n".join(lines) + "\n")
        (d / "gres.conf").write_text("\n".join(gres) + "\n")
        (d / "cgroup.conf").write_text("# task/none and proctrack/linuxproc: no cgroups\n")
        if self.accounting:
            dbd = d / "slurmdbd.conf"
            dbd.write_text(
                "\n".join(
                    [
                        f"AuthType=auth/munge\nAuthInfo={auth}",
                        "DbdHost=localhost",
                        "DbdAddr=127.0.0.1",
                        f"DbdPort={self.dbd_port}",
                        "SlurmUser=root",
                        f"PidFile={d / 'run' / 'slurmdbd.pid'}",
                        f"LogFile={d / 'log' / 'slurmdbd.log'}",
                        "StorageType=accounting_storage/mysql",
                        "StorageHost=127.0.0.1",
                        f"StoragePort={self.db_port}",
                        "StorageUser=slurm",
                        f"StoragePass={self.db_password}",
                        "StorageLoc=slurm_acct_db",
                    ]
                )
                + "\n"
            )
            os.chmod(dbd, 0o600)  # slurmdbd refuses a readable one: it holds a password

    # daemons

    def start(self, timeout: float = 90.0) -> None:
        missing = missing_programs(self.accounting)
        if missing:
            raise SlurmError(f"a local Slurm needs {', '.join(missing)}")
        if os.geteuid() != 0:
            raise SlurmError("a local Slurm runs its daemons as root: run this as root")
        self.dbd_port, self.db_port = free_port(), free_port()
        self.db_password = secrets.token_hex(12)
        try:
            self.write_config()
            self._munged()
            if self.accounting:
                self._database(timeout)
                self._spawn("slurmdbd", ["slurmdbd", "-D"])
                self._wait("slurmdbd", timeout, self._dbd_up)
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._wait("slurmctld", timeout, self.commands.ping)
            for node in self.nodes:
                self._spawn(f"slurmd {node.name}", ["slurmd", "-D", "-N", node.name])
            self._wait("slurmd", timeout, self._nodes_idle)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name.replace(' ', '-')}.out", "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                argv,
                env=self.commands.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))

    def _wait(self, name: str, timeout: float, ready: object) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for what, proc in self.procs:
                if proc.poll() is not None:
                    raise SlurmError(
                        f"{what} exited ({proc.returncode}) while starting; see "
                        f"{self.dir / 'log'}: {self._tail(what)}"
                    )
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise SlurmError(f"{name} did not become ready in {timeout:g} s; see {self.dir / 'log'}")

    def _tail(self, what: str) -> str:
        names = [f"{what.split()[0]}.log", f"{what.replace(' ', '-')}.out"]
        for name in names:
            path = self.dir / "log" / name
            if path.exists():
                lines = path.read_text(errors="replace").strip().splitlines()
                if lines:
                    return lines[-1]
        return ""

    def _munged(self) -> None:
        key = self.dir / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        os.chmod(key, 0o600)
        run = self.dir / "run"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={run / 'munged.pid'}",
                f"--seed-file={run / 'munged.seed'}",
                f"--log-file={self.dir / 'log' / 'munged.log'}",
                "--origin=127.0.0.1",
            ],
        )
        self._wait("munged", 30, self.munge_socket.exists)

    def _database(self, timeout: float) -> None:
        """A private MariaDB on a loopback port, with a user for slurmdbd."""
        data, sock = self.dir / "db" / "data", self.dir / "run" / "mysqld.sock"
        if not data.exists():
            subprocess.run(
                [
                    "mariadb-install-db",
                    f"--datadir={data}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                check=True,
                capture_output=True,
            )
        self._spawn(
            "mariadbd",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.dir / 'run' / 'mysqld.pid'}",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
                "--skip-log-bin",
            ],
        )
        self._wait("mariadbd", timeout, sock.exists)
        grant = (
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}';"
            f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        self._sql(sock, grant, timeout)

    def _sql(self, sock: Path, sql: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"MariaDB did not take slurmdbd's user: {done.stderr.strip()}")
            time.sleep(0.3)

    def _dbd_up(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.dbd_port)) == 0

    def _nodes_idle(self) -> bool:
        try:
            nodes = self.commands.nodes()
        except SlurmError:
            return False
        wanted = {n.name for n in self.nodes}
        return wanted <= set(nodes) and all(
            nodes[n].state.startswith(("idle", "mixed", "alloc")) for n in wanted
        )

    def stop(self) -> None:
        """Cancel what still runs, then stop the daemons, last started first. A job's
        ``slurmstepd`` outlives ``slurmd``, so whatever of this Slurm is left is killed too."""
        if self.procs:
            with contextlib.suppress(SlurmError):
                self.commands.run(["scancel", "--partition=gpu"], ok_codes=(0, 1))
                deadline = time.monotonic() + 15
                while self.commands.run(["squeue", "--noheader"]).strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []
        for pid in self._our_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _our_processes(self) -> list[int]:
        """What this Slurm's jobs left: a ``slurmstepd`` started by its slurmd, and the job's
        processes (each has this SLURM_CONF and a SLURM_JOB_ID in its environment)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                with open(f"/proc/{entry}/comm", "rb") as f:
                    name = f.read().strip()
            except OSError:
                continue
            in_job = name == b"slurmstepd" or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)
            if mark in environ and in_job:
                found.append(int(entry))
        return found
