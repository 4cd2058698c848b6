"""The cluster-manager rules: request language, placement policies, queue order, quotas,
backfill without starvation, estimates, accounting, and state across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.request import HardwareRequest, make_request
from jupyter_hwsched.scheduler.accounting import metrics_text, usage_report
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.placement import SpreadPlacement
from jupyter_hwsched.scheduler.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpus(
    count: int, model: str = "A100-80GB", links: dict[int, list[int]] | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "uuid": f"{model}-{i}",
            "model": model,
            "memory": 80 * 1024**3,
            "simulated": True,
            "links": (links or {}).get(i, []),
        }
        for i in range(count)
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, **traits: Any) -> Scheduler:
    traits.setdefault("lease_seconds", 1e6)
    traits.setdefault("node_timeout", 1e6)
    return Scheduler(Store(tmp_path / "s.sqlite"), clock=clock, **traits)


def req(n: int = 1, **kw: Any) -> HardwareRequest:
    return make_request(gpus=n, **kw)


def test_gpu_type_alternatives(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(2, "A100-80GB"))
    s.register_node("h", "http://h", gpus(2, "H100-80GB"))
    assert s.submit(req(gpu_type="V100|H100"), "ann", "x")["node"] == "h"
    assert s.submit(req(2, gpu_type="H100|A100"), "ann", "x")["node"] == "a"
    with pytest.raises(RequestError, match=r"no node has GPUs of type 'V100\|T4'"):
        s.submit(req(gpu_type="V100|T4"), "ann", "x")
    with pytest.raises(RequestError, match="not a GPU model name"):
        make_request(gpu_type="A100||")


def test_node_name_or_label(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(2), labels=["ib"])
    s.register_node("b", "http://b", gpus(2))
    assert s.submit(req(node="ib"), "ann", "x")["node"] == "a"
    assert s.submit(req(node="b"), "ann", "x")["node"] == "b"
    with pytest.raises(RequestError, match="no node is named or labelled 'gpu-9'"):
        s.submit(req(node="gpu-9"), "ann", "x")


def test_priority_goes_first(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(1))
    held = s.submit(req(), "ann", "x")
    low = s.submit(req(), "bob", "x")
    high = s.submit(req(priority=10), "cy", "x")
    assert s.describe(high["id"])["position"] == 1 and s.describe(low["id"])["position"] == 2
    s.end(held["id"], "done")
    assert s.describe(high["id"])["state"] == "placed"
    assert s.describe(low["id"])["state"] == "queued"
    with pytest.raises(RequestError, match="out of range"):
        make_request(priority=1000)


def test_fair_share_puts_the_lighter_user_first(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(1))
    heavy = s.submit(req(), "ann", "x")
    clock.now += 600  # ann has used 600 GPU-seconds
    s.end(heavy["id"], "done")
    blocker = s.submit(req(), "cy", "x")
    ann_again = s.submit(req(), "ann", "x")  # arrives first ...
    bob = s.submit(req(), "bob", "x")  # ... but bob has used nothing recently
    assert s.describe(bob["id"])["position"] == 1
    assert s.describe(ann_again["id"])["position"] == 2
    s.end(blocker["id"], "done")
    assert s.describe(bob["id"])["state"] == "placed"


def test_fair_share_forgets_with_the_half_life(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock, fair_share_half_life=100.0)
    s.register_node("a", "http://a", gpus(1))
    first = s.submit(req(), "ann", "x")
    clock.now += 100
    s.end(first["id"], "done")
    assert s.usage_table(clock.now)["ann"] == pytest.approx(100.0)
    clock.now += 200  # two half-lives
    assert s.usage_table(clock.now)["ann"] == pytest.approx(25.0)


def test_user_and_group_quotas(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock, user_gpu_quota=2, group_gpu_quotas={"lab": 3})
    s.register_node("a", "http://a", gpus(8))
    assert s.submit(req(2), "ann", "x", group="lab")["state"] == "placed"
    over = s.submit(req(1), "ann", "x", group="lab")
    assert over["state"] == "queued"
    assert "user quota: ann holds 2 of the 2 GPU(s)" in over["waiting_for"]
    assert s.submit(req(1), "bob", "x", group="lab")["state"] == "placed"
    group_over = s.submit(req(1), "cy", "x", group="lab")
    assert "group quota: group lab holds 3 of its 3 GPU(s)" in group_over["waiting_for"]
    assert s.submit(req(1), "dan", "x", group="other")["state"] == "placed"


def test_backfill_without_starving_the_large_request(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(4))
    held = s.submit(req(3, timeout=100), "ann", "x")
    s.mark_running(held["id"], "a")
    big = s.submit(req(4), "bob", "x")
    assert big["state"] == "queued"
    assert big["estimated_start"] == pytest.approx(clock.now + 100)
    # an open-ended small request would sit on a GPU the big one needs at t+100: it waits
    open_ended = s.submit(req(1), "cy", "x")
    assert open_ended["state"] == "queued"
    assert "reserved for the request at position 1" in open_ended["waiting_for"]
    # a short one that is done before t+100 is backfilled onto the idle GPU
    short = s.submit(req(1, timeout=50), "dan", "x")
    assert short["state"] == "placed"
    s.mark_running(short["id"], "a")
    clock.now += 60
    s.end(short["id"], "done")
    assert s.describe(open_ended["id"])["state"] == "queued"  # still protected
    clock.now += 40
    s.end(held["id"], "done")
    assert s.describe(big["id"])["state"] == "placed"  # not starved
    assert s.describe(open_ended["id"])["state"] == "queued"


def test_backfill_can_be_turned_off(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock, backfill=False)
    s.register_node("a", "http://a", gpus(2))
    s.submit(req(1, timeout=100), "ann", "x")
    s.submit(req(2), "bob", "x")
    short = s.submit(req(1, timeout=10), "cy", "x")
    assert short["state"] == "queued" and "no backfill" in short["waiting_for"]


def test_pack_prefers_nvlinked_gpus(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    links = {0: [1], 1: [0], 2: [3], 3: [2]}
    s.register_node("a", "http://a", gpus(4, links=links))
    s.submit(req(1), "ann", "x")  # takes GPU 0
    pair = s.submit(req(2), "bob", "x")
    assert pair["gpu_ids"] == [2, 3]  # linked, rather than the lowest free indices 1 and 2


def test_spread_policy(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock, placement_class=SpreadPlacement)
    s.register_node("a", "http://a", gpus(4))
    s.register_node("b", "http://b", gpus(4))
    nodes = [s.submit(req(1), "ann", "x")["node"] for _ in range(4)]
    assert sorted(nodes) == ["a", "a", "b", "b"]


def test_accounting_and_metrics(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(2))
    sess = s.submit(req(2), "ann", "x")
    s.heartbeat("a", [sess["id"]], {"utilization": {"0": 50.0, "1": 100.0}})
    clock.now += 10
    s.heartbeat("a", [sess["id"]], {"utilization": {"0": 50.0, "1": 100.0}})
    clock.now += 10
    s.end(sess["id"], "done")
    [row] = usage_report(s, since=0)
    assert row["gpu_seconds_allocated"] == pytest.approx(40.0)
    assert row["gpu_seconds_busy"] == pytest.approx(15.0)  # (0.5 + 1.0) x 10 s
    s.submit(req(2), "bob", "x")
    s.submit(req(1), "cy", "x")
    text = metrics_text(s)
    assert "hwsched_queue_length 1" in text
    assert "hwsched_gpus_allocated 2" in text and "hwsched_gpus_total 2" in text
    assert "hwsched_wait_seconds_count 2" in text


def test_queue_order_and_accounting_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(1))
    first = s.submit(req(), "ann", "x")
    s.heartbeat("a", [first["id"]], {"utilization": {"0": 100.0}})
    clock.now += 30
    s.heartbeat("a", [first["id"]], {"utilization": {"0": 100.0}})
    s.end(first["id"], "done")
    holder = s.submit(req(), "cy", "x")
    waiting = [s.submit(req(), user, "x")["id"] for user in ("ann", "bob", "dan")]
    before = [s.describe(w)["position"] for w in waiting]
    report = usage_report(s, since=0)
    s.store.close()
    again = make(tmp_path, clock)
    assert [again.describe(w)["position"] for w in waiting] == before == [3, 1, 2]
    assert usage_report(again, since=0) == report
    assert again.describe(holder["id"])["state"] == "placed"


# resident kernels sharing a GPU


@pytest.fixture
def sched(tmp_path: Path, clock: Clock) -> Scheduler:
    s = make(tmp_path, clock)
    s.register_node("a", "http://a", gpus(2))
    return s


def test_shared_kernels_pack_onto_one_gpu_by_memory(sched: Scheduler) -> None:
    def shared(mem: str) -> str:
        return str(sched.submit(make_request(gpus=1, gpu_mem=mem, shared=True), "u", "h")["id"])

    a, b, c = shared("30G"), shared("40G"), shared("20G")
    placed = {sid: sched.record(sid) for sid in (a, b, c)}
    # 30G + 40G fit one 80G GPU; 20G does not fit beside them, so it opens the second GPU
    assert placed[a].gpu_ids == placed[b].gpu_ids
    assert placed[c].gpu_ids != placed[a].gpu_ids and placed[c].state == "placed"
    # a whole-GPU request cannot take a GPU that kernels share
    whole = sched.submit(make_request(gpus=1), "v", "h")["id"]
    assert sched.record(whole).state == "queued"
    gpus = sched.pool()["nodes"][0]["gpus"]
    assert [t["session"] for t in gpus[placed[a].gpu_ids[0]]["shared_by"]] == [a, b]
    # best fit: a small kernel goes where it leaves the least room (the last 10G beside a, b)
    d = shared("10G")
    assert sched.record(d).gpu_ids == placed[a].gpu_ids
    sched.end(c, "done")
    assert sched.record(whole).state == "placed"  # the second GPU is whole again


def test_a_shared_kernel_waits_for_room_without_holding_back_others(sched: Scheduler) -> None:
    big = sched.submit(make_request(gpus=1, gpu_mem="70G", shared=True), "u", "h")["id"]
    sched.submit(make_request(gpus=1), "v", "h")  # the other GPU, whole
    waiting = sched.submit(make_request(gpus=1, gpu_mem="20G", shared=True), "w", "h")["id"]
    assert sched.record(waiting).state == "queued"
    sched.end(big, "done")
    assert sched.record(waiting).state == "placed"


def test_memory_the_node_reports_in_use_counts_against_a_gpus_room(sched: Scheduler) -> None:
    first = sched.submit(make_request(gpus=1, gpu_mem="10G", shared=True), "u", "h")["id"]
    gpu = sched.record(first).gpu_ids[0]
    # the kernel uses far more than it asked for, as NVML tells through the heartbeat
    sched.heartbeat("a", [first], {"memory_used": {str(gpu): 75 * 1024**3}})
    second = sched.submit(make_request(gpus=1, gpu_mem="10G", shared=True), "v", "h")["id"]
    assert sched.record(second).gpu_ids != [gpu]


def test_a_shared_request_is_one_gpu_with_its_memory() -> None:
    with pytest.raises(RequestError, match="--shared needs --gpu-mem"):
        make_request(gpus=1, shared=True)
    with pytest.raises(RequestError, match="--shared asks for a share of one GPU, not 2"):
        make_request(gpus=2, gpu_mem="10G", shared=True)


def test_a_shared_kernel_is_charged_its_cells_time_to_the_last_report(sched: Scheduler) -> None:
    sid = sched.submit(make_request(gpus=1, gpu_mem="10G", shared=True), "u", "h")["id"]
    sched.mark_running(sid, "a")
    sched.heartbeat("a", [sid], {"cell_seconds": {sid: 2.5}})
    sched.end(sid, "released by the client")
    # the node's next heartbeat carries the final figure of the session it no longer runs
    sched.heartbeat("a", [], {"cell_seconds": {sid: 3.25}})
    [row] = usage_report(sched, 0)
    assert row["gpu_seconds_allocated"] == 3.25  # cell time, not the time it was held
