"""The node agent: GPU inventory, mounts, containers and the kernels it hosts."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_hwsched.agent.extension import AgentApp

    return [{"module": "jupyter_hwsched.agent.extension", "app": AgentApp}]
