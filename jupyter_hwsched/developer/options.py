"""The request options, written once for the cell magic and the ``hwrun`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.magic_arguments import argument

from jupyter_hwsched.protocol.request import HardwareRequest, make_request

F = TypeVar("F", bound=Callable[..., Any])

REQUEST_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--gpu", "--gpus"),
        {"default": "1", "dest": "gpu", "metavar": "N", "help": "number of GPUs (default 1)"},
    ),
    (
        ("--gpu-type",),
        {"default": None, "metavar": "T", "help": "GPU model, e.g. A100 or A100-80GB"},
    ),
    (
        ("--gpu-mem",),
        {"default": None, "metavar": "SIZE", "help": "minimum memory per GPU, e.g. 40G"},
    ),
    (
        ("--node",),
        {"default": None, "metavar": "NAME", "help": "a node name or label to run on"},
    ),
    (
        ("--priority",),
        {"default": "0", "metavar": "P", "help": "higher runs first (-100..100, default 0)"},
    ),
    (("--timeout",), {"default": None, "metavar": "S", "help": "time limit of the run in seconds"}),
    (
        ("--mem",),
        {"default": None, "metavar": "SIZE", "help": "memory for the run, e.g. 32G (node default)"},
    ),
    (
        ("--cpus",),
        {"default": None, "metavar": "N", "help": "CPU cores for the run (node default)"},
    ),
    (
        ("--shared",),
        {
            "action": "store_true",
            "help": "a share of one GPU for a kept kernel (with --gpu-mem): its cells take "
            "turns with the other kernels on that GPU",
        },
    ),
]


def request_arguments(func: F) -> F:
    """Decorator adding the request options to a magic (``magic_arguments`` style)."""
    for args, kwargs in reversed(REQUEST_OPTIONS):
        func = argument(*args, **kwargs)(func)
    return func


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    for args, kwargs in REQUEST_OPTIONS:
        parser.add_argument(*args, **kwargs)


def request_from_args(ns: argparse.Namespace) -> HardwareRequest:
    return make_request(
        gpus=ns.gpu,
        gpu_type=ns.gpu_type,
        gpu_mem=ns.gpu_mem,
        timeout=ns.timeout,
        node=ns.node,
        priority=ns.priority,
        mem=ns.mem,
        cpus=ns.cpus,
        shared=bool(getattr(ns, "shared", False)),
    )
