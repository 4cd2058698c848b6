"""Group commit (scheduler/commits.py): one commit per event-loop turn, nothing answered before
it is on disk, and a full disk rolls back to the state on disk instead of acting on a change
that is not there. The full disk is a real one: a small tmpfs, filled."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from test_scheduler_core import Clock, gpus, req
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from jupyter_hwsched.protocol.errors import SessionEnded
from jupyter_hwsched.protocol.identity import Principal
from jupyter_hwsched.scheduler.commits import GroupCommit
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.handlers import RenewHandler, handlers
from jupyter_hwsched.scheduler.store import Store, StoreFailure


def on_disk(path: Path) -> list[tuple[str, str]]:
    """The sessions another connection reads: what a restarted scheduler would load."""
    with sqlite3.connect(path) as other:
        return list(other.execute("SELECT id, state FROM sessions ORDER BY seq"))


def test_one_commit_per_turn_and_nothing_seen_before_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def main() -> None:
        store = Store(path)
        sched = Scheduler(store, clock=Clock())
        commits = GroupCommit(store, lambda: sched.load(replan=False))
        sched.register_node("a", "http://a", gpus(4))
        placed = [sched.submit(req(1), user=f"u{i}", host="h")["id"] for i in range(3)]
        assert on_disk(path) == []  # the turn is not over
        await commits.durable()
        assert on_disk(path) == [(sid, "placed") for sid in placed]
        assert commits.commits == 1
        await commits.durable()  # nothing pending: returns at once
        sched.end(placed[0], "done")
        await asyncio.sleep(0)  # a turn with no waiter commits too
        await asyncio.sleep(0)
        assert (placed[0], "ended") in on_disk(path)
        assert commits.commits == 2
        commits.close()
        store.close()

    asyncio.run(main())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "hwsched-test", point], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", point], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"x" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_is_refused_and_rolled_back_to_what_is_on_disk(small_disk: Path) -> None:
    path = small_disk / "s.sqlite"

    async def main() -> None:
        store = Store(path)
        sched = Scheduler(store, clock=Clock())
        commits = GroupCommit(store, lambda: sched.load(replan=False))
        sched.register_node("a", "http://a", gpus(2))
        kept = sched.submit(req(1), user="a", host="h")["id"]
        await commits.durable()
        filler = fill(small_disk)
        # big enough rows that the log must grow onto the full disk
        lost = [sched.submit(req(1), user="b" * 40_000, host="h")["id"]]
        with pytest.raises(StoreFailure, match="could not write its state"):
            await commits.durable()
            lost.append(sched.submit(req(1), user="c" * 40_000, host="h")["id"])
            await commits.durable()
        await asyncio.sleep(0)  # the reload runs after the failure has unwound
        assert set(sched.live) == {kept}, "the scheduler acts only on what is on disk"
        [held] = [g for n in sched.node_list() for g in n["gpus"] if g["holder"]]
        assert held["session"] == kept
        # the disk stays full, and a request waits that could be placed: the scheduler does
        # not retry at every turn of its loop (a reload places nothing; the next tick does)
        failures = commits.failures
        for _ in range(50):
            await asyncio.sleep(0)
        assert commits.failures == failures

        filler.unlink()  # the operator makes room
        again = sched.submit(req(1), user="d", host="h")["id"]
        await commits.durable()
        assert [sid for sid, _ in on_disk(path)] == [kept, again]
        commits.close()
        store.close()

    asyncio.run(main())


def test_a_refusal_waits_for_the_change_it_reports(tmp_path: Path) -> None:
    """A renewal refused because the session ended (410) is answered only once that end is
    on disk: a power cut cannot bring back a session its client was told had ended."""
    path = tmp_path / "s.sqlite"

    async def main() -> None:
        store = Store(path)
        sched = Scheduler(store, clock=Clock())
        commits = GroupCommit(store, lambda: sched.load(replan=False))
        sched.register_node("a", "http://a", gpus(1))
        sid = sched.submit(req(1), user="u", host="h")["id"]
        await commits.durable()
        operator = Principal("operator", "ops")
        app = web.Application(handlers(sched, lambda token: operator, commits))
        request = HTTPServerRequest(
            start_line=RequestStartLine("POST", f"/api/sessions/{sid}/renew", "HTTP/1.1"),
            headers=HTTPHeaders({"Authorization": "token t", "Host": "scheduler"}),
            connection=mock.Mock(),
        )
        handler = RenewHandler(app, request, scheduler=sched, authenticate=lambda t: operator)
        handler.commits = commits
        handler.prepare()
        sched.end(sid, "ended meanwhile")  # in this turn: its commit is still to come
        assert on_disk(path) == [(sid, "placed")]
        with pytest.raises(SessionEnded):
            await handler.post(sid)
        assert on_disk(path) == [(sid, "ended")]
        commits.close()
        store.close()

    asyncio.run(main())
