"""jupyter-hwsched: run cells, kernels and commands on pooled GPU machines that mount your
own machine's root, so the environment is yours by construction.

``%load_ext jupyter_hwsched`` registers the ``%%hwrun`` and ``%hwstatus`` magics. The package
is laid out by machine: ``protocol`` (what the machines say to each other) at the bottom,
``developer``, ``scheduler`` and ``agent`` (the GPU node) above it, and ``cli`` (the
``hwsched`` command, ``hwsched up``) on top.
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.version import __version__

__all__ = ["__version__", "load_ipython_extension"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where ``jupyter labextension develop`` finds the built JupyterLab extension."""
    return [{"src": "labextension", "dest": "jupyter-hwsched"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_hwsched.developer.serverext.app import HwschedServerApp

    return [{"module": "jupyter_hwsched.developer.serverext.app", "app": HwschedServerApp}]


def load_ipython_extension(ipython: Any) -> None:
    from jupyter_hwsched.developer.magics import HwschedMagics

    ipython.register_magics(HwschedMagics)
