"""``hwrun --gpu N -- CMD ARGS...``: run a command on a pooled GPU in your own environment.

Output streams live, Ctrl-C reaches CMD, and hwrun exits with CMD's exit code. hwrun's own
failures exit 2 (bad input) or 125 (the pool could not run the command), each with one line
on stderr that says what to change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..client.command import exit_status, run_command
from ..client.config import HwschedClient
from ..client.options import add_request_arguments, request_from_args
from ..client.session import describe_gpus
from ..errors import AuthError, ForbiddenError, HwschedError, RequestError

USAGE_ERROR = 2
POOL_ERROR = 125


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwrun",
        description="Run a command on a GPU from the pool, in your own environment.",
        usage="hwrun [--gpu N] [--gpu-type T] [--gpu-mem SIZE] [--timeout S] [-q] -- CMD [ARGS...]",
    )
    add_request_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="say nothing but CMD's output")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, command = split_argv(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    if not command:
        print(
            "hwrun: error: no command given: write it after '--', e.g. hwrun --gpu 1 -- nvidia-smi",
            file=sys.stderr,
        )
        return USAGE_ERROR

    def progress(phase: str, info: dict[str, Any]) -> None:
        if args.quiet:
            return
        if phase == "queued":
            msg = f"queued, position {info.get('position')}: {info.get('waiting_for', '')}"
        elif phase == "ready":
            msg = f"running on {info.get('node')}, {describe_gpus(info)}"
        elif phase == "exited":
            msg = f"command exited with status {info['exit']}; GPU released"
        else:
            return
        print(f"hwrun: {msg}", file=sys.stderr, flush=True)

    try:
        request = request_from_args(args)
        settings = HwschedClient()
        code = asyncio.run(run_command(settings, request, command, progress))
    except (RequestError, AuthError, ForbiddenError) as exc:
        print(f"hwrun: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except HwschedError as exc:
        print(f"hwrun: error: {exc}", file=sys.stderr)
        return POOL_ERROR
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("hwrun: cancelled; nothing is left running", file=sys.stderr)
        return 130
    return exit_status(code)


if __name__ == "__main__":
    sys.exit(main())
