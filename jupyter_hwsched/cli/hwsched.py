"""``hwsched``: the services (scheduler, agent, share), ``status`` and ``up``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any
from urllib.parse import urlencode

from ..errors import HwschedError

SUBCOMMANDS = {
    "scheduler": "run the scheduler service",
    "agent": "run the node agent on a GPU machine",
    "share": "run the share agent on a developer machine",
    "status": "show nodes, GPUs, holders and the queue",
    "usage": "GPU time allocated and busy, per user",
    "up": "run scheduler, node agent and share agent on this machine",
}


def help_text() -> str:
    lines = ["usage: hwsched COMMAND [options]   (hwsched COMMAND --help for options)", ""]
    lines += [f"  {name:<10} {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "scheduler":
        from ..scheduler.app import SchedulerApp

        SchedulerApp.launch_instance(rest)
    elif command == "agent":
        from ..agent.extension import AgentApp

        # jupyter_server reads its token from JUPYTER_TOKEN; the pool shares one token
        if os.environ.get("HWSCHED_TOKEN") and not os.environ.get("JUPYTER_TOKEN"):
            os.environ["JUPYTER_TOKEN"] = os.environ["HWSCHED_TOKEN"]
        AgentApp.launch_instance(rest)
    elif command == "share":
        from ..share.app import ShareAgentApp

        ShareAgentApp.launch_instance(rest)
    elif command == "status":
        return status(rest)
    elif command == "usage":
        return usage(rest)
    elif command == "up":
        from .up import up

        return up(rest)
    else:
        print(f"hwsched: unknown command {command!r}\n\n{help_text()}", file=sys.stderr)
        return 2
    return 0


def fetch(path: str, query: dict[str, str] | None = None) -> Any:
    """GET one scheduler resource with the client's settings (for status and usage)."""
    from ..client.api import SchedulerAPI
    from ..client.config import HwschedClient

    async def get() -> Any:
        settings = HwschedClient()
        settings.check()
        api = SchedulerAPI(settings.url, settings.token)
        try:
            return await api.request("GET", path + (f"?{urlencode(query)}" if query else ""))
        finally:
            api.close()

    return asyncio.run(get())


def status(argv: list[str]) -> int:
    from ..client.environment import caller_identity
    from ..client.status import render_pool

    parser = argparse.ArgumentParser(prog="hwsched status", description=SUBCOMMANDS["status"])
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    try:
        pool = fetch("/api/pool")
    except HwschedError as exc:
        print(f"hwsched status: error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(pool, indent=1) if args.json else render_pool(pool, me=caller_identity()["name"])
    )
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
    from ..client.status import render_usage

    parser = argparse.ArgumentParser(prog="hwsched usage", description=SUBCOMMANDS["usage"])
    parser.add_argument(
        "--since", type=parse_duration, default=7 * 86400, help="window, e.g. 24h (default 7d)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    try:
        report = fetch("/api/usage", {"since": str(args.since)})
    except HwschedError as exc:
        print(f"hwsched usage: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else render_usage(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
