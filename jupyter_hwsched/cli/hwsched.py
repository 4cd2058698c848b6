"""``hwsched``: a thin dispatcher over the wings' own subcommands.

Each subcommand lives with the machine it runs on and is imported only when asked for, so
``hwsched status`` loads nothing of the scheduler or the node agent.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module:function taking the remaining argv, what it does)
SUBCOMMANDS = {
    "scheduler": ("jupyter_hwsched.scheduler.app:main", "run the scheduler service"),
    "agent": ("jupyter_hwsched.agent.extension:main", "run the node agent on a GPU machine"),
    "share": (
        "jupyter_hwsched.developer.share.app:main",
        "run the share agent on a developer machine",
    ),
    "status": (
        "jupyter_hwsched.developer.commands:status",
        "show nodes, GPUs, holders and the queue",
    ),
    "usage": ("jupyter_hwsched.developer.commands:usage", "GPU time allocated and busy, per user"),
    "up": (
        "jupyter_hwsched.cli.up:up",
        "run scheduler, node agent and share agent on this machine",
    ),
    "cache": (
        "jupyter_hwsched.cli.cache:main",
        "forget your hot set (developers); a node's cache (operators)",
    ),
    "warm": (
        "jupyter_hwsched.developer.commands:warm",
        "list or end your warm leases (what nodes keep ready for you)",
    ),
    "pki": ("jupyter_hwsched.cli.pki:main", "the pool's certificate authority (for operators)"),
    "kernelspec": (
        "jupyter_hwsched.developer.kernelspecs:main",
        "install, list and remove Remote GPU kernelspecs",
    ),
}


def help_text() -> str:
    lines = ["usage: hwsched COMMAND [options]   (hwsched COMMAND --help for options)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"hwsched: unknown command {command!r}\n\n{help_text()}", file=sys.stderr)
        return 2
    module, _, function = SUBCOMMANDS[command][0].partition(":")
    code = getattr(importlib.import_module(module), function)(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
