"""The server extension's REST API through a real jupyter_server (pytest-jupyter's
``jp_fetch``), against a real scheduler process with a registered node that has no agent
behind it: what JupyterLab's sidebar, status item and "Run on GPU" read and change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import call_json, free_port
from tornado.httpclient import HTTPClientError

from jupyter_hwsched.developer.environment import caller_identity

ME = caller_identity().name
DOWN = f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def jp_server_config(scheduler: tuple[str, str], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The server's scheduler settings: the real scheduler, or (parametrized indirectly) one
    that is down, none at all, or the real one with a token it refuses."""
    url, token = scheduler
    setting = getattr(request, "param", "ok")
    if setting == "down":
        url = DOWN
    elif setting == "unset":
        url = ""
    elif setting == "wrong-token":
        token = "wrong"
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_hwsched": True}},
        "HwschedServerApp": {"scheduler_url": url, "scheduler_token": token},
    }


@pytest.fixture
def submit(scheduler: tuple[str, str], jp_root_dir: Path) -> Iterator[Any]:
    """Submit sessions straight to the scheduler, as another client would; end them after."""
    url, token = scheduler
    made: list[str] = []

    def call(method: str, path: str, body: Any = None) -> Any:
        return call_json(url, method, path, token, body)

    def make(user: str = ME, notebook: str = "", gpus: int = 1) -> dict[str, Any]:
        body = {"request": {"gpus": gpus}, "user": user, "host": "h", "notebook": notebook}
        session = call("POST", "/api/sessions", body)
        made.append(session["id"])
        return dict(session)

    yield make
    for session_id in made:
        call("DELETE", f"/api/sessions/{session_id}")


async def get_json(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    response = await jp_fetch(*parts, **kwargs)
    return json.loads(response.body)


async def error_of(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    assert info.value.response is not None
    return info.value.code, json.loads(info.value.response.body)["message"]


async def test_pool_shows_nodes_holders_queue_and_my_sessions(
    jp_fetch: Any, submit: Any, jp_root_dir: Path
) -> None:
    notebook = str(jp_root_dir / "work" / "train.ipynb")
    held = submit(notebook=notebook)
    other = submit(user="someone-else")
    pool = await get_json(jp_fetch, "hwsched", "api", "pool")
    assert pool["user"] == ME
    gpus = {g["session"]: g for n in pool["nodes"] for g in n["gpus"] if g["session"]}
    assert gpus[held["id"]]["holder"] == ME
    assert gpus[other["id"]]["holder"] == "someone-else"
    assert {"memory", "model", "utilization", "memory_used"} <= set(gpus[held["id"]])
    [mine] = pool["mine"]
    assert mine["id"] == held["id"]
    assert mine["notebook_path"] == "work/train.ipynb"

    sessions = await get_json(
        jp_fetch, "hwsched", "api", "sessions", params={"path": "work/train.ipynb"}
    )
    assert [s["id"] for s in sessions] == [held["id"]]
    elsewhere = await get_json(
        jp_fetch, "hwsched", "api", "sessions", params={"path": "other.ipynb"}
    )
    assert elsewhere == []


async def test_queue_positions_are_shown(jp_fetch: Any, submit: Any) -> None:
    holders = [submit() for _ in range(4)]  # the node has 4 GPUs
    waiting = submit(gpus=2)
    pool = await get_json(jp_fetch, "hwsched", "api", "pool")
    [queued] = pool["queue"]
    assert queued["id"] == waiting["id"] and queued["position"] == 1
    assert "busy" in queued["waiting_for"]
    assert len({h["id"] for h in holders}) == 4


async def test_cancel_my_session_but_not_someone_elses(jp_fetch: Any, submit: Any) -> None:
    mine = submit()
    theirs = submit(user="someone-else")
    code, message = await error_of(
        jp_fetch, "hwsched", "api", "sessions", theirs["id"], method="DELETE"
    )
    assert code == 403 and "belongs to someone-else" in message
    ended = await get_json(jp_fetch, "hwsched", "api", "sessions", mine["id"], method="DELETE")
    assert ended["state"] == "ended"
    assert "cancelled by" in ended["end_reason"]
    code, message = await error_of(
        jp_fetch, "hwsched", "api", "sessions", "nosuch", method="DELETE"
    )
    assert code == 404 and "nosuch" in message


async def test_unauthenticated_requests_are_refused(jp_fetch: Any, submit: Any) -> None:
    mine = submit()
    for method, parts, body in [
        ("GET", ("pool",), None),
        ("GET", ("sessions",), None),
        ("DELETE", ("sessions", mine["id"]), None),
        ("POST", ("runs",), json.dumps({"path": "a.ipynb"})),
        ("GET", ("runs", "x"), None),
        ("DELETE", ("runs", "x"), None),
        ("GET", ("kernels", "progress"), None),
    ]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(
                "hwsched", "api", *parts, method=method, body=body, headers={"Authorization": ""}
            )
        assert info.value.code == 403, (method, parts)
    pool = await get_json(jp_fetch, "hwsched", "api", "pool")
    assert mine["id"] in [s["id"] for s in pool["mine"]]  # the refused DELETE did nothing


async def test_bad_run_requests_say_what_to_change(jp_fetch: Any) -> None:
    def post(body: Any) -> Any:
        return error_of(jp_fetch, "hwsched", "api", "runs", method="POST", body=json.dumps(body))

    code, message = await post({"path": "a.ipynb", "gpus": 0})
    assert code == 400 and "gpu" in message.lower()
    code, message = await post({"gpus": 1})
    assert code == 400 and "'path'" in message
    code, message = await post(["not", "an", "object"])
    assert code == 400 and "JSON object" in message
    code, message = await error_of(jp_fetch, "hwsched", "api", "runs", "nosuch")
    assert code == 404 and "no run nosuch" in message


@pytest.mark.parametrize("jp_server_config", ["down", "unset"], indirect=True)
async def test_a_scheduler_that_is_down_is_a_clear_503(
    jp_fetch: Any, jp_server_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a 500 and no traceback: a message that says what is wrong and what to check."""
    for key in ("HWSCHED_URL", "HWSCHED_TOKEN"):
        monkeypatch.delenv(key, raising=False)  # nothing but the config may name a pool
    url = jp_server_config["HwschedServerApp"]["scheduler_url"]
    for path in ("pool", "sessions"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("hwsched", "api", path)
        assert info.value.code == 503
        assert info.value.response is not None
        assert "Traceback" not in info.value.response.body.decode()
        message = json.loads(info.value.response.body)["message"]
        if url:
            assert message.startswith(f"cannot reach the scheduler at {url}")
            assert "hwsched up" in message
        else:
            assert "no GPU pool is configured" in message


@pytest.mark.parametrize("jp_server_config", ["wrong-token"], indirect=True)
async def test_a_refused_token_is_a_502_that_names_the_setting(jp_fetch: Any) -> None:
    """Not a 401, which JupyterLab would take for the user being signed out."""
    code, message = await error_of(jp_fetch, "hwsched", "api", "pool")
    assert code == 502
    assert "refused this Jupyter server's token" in message
    assert "c.HwschedServerApp.scheduler_token" in message
