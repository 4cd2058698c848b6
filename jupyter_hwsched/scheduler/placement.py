"""Which GPUs of which node a request gets: the placement policies.

A policy sees the nodes that are up and may take the request, each with its free GPUs, and
picks one node and the GPU indices there, or nothing. A request is never split across nodes:
a session's GPUs share one container. Swap the policy with ``c.Scheduler.placement_class``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from traitlets.config import LoggingConfigurable

from jupyter_hwsched.protocol.request import HardwareRequest, format_memory


@dataclass
class NodeView:
    """A node as placement sees it: every GPU, its labels, and which GPUs are free."""

    name: str
    gpus: list[dict[str, Any]]
    free: set[int] = field(default_factory=set)
    labels: list[str] = field(default_factory=list)
    by_index: dict[int, dict[str, Any]] | None = None  # built on first use when not given
    #: developers whose files the node's cache keeps (``warm_key``s)
    warm: frozenset[str] = frozenset()
    #: developers with a warm lease here that no session uses (``warm_key``s)
    leased: frozenset[str] = frozenset()
    #: GPUs shared by resident kernels: index -> bytes of memory promised to them (such a
    #: GPU is not free for a whole-GPU request)
    shared: dict[int, int] = field(default_factory=dict)
    #: GPU memory in use as the node last reported it (NVML), by index
    reported: dict[int, int] = field(default_factory=dict)

    def room(self, index: int) -> int:
        """Memory of a GPU that a new shared kernel may still be promised: what is neither
        promised nor, by the node's last report, in use."""
        gpu = self.gpu(index)
        if gpu is None:
            return 0
        taken = max(self.shared.get(index, 0), self.reported.get(index, 0))
        return int(gpu["memory"]) - taken

    def gpu(self, index: int) -> dict[str, Any] | None:
        if self.by_index is None:
            self.by_index = {g["index"]: g for g in self.gpus}
        return self.by_index.get(index)

    def accepts(self, request: HardwareRequest) -> bool:
        return not request.node or request.node in (self.name, *self.labels)

    def matching(self, request: HardwareRequest) -> list[dict[str, Any]]:
        if not self.accepts(request):
            return []
        match = Matcher(request)
        return [gpu for gpu in self.gpus if match(gpu)]

    def free_matching(self, request: HardwareRequest, match: Matcher | None = None) -> list[int]:
        """Free GPUs that fit; looks only at the free ones, which are few on a busy pool."""
        if len(self.free) < request.gpus or not self.accepts(request):
            return []
        match = match or Matcher(request)
        fitting = []
        for i in self.free:
            gpu = self.gpu(i)
            if gpu is not None and match(gpu):
                fitting.append(i)
        return sorted(fitting)


class Matcher:
    """Whether a GPU fits a request's type alternatives and memory; prepared once per request."""

    def __init__(self, request: HardwareRequest) -> None:
        self.types = [t.lower() for t in request.gpu_types()]
        self.memory = request.gpu_mem or 0

    def __call__(self, gpu: dict[str, Any]) -> bool:
        if self.memory and int(gpu["memory"]) < self.memory:
            return False
        if not self.types:
            return True
        model = str(gpu["model"]).lower()
        return any(model == t or model.startswith(t + "-") for t in self.types)


def model_matches(model: str, wanted: str) -> bool:
    """``A100`` matches ``A100-80GB``; matching ignores case."""
    model, wanted = model.lower(), wanted.lower()
    return model == wanted or model.startswith(wanted + "-")


def linked_choice(node: NodeView, free: list[int], count: int) -> list[int]:
    """``count`` of the free GPUs, all linked to each other by NVLink where the node has such
    a set (NVML reports each GPU's NVLink peers as ``links``); else the lowest indices."""
    if count == 1 or len(free) == count:
        return free[:count]
    links = {g["index"]: set(g.get("links") or ()) for g in node.gpus}
    if not any(links.values()):
        return free[:count]
    if len(free) <= 16:
        for subset in combinations(free, count):
            if all(b in links[a] for a, b in combinations(subset, 2)):
                return list(subset)
    # greedy: grow from the best-connected GPU
    chosen = [max(free, key=lambda i: len(links[i] & set(free)))]
    while len(chosen) < count:
        rest = [i for i in free if i not in chosen]
        chosen.append(max(rest, key=lambda i: (len(links[i] & set(chosen)), -i)))
    return sorted(chosen)


class PlacementPolicy(LoggingConfigurable):
    """Base of the placement policies."""

    def choose(
        self, request: HardwareRequest, nodes: list[NodeView], warm: str = ""
    ) -> tuple[str, list[int]] | None:
        """The node and GPUs for ``request``, or None. Among the nodes that fit, one whose
        cache is warm for the developer (``warm``: their ``warm_key``) comes first, and before
        it one that keeps a warm lease of theirs: the queue's order (priority, fair share,
        backfill) has already chosen the request."""
        raise NotImplementedError


class _FitPlacement(PlacementPolicy):
    """Pick the node whose count of free fitting GPUs ranks first by ``rank``; then the
    NVLink-connected GPUs there."""

    def rank(self, free: int) -> int:
        raise NotImplementedError

    def choose(
        self, request: HardwareRequest, nodes: list[NodeView], warm: str = ""
    ) -> tuple[str, list[int]] | None:
        best: tuple[tuple[bool, bool, int, str], NodeView, list[int]] | None = None
        match = Matcher(request)
        for node in nodes:
            free = node.free_matching(request, match)
            if len(free) < request.gpus:
                continue
            key = (warm not in node.leased, warm not in node.warm, self.rank(len(free)), node.name)
            if best is None or key < best[0]:
                best = (key, node, free)
        if best is None:
            return None
        return best[1].name, linked_choice(best[1], best[2], request.gpus)


class PackPlacement(_FitPlacement):
    """Best fit: the node with the fewest free matching GPUs that still fits the request.
    Packing keeps other nodes whole for large requests."""

    def rank(self, free: int) -> int:
        return free


class SpreadPlacement(_FitPlacement):
    """Worst fit: the node with the most free matching GPUs, spreading load over nodes."""

    def rank(self, free: int) -> int:
        return -free


def choose_shared(
    request: HardwareRequest, nodes: list[NodeView], warm: str = ""
) -> tuple[str, list[int]] | None:
    """A GPU for a shared kernel (``request.gpu_mem`` of it): best fit by memory. A GPU that
    other kernels share already comes before a free one, and among those the one left with the
    least room, so that whole GPUs stay whole; a node warm for the developer comes first."""
    assert request.gpu_mem is not None
    match = Matcher(replace(request, gpu_mem=None))  # the GPU's whole size is not the point
    best: tuple[tuple[bool, bool, bool, int, str, int], str, int] | None = None
    for node in nodes:
        if not node.accepts(request):
            continue
        for index in [*node.shared, *node.free]:
            gpu = node.gpu(index)
            if gpu is None or not match(gpu):
                continue
            left = node.room(index) - request.gpu_mem
            if left < 0:
                continue
            fresh = index not in node.shared
            key = (warm not in node.leased, warm not in node.warm, fresh, left, node.name, index)
            if best is None or key < best[0]:
                best = (key, node.name, index)
    return None if best is None else (best[1], [best[2]])


def impossible_reason(request: HardwareRequest, nodes: list[NodeView]) -> str | None:
    """Why no registered node could ever hold this request, or ``None`` if one could."""
    if not nodes:
        return "no GPU node is registered with the scheduler: start one with 'hwsched agent'"
    if any(len(node.matching(request)) >= request.gpus for node in nodes):
        return None
    kinds = sorted({_describe(gpu) for node in nodes for gpu in node.gpus})
    if request.node and not any(node.accepts(request) for node in nodes):
        names = sorted({n.name for n in nodes} | {label for n in nodes for label in n.labels})
        return (
            f"no node is named or labelled {request.node!r}; "
            f"known names and labels: {', '.join(names)}. Change --node or leave it out"
        )
    candidates = [n for n in nodes if n.accepts(request)]
    types = request.gpu_types()
    if types and not any(
        model_matches(str(g["model"]), t) for n in candidates for g in n.gpus for t in types
    ):
        return (
            f"no node has GPUs of type {request.gpu_type!r}; "
            f"the pool has: {', '.join(kinds)}. Change --gpu-type or leave it out"
        )
    if request.gpu_mem and not any(
        int(g["memory"]) >= request.gpu_mem for n in candidates for g in n.gpus
    ):
        return (
            f"no GPU in the pool has {format_memory(request.gpu_mem)} of memory; "
            f"the pool has: {', '.join(kinds)}. Lower --gpu-mem"
        )
    largest = max(len(node.matching(request)) for node in candidates)
    return (
        f"no node has {request.gpus} matching GPUs (the most on one node is {largest}); "
        f"ask for --gpu {largest} or fewer"
    )


def _describe(gpu: dict[str, Any]) -> str:
    label = f"{gpu['model']} ({format_memory(int(gpu['memory']))})"
    return label + (" [simulated]" if gpu.get("simulated") else "")
