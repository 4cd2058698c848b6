"""The node agent's only kernelspec: a kernel inside a session's container.

The agent's jupyter_server must not start any other kind of kernel (a local kernel there would
run on the node as the agent's user), so this spec manager knows this one spec and nothing else.
"""

from __future__ import annotations

from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

CONTAINER_KERNEL = "hwsched-container"


def container_spec() -> KernelSpec:
    return KernelSpec(
        # the real argv is the developer's own Python, sent with the session
        argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="Kernel in a hwsched session container",
        language="python",
        interrupt_mode="signal",
        metadata={"kernel_provisioner": {"provisioner_name": "hwsched-container"}},
    )


class NodeKernelSpecManager(KernelSpecManager):
    def find_kernel_specs(self) -> dict[str, str]:
        return {CONTAINER_KERNEL: ""}

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != CONTAINER_KERNEL:
            raise NoSuchKernel(kernel_name)
        return container_spec()

    def get_all_specs(self) -> dict[str, Any]:
        return {CONTAINER_KERNEL: {"resource_dir": "", "spec": container_spec().to_dict()}}
