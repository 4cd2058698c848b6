"""One placement decision, and one full scheduling pass, at scale: in process, on 1,000 nodes
and 10,000 queued requests by default, beside a baseline of 10 nodes and 100 requests.

Measurement 2 of ``scheduler.py``, which runs it and describes it in full.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from report import fmt, percentile, ratio, table

from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.model import Node, Session
from jupyter_hwsched.scheduler.store import Store

GIB = 1024**3
GPUS_PER_NODE = 8
DECISION_AIM_MS = 5.0  # p99 of one placement decision


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
