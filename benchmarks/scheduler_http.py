"""Allocate+release cycles over HTTP against a real ``hwsched scheduler`` process, and their
baseline (``GET /api/nodes`` of the same server). The node registers with the protocol version
in its body, and every request carries it in the ``Hwsched-Protocol`` header.

Measurement 1 of ``scheduler.py``, which runs it and describes it in full.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from report import fmt, ratio, table

from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION

GPUS_PER_NODE = 8
READY = "HWSCHED_SCHEDULER_READY"
NODE_BODY = json.dumps(
    {
        "url": "http://127.0.0.1:1",
        "protocol": PROTOCOL_VERSION,
        "gpus": [
            {
                "index": i,
                "uuid": f"u{i}",
                "model": "A100-80GB",
                "memory": 85899345920,
                "simulated": True,
            }
            for i in range(GPUS_PER_NODE)
        ],
    }
).encode()
SESSION_BODY = json.dumps({"request": {"gpus": 1}, "user": "u", "host": "h"}).encode()
HEARTBEAT_BODY = json.dumps({"sessions": [], "stats": {}}).encode()
CYCLE_AIM = 500.0  # allocate+release cycles per second


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process ``pid`` to ``cpus``."""
    task_dir = Path(f"/proc/{pid}/task")
    tids = [int(t) for t in os.listdir(task_dir)] if task_dir.is_dir() else [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(tid, cpus)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send the scheduler SIGTERM should this benchmark die without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def scheduler_process(
    workdir: Path, token: str, cpus: set[int] | None, mode: str = "full+group"
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start ``hwsched scheduler`` on 127.0.0.1 (``mode``: its SQLite ``synchronous`` setting
    and how it commits, ``group`` or ``each`` write, as in ``full+group``); yield it and its
    port; always stop it."""
    synchronous, _, commits = mode.partition("+")
    cmd = [
        sys.executable,
        "-m",
        "jupyter_hwsched.cli.hwsched",
        "scheduler",
        "--ip=127.0.0.1",
        "--port=0",  # the scheduler picks a free port and names it in its READY line
        f"--db={workdir / 'sched.sqlite'}",
        "--lease=3600",
        "--node-timeout=3600",
        f"--SchedulerApp.synchronous={synchronous}",
        f"--SchedulerApp.group_commit={commits != 'each'}",
    ]
    env = dict(os.environ, HWSCHED_TOKEN=token)
    out_path, log_path = workdir / "scheduler.out", workdir / "scheduler.log"
    with open(out_path, "wb") as out, open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            env=env,
            cwd=workdir,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            if cpus is not None:
                pin(proc.pid, cpus)
            port = wait_ready(proc, out_path, log_path)
            if cpus is not None:
                pin(proc.pid, cpus)  # threads started meanwhile, too
            yield proc, port
        finally:
            stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], out_path: Path, log_path: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in out_path.read_text(errors="replace").splitlines():
            if line.startswith(READY):
                port = urlsplit(line.split()[1]).port
                if port:
                    return port
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "is not ready"
    raise RuntimeError(f"the scheduler {state} after its start; its log ends:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """One keep-alive connection to the scheduler."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {
            "Authorization": f"token {token}",
            "Content-Type": "application/json",
            PROTOCOL_HEADER: str(PROTOCOL_VERSION),
        }

    def call(self, method: str, path: str, body: bytes | None = None, expect: int = 200) -> bytes:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != expect:
            raise RuntimeError(f"{method} {path} answered {response.status}: {payload[:300]!r}")
        return payload

    def close(self) -> None:
        self.conn.close()


def cycle(client: Client) -> int:
    """Allocate one GPU and release it: two requests."""
    session = json.loads(client.call("POST", "/api/sessions", SESSION_BODY, expect=201))
    if session.get("state") != "placed":
        raise RuntimeError(f"the session was not placed at once: {session}")
    client.call("DELETE", f"/api/sessions/{session['id']}")
    return 2


def baseline_request(client: Client) -> int:
    client.call("GET", "/api/nodes")
    return 1


@dataclass
class Throughput:
    operations: int = 0
    requests: int = 0
    elapsed: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the scheduler process

    def add(self, other: Throughput) -> None:
        self.operations += other.operations
        self.requests += other.requests
        self.elapsed += other.elapsed
        self.server_cpu += other.server_cpu

    @property
    def per_second(self) -> float:
        return self.operations / self.elapsed

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.elapsed

    @property
    def ms_per_request(self) -> float:
        return 1000.0 * self.elapsed / self.requests

    @property
    def cpu_share(self) -> float:
        return self.server_cpu / self.elapsed


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run_clients(
    port: int,
    token: str,
    clients: int,
    seconds: float,
    operation: Callable[[Client], int],
    server: psutil.Process,
) -> Throughput:
    """``clients`` threads repeat ``operation`` on their own connection for ``seconds``."""
    connections = [Client(port, token) for _ in range(clients)]
    counts = [(0, 0)] * clients
    errors: list[BaseException] = []
    clock = {"start": 0.0, "deadline": 0.0, "cpu": 0.0}

    def go() -> None:  # runs once every client is connected, before any is released
        clock["cpu"] = cpu_seconds(server)
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + seconds

    barrier = threading.Barrier(clients + 1, action=go)

    def work(i: int) -> None:
        client = connections[i]
        done = requests = 0
        try:
            client.call("GET", "/api/nodes")  # open the connection before the clock starts
            barrier.wait()
            while time.perf_counter() < clock["deadline"]:
                requests += operation(client)
                done += 1
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        counts[i] = (done, requests)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    try:
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - clock["start"]
        cpu_used = cpu_seconds(server) - clock["cpu"]
    finally:
        for client in connections:
            client.close()
    if errors:
        raise errors[0]
    return Throughput(sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed, cpu_used)


def file_system(path: Path) -> str:
    """The file system a path is on, as /proc/mounts names it (type and device)."""
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            device, point, kind = line.split()[:3]
            inside = str(path).startswith(point.rstrip("/") + "/") or str(path) == point
            if inside and len(point) >= len(best[0]):
                best = (point, kind, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def http_benchmark(args: argparse.Namespace, workdir: Path) -> tuple[str, list[str]]:
    """Each way of writing the state in turn (``args.modes``), its rows labelled with it."""
    tables, notes = [], [f"state on {file_system(workdir)}"]
    for mode in args.modes:
        report, more = http_rows(args, workdir / mode, mode)
        synchronous, _, commits = mode.partition("+")
        how = "one commit per event-loop turn" if commits != "each" else "a commit per write"
        tables.append(f"synchronous={synchronous.upper()}, {how}\n{report}")
        notes += [n for n in more if n not in notes]
    return "\n\n".join(tables), notes


def http_rows(args: argparse.Namespace, workdir: Path, mode: str) -> tuple[str, list[str]]:
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    server_cpus = {max(allowed)} if allowed else None
    client_cpus = (allowed - server_cpus) if server_cpus and len(allowed) > 1 else None
    notes = []
    if server_cpus:
        notes.append(f"scheduler pinned to CPU {min(server_cpus)} (one core)")
    else:
        notes.append("scheduler NOT pinned: this platform has no sched_setaffinity")
    if client_cpus:
        notes.append(f"clients pinned to CPU(s) {','.join(map(str, sorted(client_cpus)))}")
    rows: list[list[str]] = []
    with scheduler_process(workdir, token, server_cpus, mode) as (proc, port):
        server = psutil.Process(proc.pid)
        admin = Client(port, token)
        try:
            admin.call("PUT", "/api/nodes/node-0", NODE_BODY)
            admin.call("POST", "/api/nodes/node-0/heartbeat", HEARTBEAT_BODY)
            for _ in range(args.warmup):  # warm caches, the JIT-less interpreter, SQLite pages
                cycle(admin)
                baseline_request(admin)
        finally:
            admin.close()
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # the threads started from here inherit it
        try:
            for clients in args.clients:
                base, cyc = Throughput(), Throughput()
                rounds: list[tuple[Throughput, Throughput]] = []  # (baseline, cycle) per round
                share = args.seconds / args.rounds
                for r in range(args.rounds):
                    samples: dict[str, Throughput] = {}
                    kinds = ["baseline", "cycle"] if r % 2 == 0 else ["cycle", "baseline"]
                    for kind in kinds:
                        heartbeat = Client(port, token)
                        try:
                            heartbeat.call("POST", "/api/nodes/node-0/heartbeat", HEARTBEAT_BODY)
                        finally:
                            heartbeat.close()
                        operation = baseline_request if kind == "baseline" else cycle
                        samples[kind] = run_clients(port, token, clients, share, operation, server)
                    base.add(samples["baseline"])
                    cyc.add(samples["cycle"])
                    rounds.append((samples["baseline"], samples["cycle"]))
                base_rates = [b.requests_per_second for b, _ in rounds]
                rates = [c.per_second for _, c in rounds]
                ratios = [c.ms_per_request / b.ms_per_request for b, c in rounds]
                rows.append(
                    [
                        "baseline: GET /api/nodes",
                        str(clients),
                        "-",
                        fmt(base.requests_per_second),
                        f"{fmt(min(base_rates))}-{fmt(max(base_rates))} req/s",
                        fmt(base.ms_per_request),
                        f"{100 * base.cpu_share:.0f}%",
                        "-",
                        "-",
                        "-",
                    ]
                )
                met = "yes" if cyc.per_second >= CYCLE_AIM else "NO"
                rows.append(
                    [
                        "allocate+release: POST + DELETE",
                        str(clients),
                        fmt(cyc.per_second),
                        fmt(cyc.requests_per_second),
                        f"{fmt(min(rates))}-{fmt(max(rates))} cycles/s",
                        fmt(cyc.ms_per_request),
                        f"{100 * cyc.cpu_share:.0f}%",
                        ratio(cyc.ms_per_request, base.ms_per_request),
                        f"{min(ratios):.2f}-{max(ratios):.2f}x",
                        f"{met} ({fmt(cyc.per_second / CYCLE_AIM)}x)",
                    ]
                )
        finally:
            if allowed:
                os.sched_setaffinity(0, allowed)
    headers = [
        "case",
        "clients",
        "cycles/s",
        "requests/s",
        "rounds min-max",
        "ms/request",
        "sched CPU",
        "ratio",
        "ratio rounds",
        f"aim {CYCLE_AIM:.0f}/s",
    ]
    return table(headers, rows), notes
