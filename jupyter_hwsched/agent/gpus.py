"""The GPU inventory of a node, from NVML, or simulated where NVML finds no GPU.

Simulated GPUs are the one fake in the product: they exist because development and CI
machines have no GPU. They are marked ``simulated`` in every description that leaves the
agent, and every place that shows a GPU to a person says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from jupyter_hwsched.protocol.errors import RequestError, UnavailableError
from jupyter_hwsched.protocol.records import GpuRecord

T = TypeVar("T")

_SIM_RE = re.compile(
    r"^\s*(\d+)\s*[xX]\s*([A-Za-z0-9][A-Za-z0-9_.]*)-(\d+)GB(:nvlink)?\s*$", re.IGNORECASE
)


class GpuInventory:
    """What a node has. Subclasses read NVML or make simulated GPUs."""

    simulated = False

    def gpus(self) -> list[GpuRecord]:
        raise NotImplementedError

    def utilization(self) -> dict[int, float]:
        """Percent busy per GPU index, as NVML last sampled it."""
        return {}

    def memory_used(self) -> dict[int, int]:
        """Bytes of memory in use per GPU index, as NVML reports it."""
        return {}

    def process_memory(self) -> dict[int, int]:
        """Bytes of GPU memory each process uses (by host pid, over all GPUs), as NVML
        reports it; empty where it cannot tell."""
        return {}

    def close(self) -> None:
        pass


def short_model(name: str, memory: int) -> str:
    """``NVIDIA H100 80GB HBM3`` with 80 GiB -> ``H100-80GB``."""
    words = [w for w in name.replace("NVIDIA", "").replace("Tesla", "").split() if w]
    base = words[0] if words else "GPU"
    base = base.split("-")[0]
    return f"{base}-{round(memory / 1024**3)}GB"


class NvmlInventory(GpuInventory):
    """Real GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - a dependency
            raise UnavailableError(f"nvidia-ml-py is not installed: {exc}") from None
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise UnavailableError(f"NVML found no GPU here ({exc})") from None
        self._gpus = self._read()
        if not self._gpus:
            self.close()
            raise UnavailableError("NVML found no GPU here (device count 0)")

    def _read(self) -> list[GpuRecord]:
        nvml = self.nvml
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            try:
                minor: int | None = int(nvml.nvmlDeviceGetMinorNumber(handle))
            except nvml.NVMLError:
                minor = None
            model = short_model(name, memory)
            out.append(GpuRecord(i, uuid, model, name, memory, False, minor=minor))
        links = self._nvlinks(len(out))
        return [replace(g, links=tuple(sorted(links.get(g.index, ())))) for g in out]

    def _nvlinks(self, count: int) -> dict[int, set[int]]:
        """GPU index -> the GPUs it reaches over an active NVLink, from each link's remote PCI
        address. A GPU without NVLink (or NVML without the calls) has none."""
        nvml = self.nvml
        bus: dict[str, int] = {}
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            bus_id = nvml.nvmlDeviceGetPciInfo(handle).busId
            bus[(bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)).lower()] = i
        links: dict[int, set[int]] = {}
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                        continue
                    remote = nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId
                except nvml.NVMLError:
                    continue
                key = (remote.decode() if isinstance(remote, bytes) else str(remote)).lower()
                if key in bus and bus[key] != i:
                    links.setdefault(i, set()).add(bus[key])
        return links

    def gpus(self) -> list[GpuRecord]:
        return list(self._gpus)

    def _each(self, read: Callable[[Any], T]) -> dict[int, T]:
        """One NVML reading per GPU; a GPU whose reading fails is left out."""
        out = {}
        for gpu in self._gpus:
            try:
                out[gpu.index] = read(self.nvml.nvmlDeviceGetHandleByIndex(gpu.index))
            except self.nvml.NVMLError:
                continue
        return out

    def utilization(self) -> dict[int, float]:
        return self._each(lambda h: float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu))

    def memory_used(self) -> dict[int, int]:
        return self._each(lambda h: int(self.nvml.nvmlDeviceGetMemoryInfo(h).used))

    def process_memory(self) -> dict[int, int]:
        used: dict[int, int] = {}
        for processes in self._each(self.nvml.nvmlDeviceGetComputeRunningProcesses).values():
            for process in processes:
                if process.usedGpuMemory is not None:  # None: the driver cannot tell
                    used[process.pid] = used.get(process.pid, 0) + int(process.usedGpuMemory)
        return used

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


class SimulatedInventory(GpuInventory):
    """GPUs that do not exist, described by a spec like ``2xA100-80GB,1xT4-16GB``."""

    simulated = True

    def __init__(self, spec: str, node: str) -> None:
        self._gpus = parse_simulated(spec, node)

    def gpus(self) -> list[GpuRecord]:
        return list(self._gpus)


def parse_simulated(spec: str, node: str) -> list[GpuRecord]:
    gpus: list[GpuRecord] = []
    for part in spec.split(","):
        match = _SIM_RE.match(part)
        if not match:
            raise RequestError(
                f"--simulate-gpus {spec!r}: write COUNTxMODEL-MEMGB[:nvlink], comma-separated, "
                "e.g. 2xA100-80GB or 4xH100-80GB:nvlink,1xT4-16GB"
            )
        count, base, mem_gb = int(match.group(1)), match.group(2), int(match.group(3))
        if count < 1:
            raise RequestError(f"--simulate-gpus {part.strip()!r}: the count must be at least 1")
        first = len(gpus)
        group = tuple(range(first, first + count)) if match.group(4) else ()
        for i in range(first, first + count):
            model = f"{base}-{mem_gb}GB"
            gpus.append(
                GpuRecord(
                    index=i,
                    uuid=f"SIMULATED-{node}-{i}",
                    model=model,
                    name=f"{model} (simulated)",
                    memory=mem_gb * 1024**3,
                    simulated=True,
                    links=tuple(j for j in group if j != i),
                )
            )
    return gpus


def discover(simulate: str, node: str, fallback: str = "") -> GpuInventory:
    """Real GPUs if NVML finds any; else the simulated ones asked for, or a clear error."""
    if simulate:
        return SimulatedInventory(simulate, node)
    try:
        return NvmlInventory()
    except UnavailableError as exc:
        if fallback:
            return SimulatedInventory(fallback, node)
        raise UnavailableError(
            f"{exc}: on a machine without GPUs, pass --simulate-gpus 2xA100-80GB "
            "to serve simulated GPUs"
        ) from None


DRIVER_LIBRARY_PREFIXES = (
    "libcuda.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libcudadebugger.so",
    "libnvidia-gpucomp.so",
)


def driver_libraries() -> list[str]:
    """The node's NVIDIA driver libraries (user-space half of the driver), from ldconfig.

    They belong to the node, not to the developer's machine, so the container gets them
    bound read-only in a directory of its own instead of finding them on the share.
    """
    import subprocess

    try:
        listing = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    found: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, path = line.strip().partition(" => ")
        name = name.split(" ")[0]
        if "x86-64" not in line and "AArch64" not in line:
            continue
        if name.startswith(DRIVER_LIBRARY_PREFIXES) and name not in found:
            found[name] = path.strip()
    return [f"{path}:{name}" for name, path in sorted(found.items())]
