"""Group commit: one durable commit per turn of the event loop, for every change of that turn.

With ``synchronous=full`` a commit costs a sync of the write-ahead log, and a request changes
the state more than once (a submission is added, then placed). Committing each write makes
the sync the scheduler's limit. Here the first write of a turn opens a transaction and asks
for one commit at the end of the turn (``loop.call_soon``): every request handled in that
turn (several, under load: the ones whose bytes arrived together) and every background
change joins it. A handler answers only once the changes it made are committed
(``await commits.durable()``), so a change the scheduler answered for survives a power cut,
as before, at one sync per turn instead of one per write.

A commit that fails (the disk is full) is rolled back: the requests waiting for it are
answered 503 with the reason, and the scheduler reloads its working set from the store, so
that it never acts on a change that is not on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jupyter_hwsched.scheduler.store import Store, StoreFailure


class GroupCommit:
    """Commits ``store`` once per event-loop turn that changed it."""

    def __init__(
        self,
        store: Store,
        reload: Callable[[], None] = lambda: None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.store = store
        self.reload = reload  # the working set from the store
        self.log = log if log is not None else logging.getLogger(__name__)
        self.commits = 0
        self.failures = 0
        self._pending: asyncio.Future[None] | None = None
        self._reload_due = False  # a reload is scheduled
        self._failing = False  # since the last commit that worked
        store.on_dirty = self._dirty
        store.on_failure = self._failed

    def _dirty(self) -> None:
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        done = self._pending
        if done is None:
            return
        try:
            self.store.commit()
        except Exception as exc:
            if done is self._pending:  # _failed did not tell the waiters (not a StoreFailure)
                self._pending = None
                done.set_exception(exc)
                done.exception()
            # nothing is half-done between turns: reload now, before anyone reads the
            # rolled-back changes from memory
            self._reload()
            return
        self._pending = None
        self.commits += 1
        if self._failing:
            self._failing = False
            self.log.warning("the scheduler's state can be written again")
        done.set_result(None)

    def _failed(self, failure: StoreFailure) -> None:
        """A write or commit was rolled back, with every change of this turn: whoever waits
        for them is told, and the working set is reloaded once the code that made the change
        has unwound (a write fails in the middle of a change)."""
        self.failures += 1
        done, self._pending = self._pending, None
        if done is not None and not done.done():
            done.set_exception(failure)
            done.exception()  # retrieved: a turn with no waiter must not log it again
        if not self._failing:  # once, not at every failed turn of a full disk
            self._failing = True
            self.log.error("%s; reloading the scheduler's state from the store", failure)
        if not self._reload_due:
            self._reload_due = True
            asyncio.get_running_loop().call_soon(self._reload)

    def _reload(self) -> None:
        """The working set from the store, without placing anything (placing writes, and a
        full disk would fail it again at once: the next tick places)."""
        self._reload_due = False
        try:
            self.reload()
        except Exception as exc:  # the store cannot be read either: the next tick tries
            self.log.error("reloading the scheduler's state failed: %s", exc)

    async def durable(self) -> None:
        """Return once every change made so far is committed; raise StoreFailure if its
        commit failed."""
        if self._pending is not None:
            await asyncio.shield(self._pending)

    def close(self) -> None:
        """Commit what is left (the service stops); a failure is logged, not retried."""
        self.store.on_dirty = None
        self.store.on_failure = None
        self._pending = None
        try:
            self.store.commit()
        except StoreFailure as exc:
            self.log.error("%s", exc)
