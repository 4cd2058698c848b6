"""The developer machine's ``hwsched`` subcommands: ``status``, ``usage`` (and ``share``, the
share agent, in :mod:`jupyter_hwsched.developer.share.app`)."""

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
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import HwschedError


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
