"""The node's sessions as a plain service: placement check, start, end, teardown, heartbeat.

:class:`NodeService` holds the node's live sessions and keeps the node's side of the protocol
with the scheduler. It knows nothing of jupyter_server: kernels are started and stopped
through a :class:`KernelHost` (the agent app hands it the server's kernel manager), so the
whole start path runs, and is tested, without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import shutil
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from jupyter_hwsched.agent import recovery
from jupyter_hwsched.agent.authorizer import secret_hash
from jupyter_hwsched.agent.cache import NodeCache
from jupyter_hwsched.agent.gpus import GpuInventory
from jupyter_hwsched.agent.limits import SessionLimits
from jupyter_hwsched.agent.mount import mounts_under, unmount
from jupyter_hwsched.agent.runner import ExecProcess, Runner
from jupyter_hwsched.agent.sessions import NodeSession, gpu_devices
from jupyter_hwsched.agent.sharing import SharedGpus
from jupyter_hwsched.agent.warm import MODULE_FILES, WarmLease, unvalidated
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import (
    ConflictError,
    ForbiddenError,
    HwschedError,
    NotFoundError,
    SessionEnded,
    UnavailableError,
)
from jupyter_hwsched.protocol.records import (
    GpuRecord,
    Heartbeat,
    NodeRegistration,
    NodeStats,
    SessionRecord,
    StartSpec,
)
from jupyter_hwsched.protocol.version import PROTOCOL_VERSION


class KernelHost(Protocol):
    """Starts and stops kernels inside sessions' containers (the agent's kernel manager)."""

    async def start_kernel(self, session: NodeSession) -> str:
        """Start the session's kernel; return its id."""

    async def shutdown_kernel(self, kernel_id: str) -> None:
        """Stop a kernel now."""

    async def evaluate(self, kernel_id: str, code: str, expression: str = "None") -> Any:
        """Run ``code`` silently in a kernel, then read back the literal ``expression``."""

    async def adopt_kernel(self, session: NodeSession, process: ExecProcess) -> None:
        """Take back the session's kernel, which an earlier agent started (recovery.py)."""

    def kernel_process(self, kernel_id: str) -> ExecProcess | None:
        """The kernel's process, where it runs."""


class NodeService:
    """One node's sessions, and its part of the protocol with the scheduler."""

    def __init__(
        self,
        *,
        node_name: str,
        inventory: GpuInventory,
        runner: Runner,
        scheduler: SchedulerClient,
        kernels: KernelHost,
        state_dir: Path,
        sshfs_options: list[str],
        labels: list[str],
        allow_root: bool = False,
        root_users: tuple[str, ...] = (),
        limits: SessionLimits | None = None,
        cache: NodeCache | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        sharing: SharedGpus | None = None,
    ) -> None:
        self.node_name = node_name
        self.inventory = inventory
        self.gpus: dict[int, GpuRecord] = {g.index: g for g in inventory.gpus()}
        self.runner = runner
        self.scheduler = scheduler
        self.kernels = kernels
        self.state_dir = state_dir
        self.sshfs_options = sshfs_options
        self.labels = labels
        self.allow_root = allow_root
        self.root_users = frozenset(root_users)
        self.limits = limits if limits is not None else SessionLimits()
        self.cache = cache
        self.sharing = sharing if sharing is not None else SharedGpus()
        self.log = log or logging.getLogger(__name__)
        self.public_url = ""
        self.sessions: dict[str, NodeSession] = {}
        self.leases: dict[str, WarmLease] = {}  # by lease id; see warm.py
        #: sessions an earlier agent started: the kernels to take back, by session id,
        #: and why the others were not taken back (see recovery.py)
        self._adopting: dict[str, ExecProcess] = {}
        self._not_taken_back: dict[str, str] = {}
        self._strays: set[str] = set()  # containers no session owned at the last check
        self.ending: dict[str, NodeSession] = {}  # ended, being torn down
        self._cpu_samples: dict[str, tuple[float, float]] = {}

    # the node as a whole

    def take_back_sessions(self) -> None:
        """At start: take back the sessions an earlier agent left running, where all their
        parts still live (recovery.py), then remove every other container and mount of
        ours. Their kernels are taken back by ``finish_taking_back``, once serving."""
        for record in recovery.records(self.state_dir):
            try:
                found = recovery.take_back(
                    record,
                    node=self.node_name,
                    runner=self.runner,
                    state_dir=self.state_dir,
                    sshfs_options=self.sshfs_options,
                    cache=self.cache,
                )
            except Exception as exc:  # a bad record, or an engine or mount that fails to say
                found = f"the node agent restarted and could not take the session back: {exc!r}"
            session_id = str(record.get("id"))
            if isinstance(found, str):
                self.log.warning("not taking back session %s: %s", session_id, found)
                self._not_taken_back[session_id] = found
                continue
            session, kernel = found
            self.sessions[session.id] = session
            if kernel is not None:
                self._adopting[session.id] = kernel
            if session.shared_mem:
                self.sharing.add(session)
            self.log.info("taking back session %s (%s)", session.id, session.spec.kind)
        self.remove_leftovers()

    async def finish_taking_back(self) -> None:
        """Take back the kernels of the sessions taken back; end those whose kernel cannot
        be, and tell the scheduler of the sessions not taken back."""
        adopting, self._adopting = self._adopting, {}
        for session_id, process in adopting.items():
            session = self.sessions.get(session_id)
            if session is None:
                continue
            try:
                await self.kernels.adopt_kernel(session, process)
            except Exception as exc:
                session.kernel_id = None  # not the manager's: nothing of it to shut down
                await self.end_session(
                    session_id,
                    f"the node agent restarted and could not take the kernel back: {exc}",
                )
                continue
            self.log.info("took back session %s and its kernel %s", session_id, session.kernel_id)
        lost, self._not_taken_back = self._not_taken_back, {}
        for session_id, reason in lost.items():
            await self._report_end(session_id, reason)

    def record(self, session: NodeSession) -> None:
        """Write the running session down, for an agent that starts after this one stops."""
        kernel = self.kernels.kernel_process(session.kernel_id) if session.kernel_id else None
        try:
            recovery.save(session, kernel)
        except OSError as exc:
            self.log.warning("session %s: no record kept: %s", session.id, exc)

    def remove_leftovers(self) -> None:
        """Remove every container and mount of ours but the live sessions' (taken back)."""
        keep = {s.home or s.id for s in self.sessions.values()}
        kept_containers = {s.container_id for s in self.sessions.values()}
        for session_id, container_id in self.runner.containers(self.node_name).items():
            if container_id in kept_containers:
                continue
            self.log.warning("removing leftover container of session %s", session_id)
            self.runner.remove(container_id)
        state = self.state_dir
        # sessions' cached trees and in-memory /tmp first: the trees lie over the shares
        places = (state / "sessions", state / "mnt")
        kept = [place / name for place in places for name in keep]

        def leftover(point: str) -> bool:
            return not any(Path(point).is_relative_to(k) for k in kept)

        stuck_views = self.cache.remove_leftovers(frozenset(keep)) if self.cache else []
        if stuck_views:
            raise UnavailableError(f"cannot unmount leftover cached trees {stuck_views}")
        for point in [p for place in places for p in mounts_under(place) if leftover(p)]:
            self.log.warning("unmounting leftover %s", point)
            unmount(point)
        stuck = [p for place in places for p in mounts_under(place) if leftover(p)]
        if stuck:
            # never walk into a live mount: that is a developer's disk
            raise UnavailableError(f"cannot unmount leftover shares {stuck}; unmount them by hand")
        if (state / "sessions").is_dir():
            for child in (state / "sessions").iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        for empty in (state / "mnt").glob("*"):
            if empty.name in keep:
                continue
            try:
                empty.rmdir()  # empty mount points only
            except OSError as exc:
                self.log.warning("leaving %s: %s", empty, exc)
        # only root walks to the shares' mounts, unless the runner reads what it binds as the
        # developer (bubblewrap): then anyone may pass, but nobody may list the sessions there
        mode = 0o711 if self.runner.binds_as_developer else 0o700
        (state / "mnt").mkdir(parents=True, exist_ok=True, mode=mode)
        (state / "mnt").chmod(mode)
        (state / "sessions").mkdir(parents=True, exist_ok=True, mode=0o711)

    def registration(self) -> NodeRegistration:
        return NodeRegistration(
            url=self.public_url,
            gpus=tuple(self.gpus.values()),
            share=self.runner.roots_at_share,
            labels=tuple(self.labels),
            protocol=PROTOCOL_VERSION,
        )

    async def register(self, wait: bool = False) -> None:
        """Tell the scheduler this node's GPUs and address; with ``wait``, until it answers."""
        while True:
            try:
                await self.scheduler.register_node(self.node_name, self.registration())
                return
            except UnavailableError as exc:
                if not wait:
                    raise
                self.log.warning("%s; retrying", exc)
                await asyncio.sleep(1.0)

    async def heartbeat(self) -> None:
        """Report the live sessions, the GPUs' use and the warm leases (those past their idle
        time ended first); end what the scheduler says to end."""
        await self.expire_leases()
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(None, self.stats)
        try:
            reply = await self.scheduler.heartbeat(
                self.node_name,
                Heartbeat(
                    (*self.sessions, *self.ending),
                    stats,
                    self.cache.warm_keys() if self.cache else (),
                    tuple(lease.record() for lease in self.leases.values()),
                ),
            )
        except NotFoundError:
            await self.register()
            return
        except HwschedError as exc:
            self.log.warning("heartbeat failed: %s", exc)
            return
        self.sharing.reported(stats.cell_seconds)
        for session_id in reply.end:
            reason = reply.reasons.get(session_id) or "ended by the scheduler"
            await self.end_session(session_id, reason, tell_scheduler=False)

    def remove_strays(self) -> None:
        """Remove this node's containers that no live session or lease owned at this check
        and the one before (a container passes from a lease to its session between two
        awaits): those whose removal failed while their engine was away (blocking)."""
        live = [*self.sessions.values(), *self.ending.values()]  # copies: a worker thread
        kept = [lease.session for lease in list(self.leases.values())]
        owners = {s.home or s.id for s in live + kept} | {s.id for s in live}
        try:
            found = self.runner.containers(self.node_name)
        except Exception as exc:  # the engine is away: next time
            self.log.debug("cannot list the node's containers: %s", exc)
            return
        strays = {c for sid, c in found.items() if sid not in owners}
        seen_before, self._strays = self._strays, strays
        for session_id, container_id in found.items():
            if container_id in strays & seen_before:
                self.log.warning("removing the stray container of session %s", session_id)
                try:
                    self.runner.remove(container_id)
                except Exception as exc:
                    self.log.warning("the stray container %s stays: %s", container_id[:12], exc)

    async def check_shares(self) -> None:
        """End, cleanly, every session whose share stopped answering, and every warm lease
        (its developer closed it); remove stray containers."""
        loop = asyncio.get_running_loop()
        if self.runner.survives_agent:
            await loop.run_in_executor(None, self.remove_strays)
        for lease in list(self.leases.values()):
            mount = lease.session.mount
            idle = not lease.in_use and mount is not None
            if idle and not await loop.run_in_executor(None, mount.responsive):  # type: ignore[union-attr]
                await self.end_lease(lease, "its share was closed")
        for session_id, session in list(self.sessions.items()):
            mount = session.mount
            if mount is None or session.container_id is None:
                continue  # still starting
            if not await loop.run_in_executor(None, mount.responsive):
                reason = await self._why_ended(session_id)
                await self.end_session(
                    session_id, reason or "the connection to the developer's share was lost"
                )

    async def _why_ended(self, session_id: str) -> str | None:
        """The scheduler's reason, if it has ended the session: a share closes because its
        session ended, and the user should read why it ended, not that the share went."""
        try:
            record = await self.scheduler.session(session_id)
        except HwschedError:
            return None
        return record.end_reason if record.state == "ended" else None

    async def check_limits(self) -> None:
        """End, alone, every session that went over one of its limits, saying which; and
        every shared kernel that stays over its GPU memory. Time slicing on shared GPUs."""
        loop = asyncio.get_running_loop()
        for session_id, session in list(self.sessions.items()):
            if session.container_id is None or session.end_reason is not None:
                continue
            reason = await loop.run_in_executor(None, session.over_limit)
            if reason:
                await self.end_session(session_id, reason)
        self.sharing.gate.tick()
        await self.sharing.check_memory(self.gpu_memory_of, self.end_session)

    def _kernel_session(self, kernel_id: str) -> NodeSession | None:
        for session in self.sessions.values():
            if session.kernel_id == kernel_id:
                return session
        return None

    def kernel_cell_done(self, kernel_id: str, msg_id: str) -> None:
        """A kernel went idle after an execute request (kernels.py)."""
        session = self._kernel_session(kernel_id)
        if session is not None and session.shared_mem:
            self.sharing.cell_done(session.id, msg_id)

    def kernel_restarted(self, kernel_id: str) -> None:
        session = self._kernel_session(kernel_id)
        if session is not None and session.shared_mem:
            self.sharing.restarted(session.id)

    def gpu_memory_of(self, session: NodeSession) -> int | None:
        """The GPU memory a session uses: on real GPUs, NVML's per-process figures for its
        container's processes; on simulated ones its container's memory (what the heartbeats
        report for its GPU). None where it cannot be told."""
        if session.container_id is None:
            return None
        if self.inventory.simulated:
            return self.runner.memory_bytes(session.container_id)
        used = self.inventory.process_memory()
        if not used:
            return None
        return sum(b for pid, b in used.items() if self.runner.owns(session.container_id, pid))

    # GPU use

    def utilization(self) -> dict[str, float]:
        """Percent busy per GPU index: NVML's sample for real GPUs; for simulated GPUs, the CPU
        load of the session holding them (cores busy, spread over its GPUs)."""
        if not self.inventory.simulated:
            return {str(k): v for k, v in self.inventory.utilization().items()}
        now = time.monotonic()
        out: dict[str, float] = {}
        # a copy: this runs in a worker thread while the loop adds and ends sessions
        sessions = list(self.sessions.items())
        for session_id, session in sessions:
            used = self.runner.cpu_seconds(session.container_id) if session.container_id else None
            if used is None or not session.gpus:
                continue
            before = self._cpu_samples.get(session_id)
            self._cpu_samples[session_id] = (now, used)
            if before is None or now <= before[0]:
                continue
            load = (used - before[1]) / (now - before[0]) / len(session.gpus)
            for gpu in session.gpus:
                out[str(gpu.index)] = round(min(100.0, max(0.0, 100.0 * load)), 1)
        for gone in set(self._cpu_samples) - {sid for sid, _ in sessions}:
            del self._cpu_samples[gone]
        return out

    def memory_used(self) -> dict[str, int]:
        """Bytes in use per GPU index: NVML's reading for real GPUs; for simulated GPUs, the
        memory of the session holding them (spread over its GPUs, capped at their size)."""
        if not self.inventory.simulated:
            return {str(k): v for k, v in self.inventory.memory_used().items()}
        out: dict[str, int] = {}
        for session in list(self.sessions.values()):  # a copy, as in utilization
            used = self.runner.memory_bytes(session.container_id) if session.container_id else None
            if used is None or not session.gpus:
                continue
            for gpu in session.gpus:  # kernels sharing a GPU add up
                total = out.get(str(gpu.index), 0) + used // len(session.gpus)
                out[str(gpu.index)] = min(gpu.memory, total)
        return out

    def stats(self) -> NodeStats:
        return NodeStats(self.utilization(), self.memory_used(), self.sharing.cell_seconds())

    # one session

    async def placed_session(self, session_id: str, secret: str | None) -> SessionRecord:
        """The scheduler's record of a session about to start here, once the caller has shown
        its secret (``None``: the caller showed the cluster token)."""
        placed = await self.scheduler.session(session_id)
        expected = placed.secret_sha256
        if secret is not None and not (
            expected and hmac.compare_digest(secret_hash(secret), expected)
        ):
            raise ForbiddenError(f"that credential is not session {session_id}'s")
        return placed

    def _check_placement(self, placed: SessionRecord, spec: StartSpec) -> None:
        """Whether this node may start the session: placed here, from a host and as a user it
        serves."""
        if placed.id in self.sessions:
            raise ConflictError(f"session {placed.id} is already running on this node")
        if placed.state == "ended":
            raise ConflictError(f"session {placed.id} has ended: {placed.end_reason or 'ended'}")
        if placed.state != "placed" or placed.node != self.node_name:
            raise ConflictError(
                f"session {placed.id} is {placed.state} on {placed.node or 'no node'}, "
                f"not placed on {self.node_name}"
            )
        if not self.runner.roots_at_share and placed.host != socket.gethostname():
            raise ConflictError(
                f"node {self.node_name} runs work on its own filesystem (no container engine), "
                f"so it takes sessions only from its own host, not from {placed.host}"
            )
        asker = f"{placed.user}@{placed.host}"
        if spec.user.uid == 0 and not (self.allow_root or asker in self.root_users):
            raise ForbiddenError(
                f"this node does not run work as root for {asker}: run the client as your own "
                "user (or the node's operator lists you in --AgentApp.root_users)"
            )
        unknown = [i for i in placed.gpu_ids if i not in self.gpus]
        if unknown:
            raise ConflictError(f"session {placed.id} holds GPUs {unknown} this node does not have")

    async def start_session(self, spec: StartSpec, placed: SessionRecord) -> NodeSession:
        """Start a placed session (``placed``: from ``placed_session``): mount, container,
        kernel, then tell the scheduler it runs. A failure undoes all of it. The work runs
        as the account the scheduler verified, where the pool has identities, whatever the
        request says."""
        if placed.owner is not None:
            spec = replace(spec, user=placed.owner)
        self._check_placement(placed, spec)
        shared = placed.request.gpu_mem if placed.request.shared else None
        if shared and spec.kind != "kernel":
            await self._report_end(placed.id, "a shared GPU runs resident kernels only")
            raise ConflictError(
                "a shared GPU runs resident kernels (%%hwrun --keep, the Remote GPU kernel): "
                "ask for a whole GPU for a command (leave out --shared)"
            )
        try:
            limits = self.limits.resolve(placed.request) if self.runner.enforces_limits else None
        except HwschedError as exc:
            await self._report_end(placed.id, str(exc))  # its GPUs go back at once
            raise
        lease = None if shared else await self._lease_for(spec, placed, limits)
        if lease is not None:
            warm = await self._start_in_lease(lease, spec, placed)
            if warm is not None:
                return warm
        session = NodeSession(
            id=placed.id,
            secret_hash=placed.secret_sha256,
            node=self.node_name,
            spec=spec,
            gpus=[self.gpus[i] for i in placed.gpu_ids],
            state_dir=self.state_dir,
            runner=self.runner,
            sshfs_options=list(self.sshfs_options),
            limits=limits,
            cache=self.cache,
            host=placed.host,
            shared_mem=shared,
        )
        self.sessions[session.id] = session
        if shared:
            self.sharing.add(session)
        loop = asyncio.get_running_loop()
        session.starting = loop.create_future()
        try:
            await loop.run_in_executor(None, session.prepare)
            _still_wanted(session)
            if spec.kind == "kernel":
                session.kernel_id = await self.kernels.start_kernel(session)
                _still_wanted(session)
            await self.scheduler.mark_running(session.id, self.node_name)
        except BaseException as exc:
            failure = await self._start_failed(session, exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            session.starting.set_result(None)
        self.record(session)
        self.log.info("session %s running (%s) for uid %d", session.id, spec.kind, session.uid)
        return session

    async def _start_failed(self, session: NodeSession, exc: BaseException) -> BaseException:
        """Undo a start that failed, also when end_session came in meanwhile; what to raise:
        the error itself if it is one of ours, else one that gives the reason."""
        reason = session.end_reason or f"the node could not start the session: {exc}"
        self.sessions.pop(session.id, None)
        self.sharing.remove(session.id)
        self.ending[session.id] = session  # as in end_session
        try:
            await self._teardown(session)
        finally:
            self.ending.pop(session.id, None)
        await self._report_end(session.id, reason)
        return exc if isinstance(exc, HwschedError) else UnavailableError(reason)

    async def _teardown(self, session: NodeSession) -> None:
        """Kernel, command, container, mount, files: once, whatever state the session is in."""
        if session.torn_down:
            return
        session.torn_down = True
        recovery.forget(session)
        if session.kernel_id:
            try:
                await self.kernels.shutdown_kernel(session.kernel_id)
            except Exception as exc:  # the container goes anyway
                self.log.warning("kernel of session %s: %s", session.id, exc)
        if session.command is not None:
            session.command.signal(signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, session.close)

    async def end_session(
        self, session_id: str, reason: str, tell_scheduler: bool = True, warm: bool = False
    ) -> bool:
        """End a session: its start (if still under way) sees the reason and undoes itself.
        ``warm``: its client asks to keep it warm, as its start said (see warm.py). Whether
        it was kept warm."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.end_reason = reason
        self.sharing.remove(session_id)
        # still in the heartbeats until torn down: the scheduler keeps its GPUs, and hears
        # why it ended from us (a teardown over a dead link takes a while)
        self.ending[session_id] = session
        try:
            if session.starting is not None and not session.starting.done():
                await asyncio.shield(session.starting)
            kept = warm and not session.shared_mem and await self._keep_warm(session)
            if not kept:
                await self._teardown(session)
        finally:
            self.ending.pop(session_id, None)
        self.log.info("session %s ended: %s", session_id, reason)
        if tell_scheduler:
            await self._report_end(session_id, reason)
        return kept

    async def _report_end(self, session_id: str, reason: str) -> None:
        try:
            await self.scheduler.end(session_id, reason)
        except HwschedError as exc:
            self.log.warning("could not report the end of %s: %s", session_id, exc)

    async def stop(self) -> None:
        """The agent stops: end every session and every warm lease."""
        for session_id in list(self.sessions):
            await self.end_session(session_id, "the node agent stopped")
        for lease in list(self.leases.values()):
            await self.end_lease(lease, "the node agent stopped")
        self.scheduler.close()
        self.inventory.close()

    def describe(self) -> dict[str, object]:
        return {
            "node": self.node_name,
            "simulated": self.inventory.simulated,
            "gpus": [g.to_json() for g in self.gpus.values()],
            "sessions": [s.describe() for s in self.sessions.values()],
            "leases": [lease.describe() for lease in self.leases.values()],
            "cache": self.cache.describe() if self.cache else None,
        }

    # warm leases (warm.py)

    async def _keep_warm(self, session: NodeSession) -> bool:
        """Keep an ended session's container, mount and views under its share's lease, with
        nothing running and no GPU; start a kernel in it for a kernel session. Whether kept."""
        spec = session.spec
        lease_id = spec.share.lease if spec.share else ""  # granted by the developer's machine
        if not (
            lease_id
            and spec.keep_warm > 0
            and self.runner.binds_devices
            and session.container_id
            and session.mount is not None
            and not session.torn_down
            and lease_id not in self.leases
        ):
            return False
        loop = asyncio.get_running_loop()
        try:
            if session.kernel_id:
                await self.kernels.shutdown_kernel(session.kernel_id)
                session.kernel_id = None
            await loop.run_in_executor(None, self.runner.stop_processes, session.container_id)
            nodes = session.gpu_nodes()
            await loop.run_in_executor(
                None, self.runner.unbind_devices, session.container_id, nodes
            )
        except Exception as exc:
            self.log.warning("session %s cannot be kept warm: %s", session.id, exc)
            return False
        recovery.forget(session)  # a lease is not taken back by a restarted agent
        session.gpus, session.command = [], None
        session.home = session.home or session.id
        lease = WarmLease(lease_id, session, session.host, time.time() + spec.keep_warm)
        self.leases[lease_id] = lease
        if spec.kind == "kernel":
            lease.starting = asyncio.create_task(self._prestart(lease))
        self.log.info(
            "session %s kept warm under lease %s for %g s", session.id, lease_id, spec.keep_warm
        )
        return True

    async def _prestart(self, lease: WarmLease) -> None:
        """A kernel ready in the lease's container. Kept only if the next session's manifest
        can vouch for every module it imported (warm.unvalidated)."""
        session = lease.session
        try:
            kernel_id = await self.kernels.start_kernel(session)
        except Exception as exc:
            self.log.warning("lease %s: no kernel kept: %s", lease.id, exc)
            return
        try:
            files = await self.kernels.evaluate(kernel_id, "", MODULE_FILES)
            trees = tuple(session.cached.views) if session.cached else ()
            manifest = session.spec.share.cache if session.spec.share else None
            away = unvalidated(str(files), manifest, trees)
        except Exception as exc:
            away = [f"(cannot tell: {exc})"]
        if away:
            self.log.info(
                "lease %s: not keeping its kernel, which imported %s (not in the manifest)",
                lease.id,
                ", ".join(away[:3]) + (" ..." if len(away) > 3 else ""),
            )
            await self.kernels.shutdown_kernel(kernel_id)
            return
        lease.kernel_id = kernel_id

    async def _lease_for(
        self, spec: StartSpec, placed: SessionRecord, limits: object
    ) -> WarmLease | None:
        """The lease the session's share names, taken for it if it may run there; a lease of
        this developer's that cannot serve the session is ended (it would start cold)."""
        lease_id = spec.share.lease if spec.share else ""
        lease = self.leases.get(lease_id) if lease_id else None
        if lease is None or lease.in_use:
            return None
        if not lease.owned_by(placed.host, spec.user.uid):
            self.log.warning(
                "session %s named lease %s, which is not its user's", placed.id, lease_id
            )
            return None
        why = lease.mismatch(spec, limits)
        if why:
            self.log.info("session %s starts cold: lease %s: %s", placed.id, lease_id, why)
            await self.end_lease(lease, f"session {placed.id} could not use it: {why}")
            return None
        lease.in_use = placed.id
        return lease

    async def _start_in_lease(
        self, lease: WarmLease, spec: StartSpec, placed: SessionRecord
    ) -> NodeSession | None:
        """Run a placed session in what a lease kept: its GPUs bound, the kept kernel told
        its variables. None, the lease ended, where its container cannot take the GPUs (the
        session then starts cold); a later failure undoes all of it, the lease included."""
        if lease.starting is not None:
            await asyncio.shield(lease.starting)
        self.leases.pop(lease.id, None)
        session = lease.session
        gpus = [self.gpus[i] for i in placed.gpu_ids]
        loop = asyncio.get_running_loop()
        try:
            devices, _ = gpu_devices(gpus)
            container = str(session.container_id)
            await loop.run_in_executor(None, self.runner.bind_devices, container, devices)
        except Exception as exc:
            self.log.info("session %s starts cold: lease %s: %s", placed.id, lease.id, exc)
            await self.end_lease(lease, f"its container could not take the GPUs: {exc}")
            return None
        kernel_id = lease.kernel_id if lease.kernel_fits(spec) else None
        session.id, session.secret_hash, session.spec = placed.id, placed.secret_sha256, spec
        session.gpus = gpus
        session.end_reason, session.started = None, time.time()
        self.sessions[session.id] = session
        session.starting = loop.create_future()
        try:
            if kernel_id is not None:
                env = json.dumps(session.env())
                code = f"import os as _o, json as _j\n_o.environ.update(_j.loads({env!r}))"
                await self.kernels.evaluate(kernel_id, code + "\ndel _o, _j")
                session.kernel_id = kernel_id
            elif lease.kernel_id is not None:
                await self.kernels.shutdown_kernel(lease.kernel_id)
            if spec.kind == "kernel" and session.kernel_id is None:
                session.kernel_id = await self.kernels.start_kernel(session)
            _still_wanted(session)
            await self.scheduler.mark_running(session.id, self.node_name)
        except BaseException as exc:
            failure = await self._start_failed(session, exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            session.starting.set_result(None)
        self.record(session)
        self.log.info(
            "session %s running (%s) in warm lease %s%s",
            session.id,
            spec.kind,
            lease.id,
            ", its kept kernel" if kernel_id else "",
        )
        return session

    async def end_lease(self, lease: WarmLease, why: str) -> None:
        """Tear down what a lease kept."""
        if self.leases.get(lease.id) is lease:
            del self.leases[lease.id]
        if lease.starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(lease.starting)
        if lease.kernel_id and lease.session.kernel_id is None:
            lease.session.kernel_id = lease.kernel_id  # torn down with the rest
        await self._teardown(lease.session)
        self.log.info("warm lease %s ended: %s", lease.id, why)

    async def expire_leases(self) -> None:
        now = time.time()
        for lease in list(self.leases.values()):
            if not lease.in_use and lease.expires <= now:
                await self.end_lease(lease, "idle for its keep-warm time")


def _still_wanted(session: NodeSession) -> None:
    if session.end_reason is not None:
        raise SessionEnded(f"the session ended while it started: {session.end_reason}")
