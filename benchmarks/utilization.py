"""GPUs needed, GPU utilization and developers' time, for five ways of handing out GPUs.

A synthetic day of notebook activity is replayed through the real scheduler
(:class:`jupyter_hwsched.scheduler.core.Scheduler`, in-memory SQLite) and, for shared GPUs,
the real cell gate (:class:`jupyter_hwsched.agent.cellgate.CellGate`), both on a simulated
clock:

* **per developer** (the baseline): one GPU per developer, held all day; no wait by
  construction, so the pool is simply one GPU each.
* **per kernel session**: a kernel asks for a whole GPU at its first cell and holds it until
  it has been idle ``--idle-release`` s after its last cell; a later cell starts a new session
  (queued, then a cold start).
* **per run** (``%%hwrun``): every cell queues for a GPU, then pays a cold start (kernel start
  ``--start-overhead`` plus rebuilding its state), runs, and holds the GPU through
  ``--teardown``. Shown for each state-rebuild cost of ``--rebuild-sweep`` (0, 10, 30 s).
* **shared, resident all day**: each developer's kernel asks at the day's start for a share of
  a GPU (``--shared --gpu-mem``, its memory drawn below) and keeps it all day; the scheduler
  packs kernels onto GPUs by memory, and each cell waits at its GPU's gate for its turn (one
  cell at a time, time slicing after ``--slice-after`` s: cells then share the GPU's speed).
* **shared, released after idle**: the same, but the kernel asks at its first cell and gives
  its share back ``--idle-release`` s after its last cell.

Figures, for the smallest pool that meets the target (found by binary search; it assumes a
bigger pool never waits longer):

* *wait* is from a cell's request until the GPU is the cell's (placement, and for a shared GPU
  its gate); a cold start is not a wait but is counted in *lost*. The target, the same for
  every policy: p``--percentile`` (99) wait at most ``--target-wait`` (5 s), and no wait over
  ``--max-wait`` (5 min): a percentile over cells alone lets a developer whose kernel is never
  placed wait all day, since that is one cell. p95 and the maximum are printed too.
* *lost min/dev* is developer-minutes per developer per day spent waiting for a GPU or for a
  cold start (kernel start and state rebuild) before a cell could run.
* *cell/held* is cell wall time over the GPU time held (a GPU is held while any session holds
  it or a share of it); *cell/pool* is cell wall time over
  the pool's GPU time from the first request to the last release. Cell wall time is the
  trace's run time at a GPU's full speed.
* Memory: each developer's kernel peaks at a GPU memory drawn from LogNormal(median
  ``--mem-median-gb``, shape ``--mem-sigma``) capped at the GPU's 80 GB (for scale: on
  Perlmutter's 80 GB GPUs, 55 % of jobs peak at or under half the memory); a shared kernel
  asks for that, rounded up to a whole GB. Whole-GPU policies ignore it.

Trace model (every number is a flag; ``random.Random(seed)`` makes it reproducible): developers
work ``--day-hours`` hours from a uniform offset in ``[0, --start-spread-hours)``; days
alternate gaps (exponential, mean ``--gap-minutes``) and bursts of a geometric number of runs
(mean ``--burst-runs``) separated by think times (exponential, mean ``--think-seconds``, from
the end of the previous run: a wait delays the rest of the day); runs are log-normal (median
``--run-median`` s, shape ``--run-sigma``), with probability ``--long-prob`` a long one
(median ``--long-median-minutes``, shape ``--long-sigma``), capped at ``--run-cap-minutes``.

``--sweep`` repeats the comparison over variations of the trace's parameters.

The cold start and teardown figures are passed in (``--start-overhead``, ``--teardown``);
their defaults are this project's measurement on loopback (``benchmarks/first_output.py``:
a cold ``%%hwrun`` to its first output, 2.8 s) and an estimate of the teardown (container,
mount and share closed: 1 s). Run: ``python benchmarks/utilization.py [--seed 1] [--sweep]``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import report

from jupyter_hwsched.agent.cellgate import ADMITTED, Cell, CellGate
from jupyter_hwsched.protocol.request import make_request
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.store import Store

GPUS_PER_NODE = 8
GPU_GB = 80
SHARED = ("shared, resident all day", "shared, released after idle")
WHOLE = ("per kernel session", "per run")

# Events at the same instant: releases and completions first, so a GPU freed at t serves t.
_FIRST, _THEN = 0, 1


@dataclass
class Developer:
    name: str
    start: float  # seconds since the simulated day began
    thinks: list[float]  # time from the previous run's end (or the day's start) to each request
    durations: list[float]  # how long each run executes on a GPU of its own
    memory_gb: int  # the kernel's peak GPU memory


@dataclass
class Result:
    policy: str
    gpus: int
    waits: list[float]  # per cell
    lost: float  # developer-seconds waiting for a GPU or a cold start
    busy: float  # cell wall time, GPU-seconds
    held: float  # GPU-seconds held by sessions
    span: float  # first request to last release
    developers: int
    complete: bool = True  # False: stopped early once the target could no longer be met

    @property
    def pool_util(self) -> float:
        return self.busy / (self.gpus * self.span) if self.span else 0.0

    @property
    def held_util(self) -> float:
        return self.busy / self.held if self.held else 0.0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (:func:`report.percentile`); 0 for no values (no wait)."""
    return report.percentile(sorted(values), pct, empty=0.0)


def run_duration(rng: random.Random, args: argparse.Namespace) -> float:
    if rng.random() < args.long_prob:
        seconds = rng.lognormvariate(math.log(args.long_median_minutes * 60.0), args.long_sigma)
    else:
        seconds = rng.lognormvariate(math.log(args.run_median), args.run_sigma)
    return min(max(seconds, 1.0), args.run_cap_minutes * 60.0)


def make_trace(args: argparse.Namespace) -> list[Developer]:
    rng = random.Random(args.seed)
    memory_rng = random.Random(args.seed + 1)  # memory does not change the runs drawn
    day = args.day_hours * 3600.0
    developers = []
    for i in range(args.developers):
        start = rng.uniform(0.0, args.start_spread_hours * 3600.0)
        thinks: list[float] = []
        durations: list[float] = []
        t = 0.0
        left_in_burst = 0
        while True:
            if left_in_burst == 0:  # a gap, then a new burst
                think = rng.expovariate(1.0 / (args.gap_minutes * 60.0))
                left_in_burst = 1  # geometric number of runs, mean burst_runs, at least one
                while rng.random() > 1.0 / args.burst_runs:
                    left_in_burst += 1
            else:
                think = rng.expovariate(1.0 / args.think_seconds)
            duration = run_duration(rng, args)
            if t + think + duration > day:
                break
            thinks.append(think)
            durations.append(duration)
            t += think + duration
            left_in_burst -= 1
        peak = memory_rng.lognormvariate(math.log(args.mem_median_gb), args.mem_sigma)
        memory = min(GPU_GB, max(1, math.ceil(peak)))
        developers.append(Developer(f"dev-{i}", start, thinks, durations, memory))
    return [d for d in developers if d.durations]


def make_scheduler(gpus: int, clock: list[float]) -> Scheduler:
    sched = Scheduler(
        Store(":memory:"), clock=lambda: clock[0], lease_seconds=10**9, node_timeout=10**9
    )
    for node, first in enumerate(range(0, gpus, GPUS_PER_NODE)):
        count = min(GPUS_PER_NODE, gpus - first)
        sched.register_node(
            f"node-{node}",
            f"http://node-{node}",
            [
                {
                    "index": i,
                    "uuid": f"n{node}-u{i}",
                    "model": "A100-80GB",
                    "memory": GPU_GB * 1024**3,
                    "simulated": True,
                }
                for i in range(count)
            ],
        )
    return sched


@dataclass
class _Dev:
    next_run: int = 0
    session: str | None = None  # the session that holds a GPU (or a share) for it
    ready: float | None = None  # when that session's kernel is started and rebuilt
    pending: float | None = None  # a cell's request time, while it waits for its kernel
    placement_wait: float = 0.0  # how long that cell waited for its session's placement
    release_token: int = 0


@dataclass
class GpuWork:
    """The cells computing on one GPU, sharing its speed equally (processor sharing)."""

    left: dict[Cell, float] = field(default_factory=dict)  # seconds of work at full speed
    since: float = 0.0
    token: int = 0

    def advance(self, now: float) -> None:
        if self.left:
            step = (now - self.since) / len(self.left)
            for cell in self.left:
                self.left[cell] -= step
        self.since = now

    def next_done(self) -> float | None:
        if not self.left:
            return None
        return self.since + max(0.0, min(self.left.values())) * len(self.left)


@dataclass
class Replay:
    """One policy on one pool size, event by event through the real scheduler (and, for
    shared GPUs, the real cell gate)."""

    policy: str
    gpus: int
    trace: list[Developer]
    args: argparse.Namespace
    rebuild: float
    allowed_slow: int  # cells that may wait over the target before the percentile misses it
    clock: list[float] = field(default_factory=lambda: [0.0])
    events: list[tuple[float, int, int, Callable[[], None]]] = field(default_factory=list)
    queued: dict[str, tuple[float, Callable[[str], None]]] = field(default_factory=dict)
    placed_at: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    lost: float = 0.0
    held: float = 0.0
    slow: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        self.sched = make_scheduler(self.gpus, self.clock)
        self.devs = [_Dev() for _ in self.trace]
        self.gates: dict[str, CellGate] = {}
        self.work: dict[tuple[str, int], GpuWork] = {}
        self.cell_of: dict[Cell, tuple[int, float, float]] = {}  # dev, request, placement wait
        self.tenants: dict[tuple[str, int], tuple[int, float]] = {}  # sessions on a GPU, since
        self.shared = self.policy in SHARED

    # plumbing

    def at(self, when: float, order: int, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, order, self.seq, action))

    def now(self) -> float:
        return self.clock[0]

    def submit(self, dev: int, on_placed: Callable[[str], None]) -> None:
        d = self.trace[dev]
        request = (
            make_request(gpus=1, gpu_mem=f"{d.memory_gb}G", shared=True)
            if self.shared
            else make_request(gpus=1)
        )
        info = self.sched.submit(request, user=d.name, host="h")
        self.queued[info["id"]] = (self.now(), on_placed)
        self._collect()

    def release(self, session_id: str) -> None:
        record = self.sched.record(session_id)
        self.sched.end(session_id, "done")
        self.placed_at.pop(session_id)
        self._occupy(record.node or "", record.gpu_ids, -1)
        self._collect()

    def _occupy(self, node: str, gpu_ids: list[int], change: int) -> None:
        """Count the GPU time held: a GPU is held while any session holds it (or a share)."""
        for gpu in gpu_ids:
            count, since = self.tenants.get((node, gpu), (0, self.now()))
            if count:
                self.held += self.now() - since
            self.tenants[(node, gpu)] = (count + change, self.now())

    def _collect(self) -> None:
        """Hand each session the last scheduling pass placed to its waiter."""
        placed = []
        for sid in list(self.queued):
            record = self.sched.record(sid)
            if record.state != "queued":
                placed.append((sid, record.placed or self.now()))
        for sid, when in placed:
            _, on_placed = self.queued.pop(sid)
            self.placed_at[sid] = when
            record = self.sched.record(sid)
            self._occupy(record.node or "", record.gpu_ids, +1)
            on_placed(sid)

    def wait_seen(self, wait: float) -> None:
        self.waits.append(wait)
        self.lost += wait
        self.slow += wait > self.args.target_wait

    # whole GPUs: per kernel session, per run

    def arrive(self, dev: int) -> None:
        """A developer runs their next cell."""
        st, asked = self.devs[dev], self.now()
        if self.shared:
            self._arrive_shared(dev, asked)
            return
        if self.policy == "per kernel session" and st.session is not None:
            st.release_token += 1
            self.wait_seen(0.0)
            self._compute_whole(dev, self.now(), st.session)
            return

        def placed(sid: str) -> None:
            self.wait_seen(self.now() - asked)
            cold = self.args.start_overhead + self.rebuild
            self.lost += cold
            if self.policy == "per kernel session":
                st.session = sid
            self._compute_whole(dev, self.now() + cold, sid)

        self.submit(dev, placed)

    def _compute_whole(self, dev: int, start: float, sid: str) -> None:
        st = self.devs[dev]
        ends = start + self.trace[dev].durations[st.next_run]
        self.at(ends, _FIRST, lambda: self._whole_done(dev, sid))

    def _whole_done(self, dev: int, sid: str) -> None:
        if self.policy == "per run":
            self.at(self.now() + self.args.teardown, _FIRST, lambda: self.release(sid))
        else:
            self._release_when_idle(dev)
        self._next_cell(dev)

    def _release_when_idle(self, dev: int) -> None:
        st = self.devs[dev]
        st.release_token += 1
        token = st.release_token

        def idle() -> None:
            if token == st.release_token and st.session is not None and st.pending is None:
                session, st.session, st.ready = st.session, None, None
                self.release(session)

        self.at(self.now() + self.args.idle_release, _FIRST, idle)

    def _next_cell(self, dev: int) -> None:
        """The developer thinks, then runs the next cell (released at the day's end or when
        idle after the last one)."""
        st, d = self.devs[dev], self.trace[dev]
        st.next_run += 1
        if st.next_run < len(d.durations):
            self.at(self.now() + d.thinks[st.next_run], _THEN, lambda: self.arrive(dev))
        elif self.policy == SHARED[0] and st.session is not None:  # the day's work is done
            day_end = d.start + self.args.day_hours * 3600.0
            session, st.session = st.session, None
            self.at(max(day_end, self.now()), _FIRST, lambda: self.release(session))

    # shared GPUs

    def start_day(self, dev: int) -> None:
        """Resident all day: the kernel asks for its share when the day starts."""
        st = self.devs[dev]

        def placed(sid: str) -> None:
            st.session, st.ready = sid, self.now() + self.args.start_overhead + self.rebuild
            self.at(st.ready, _FIRST, lambda: self._kernel_ready(dev))

        self.submit(dev, placed)

    def _arrive_shared(self, dev: int, asked: float) -> None:
        st = self.devs[dev]
        st.pending = asked
        st.release_token += 1
        if st.session is None and self.policy == SHARED[1]:

            def placed(sid: str) -> None:
                st.session = sid
                st.ready = self.now() + self.args.start_overhead + self.rebuild
                st.placement_wait = self.now() - asked
                self.lost += st.ready - self.now()  # the cold start
                self.at(st.ready, _FIRST, lambda: self._kernel_ready(dev))

            self.submit(dev, placed)
            return
        if st.ready is not None and st.ready <= self.now():
            self._to_gate(dev, asked, 0.0)
        # else: the kernel is starting; _kernel_ready sends the cell on

    def _kernel_ready(self, dev: int) -> None:
        st = self.devs[dev]
        if st.pending is not None and st.session is not None:
            placement, st.placement_wait = st.placement_wait, 0.0
            if self.policy == SHARED[0]:  # a cell before the day's kernel was ready waited
                placement = self.now() - st.pending
            self._to_gate(dev, st.pending, placement)

    def _to_gate(self, dev: int, asked: float, placement_wait: float) -> None:
        st = self.devs[dev]
        assert st.session is not None
        record = self.sched.record(st.session)
        node, gpu = record.node or "", record.gpu_ids[0]
        gate = self.gates.get(node)
        if gate is None:
            gate = CellGate(
                clock=self.now, notify=self._gate_told, slice_after=self.args.slice_after
            )
            self.gates[node] = gate
        cell = Cell(st.session, gpu, f"{dev}-{st.next_run}", payload=node)
        self.cell_of[cell] = (dev, asked, placement_wait)
        st.pending = None
        gate.submit(cell)
        self._slice_check(node, gpu)

    def _gate_told(self, event: str, cell: Cell, detail: object) -> None:
        if event != ADMITTED:
            return
        dev, _, placement = self.cell_of[cell]
        self.wait_seen(placement + (self.now() - cell.arrived))  # placement, then the gate
        work = self.work.setdefault((cell.payload, cell.gpu), GpuWork(since=self.now()))
        work.advance(self.now())
        work.left[cell] = self.trace[dev].durations[self.devs[dev].next_run]
        self._reschedule(cell.payload, cell.gpu)

    def _reschedule(self, node: str, gpu: int) -> None:
        work = self.work[(node, gpu)]
        work.token += 1
        token, when = work.token, work.next_done()
        if when is not None:
            self.at(when, _FIRST, lambda: self._cells_done(node, gpu, token))

    def _cells_done(self, node: str, gpu: int, token: int) -> None:
        work = self.work[(node, gpu)]
        if token != work.token:
            return
        work.advance(self.now())
        done = [c for c, left in work.left.items() if left <= 1e-6]
        for cell in done:
            del work.left[cell]
        self._reschedule(node, gpu)
        for cell in done:
            dev, _, _ = self.cell_of.pop(cell)
            self.gates[node].finish(cell.session, cell.key)
            if self.policy == SHARED[1]:
                self._release_when_idle(dev)
            self._next_cell(dev)
        self._slice_check(node, gpu)

    def _slice_check(self, node: str, gpu: int) -> None:
        """Call the gate's tick when time slicing may let a waiting cell in."""
        gate = self.gates[node]
        running = gate.running.get(gpu, [])
        if gate.waiting.get(gpu) and running:
            latest = max(c.started or 0.0 for c in running)

            def tick() -> None:
                for key in list(self.work):
                    if key[0] == node:
                        self.work[key].advance(self.now())
                gate.tick()
                for key in list(self.work):
                    if key[0] == node:
                        self._reschedule(*key)
                self._slice_check(node, gpu)

            self.at(max(self.now(), latest + self.args.slice_after), _FIRST, tick)

    # run

    def start(self) -> None:
        for dev, d in enumerate(self.trace):
            if self.policy == SHARED[0]:
                self.at(d.start, _THEN, lambda dev=dev: self.start_day(dev))
            self.at(d.start + d.thinks[0], _THEN, lambda dev=dev: self.arrive(dev))

    def run(self) -> Result:
        self.start()
        first = min(e[0] for e in self.events)
        complete = True
        while self.events:
            when, _, _, action = heapq.heappop(self.events)
            if when > self.clock[0]:
                self.clock[0] = when
                self.sched.tick()
                self._collect()
            action()
            if self.slow > self.allowed_slow:
                complete = False
                break
        if complete and (self.queued or self.placed_at):
            raise AssertionError("the replay ended with sessions still queued or held")
        return Result(
            policy=self.policy,
            gpus=self.gpus,
            waits=self.waits,
            lost=self.lost,
            busy=sum(sum(d.durations) for d in self.trace),
            held=self.held,
            span=self.clock[0] - first,
            developers=len(self.trace),
            complete=complete,
        )


def replay(
    policy: str, gpus: int, trace: list[Developer], args: argparse.Namespace, rebuild: float
) -> Result:
    cells = sum(len(d.durations) for d in trace)
    allowed_slow = cells - math.ceil(args.percentile / 100.0 * cells)
    return Replay(policy, gpus, trace, args, rebuild, allowed_slow).run()


def per_developer(trace: list[Developer], args: argparse.Namespace) -> Result:
    """The baseline: a GPU each, all day; one cold start each, at the first cell."""
    day = args.day_hours * 3600.0
    starts = [d.start for d in trace]
    return Result(
        policy="per developer (baseline)",
        gpus=len(trace),
        waits=[0.0] * sum(len(d.durations) for d in trace),
        lost=len(trace) * (args.start_overhead + args.rebuild),
        busy=sum(sum(d.durations) for d in trace),
        held=len(trace) * day,
        span=max(starts) + day - min(starts),
        developers=len(trace),
    )


def meets_target(result: Result, args: argparse.Namespace) -> bool:
    """The percentile of cell waits within the target, and no cell past the tail bound."""
    return (
        result.complete
        and percentile(result.waits, args.percentile) <= args.target_wait
        and max(result.waits, default=0.0) <= args.max_wait
    )


def smallest_pool(
    policy: str, trace: list[Developer], args: argparse.Namespace, rebuild: float
) -> Result:
    """Binary search for the fewest GPUs meeting the wait target."""
    results: dict[int, Result] = {}

    def ok(gpus: int) -> bool:
        results[gpus] = replay(policy, gpus, trace, args, rebuild)
        return meets_target(results[gpus], args)

    hi = max(1, len(trace))
    while not ok(hi):  # shared kernels may need more GPUs than developers only if none fit
        hi *= 2
        if hi > 16 * len(trace):
            raise AssertionError(f"{policy}: no pool up to {hi} GPUs meets the target")
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return results[hi]


def fmt_wait(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def compare(trace: list[Developer], args: argparse.Namespace) -> list[tuple[str, Result]]:
    """Every policy's smallest pool, the baseline first."""
    rows = [("per developer (baseline)", per_developer(trace, args))]
    rows.append(("per kernel session", smallest_pool(WHOLE[0], trace, args, args.rebuild)))
    for rebuild in args.rebuild_sweep:
        found = smallest_pool(WHOLE[1], trace, args, rebuild)
        rows.append((f"per run, rebuild {rebuild:g} s", found))
    for policy in SHARED:
        rows.append((policy, smallest_pool(policy, trace, args, args.rebuild)))
    return rows


def render(rows: list[tuple[str, Result]], args: argparse.Namespace) -> str:
    pct = f"p{args.percentile:g}"
    headers = ["policy", "GPUs", "cell/held", "cell/pool", f"{pct} wait", "p95 wait"]
    headers += ["max wait", "lost min/dev"]
    table = []
    for name, r in rows:
        table.append(
            [
                name,
                str(r.gpus),
                f"{100 * r.held_util:.1f}%",
                f"{100 * r.pool_util:.1f}%",
                fmt_wait(percentile(r.waits, args.percentile)),
                fmt_wait(percentile(r.waits, 95)),
                fmt_wait(max(r.waits, default=0.0)),
                f"{r.lost / 60 / r.developers:.1f}",
            ]
        )
    return report.table(headers, table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--developers", type=int, default=60, help="developers in the trace")
    p.add_argument("--day-hours", type=float, default=8.0, help="length of a working day")
    p.add_argument(
        "--start-spread-hours", type=float, default=1.5, help="days start uniformly in [0, this)"
    )
    p.add_argument("--gap-minutes", type=float, default=45.0, help="mean gap between bursts")
    p.add_argument("--burst-runs", type=float, default=6.0, help="mean runs per burst (>= 1)")
    p.add_argument(
        "--think-seconds", type=float, default=120.0, help="mean think time inside a burst"
    )
    p.add_argument("--run-median", type=float, default=20.0, help="median run, seconds")
    p.add_argument("--run-sigma", type=float, default=1.3, help="log-normal shape of runs")
    p.add_argument("--long-prob", type=float, default=0.03, help="share of long runs")
    p.add_argument(
        "--long-median-minutes", type=float, default=15.0, help="median long run, minutes"
    )
    p.add_argument("--long-sigma", type=float, default=0.5, help="log-normal shape of long runs")
    p.add_argument("--run-cap-minutes", type=float, default=120.0, help="longest run, minutes")
    p.add_argument("--mem-median-gb", type=float, default=36.0, help="median kernel GPU memory")
    p.add_argument("--mem-sigma", type=float, default=0.7, help="log-normal shape of memory")
    p.add_argument("--seed", type=int, default=1, help="random seed of the trace")
    p.add_argument(
        "--idle-release", type=float, default=900.0, help="seconds a session stays after a cell"
    )
    p.add_argument(
        "--start-overhead", type=float, default=2.8, help="cold start: share, mount, kernel"
    )
    p.add_argument("--teardown", type=float, default=1.0, help="seconds held after a run")
    p.add_argument(
        "--rebuild", type=float, default=10.0, help="state rebuild of a cold kernel, seconds"
    )
    p.add_argument(
        "--rebuild-sweep",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.0, 10.0, 30.0],
        help="per run: the rebuild costs to show",
    )
    p.add_argument("--slice-after", type=float, default=5.0, help="shared GPUs: time slicing after")
    p.add_argument("--target-wait", type=float, default=5.0, help="wait target, seconds")
    p.add_argument("--percentile", type=float, default=99.0, help="percentile held to target")
    p.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="no cell may wait longer, whatever the percentile (a bound on the tail)",
    )
    p.add_argument("--sweep", action="store_true", help="also vary the trace's parameters")
    args = p.parse_args(argv)
    if args.developers < 1 or args.burst_runs < 1 or args.day_hours <= 0:
        p.error("--developers and --burst-runs must be at least 1, --day-hours positive")
    return args


def describe_trace(trace: list[Developer], args: argparse.Namespace) -> list[str]:
    runs = [x for d in trace for x in d.durations]
    busy = sum(runs)
    memory = sorted(d.memory_gb for d in trace)
    half = sum(m <= GPU_GB / 2 for m in memory) / len(memory)
    return [
        f"trace: {len(trace)} developers, {args.day_hours:g} h days starting in "
        f"[0, {args.start_spread_hours:g} h), seed {args.seed}",
        f"  bursts: gaps ~ Exp(mean {args.gap_minutes:g} min), runs per burst ~ "
        f"Geometric(mean {args.burst_runs:g}), think ~ Exp(mean {args.think_seconds:g} s)",
        f"  runs: LogNormal(median {args.run_median:g} s, sigma {args.run_sigma:g}); with p "
        f"{args.long_prob:g} LogNormal(median {args.long_median_minutes:g} min, sigma "
        f"{args.long_sigma:g}); cap {args.run_cap_minutes:g} min; drawn {len(runs)} runs, "
        f"busy {busy / 3600:.1f} GPU-h ({busy / (len(trace) * args.day_hours * 36):.1f}% of "
        "developer-days)",
        f"  kernel GPU memory ~ LogNormal(median {args.mem_median_gb:g} GB, sigma "
        f"{args.mem_sigma:g}), cap {GPU_GB} GB: median {percentile(memory, 50):g} GB, "
        f"{100 * half:.0f}% at or under half a GPU, total {sum(memory)} GB",
        f"  cold start {args.start_overhead:g} s + rebuild {args.rebuild:g} s (per run: "
        f"{', '.join(f'{r:g}' for r in args.rebuild_sweep)} s), teardown {args.teardown:g} s; "
        f"sessions idle {args.idle_release / 60:g} min are released; time slicing after "
        f"{args.slice_after:g} s",
        f"  target: p{args.percentile:g} wait <= {args.target_wait:g} s and no wait over "
        f"{fmt_wait(args.max_wait)}, for every policy; "
        f"nodes of up to {GPUS_PER_NODE} GPUs of {GPU_GB} GB",
    ]


SWEEP = [
    ("think time x0.5", {"think_seconds": 0.5}),
    ("think time x2", {"think_seconds": 2.0}),
    ("burst gaps x0.5", {"gap_minutes": 0.5}),
    ("runs x2 longer", {"run_median": 2.0, "long_median_minutes": 2.0}),
    ("memory median 20 GB", {"mem_median_gb": 20.0 / 36.0}),
    ("memory median 12 GB", {"mem_median_gb": 12.0 / 36.0}),
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    trace = make_trace(args)
    for line in describe_trace(trace, args):
        print(line)
    print()
    rows = compare(trace, args)
    print(render(rows, args))
    print("cell: cell wall time from the trace (at a GPU's full speed); held: GPU time held")
    baseline = rows[0][1].gpus
    best = min((r for name, r in rows if name in SHARED), key=lambda r: r.gpus)
    aim = baseline / 6
    print()
    print(
        f"best shared policy: {best.policy}, {best.gpus} GPUs = {best.gpus / baseline:.2f} of "
        f"the baseline's {baseline} (aim: at most a sixth, {aim:.0f}): "
        + ("met" if best.gpus <= aim else "NOT met")
    )
    memory_floor = math.ceil(sum(d.memory_gb for d in trace) / GPU_GB)
    print(
        f"memory alone: the kernels' peaks add up to {memory_floor} GPUs of {GPU_GB} GB "
        "(what resident kernels cannot go below)"
    )
    if args.sweep:
        print()
        print(f"sensitivity (seed {args.seed}; GPUs of the smallest pool meeting the target):")
        sweep_rows = []
        for label, scale in SWEEP:
            varied = argparse.Namespace(**vars(args))
            for name, factor in scale.items():
                setattr(varied, name, getattr(args, name) * factor)
            found = compare(make_trace(varied), varied)
            sweep_rows.append([label, *(str(r.gpus) for _, r in found)])
        print(report.table(["trace", *(name for name, _ in rows)], sweep_rows))
    print(f"took {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
