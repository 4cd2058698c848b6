"""The scheduler's rules on a real SQLite store, with a clock the test moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_hwsched.protocol.cache_manifest import warm_key
from jupyter_hwsched.protocol.errors import (
    ConflictError,
    NotFoundError,
    RequestError,
    SessionEnded,
    UnavailableError,
)
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpus(count: int, model: str = "A100-80GB", memory_gb: int = 80) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "uuid": f"u{i}",
            "model": model,
            "memory": memory_gb * 1024**3,
            "simulated": True,
        }
        for i in range(count)
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sched(tmp_path: Path, clock: Clock) -> Scheduler:
    s = Scheduler(Store(tmp_path / "s.sqlite"), clock=clock, lease_seconds=30, node_timeout=20)
    s.register_node("a", "http://a", gpus(2))
    return s


def req(n: int = 1, **kw: Any) -> HardwareRequest:
    return HardwareRequest(gpus=n, **kw)


def test_sessions_get_distinct_gpus_and_the_third_queues(sched: Scheduler) -> None:
    one = sched.submit(req(), "ann", "h")
    two = sched.submit(req(), "bob", "h")
    three = sched.submit(req(), "cy", "h")
    assert one["state"] == two["state"] == "placed"
    assert {one["gpu_ids"][0], two["gpu_ids"][0]} == {0, 1}
    assert three["state"] == "queued" and three["position"] == 1
    assert "ann" in three["waiting_for"] and "bob" in three["waiting_for"]
    sched.end(one["id"], "done")
    placed = sched.describe(three["id"])
    assert placed["state"] == "placed" and placed["gpu_ids"] == one["gpu_ids"]


def test_ending_twice_is_harmless_and_frees_at_once(sched: Scheduler) -> None:
    s = sched.submit(req(2), "ann", "h")
    assert s["state"] == "placed"
    sched.end(s["id"], "done")
    sched.end(s["id"], "again")
    assert sched.describe(s["id"])["end_reason"] == "done"
    assert all(g["holder"] is None for g in sched.pool()["nodes"][0]["gpus"])


def test_packing_prefers_the_fuller_node(sched: Scheduler) -> None:
    sched.register_node("b", "http://b", gpus(4))
    first = sched.submit(req(), "ann", "h")
    second = sched.submit(req(), "bob", "h")
    assert first["node"] == second["node"] == "a"  # best fit keeps node b whole
    big = sched.submit(req(4), "cy", "h")
    assert big["node"] == "b" and big["state"] == "placed"


def test_a_node_warm_for_the_developer_comes_first_among_those_that_fit(
    sched: Scheduler,
) -> None:
    """Node b keeps ann's files (its heartbeat says so): ann goes there though packing would
    pick a; bob, whom no node keeps, is packed as before; the queue's order is untouched."""
    sched.register_node("b", "http://b", gpus(4))
    sched.heartbeat("b", [], {}, {warm_key("h", "ann")})
    ann = sched.submit(req(), "ann", "h")
    assert ann["node"] == "b"
    assert sched.submit(req(), "bob", "h")["node"] == "a"
    assert sched.submit(req(), "ann", "other-host")["node"] == "a"  # another machine's ann
    # warm but too small: the request goes where it fits
    assert sched.submit(req(2), "bob", "h")["node"] == "b"
    sched.heartbeat("b", [], {}, {warm_key("h", "cy")})
    assert sched.submit(req(2), "cy", "h")["state"] == "queued"  # b has 1 free, a none


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(3), "no node has 3 matching GPUs"),
        (req(gpu_type="H100"), "no node has GPUs of type 'H100'"),
        (req(gpu_mem=100 * 1024**3), "no GPU in the pool has 100G"),
    ],
)
def test_impossible_requests_fail_at_once(
    sched: Scheduler, request_: HardwareRequest, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        sched.submit(request_, "ann", "h")
    assert sched.sessions() == []


def test_type_prefix_and_memory_match(sched: Scheduler) -> None:
    assert sched.submit(req(gpu_type="a100", gpu_mem=40 * 1024**3), "ann", "h")["state"] == "placed"


def test_no_node_means_a_clear_error(tmp_path: Path, clock: Clock) -> None:
    empty = Scheduler(Store(tmp_path / "e.sqlite"), clock=clock)
    with pytest.raises(UnavailableError, match="no GPU node is registered"):
        empty.submit(req(), "ann", "h")


def test_lapsed_lease_reclaims_the_gpus(sched: Scheduler, clock: Clock) -> None:
    s = sched.submit(req(2), "ann", "h")
    clock.now += 20
    sched.renew(s["id"])
    sched.heartbeat("a", [s["id"]], {})
    clock.now += 20
    sched.heartbeat("a", [s["id"]], {})
    sched.tick()
    assert sched.describe(s["id"])["state"] == "placed"  # renewed 20 s ago, lease is 30 s
    clock.now += 11
    sched.heartbeat("a", [s["id"]], {})
    sched.tick()
    ended = sched.describe(s["id"])
    assert ended["state"] == "ended" and "lease expired" in ended["end_reason"]
    with pytest.raises(SessionEnded):
        sched.renew(s["id"])


def test_time_limit_ends_a_running_session(sched: Scheduler, clock: Clock) -> None:
    s = sched.submit(req(timeout=10), "ann", "h")
    sched.mark_running(s["id"], "a")
    clock.now += 5
    sched.renew(s["id"])
    clock.now += 6
    sched.tick()
    assert "time limit of 10 s" in sched.describe(s["id"])["end_reason"]


def test_lost_node_ends_its_sessions(sched: Scheduler, clock: Clock) -> None:
    s = sched.submit(req(), "ann", "h")
    clock.now += 21
    sched.renew(s["id"])
    sched.tick()
    assert "stopped sending heartbeats" in sched.describe(s["id"])["end_reason"]


def test_heartbeat_tells_the_node_what_to_end(sched: Scheduler) -> None:
    s = sched.submit(req(), "ann", "h")
    assert sched.heartbeat("a", [s["id"]], {}) == []
    sched.end(s["id"], "released")
    assert sched.heartbeat("a", [s["id"], "unknown"], {}) == [s["id"], "unknown"]
    with pytest.raises(NotFoundError):
        sched.heartbeat("nope", [], {})


def test_only_the_placed_node_may_mark_running(sched: Scheduler) -> None:
    sched.register_node("b", "http://b", gpus(1))
    s = sched.submit(req(2), "ann", "h")
    with pytest.raises(ConflictError):
        sched.mark_running(s["id"], "b")


def test_state_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    first = Scheduler(Store(tmp_path / "r.sqlite"), clock=clock)
    first.register_node("a", "http://a", gpus(1))
    held = first.submit(req(), "ann", "h", notebook="/home/ann/train.ipynb")
    waiting = first.submit(req(), "bob", "h")
    first.store.close()
    again = Scheduler(Store(tmp_path / "r.sqlite"), clock=clock)
    assert again.describe(held["id"])["state"] == "placed"
    assert again.describe(held["id"])["notebook"] == "/home/ann/train.ipynb"
    assert again.describe(waiting["id"])["notebook"] == ""
    assert again.describe(waiting["id"])["position"] == 1


def test_a_restarted_scheduler_gives_nodes_and_clients_a_full_period(
    tmp_path: Path, clock: Clock
) -> None:
    first = Scheduler(Store(tmp_path / "r.sqlite"), clock=clock, lease_seconds=30, node_timeout=20)
    first.register_node("a", "http://a", gpus(1))
    s = first.submit(req(), "ann", "h")
    first.store.close()
    clock.now += 60  # the scheduler was down for a minute
    again = Scheduler(Store(tmp_path / "r.sqlite"), clock=clock, lease_seconds=30, node_timeout=20)
    again.tick()
    assert again.describe(s["id"])["state"] == "placed"


def test_scheduler_ended_sessions_drain_until_the_node_confirms(
    sched: Scheduler, clock: Clock
) -> None:
    s = sched.submit(req(2), "ann", "h")
    sched.mark_running(s["id"], "a")
    clock.now += 31  # the lease lapses
    sched.heartbeat("a", [s["id"]], {})
    sched.tick()
    assert sched.describe(s["id"])["state"] == "ended"
    waiting = sched.submit(req(1), "bob", "h")
    assert waiting["state"] == "queued"  # the node has not torn the old session down yet
    assert sched.heartbeat("a", [s["id"]], {}) == [s["id"]]  # told to end it
    sched.heartbeat("a", [], {})  # gone from the node: the GPUs come back
    assert sched.describe(waiting["id"])["state"] == "placed"


def test_a_running_session_its_node_forgot_is_ended(sched: Scheduler, clock: Clock) -> None:
    s = sched.submit(req(), "ann", "h")
    sched.mark_running(s["id"], "a")
    sched.heartbeat("a", [], {})  # within the grace: a heartbeat may predate the start
    assert sched.describe(s["id"])["state"] == "running"
    clock.now += 6
    sched.renew(s["id"])
    sched.heartbeat("a", [], {})  # the agent restarted and lost it
    assert "no longer runs the session" in sched.describe(s["id"])["end_reason"]


def test_time_limit_counts_from_placement(sched: Scheduler, clock: Clock) -> None:
    s = sched.submit(req(timeout=10), "ann", "h")  # placed, never started
    clock.now += 11
    sched.renew(s["id"])
    sched.heartbeat("a", [], {})
    sched.tick()
    assert "time limit of 10 s" in sched.describe(s["id"])["end_reason"]
