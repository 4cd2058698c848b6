"""Showing a remote kernel's output messages in the local IPython, as if produced here."""

from __future__ import annotations

import sys
from typing import Any

from IPython.display import clear_output, display


class RemoteResult:
    """The remote cell's value; IPython shows it as ``Out[n]`` through its mime bundle."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote result>"))


class RemoteError(Exception):
    """The remote cell raised; shown with the remote traceback, and the local cell fails."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback

    def _render_traceback_(self) -> list[str]:
        return self.traceback or [f"{self.ename}: {self.evalue}"]


class OutputRelay:
    """Turns iopub messages into local output; keeps the result and the error for the end."""

    def __init__(self) -> None:
        self.result: RemoteResult | None = None
        self.error: RemoteError | None = None

    def __call__(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "stream":
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            stream.flush()
        elif kind == "display_data":
            display(
                content["data"],
                raw=True,
                metadata=content.get("metadata") or {},
                transient=content.get("transient") or {},
            )
        elif kind == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id:
                display(
                    content["data"],
                    raw=True,
                    metadata=content.get("metadata") or {},
                    display_id=display_id,
                    update=True,
                )
        elif kind == "execute_result":
            self.result = RemoteResult(content["data"], content.get("metadata") or {})
        elif kind == "clear_output":
            clear_output(wait=bool(content.get("wait")))
        elif kind == "error":
            self.error = RemoteError(
                content["ename"], content["evalue"], content.get("traceback", [])
            )
