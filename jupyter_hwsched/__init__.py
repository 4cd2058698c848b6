"""jupyter-hwsched: run cells, kernels and commands on pooled GPU machines that mount your
own machine's root, so the environment is yours by construction.

``%load_ext jupyter_hwsched`` registers the ``%%hwrun`` and ``%hwstatus`` magics.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where ``jupyter labextension develop`` finds the built JupyterLab extension."""
    return [{"src": "labextension", "dest": "jupyter-hwsched"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .serverext.app import HwschedServerApp

    return [{"module": "jupyter_hwsched.serverext.app", "app": HwschedServerApp}]


def load_ipython_extension(ipython: Any) -> None:
    from .client.magics import HwschedMagics

    ipython.register_magics(HwschedMagics)
