"""What a client may ask for: the hardware request and its validation.

The same parser serves the cell magic, the ``hwrun`` command and the scheduler's REST API, so
a mistake gets the same message wherever it is made.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from jupyter_hwsched.protocol.errors import RequestError

MAX_GPUS_PER_REQUEST = 64

_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def parse_memory(text: str | int | None, option: str = "--gpu-mem") -> int | None:
    """Bytes from ``"40G"``, ``"512M"``, ``"80GiB"`` or a plain byte count."""
    if text is None or text == "":
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise RequestError(f"{option} must be positive, got {text}")
        return text
    match = _MEM_RE.match(str(text))
    if not match:
        raise RequestError(
            f"{option} {text!r} is not a memory size: write a number with a unit, like 40G or 512M"
        )
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise RequestError(f"{option} must be positive, got {text!r}")
    return int(value)


def format_memory(nbytes: int) -> str:
    """``85899345920`` -> ``"80G"``, ``85520809984`` -> ``"79.6G"``: memory for a person."""
    for unit in ("T", "G", "M", "K"):
        size = _UNITS[unit]
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
        if nbytes >= size and unit in ("T", "G"):
            return f"{nbytes / size:.1f}{unit}"
    return f"{nbytes}B"


@dataclass(frozen=True)
class HardwareRequest:
    """What one session asks for."""

    gpus: int = 1
    gpu_type: str | None = None  # a model, or alternatives: "A100|H100"
    gpu_mem: int | None = None  # minimum memory per GPU, bytes
    timeout: float | None = None  # seconds the session may run
    node: str | None = None  # a node name or a node label
    priority: int = 0  # higher goes first; MIN_PRIORITY..MAX_PRIORITY
    mem: int | None = None  # the session's memory limit, bytes (None: the node's default)
    cpus: float | None = None  # the session's CPU limit, in cores (None: the node's default)
    #: a share of one GPU (``gpu_mem`` of its memory) for a resident kernel, its cells run
    #: one at a time with the GPU's other kernels' (agent/gate.py), rather than a whole GPU
    shared: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def gpu_types(self) -> list[str]:
        return self.gpu_type.split("|") if self.gpu_type else []

    @classmethod
    def from_json(cls, data: Any) -> HardwareRequest:
        """Validate an untrusted JSON object (REST body, kernelspec config)."""
        if not isinstance(data, dict):
            raise RequestError('the request must be a JSON object like {"gpus": 1}')
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise RequestError(
                f"unknown request field(s) {sorted(unknown)}: use {', '.join(FIELDS)}"
            )
        return make_request(**{k: data[k] for k in FIELDS if k in data})


FIELDS = ("gpus", "gpu_type", "gpu_mem", "timeout", "node", "priority", "mem", "cpus", "shared")
MAX_CPUS = 4096
MIN_PRIORITY, MAX_PRIORITY = -100, 100
#: the longest GPU type or node name a request gives (a node's name is at most this long)
MAX_TEXT = 200
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=\-]*$")


def make_request(
    gpus: Any = 1,
    gpu_type: Any = None,
    gpu_mem: Any = None,
    timeout: Any = None,
    node: Any = None,
    priority: Any = 0,
    mem: Any = None,
    cpus: Any = None,
    shared: Any = False,
) -> HardwareRequest:
    """Build a request from loosely typed values, raising :class:`RequestError` on bad ones."""
    gpus = _whole(gpus, "--gpu", "write e.g. --gpu 1")
    if gpus < 1:
        raise RequestError(f"--gpu {gpus} asks for no GPU: ask for at least 1, e.g. --gpu 1")
    if gpus > MAX_GPUS_PER_REQUEST:
        raise RequestError(
            f"--gpu {gpus} is more than one session may hold "
            f"({MAX_GPUS_PER_REQUEST}): ask for fewer"
        )
    if gpu_type is not None:
        gpu_type = str(gpu_type).strip() or None
        if gpu_type and len(gpu_type) > MAX_TEXT:
            raise RequestError(
                f"--gpu-type is {len(gpu_type)} characters long: a GPU model name, or "
                f"alternatives such as A100|H100, takes at most {MAX_TEXT}"
            )
        for alternative in (gpu_type or "").split("|") if gpu_type else []:
            if not _TYPE_RE.match(alternative.strip()):
                raise RequestError(
                    f"--gpu-type {gpu_type!r} is not a GPU model name: use a name such as "
                    "A100-80GB, or alternatives such as A100|H100"
                )
        if gpu_type:
            gpu_type = "|".join(a.strip() for a in gpu_type.split("|"))
    gpu_memory = parse_memory(gpu_mem)
    if timeout is not None:
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise RequestError(f"--timeout {timeout!r} is not a number of seconds") from None
        if not timeout > 0 or timeout == float("inf"):
            raise RequestError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    if node is not None:
        node = str(node).strip() or None
        if node and len(node) > MAX_TEXT:
            raise RequestError(
                f"--node is {len(node)} characters long: a node name or label takes at most "
                f"{MAX_TEXT}"
            )
        if node and not _NAME_RE.match(node):
            raise RequestError(f"--node {node!r} is not a node name or label")
    priority = _whole(priority, "--priority", "write e.g. --priority 10")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise RequestError(
            f"--priority {priority} is out of range: use {MIN_PRIORITY} to {MAX_PRIORITY}"
        )
    if cpus is not None:
        try:
            cpus = float(cpus)
        except (TypeError, ValueError):
            raise RequestError(
                f"--cpus {cpus!r} is not a number of cores: write e.g. --cpus 4"
            ) from None
        if not 0 < cpus <= MAX_CPUS:  # NaN fails this too
            raise RequestError(f"--cpus must be more than 0 and at most {MAX_CPUS}, got {cpus:g}")
    if not isinstance(shared, bool):
        raise RequestError(f"shared must be true or false, got {shared!r}")
    if shared and gpus != 1:
        raise RequestError(
            f"--shared asks for a share of one GPU, not {gpus}: use --gpu 1, or leave out "
            "--shared for whole GPUs"
        )
    if shared and gpu_memory is None:
        raise RequestError(
            "--shared needs --gpu-mem: the GPU memory the kernel may use, e.g. --gpu-mem 20G"
        )
    return HardwareRequest(
        gpus=gpus,
        gpu_type=gpu_type,
        gpu_mem=gpu_memory,
        timeout=timeout,
        node=node,
        priority=priority,
        mem=parse_memory(mem, "--mem"),
        cpus=cpus,
        shared=shared,
    )


def _whole(value: Any, option: str, example: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (bool, float)) or value is None:
        raise RequestError(f"{option} {value!r} is not a whole number: {example}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise RequestError(f"{option} {value!r} is not a whole number: {example}") from None
