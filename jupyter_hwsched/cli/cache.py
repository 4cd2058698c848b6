"""``hwsched cache``: the nodes' caches of developers' read-mostly trees.

``hwsched cache forget``, for a developer: this machine forgets which files your runs read,
and every node drops its copies of your files the next time it serves you.
``hwsched cache status|purge --node URL``, for an operator (the pool token): one node's cache,
and purging it whole or one user's part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.clients import AgentClient, ShareClient
from jupyter_hwsched.protocol.errors import HwschedError


async def _forget(settings: HwschedClient) -> dict[str, object]:
    if not settings.share_socket:
        raise HwschedError("no share agent here: set HWSCHED_SHARE_SOCKET or run 'hwsched up'")
    async with ShareClient(settings.share_socket) as share:
        return await share.forget_hot_set()


async def _node(args: argparse.Namespace, settings: HwschedClient) -> dict[str, object]:
    if not settings.token:
        raise HwschedError("an operator's command: set HWSCHED_TOKEN to the pool token")
    async with AgentClient(args.node, settings.token, settings.ca_file or None) as agent:
        if args.action == "status":
            return await agent.cache()
        return await agent.purge_cache(args.user, args.uid, args.host or "")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hwsched cache", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["forget", "status", "purge"])
    parser.add_argument("--node", help="the node agent's URL (status, purge)")
    parser.add_argument("--user", help="purge only this user's copies (with --uid, --host)")
    parser.add_argument("--uid", type=int, default=-1)
    parser.add_argument("--host", help="the developer machine the user's copies came from")
    args = parser.parse_args(argv)
    settings = HwschedClient()
    try:
        if args.action == "forget":
            done = asyncio.run(_forget(settings))
            print(f"forgot {done['user']}'s hot set; nodes drop their copies when next used")
            return 0
        if not args.node:
            parser.error(f"{args.action} needs --node URL")
        print(json.dumps(asyncio.run(_node(args, settings)), indent=1))
        return 0
    except HwschedError as exc:
        print(f"hwsched cache: {exc}", file=sys.stderr)
        return 1
