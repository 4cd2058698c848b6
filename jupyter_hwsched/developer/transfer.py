"""Moving variables between the local and the remote kernel (``--push`` and ``--pull``).

Both ends run the same environment (the remote one is the developer's own, mounted), so what
pickles here unpickles there. An object that cannot be pickled gets an error naming it.
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

from jupyter_hwsched.protocol.errors import RequestError

PULL_EXPRESSION = "_hwsched_pull"


def names(text: str | None) -> list[str]:
    found = [n.strip() for n in (text or "").split(",") if n.strip()]
    for name in found:
        if not name.isidentifier():
            raise RequestError(f"{name!r} is not a variable name: write --push a,b or --pull c")
    return found


def pack(namespace: dict[str, Any], wanted: list[str]) -> str:
    """Local variables -> code that recreates them remotely."""
    values = {}
    for name in wanted:
        if name not in namespace:
            raise RequestError(f"--push {name}: there is no variable {name!r} here")
        try:
            pickle.dumps(namespace[name])
        except Exception as exc:
            kind = type(namespace[name]).__name__
            raise RequestError(f"--push {name}: a {kind} cannot be transferred ({exc})") from None
        values[name] = namespace[name]
    blob = base64.b64encode(pickle.dumps(values)).decode()
    return f"globals().update(__import__('pickle').loads(__import__('base64').b64decode({blob!r})))"


def pull_expression(wanted: list[str]) -> str:
    """An expression evaluated remotely after the cell: the variables, pickled, as text."""
    pairs = ", ".join(f"{n!r}: {n}" for n in wanted)
    return "__import__('base64').b64encode(__import__('pickle').dumps({" + pairs + "})).decode()"


def unpack(reply: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    """The pulled variables from an execute_reply, or an error naming what failed."""
    result = (reply.get("user_expressions") or {}).get(PULL_EXPRESSION) or {}
    if result.get("status") != "ok":
        detail = f"{result.get('ename', 'Error')}: {result.get('evalue', '')}"
        raise RequestError(f"--pull {','.join(wanted)}: cannot transfer ({detail})")
    text = result["data"]["text/plain"]
    values: dict[str, Any] = pickle.loads(base64.b64decode(text.strip("'\"")))
    return values
