"""The Remote GPU kernel's provisioner, in what it owes jupyter_server beside the kernel."""

from __future__ import annotations

import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from traitlets import TraitError

from jupyter_hwsched.developer.kernel.provisioner import _listable


def test_a_kernel_can_be_listed_as_soon_as_jupyter_server_holds_it() -> None:
    # jupyter_client holds the kernel once its start returned; jupyter_server sets its
    # last_activity a turn of the event loop later, and a listing in between fails (a 500
    # to the page that polls GET /api/kernels while a restarted server takes a kernel over)
    kernels = AsyncMappingKernelManager()
    km = ServerKernelManager()
    kernels._kernels["k1"] = km
    with pytest.raises(TraitError):
        kernels.kernel_model("k1")
    _listable(km)  # what the provisioner does at the end of its launch
    model = kernels.kernel_model("k1")
    assert model["execution_state"] == "starting" and model["last_activity"]
    before = km.last_activity
    km.execution_state = "busy"
    _listable(km)  # what is set stays
    assert km.last_activity == before and km.execution_state == "busy"
    _listable(AsyncKernelManager())  # a manager that is not jupyter_server's: left alone
