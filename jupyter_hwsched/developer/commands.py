"""The developer machine's ``hwsched`` subcommands: ``status``, ``usage``, ``warm`` (and
``share``, the share agent, in :mod:`jupyter_hwsched.developer.share.app`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_hwsched.developer.environment import caller_identity
from jupyter_hwsched.developer.render import render_pool, render_usage
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.clients import SchedulerClient, ShareClient
from jupyter_hwsched.protocol.errors import HwschedError, NotFoundError


def _fetch(what: str, call: Callable[[SchedulerClient], Awaitable[Any]]) -> Any:
    """One call to the scheduler with the client's settings; None after printing an error."""

    async def fetch() -> Any:
        async with HwschedClient().scheduler() as api:
            return await call(api)

    try:
        return asyncio.run(fetch())
    except HwschedError as exc:
        print(f"hwsched {what}: error: {exc}", file=sys.stderr)
        return None


def status(argv: list[str]) -> int:
    """``hwsched status``: nodes, GPUs, holders and the queue."""
    parser = argparse.ArgumentParser(prog="hwsched status", description=status.__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    pool = _fetch("status", lambda api: api.pool())
    if pool is None:
        return 1
    me = caller_identity().name
    print(json.dumps(pool, indent=1) if args.json else render_pool(pool, me=me))
    return 0


def warm(argv: list[str]) -> int:
    """``hwsched warm``: your warm leases, kept by this machine's share agent; ``end`` closes
    their shares, and each node drops what it kept when it next checks (a few seconds)."""
    parser = argparse.ArgumentParser(prog="hwsched warm", description=warm.__doc__)
    parser.add_argument("action", nargs="?", choices=["list", "end"], default="list")
    parser.add_argument("lease", nargs="*", help="lease ids to end (default: all of yours)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    settings = HwschedClient()
    if not settings.share_socket:
        print(
            "hwsched warm: error: no share agent configured (HWSCHED_SHARE_SOCKET)", file=sys.stderr
        )
        return 1

    async def act() -> list[dict[str, Any]]:
        async with ShareClient(settings.share_socket) as share:
            leases = await share.leases()
            if args.action == "end":
                unknown = set(args.lease) - {lease["id"] for lease in leases}
                if unknown:
                    raise NotFoundError(f"no warm lease {', '.join(sorted(unknown))} of yours")
                for lease in leases:
                    if not args.lease or lease["id"] in args.lease:
                        await share.end_lease(lease["id"])
                        print(f"ended warm lease {lease['id']} on {lease['node']}")
            return leases

    try:
        leases = asyncio.run(act())
    except HwschedError as exc:
        print(f"hwsched warm: error: {exc}", file=sys.stderr)
        return 1
    if args.action == "list":
        if args.json:
            print(json.dumps(leases, indent=1))
        for lease in [] if args.json else leases:
            state = f"in use by {lease['in_use']}" if lease["in_use"] else "idle"
            print(
                f"{lease['id']}  {lease['node']}  {state}, kept {lease['keep_warm']:g} s after use"
            )
        if not leases and not args.json:
            print("no warm lease")
    return 0


def parse_duration(text: str) -> float:
    """``90``, ``30m``, ``24h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90, 30m, 24h or 7d"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return value


def usage(argv: list[str]) -> int:
    """``hwsched usage``: GPU time allocated and busy, per user."""
    parser = argparse.ArgumentParser(prog="hwsched usage", description=usage.__doc__)
    parser.add_argument(
        "--since", type=parse_duration, default=7 * 86400, help="window, e.g. 24h (default 7d)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    report = _fetch("usage", lambda api: api.usage(args.since))
    if report is None:
        return 1
    print(json.dumps(report, indent=1) if args.json else render_usage(report))
    return 0
