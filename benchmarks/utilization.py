"""GPUs needed and GPU utilization: one GPU per developer, per kernel session, or per run.

A synthetic day of notebook activity is replayed through the real scheduler
(:class:`jupyter_hwsched.scheduler.core.Scheduler` on an in-memory SQLite store, with a
simulated clock) under three ways of handing out GPUs:

* **per developer**: each developer asks for one GPU when their day starts and holds it for the
  whole day (until placement + day length); their cells never wait after that.
* **per kernel session**: a kernel asks for a GPU at its first cell run and holds it until it has
  been idle for the idle-release timeout (default 15 min) after its last run ended; a run that
  comes later starts a new session, which queues again.
* **per run**: a GPU is held only while a cell executes (the ``%%hwrun`` model); every run queues.

For each, the smallest pool for which the 95th percentile wait (request to placement, over the
scheduler sessions the policy submits) is under the target (30 s) is found by binary search
between 1 and the number of developers (at that size nobody ever waits under any of the three
policies). The search assumes the p95 wait does not grow when GPUs are added. The pool is spread
over nodes of up to 8 GPUs.

Trace model (every number is a flag; ``random.Random(seed)`` makes it reproducible):

* ``--developers`` developers each work ``--day-hours`` hours, starting at a uniform random
  offset in ``[0, --start-spread-hours)``.
* A day alternates gaps and bursts and begins with a gap. Gaps between bursts (meetings,
  reading, editing) are exponential with mean ``--gap-minutes``. A burst has a geometric number
  of runs with mean ``--burst-runs`` (at least one); inside a burst the think time from the end
  of a run to the next request is exponential with mean ``--think-seconds``.
* Run durations are heavy tailed: log-normal with median ``--run-median`` s and shape
  ``--run-sigma`` (mostly seconds to a couple of minutes); with probability ``--long-prob`` a
  run is a long one (training), log-normal with median ``--long-median-minutes`` and shape
  ``--long-sigma``. Every run is capped at ``--run-cap-minutes``.
* The day's runs are drawn until the next run would not end before the day does.

The simulation is closed loop, as a notebook is: think times are counted from the end of the
previous run, so a wait delays the rest of that developer's day. Every request asks for one GPU.

Columns: *GPUs* is the pool size found; *pool util* is busy GPU-seconds over the pool's
GPU-seconds from the first request to the last release (what the GPUs bought are used for);
*held util* is busy GPU-seconds over the GPU-seconds sessions held; "busy" is the time a cell
executes. Waits are over the scheduler requests of that policy (one per developer, per kernel
session, or per run); the percentile is nearest-rank. *max wait* and the count of waits at or
over the target show what the p95 leaves out: per developer, the search may leave up to 5% of
developers without a GPU until another developer's day ends.

Run: ``python benchmarks/utilization.py [--developers 60] [--seed 1]`` (``--help`` for all).
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

from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.store import Store

GPUS_PER_NODE = 8
POLICIES = ("per developer", "per kernel session", "per run")

# Events at the same instant: releases before arrivals, so a GPU freed at t serves a request at t.
_RELEASE, _ARRIVE = 0, 1


@dataclass
class Developer:
    name: str
    start: float  # seconds since the simulated day began
    thinks: list[float]  # time from the previous run's end (or the day's start) to each request
    durations: list[float]  # how long each run executes on the GPU


@dataclass
class Result:
    policy: str
    gpus: int
    requests: int
    waits: list[float]
    busy: float  # GPU-seconds cells executed
    held: float  # GPU-seconds sessions held
    span: float  # seconds from the first request to the last release
    complete: bool = True  # False: stopped early once the target could no longer be met

    @property
    def pool_util(self) -> float:
        return self.busy / (self.gpus * self.span) if self.span else 0.0

    @property
    def held_util(self) -> float:
        return self.busy / self.held if self.held else 0.0

    @property
    def mean_wait(self) -> float:
        return sum(self.waits) / len(self.waits) if self.waits else 0.0

    @property
    def max_wait(self) -> float:
        return max(self.waits, default=0.0)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (:func:`report.percentile`); 0 for no values (no wait)."""
    return report.percentile(values, pct, empty=0.0)


def run_duration(rng: random.Random, args: argparse.Namespace) -> float:
    if rng.random() < args.long_prob:
        seconds = rng.lognormvariate(math.log(args.long_median_minutes * 60.0), args.long_sigma)
    else:
        seconds = rng.lognormvariate(math.log(args.run_median), args.run_sigma)
    return min(max(seconds, 1.0), args.run_cap_minutes * 60.0)


def make_trace(args: argparse.Namespace) -> list[Developer]:
    rng = random.Random(args.seed)
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
                # geometric number of runs, mean burst_runs, at least one
                left_in_burst = 1
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
        developers.append(Developer(f"dev-{i}", start, thinks, durations))
    return developers


def count_requests(policy: str, trace: list[Developer], idle_release: float) -> int:
    """How many scheduler sessions a policy submits for this trace (fixed by the trace)."""
    if policy == "per developer":
        return len(trace)
    if policy == "per run":
        return sum(len(d.durations) for d in trace)
    # a kernel session ends idle_release after a run; a think that long starts a new one
    return sum(sum(1 for i, t in enumerate(d.thinks) if i == 0 or t >= idle_release) for d in trace)


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
                    "memory": 80 * 1024**3,
                    "simulated": True,
                }
                for i in range(count)
            ],
        )
    return sched


@dataclass
class _DevState:
    next_run: int = 0
    session: str | None = None  # per kernel session: the held session, if any
    release_token: int = 0  # per kernel session: which idle-release event is current


@dataclass
class Simulation:
    """One policy on one pool size, driven event by event through the real scheduler."""

    policy: str
    gpus: int
    trace: list[Developer]
    args: argparse.Namespace
    allowed_slow: int  # requests that may wait >= target before p95 misses it
    clock: list[float] = field(default_factory=lambda: [0.0])
    events: list[tuple[float, int, int, Callable[[], None]]] = field(default_factory=list)
    queued: dict[str, tuple[float, Callable[[str, float], None]]] = field(default_factory=dict)
    placed_at: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    held_seconds: float = 0.0
    holding: int = 0  # sessions placed and not ended (one GPU each)
    slow: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        self.sched = make_scheduler(self.gpus, self.clock)
        self.state = [_DevState() for _ in self.trace]

    # plumbing

    def at(self, when: float, order: int, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, order, self.seq, action))

    def submit(self, dev: int, on_placed: Callable[[str, float], None]) -> None:
        info = self.sched.submit(HardwareRequest(gpus=1), user=self.trace[dev].name, host="h")
        if info["state"] == "queued":
            self.queued[info["id"]] = (self.clock[0], on_placed)
        else:
            self._placed(info["id"], self.clock[0], float(info["placed"]), on_placed)
        self._collect()

    def end(self, session_id: str) -> None:
        self.sched.end(session_id, "done")
        self.held_seconds += self.clock[0] - self.placed_at.pop(session_id)
        self.holding -= 1
        self._collect()

    def _placed(
        self, sid: str, requested: float, placed: float, on_placed: Callable[[str, float], None]
    ) -> None:
        wait = placed - requested
        self.waits.append(wait)
        self.slow += wait >= self.args.target_wait
        self.placed_at[sid] = placed
        self.holding += 1
        if self.holding > self.gpus:
            raise AssertionError(f"{self.holding} sessions hold GPUs in a pool of {self.gpus}")
        on_placed(sid, placed)

    def _collect(self) -> None:
        """Find queued sessions the last call placed; stop once the pool is known to be full."""
        for sid in list(self.queued):
            if self.holding >= self.gpus:
                return
            info = self.sched.describe(sid)
            if info["state"] != "queued":
                requested, on_placed = self.queued.pop(sid)
                self._placed(sid, requested, float(info["placed"]), on_placed)

    # policies

    def start(self) -> None:
        for dev, d in enumerate(self.trace):
            if self.policy == "per developer":
                self.at(d.start, _ARRIVE, lambda dev=dev: self.submit(dev, self._hold_day))
            else:
                self.at(d.start + d.thinks[0], _ARRIVE, lambda dev=dev: self.arrive(dev))

    def _hold_day(self, sid: str, placed: float) -> None:
        day = self.args.day_hours * 3600.0
        self.at(placed + day, _RELEASE, lambda: self.end(sid))

    def arrive(self, dev: int) -> None:
        """A developer runs their next cell."""
        st = self.state[dev]
        if self.policy == "per run":
            self.submit(dev, lambda sid, placed: self._execute(dev, placed, sid))
        elif st.session is not None:  # kernel session still holds its GPU
            st.release_token += 1
            self._execute(dev, self.clock[0], None)
        else:

            def on_placed(sid: str, placed: float) -> None:
                st.session = sid
                self._execute(dev, placed, None)

            self.submit(dev, on_placed)

    def _execute(self, dev: int, started: float, run_session: str | None) -> None:
        st = self.state[dev]
        ends = started + self.trace[dev].durations[st.next_run]
        self.at(ends, _RELEASE, lambda: self._run_done(dev, run_session))

    def _run_done(self, dev: int, run_session: str | None) -> None:
        st, d = self.state[dev], self.trace[dev]
        if run_session is not None:
            self.end(run_session)
        else:
            st.release_token += 1
            token = st.release_token
            self.at(
                self.clock[0] + self.args.idle_release, _RELEASE, lambda: self._idle(dev, token)
            )
        st.next_run += 1
        if st.next_run < len(d.durations):
            self.at(self.clock[0] + d.thinks[st.next_run], _ARRIVE, lambda: self.arrive(dev))

    def _idle(self, dev: int, token: int) -> None:
        st = self.state[dev]
        if token == st.release_token and st.session is not None:
            session, st.session = st.session, None
            self.end(session)

    # run

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
            raise AssertionError("the simulation ended with sessions still queued or held")
        busy = sum(sum(d.durations) for d in self.trace)
        return Result(
            policy=self.policy,
            gpus=self.gpus,
            requests=len(self.waits),
            waits=self.waits,
            busy=busy,
            held=self.held_seconds,
            span=self.clock[0] - first,
            complete=complete,
        )


def simulate(policy: str, gpus: int, trace: list[Developer], args: argparse.Namespace) -> Result:
    requests = count_requests(policy, trace, args.idle_release)
    allowed_slow = requests - math.ceil(args.percentile / 100.0 * requests)
    return Simulation(policy, gpus, trace, args, allowed_slow).run()


def meets_target(result: Result, args: argparse.Namespace) -> bool:
    return result.complete and percentile(result.waits, args.percentile) < args.target_wait


def smallest_pool(
    policy: str, trace: list[Developer], args: argparse.Namespace
) -> tuple[Result, list[int]]:
    """Binary search for the fewest GPUs meeting the wait target; also the sizes tried."""
    results: dict[int, Result] = {}

    def ok(gpus: int) -> bool:
        results[gpus] = simulate(policy, gpus, trace, args)
        return meets_target(results[gpus], args)

    hi = max(1, len(trace))
    while not ok(hi):  # cannot happen with one request per developer at a time; be safe anyway
        hi *= 2
    lo = 0  # the largest size known to miss the target (0: none tried)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return results[hi], sorted(results)


def fmt_wait(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
    p.add_argument("--seed", type=int, default=1, help="random seed of the trace")
    p.add_argument(
        "--idle-release",
        type=float,
        default=900.0,
        help="seconds a kernel session holds its GPU after its last run",
    )
    p.add_argument("--target-wait", type=float, default=30.0, help="wait target, seconds")
    p.add_argument("--percentile", type=float, default=95.0, help="percentile held to target")
    args = p.parse_args(argv)
    if args.developers < 1 or args.burst_runs < 1 or args.day_hours <= 0:
        p.error("--developers and --burst-runs must be at least 1, --day-hours positive")
    return args


def describe_trace(trace: list[Developer], args: argparse.Namespace) -> list[str]:
    runs = [x for d in trace for x in d.durations]
    runs_sorted = sorted(runs)
    busy = sum(runs)
    return [
        f"trace: {args.developers} developers, {args.day_hours:g} h days starting in "
        f"[0, {args.start_spread_hours:g} h), seed {args.seed}",
        f"  bursts: gaps ~ Exp(mean {args.gap_minutes:g} min), runs per burst ~ "
        f"Geometric(mean {args.burst_runs:g}), think ~ Exp(mean {args.think_seconds:g} s)",
        f"  runs: LogNormal(median {args.run_median:g} s, sigma {args.run_sigma:g}); with p "
        f"{args.long_prob:g} LogNormal(median {args.long_median_minutes:g} min, sigma "
        f"{args.long_sigma:g}); cap {args.run_cap_minutes:g} min",
        f"  drawn: {len(runs)} runs ({len(runs) / len(trace):.1f} per developer), run median "
        f"{fmt_wait(percentile(runs_sorted, 50))}, p95 {fmt_wait(percentile(runs_sorted, 95))}, "
        f"max {fmt_wait(max(runs, default=0.0))}; busy {busy / 3600:.1f} GPU-h "
        f"({busy / (len(trace) * args.day_hours * 36):.1f}% of developer-days)",
        f"  kernel sessions end {args.idle_release / 60:g} min after their last run; "
        f"target: p{args.percentile:g} wait < {args.target_wait:g} s; "
        f"nodes of up to {GPUS_PER_NODE} GPUs",
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    trace = make_trace(args)
    for line in describe_trace(trace, args):
        print(line)
    print()
    found: dict[str, Result] = {}
    tried: dict[str, list[int]] = {}
    for policy in POLICIES:
        found[policy], tried[policy] = smallest_pool(policy, trace, args)
    pct = f"p{args.percentile:g}"
    headers = [
        "policy",
        "GPUs",
        "pool util",
        "held util",
        "requests",
        "mean wait",
        f"{pct} wait",
        "max wait",
        f"waits >= {args.target_wait:g} s",
    ]
    rows: list[list[str]] = []
    for policy in POLICIES:
        r = found[policy]
        rows.append(
            [
                policy,
                str(r.gpus),
                f"{100 * r.pool_util:.1f}%",
                f"{100 * r.held_util:.1f}%",
                str(r.requests),
                fmt_wait(r.mean_wait),
                fmt_wait(percentile(r.waits, args.percentile)),
                fmt_wait(r.max_wait),
                str(sum(w >= args.target_wait for w in r.waits)),
            ]
        )
    print(report.table(headers, rows))  # the policy to the left, the figures to the right
    print()
    for policy in POLICIES:
        print(f"pool sizes simulated for {policy}: {', '.join(map(str, tried[policy]))}")
    per_run, per_dev = found["per run"].gpus, found["per developer"].gpus
    ratio = per_run / per_dev
    verdict = "met" if ratio <= 1 / 3 else "NOT met"
    print(
        f"GPUs(per run) / GPUs(per developer) = {per_run}/{per_dev} = {ratio:.2f} "
        f"(goal <= 1/3: {verdict})"
    )
    print(f"took {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
