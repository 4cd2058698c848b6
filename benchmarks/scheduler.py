"""Scheduler speed: allocate+release over HTTP, and one placement decision at scale.

Every figure is printed beside a baseline measured in the same run (interleaved with it, so
drift of a shared machine hits both alike), and as a ratio against it.

1. **Allocate+release cycles per second over HTTP, durable SQLite state.** The real scheduler
   (``hwsched scheduler``) runs as a separate process on 127.0.0.1 with its state in a SQLite
   file in a temporary directory, pinned to one CPU core with ``sched_setaffinity`` where the
   platform has it (the client threads are pinned to the other cores, when there are any).
   One node with 8 simulated A100 GPUs is registered. A cycle is ``POST /api/sessions`` for one
   GPU (answered 201, ``placed``) then ``DELETE /api/sessions/{id}``: two requests, three
   SQLite writes, two scheduling passes. Clients are threads of this process, each with its
   own keep-alive ``http.client.HTTPConnection``; the run is repeated with 1 and with 4
   clients. Baseline: the same round trips to ``GET /api/nodes`` of the same server (token
   check, tornado, HTTP, a small JSON answer), the cost of the service without the scheduler's
   work. *ratio* is the cycle's time per request over the baseline's time per request (both
   from throughput: elapsed time / requests). *sched CPU* is the scheduler process's CPU time
   over the wall time: about 100% means the one core is the limit, not the client. The aim is
   500 cycles/s.

2. **One placement decision with 1,000 nodes of 8 GPUs and 10,000 queued requests**, in
   process (``Scheduler`` on an in-memory ``Store``, a simulated clock). Nodes have A100-80GB,
   H100-80GB or L40S (48 GB) GPUs; almost every GPU is held by placed sessions of 1, 2, 4 or 8
   GPUs, and the queue holds requests of 1, 2, 4 or 8 GPUs, some with a GPU type or
   alternatives (``A100|H100``), a memory floor, a time limit or a priority, from 200 users.
   The state is written to the store directly and loaded by a new ``Scheduler`` (which runs one
   full pass): 10,000 ``submit`` calls, each re-planning, would take far longer.

   * *placement decision*: ``scheduler.placement.choose(request, scheduler.node_views())`` for
     requests drawn from the queue, after ending a few sessions (without re-planning) so that
     some GPUs are free. The aim is a p99 of at most 5 ms.
   * *full pass*: ``scheduler.schedule()`` after ``end()`` of one random session freed its GPUs
     (``end()`` runs with the re-plan switched off, then the re-plan is timed alone): what the
     scheduler does on each event (submit, end, tick). The queue is refilled to its size
     after each pass. No aim; reported as it is.

   Baseline: the same measurements on 10 nodes with 100 queued requests, interleaved, with
   the same sample counts. Percentiles are nearest-rank; with fewer than 100 samples the p99
   is the maximum.

Run: ``python benchmarks/scheduler.py`` (about 1-2 minutes on 2 cores; ``--help`` for options;
``--profile`` adds a cProfile of one full pass at scale). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import http.client
import io
import json
import math
import os
import pstats
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.model import Node, Session
from jupyter_hwsched.scheduler.store import Store

GIB = 1024**3
GPUS_PER_NODE = 8
READY = "HWSCHED_SCHEDULER_READY"
NODE_BODY = json.dumps(
    {
        "url": "http://127.0.0.1:1",
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
DECISION_AIM_MS = 5.0  # p99 of one placement decision


# ---------------------------------------------------------------------------------------------
# helpers


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100.0 * len(ordered)) - 1)]


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned: the first to the left, the others to the right."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without an exponent."""
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def note(text: str) -> str:
    """A note under a table: indented, wrapped at 100 columns unless it is preformatted."""
    if "\n" in text:
        return textwrap.indent(text, "   ")
    return textwrap.fill(
        text, width=100, initial_indent="   ", subsequent_indent="     ", break_on_hyphens=False
    )


def ratio(value: float, base: float) -> str:
    return f"{value / base:,.2f}x" if base > 0 else "-"


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


# ---------------------------------------------------------------------------------------------
# 1. allocate+release over HTTP


@contextlib.contextmanager
def scheduler_process(
    workdir: Path, token: str, cpus: set[int] | None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start ``hwsched scheduler`` on 127.0.0.1; yield it and its port; always stop it."""
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
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

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


def http_benchmark(args: argparse.Namespace, workdir: Path) -> tuple[str, list[str]]:
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
    with scheduler_process(workdir, token, server_cpus) as (proc, port):
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


# ---------------------------------------------------------------------------------------------
# 2. placement at scale, in process


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MODELS = (("A100-80GB", 80 * GIB), ("A100-80GB", 80 * GIB), ("H100-80GB", 80 * GIB))
MODELS += (("L40S", 48 * GIB),)


def node_gpus(n: int) -> list[dict[str, Any]]:
    model, memory = MODELS[n % len(MODELS)]
    return [
        {"index": i, "uuid": f"n{n}-g{i}", "model": model, "memory": memory, "simulated": True}
        for i in range(GPUS_PER_NODE)
    ]


def random_request(rng: random.Random) -> HardwareRequest:
    gpus = rng.choices((1, 2, 4, 8), weights=(50, 25, 15, 10))[0]
    gpu_type = rng.choices((None, "A100", "H100", "A100|H100", "L40S"), (55, 15, 10, 15, 5))[0]
    gpu_mem = 60 * GIB if gpu_type is None and rng.random() < 0.1 else None
    timeout = rng.choice((None, None, 600.0, 3600.0, 4 * 3600.0))
    priority = 10 if rng.random() < 0.05 else 0
    return HardwareRequest(
        gpus=gpus, gpu_type=gpu_type, gpu_mem=gpu_mem, timeout=timeout, priority=priority
    )


@contextlib.contextmanager
def replanning_off(scheduler: Scheduler) -> Iterator[None]:
    """``submit`` and ``end`` without their full re-plan."""
    scheduler.schedule = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del scheduler.schedule


@dataclass
class Pool:
    """One scheduler state and the samples measured on it."""

    nodes: int
    queued: int
    scheduler: Scheduler
    clock: Clock
    rng: random.Random
    build_seconds: float
    decisions: list[float]
    passes: list[float]
    typed: list[bool] = field(default_factory=list)  # per decision: did it name a GPU type
    found: int = 0
    free_gpus: int = 0
    views_ms: float = 0.0
    catch_up_ms: float = 0.0

    def queued_now(self) -> list[Session]:
        return [s for s in self.scheduler.live.values() if s.state == "queued"]

    def refill(self) -> None:
        """Submit random requests until the queue has its size again (no re-plan)."""
        missing = self.queued - len(self.queued_now())
        with replanning_off(self.scheduler):
            for _ in range(missing):
                user = f"user{self.rng.randrange(200)}"
                self.scheduler.submit(random_request(self.rng), user=user, host="h")

    def end_random(self, count: int) -> None:
        """End ``count`` random holding sessions without re-planning."""
        holding = [s.id for s in self.scheduler.live.values() if s.holding]
        with replanning_off(self.scheduler):
            for sid in self.rng.sample(holding, min(count, len(holding))):
                self.scheduler.end(sid, "benchmark")


def build_pool(nodes: int, queued: int, seed: int) -> Pool:
    """Nodes almost full of placed sessions and ``queued`` waiting requests, loaded from the
    store by a new Scheduler (whose constructor runs one full pass)."""
    rng = random.Random(seed)
    clock = Clock(1_000_000.0)
    now = clock.now
    start = time.perf_counter()
    store = Store(":memory:")
    seq = 0

    def session(request: HardwareRequest, **kw: Any) -> Session:
        nonlocal seq
        seq += 1
        return Session(
            id=f"{seq:016x}",
            seq=0,
            user=f"user{rng.randrange(200)}",
            group="",
            host="h",
            request=request,
            lease_expires=now + 1e9,
            **kw,
        )

    for n in range(nodes):
        name = f"node-{n:04d}"
        gpus = node_gpus(n)
        info = {"share": True, "labels": []}
        url = "http://127.0.0.1:1"
        store.save_node(Node(name, url, gpus, info, registered=now, last_seen=now))
        free = list(range(GPUS_PER_NODE))
        while free and rng.random() > 0.03:  # about 3% of the GPUs stay free
            size = rng.choice([k for k in (1, 2, 4, 8) if k <= len(free)])
            ids, free = free[:size], free[size:]
            placed = now - rng.uniform(60, 3 * 3600)
            timeout = rng.choice((None, 3600.0 * 4, 3600.0 * 8, 3600.0 * 24))
            store.add_session(
                session(
                    HardwareRequest(gpus=size, timeout=timeout),
                    state="running",
                    created=placed - rng.uniform(0, 600),
                    node=name,
                    gpu_ids=ids,
                    placed=placed,
                    started=placed + 5,
                )
            )
    for _ in range(queued):
        store.add_session(
            session(random_request(rng), state="queued", created=now - rng.uniform(0, 3600))
        )
    scheduler = Scheduler(store, clock=clock, lease_seconds=1e9, node_timeout=1e9)
    pool = Pool(
        nodes, queued, scheduler, clock, rng, time.perf_counter() - start, decisions=[], passes=[]
    )
    pool.refill()  # the constructor's pass placed some of the queue
    return pool


def measure_decisions(pool: Pool, count: int) -> None:
    s = pool.scheduler
    requests = [x.request for x in pool.queued_now()]
    t0 = time.perf_counter()
    views = s.node_views()
    pool.views_ms = 1000 * (time.perf_counter() - t0)
    pool.free_gpus = sum(len(v.free) for v in views)
    for _ in range(count):
        request = pool.rng.choice(requests)
        t0 = time.perf_counter()
        choice = s.placement.choose(request, views)
        pool.decisions.append(1000 * (time.perf_counter() - t0))
        pool.typed.append(request.gpu_type is not None)
        pool.found += choice is not None


def measure_pass(pool: Pool) -> None:
    pool.clock.now += 1.0
    pool.end_random(1)
    t0 = time.perf_counter()
    pool.scheduler.schedule()
    pool.passes.append(1000 * (time.perf_counter() - t0))
    pool.refill()


def placement_benchmark(args: argparse.Namespace) -> tuple[str, list[str]]:
    base = build_pool(10, 100, args.seed)
    big = build_pool(args.nodes, args.queued, args.seed)
    pools = (base, big)
    # free some GPUs for the decisions to find (about 5% of the sessions), without re-planning
    for pool in pools:
        pool.end_random(max(1, pool.nodes // 20))
    rounds = 5
    for r in range(rounds):
        for pool in pools if r % 2 == 0 else pools[::-1]:
            measure_decisions(pool, args.decisions // rounds)
    # place what the freed GPUs allow (timed, reported, not counted), then one event at a time
    for pool in pools:
        t0 = time.perf_counter()
        pool.scheduler.schedule()
        pool.catch_up_ms = 1000 * (time.perf_counter() - t0)
        pool.refill()
    for r in range(args.passes):
        for pool in pools if r % 2 == 0 else pools[::-1]:
            measure_pass(pool)

    def row(
        case: str, pool: Pool, samples: list[float], aim: str, of: list[float] | None
    ) -> list[str]:
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        return [
            case,
            str(pool.nodes),
            str(pool.queued),
            str(len(samples)),
            fmt(p50),
            fmt(p99),
            ratio(p50, percentile(of, 50)) if of else "-",
            ratio(p99, percentile(of, 99)) if of else "-",
            aim,
        ]

    p99 = percentile(big.decisions, 99)
    aim = f"p99 <= {DECISION_AIM_MS:g} ms: " + ("yes" if p99 <= DECISION_AIM_MS else "NO")
    rows = [
        row("baseline: placement decision", base, base.decisions, "-", None),
        row("placement decision: choose()", big, big.decisions, aim, base.decisions),
        row("baseline: full pass", base, base.passes, "-", None),
        row("full pass: schedule() after end()", big, big.passes, "(none)", base.passes),
    ]
    headers = ["case", "nodes", "queued", "samples", "p50 ms", "p99 ms", "ratio p50"]
    headers += ["ratio p99", "aim"]
    notes = [f"placement policy: {type(big.scheduler.placement).__name__}"]
    for pool in pools:
        notes.append(
            f"{pool.nodes} nodes / {pool.queued} queued: state built and loaded in "
            f"{pool.build_seconds:.1f} s; at the decisions {pool.free_gpus} of "
            f"{pool.nodes * GPUS_PER_NODE} GPUs were free and {pool.found} of "
            f"{len(pool.decisions)} decisions found a node; node_views() took "
            f"{fmt(pool.views_ms)} ms (once per pass); the catch-up pass after the decisions "
            f"took {fmt(pool.catch_up_ms)} ms (not counted)"
        )
    for pool in pools:
        kinds = []
        for typed, label in ((True, "with a GPU type"), (False, "without")):
            ms = [t for t, k in zip(pool.decisions, pool.typed, strict=True) if k is typed]
            kinds.append(
                f"{label} ({len(ms)}): p50 {fmt(percentile(ms, 50))}, "
                f"p99 {fmt(percentile(ms, 99))} ms"
            )
        notes.append(f"decisions on {pool.nodes} nodes by request: " + "; ".join(kinds))
    if args.profile:
        profiler = cProfile.Profile()
        big.end_random(1)
        profiler.enable()
        big.scheduler.schedule()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(20)
        notes.append(
            "cProfile of one full pass at scale (cumulative):\n" + text.getvalue().rstrip()
        )
    return table(headers, rows), notes


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="HTTP: seconds per case and client count"
    )
    parser.add_argument("--rounds", type=int, default=3, help="HTTP: interleaved rounds")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1, 4],
        help="HTTP: concurrent client counts, comma separated (default 1,4)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="HTTP: warm-up cycles")
    parser.add_argument("--nodes", type=int, default=1000, help="placement: nodes of 8 GPUs")
    parser.add_argument("--queued", type=int, default=10000, help="placement: queued requests")
    parser.add_argument("--decisions", type=int, default=500, help="placement: decisions timed")
    parser.add_argument("--passes", type=int, default=5, help="placement: full passes timed")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic state")
    parser.add_argument("--profile", action="store_true", help="cProfile one full pass at scale")
    parser.add_argument("--skip-http", action="store_true", help="only the placement part")
    parser.add_argument("--skip-placement", action="store_true", help="only the HTTP part")
    args = parser.parse_args()

    # SIGTERM ends the run through the finally blocks: the scheduler is stopped, files removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"scheduler benchmark: Python {sys.version.split()[0]}, {cpus} CPU(s)\n")
    if not args.skip_http:
        workdir = Path(tempfile.mkdtemp(prefix="hwsched-scheduler-bench-"))
        try:
            report, notes = http_benchmark(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            "1. allocate+release over HTTP, SQLite state, one scheduler process; "
            f"{args.seconds:g} s per row in {args.rounds} interleaved rounds"
        )
        print(report)
        notes.append(
            "ms/request = elapsed / requests (from throughput, not latency); ratio = the "
            "cycle's ms/request / the baseline's; ratio rounds: the same per round; sched CPU = "
            "scheduler process CPU time / wall time"
        )
        for text in notes:
            print(note(text))
        print()
    if not args.skip_placement:
        report, notes = placement_benchmark(args)
        print(
            "2. placement in process; baseline 10 nodes / 100 queued; "
            "decisions and passes interleaved with the baseline's"
        )
        print(report)
        for text in notes:
            print(note(text))
        print()
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
