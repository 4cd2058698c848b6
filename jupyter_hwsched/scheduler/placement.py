"""Which GPUs of which node a request gets.

A policy sees the nodes that are up, each with its free GPUs, and picks one node and the GPU
indices there, or nothing. It never splits a request across nodes: a session's GPUs share
one container.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traitlets.config import LoggingConfigurable

from ..request import HardwareRequest, format_memory


@dataclass
class NodeView:
    """A node as placement sees it: every GPU, and which of them are free."""

    name: str
    gpus: list[dict[str, Any]]
    free: set[int] = field(default_factory=set)

    def matching(self, request: HardwareRequest) -> list[dict[str, Any]]:
        return [gpu for gpu in self.gpus if gpu_matches(gpu, request)]


def gpu_matches(gpu: dict[str, Any], request: HardwareRequest) -> bool:
    if request.gpu_type and not model_matches(str(gpu["model"]), request.gpu_type):
        return False
    return not (request.gpu_mem and int(gpu["memory"]) < request.gpu_mem)


def model_matches(model: str, wanted: str) -> bool:
    """``A100`` matches ``A100-80GB``; matching ignores case."""
    model, wanted = model.lower(), wanted.lower()
    return model == wanted or model.startswith(wanted + "-")


class PackPlacement(LoggingConfigurable):
    """Best fit: the node with the fewest free matching GPUs that still fits the request.

    Packing keeps other nodes whole for large requests.
    """

    def choose(
        self, request: HardwareRequest, nodes: list[NodeView]
    ) -> tuple[str, list[int]] | None:
        best: tuple[int, str, list[int]] | None = None
        for node in nodes:
            free = sorted(g["index"] for g in node.matching(request) if g["index"] in node.free)
            if len(free) < request.gpus:
                continue
            if best is None or len(free) < best[0]:
                best = (len(free), node.name, free[: request.gpus])
        return (best[1], best[2]) if best else None


def impossible_reason(request: HardwareRequest, nodes: list[NodeView]) -> str | None:
    """Why no registered node could ever hold this request, or ``None`` if one could."""
    if not nodes:
        return "no GPU node is registered with the scheduler: start one with 'hwsched agent'"
    if any(len(node.matching(request)) >= request.gpus for node in nodes):
        return None
    kinds = sorted({_describe(gpu) for node in nodes for gpu in node.gpus})
    if request.gpu_type and not any(
        model_matches(str(g["model"]), request.gpu_type) for n in nodes for g in n.gpus
    ):
        return (
            f"no node has GPUs of type {request.gpu_type!r}; "
            f"the pool has: {', '.join(kinds)}. Change --gpu-type or leave it out"
        )
    if request.gpu_mem and not any(
        int(g["memory"]) >= request.gpu_mem for n in nodes for g in n.gpus
    ):
        return (
            f"no GPU in the pool has {format_memory(request.gpu_mem)} of memory; "
            f"the pool has: {', '.join(kinds)}. Lower --gpu-mem"
        )
    largest = max(len(node.matching(request)) for node in nodes)
    return (
        f"no node has {request.gpus} matching GPUs (the most on one node is {largest}); "
        f"ask for --gpu {largest} or fewer"
    )


def _describe(gpu: dict[str, Any]) -> str:
    label = f"{gpu['model']} ({format_memory(int(gpu['memory']))})"
    return label + (" [simulated]" if gpu.get("simulated") else "")
