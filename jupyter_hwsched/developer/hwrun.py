"""``hwrun --gpu N -- CMD ARGS...``: run a command on a pooled GPU in your own environment.

Output streams live, Ctrl-C reaches CMD, and hwrun exits with CMD's exit code. hwrun's own
failures exit 2 (bad input) or 125 (the pool could not run the command), each with one line
on stderr that says what to change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from jupyter_hwsched.developer.command import RECONNECT, exit_status, run_command
from jupyter_hwsched.developer.options import add_request_arguments, request_from_args
from jupyter_hwsched.developer.session import describe_gpus
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.errors import AuthError, ForbiddenError, HwschedError, RequestError
from jupyter_hwsched.protocol.records import SessionRecord

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

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"hwrun: {msg}", file=sys.stderr, flush=True)

    def progress(phase: str, info: SessionRecord) -> None:
        if phase == "queued":
            say(f"queued, position {info.position}: {info.waiting_for or ''}")
        elif phase == "ready":
            say(f"running on {info.node}, {describe_gpus(info)}")
        elif phase == "reconnecting":
            say(
                f"the connection to {info.node} dropped; waiting up to {RECONNECT:.0f} s for "
                "its agent to come back"
            )
        elif phase == "resumed":
            say(f"reconnected to {info.node}; the output goes on from where it stopped")

    try:
        request = request_from_args(args)
        if request.shared:
            raise RequestError(
                "--shared is for kernels kept resident on a share of a GPU (%%hwrun --keep, "
                "the Remote GPU kernel); a command gets whole GPUs: leave out --shared"
            )
        settings = HwschedClient()
        code = asyncio.run(run_command(settings, request, command, progress))
        say(f"command exited with status {code}; GPU released")
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
