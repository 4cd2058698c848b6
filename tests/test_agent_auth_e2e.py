"""What a node agent lets each credential do: the pool's token, a session's own secret."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from harness import Pool

pytestmark = pytest.mark.e2e


def agent_call(pool: Pool, method: str, path: str, token: str, body: Any = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{pool.agent_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_a_session_secret_admits_only_its_own_session(clean_pool: Pool) -> None:
    mine = clean_pool.api(
        "POST", "/api/sessions", {"request": {"gpus": 1}, "user": "ann", "host": "h"}
    )
    other = clean_pool.api(
        "POST", "/api/sessions", {"request": {"gpus": 1}, "user": "bob", "host": "h"}
    )
    try:
        assert mine["state"] == "placed" and "secret" in mine
        assert "secret" not in clean_pool.api("GET", f"/api/sessions/{mine['id']}")
        # the start endpoint takes the session's own secret (the body is then checked: 400) ...
        assert (
            agent_call(clean_pool, "POST", f"/hwsched/sessions/{mine['id']}", mine["secret"], {})
            == 400
        )
        # ... and refuses another session's secret, or a made-up one
        assert (
            agent_call(clean_pool, "POST", f"/hwsched/sessions/{mine['id']}", other["secret"], {})
            == 403
        )
        assert (
            agent_call(clean_pool, "POST", f"/hwsched/sessions/{mine['id']}", "made-up", {}) == 403
        )
        # a secret reaches no kernel list, session list or other session
        assert agent_call(clean_pool, "GET", "/api/kernels", mine["secret"]) == 403
        assert agent_call(clean_pool, "GET", "/hwsched/sessions", mine["secret"]) == 403
        assert agent_call(clean_pool, "GET", "/api/kernels", clean_pool.token) == 200
        # nobody shuts a node down from outside, nor reads its files
        assert agent_call(clean_pool, "POST", "/api/shutdown", clean_pool.token) == 403
        assert agent_call(clean_pool, "GET", "/api/contents", clean_pool.token) == 403
    finally:
        for session in (mine, other):
            clean_pool.api("DELETE", f"/api/sessions/{session['id']}")
