"""The Slurm backend's rules, with Slurm's commands replaced by a recording stand-in: what a
request becomes in sbatch, and what the scheduler does with what Slurm reports. The real
Slurm is in test_slurm_e2e.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_scheduler_core import Clock, gpus
from traitlets.config import Config

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import Identity
from jupyter_hwsched.protocol.request import make_request
from jupyter_hwsched.scheduler.core import Scheduler, SettingsError
from jupyter_hwsched.scheduler.slurm.backend import Observation, SlurmBackend
from jupyter_hwsched.scheduler.slurm.commands import (
    Job,
    SlurmNode,
    parse_allocation,
    parse_gres,
    parse_indices,
    parse_jobs,
    parse_nodes,
    parse_usage,
)
from jupyter_hwsched.scheduler.store import Store

NODES = {
    "a": SlurmNode("a", "idle", "", ("gpumem80g", "nvlink"), {"a100": 2}),
    "b": SlurmNode("b", "idle", "", ("gpumem16g",), {"t4": 1}),
}

# what Slurm 22.05 prints, captured on this project's machines


def test_squeue_lines_become_jobs() -> None:
    jobs = parse_jobs(
        "3|RUNNING|None|2026-11-30T16:22:25|gpu-a|4294901763\n"
        "4|PENDING|Resources|N/A||4294901757\n"
        "garbage line\n"
    )
    assert jobs["3"].state == "RUNNING" and jobs["3"].nodes == "gpu-a" and jobs["3"].start
    assert jobs["4"].reason == "Resources" and jobs["4"].start is None and jobs["4"].active
    assert set(jobs) == {"3", "4"}


def test_sinfo_lines_become_nodes() -> None:
    nodes = parse_nodes(
        "gpu-a|idle|none|gpumem80g|gpu:a100:2\n"
        "gpu-b|down*|Not responding|(null)|gpu:t4:1(S:0),gpu:a100:1\n"
        "gpu-c|drained|maintenance|gpumem80g,ib|gpu:2\n"
    )
    assert nodes["gpu-a"].gpu_types == {"a100": 2} and not nodes["gpu-a"].down
    assert nodes["gpu-b"].down and nodes["gpu-b"].features == ()
    assert nodes["gpu-b"].gpu_types == {"t4": 1, "a100": 1}
    assert nodes["gpu-c"].reason == "maintenance" and not nodes["gpu-c"].down  # drained: runs on
    assert parse_gres("gpu:2") == {"": 2}


def test_the_allocation_is_the_gres_indices_slurm_gave() -> None:
    text = "   JOB_GRES=gpu:sim:2\n     Nodes=gpu-a CPU_IDs=0 Mem=0 GRES=gpu:sim:2(IDX:1,3-4)\n"
    assert parse_allocation(text) == ("gpu-a", [1, 3, 4])
    assert parse_allocation("   JobState=PENDING Reason=Resources\n") is None
    assert parse_indices("0-1,5") == [0, 1, 5]


def test_sacct_gives_gpu_seconds() -> None:
    usage = parse_usage(
        "7|COMPLETED|120|billing=1,cpu=1,gres/gpu=2,node=1\n"
        "8|CANCELLED by 0|30|billing=1,cpu=1,node=1\n"
    )
    assert usage == {"7": ("COMPLETED", 240.0), "8": ("CANCELLED", 0.0)}


# a request as sbatch options


def options(request: Any, owner: Identity | None = None, **kw: Any) -> list[str]:
    return SlurmBackend(**kw).options("s1", request, "ann@dev-1", owner, NODES)


def test_a_request_maps_onto_sbatch_options() -> None:
    opts = options(
        make_request(
            gpus=2,
            gpu_type="A100",
            gpu_mem="40G",
            timeout=90,
            node="nvlink",
            priority=3,
            cpus=2.5,
            mem="2G",
        ),
        partition="gpu",
    )
    assert "--gres=gpu:a100:2" in opts
    assert "--constraint=gpumem80g&nvlink" in opts
    assert "--time=2" in opts  # minutes, rounded up: the scheduler ends it at 90 s itself
    assert "--nice=-300" in opts
    assert "--cpus-per-task=3" in opts and "--mem=2048M" in opts
    assert "--partition=gpu" in opts and "--job-name=hwsched-s1" in opts
    assert options(make_request(gpus=1, node="b"))[-1] == "--nodelist=b"
    assert "--gres=gpu:1" in options(make_request(gpus=1))
    # several features are enough: any of them
    assert "--constraint=[gpumem16g|gpumem80g]" in options(make_request(gpu_mem="10G"))


@pytest.mark.parametrize(
    ("request_kw", "words"),
    [
        ({"gpu_type": "H100"}, "Slurm has no GPU of that type; its GPU types are a100, t4"),
        ({"gpu_type": "A100|T4"}, "a Slurm job asks for one type: name one of them"),
        ({"gpu_mem": "100G"}, "no Slurm node states that much GPU memory"),
        ({"node": "gpu-9"}, "no Slurm node is named so or has that feature"),
    ],
)
def test_what_slurm_cannot_express_is_refused_with_what_to_ask(
    request_kw: dict[str, Any], words: str
) -> None:
    with pytest.raises(RequestError, match=words):
        options(make_request(gpus=1, **request_kw))


def test_jobs_are_submitted_as_their_verified_owner_where_allowed() -> None:
    root = Identity(name="root", uid=0, gid=0, group="root", home="/root")
    backend = SlurmBackend()
    backend.can_switch_user = True
    assert "--uid=0" in backend.options("s", make_request(), "root@d", root, NODES)
    assert not any(
        o.startswith("--uid") for o in backend.options("s", make_request(), "x", None, NODES)
    )
    stranger = Identity(name="no-such-user-here", uid=5, gid=5, group="x", home="/")
    assert not any(
        o.startswith("--uid") for o in backend.options("s", make_request(), "x", stranger, NODES)
    )
    strict = SlurmBackend(submit_as="owner")
    strict.can_switch_user = True
    with pytest.raises(RequestError, match="has no account on the Slurm cluster"):
        strict.options("s", make_request(), "x", stranger, NODES)


def test_our_queue_settings_are_refused_under_slurm_with_slurms_equivalent(tmp_path: Path) -> None:
    config = Config({"Scheduler": {"backend": "slurm", "user_gpu_quota": 2, "backfill": False}})
    with pytest.raises(SettingsError) as caught:
        Scheduler(Store(tmp_path / "s.sqlite"), config=config)
    message = str(caught.value)
    assert "c.Scheduler.user_gpu_quota does not apply when Slurm places sessions" in message
    assert "MaxTRESPerUser=gres/gpu=N" in message and "sched/backfill" in message


# the scheduler following Slurm


class FakeSlurm:
    """Slurm's commands, answering from what the test sets."""

    def __init__(self) -> None:
        self.submitted: list[list[str]] = []
        self.cancelled: list[str] = []
        self.jobs_now: dict[str, Job] = {}
        self.allocations: dict[str, tuple[str, list[int]]] = {}
        self.order: list[str] = []
        self.nodes_now = {"a": SlurmNode("a", "idle", "", ("gpumem80g",), {"a100": 2})}

    def submit(self, options: list[str]) -> str:
        self.submitted.append(options)
        job = str(100 + len(self.submitted))
        self.jobs_now[job] = Job(job, "PENDING", "None", None, "", 1)
        return job

    def cancel(self, job_ids: list[str]) -> None:
        self.cancelled += job_ids

    def jobs(self, job_ids: list[str]) -> dict[str, Job]:
        return {j: self.jobs_now[j] for j in job_ids if j in self.jobs_now}

    def nodes(self) -> dict[str, SlurmNode]:
        return self.nodes_now

    def pending_order(self, partition: str) -> list[str]:
        return self.order

    def allocation(self, job_id: str) -> tuple[str, list[int]] | None:
        return self.allocations.get(job_id)

    def run_job(self, job: str, node: str, gpu_ids: list[int]) -> None:
        self.jobs_now[job] = Job(job, "RUNNING", "None", 1000.0, node, 1)
        self.allocations[job] = (node, gpu_ids)


def slurm_config(tmp_path: Path) -> Config:
    conf = tmp_path / "slurm.conf"
    conf.write_text("# never read: the commands are the test's stand-in\n")
    return Config({"Scheduler": {"backend": "slurm"}, "SlurmBackend": {"slurm_conf": str(conf)}})


def test_a_missing_slurm_conf_is_refused_before_any_command_runs(tmp_path: Path) -> None:
    config = Config(
        {"Scheduler": {"backend": "slurm"}, "SlurmBackend": {"slurm_conf": "/nowhere/slurm.conf"}}
    )
    with pytest.raises(SettingsError, match=r"/nowhere/slurm.conf does not exist: set c\.Slurm"):
        Scheduler(Store(tmp_path / "s.sqlite"), config=config)


@pytest.fixture
def fake() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def sched(tmp_path: Path, fake: FakeSlurm) -> Scheduler:
    s = Scheduler(Store(tmp_path / "s.sqlite"), clock=Clock(), config=slurm_config(tmp_path))
    assert s.slurm is not None
    s.slurm.commands = fake  # type: ignore[assignment]
    s.register_node("a", "http://a", gpus(2))
    return s


def look(sched: Scheduler) -> None:
    assert sched.slurm is not None
    asked, placed = sched.slurm_jobs()
    sched.take_slurm_view(sched.slurm.look(asked, placed), asked)


def test_a_session_is_placed_where_and_on_the_gpus_slurm_allocated(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    assert fake.submitted[0][0] == f"--job-name=hwsched-{sid}"
    fake.jobs_now["101"] = Job("101", "PENDING", "Resources", 5000.0, "", 1)
    fake.order = ["99", "101"]  # a job that is not ours is ahead in Slurm's queue
    look(sched)
    record = sched.record(sid)
    assert record.state == "queued" and record.position == 2
    assert record.waiting_for is not None and record.waiting_for.endswith("(Slurm: Resources)")
    assert record.estimated_start == 5000.0
    fake.run_job("101", "a", [1])
    look(sched)
    record = sched.record(sid)
    assert (record.state, record.node, record.gpu_ids) == ("placed", "a", [1])
    assert record.placement is not None and record.placement.agent_url == "http://a"
    assert not fake.cancelled


def test_the_job_is_cancelled_once_the_node_has_torn_the_session_down(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "a", [0])
    look(sched)
    sched.mark_running(sid, "a")
    sched.end(sid, "the client ended it", drain=True)
    assert fake.cancelled == []  # the node still tears it down: Slurm keeps the GPU held
    sched.heartbeat("a", [sid], {})
    assert fake.cancelled == []
    sched.heartbeat("a", [], {})
    assert fake.cancelled == ["101"]


def test_a_queued_session_that_ends_cancels_its_job_at_once(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    sched.end(sid, "the client gave up")
    assert fake.cancelled == ["101"]


@pytest.mark.parametrize(
    ("job_state", "words"),
    [
        ("TIMEOUT", "Slurm's time limit for job 101 was reached"),
        ("CANCELLED", "job 101 was cancelled in Slurm"),
        ("NODE_FAIL", "node a failed in Slurm (job 101)"),
        (None, "Slurm no longer knows job 101"),
    ],
)
def test_a_job_that_slurm_ends_ends_its_session_with_slurms_reason(
    sched: Scheduler, fake: FakeSlurm, job_state: str | None, words: str
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "a", [0])
    look(sched)
    if job_state is None:
        del fake.jobs_now["101"]
    else:
        fake.jobs_now["101"] = Job("101", job_state, "None", 1000.0, "a", 1)
    look(sched)
    assert sched.record(sid).end_reason == words
    assert sid in sched.draining  # the node tears it down; its heartbeat says when


def test_a_node_slurm_marks_down_ends_its_sessions_with_that_reason(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "a", [0])
    look(sched)
    fake.nodes_now["a"] = SlurmNode("a", "down", "maintenance", (), {"a100": 2})
    look(sched)
    assert sched.record(sid).end_reason == "node a is down in Slurm: maintenance"


def test_a_session_submitted_after_slurm_was_asked_is_left_for_the_next_look(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    assert sched.slurm is not None
    seen = sched.slurm.look([], set())
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    sched.take_slurm_view(seen, [])
    assert sched.record(sid).state == "queued"


def test_slurm_not_answering_is_said_and_changes_nothing(sched: Scheduler) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    sched.take_slurm_view(Observation(error="squeue: Unable to contact slurm controller"), ["101"])
    record = sched.record(sid)
    assert record.state == "queued"
    assert (
        record.waiting_for == "Slurm is not answering: squeue: Unable to contact slurm controller"
    )


def test_a_job_slurm_runs_on_a_node_without_an_agent_ends_with_what_to_do(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "elsewhere", [0])
    look(sched)
    assert "no hwsched node agent is registered" in str(sched.record(sid).end_reason)
    assert fake.cancelled == ["101"]


def test_a_restarted_scheduler_knows_each_sessions_job(
    tmp_path: Path, sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    again = Scheduler(sched.store, config=slurm_config(tmp_path))
    assert again.live[sid].job == "101"


def test_a_running_sessions_job_that_slurm_requeues_ends_the_session(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "a", [0])
    look(sched)
    fake.jobs_now["101"] = Job("101", "PENDING", "BeginTime", None, "", 1)
    look(sched)
    assert sched.record(sid).end_reason == "Slurm put job 101 back in its queue (requeued)"


def test_a_job_slurm_is_still_ending_is_judged_by_how_it_ends(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    sid = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    fake.run_job("101", "a", [0])
    look(sched)
    fake.jobs_now["101"] = Job("101", "COMPLETING", "None", 1000.0, "a", 1)  # after scancel
    look(sched)
    assert sched.record(sid).state == "placed"
    fake.jobs_now["101"] = Job("101", "CANCELLED", "None", 1000.0, "a", 1)
    look(sched)
    assert sched.record(sid).end_reason == "job 101 was cancelled in Slurm"


def test_a_job_whose_session_a_failed_commit_took_back_is_cancelled(
    sched: Scheduler, fake: FakeSlurm
) -> None:
    """sbatch runs before the session is on disk; a commit that then fails (a full disk)
    takes the session back, and the job must not be left holding its GPUs."""
    kept = sched.submit(make_request(gpus=1), "ann", "dev-1")["id"]
    store = sched.store
    store.on_dirty = lambda: None  # writes wait for a commit, as under group commit
    sched.submit(make_request(gpus=1), "bob", "dev-2")
    store._failed(sqlite3.OperationalError("database or disk is full"))  # rolled back
    store.on_dirty = None
    sched.load(replan=False)
    assert list(sched.live) == [kept]
    assert fake.cancelled == ["102"]  # bob's; ann's job, on disk, stays
