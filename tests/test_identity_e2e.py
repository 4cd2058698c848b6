"""Identities on a real pool: each developer acts only as themselves.

The pool runs with TLS and a CA of its own (``Pool(identities=True)``): this machine is the
developer machine ``devbox-a``, whose root share agent vouches for its users; a second share
agent with the certificate of ``devbox-b`` stands for another machine. Alice is the account
``hwdev`` on ``devbox-a``; Bob is root on ``devbox-b``. Credentials for Bob are signed here
with devbox-b's key, which is what root on that machine can do.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEV_USER, MACHINE, Pool, wait_for

from jupyter_hwsched.developer.environment import identity_of
from jupyter_hwsched.protocol.identity import Signer
from jupyter_hwsched.protocol.pki import issue
from jupyter_hwsched.protocol.records import Identity

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def idpool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    from conftest import _need_e2e

    _need_e2e()
    pool = Pool(tmp_path_factory.mktemp("idpool"), identities=True)
    try:
        yield pool
    finally:
        pool.stop()


def signer_of(pool: Pool, machine: str, role: str = "machine") -> Signer:
    made = issue(pool.pki, machine, role, pool.pki / "issued-here")
    return Signer(made.cert, made.key)


def alice() -> Identity:
    import pwd

    return identity_of(pwd.getpwnam(DEV_USER))


def call(pool: Pool, method: str, path: str, credential: str, body: Any = None) -> Any:
    """(status, body) of one call to the scheduler with a credential."""
    request = urllib.request.Request(
        pool.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {credential}", "Hwsched-Protocol": "1"},
    )
    context = ssl.create_default_context(cafile=pool.ca)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def alices_running_session(pool: Pool, seconds: int) -> tuple[subprocess.Popen[str], str]:
    """Alice's hwrun holding a GPU for ``seconds``, and her session's id."""
    home = Path(alice().home)
    proc = pool.popen_hwrun(
        ["--gpu", "1", "--", "sh", "-c", f"echo started; sleep {seconds}; echo done"],
        user=DEV_USER,
        cwd=str(home),
    )

    def hers() -> str | None:
        for node in pool.pool()["nodes"]:
            for gpu in node["gpus"]:
                if gpu["holder"] == DEV_USER:
                    return str(gpu["session"])
        return None

    return proc, str(wait_for(hers, 60, "Alice's session to hold a GPU"))


def test_work_runs_as_the_verified_account_over_tls(idpool: Pool) -> None:
    home = alice().home
    done = idpool.hwrun(["--gpu", "1", "--", "sh", "-c", "id -u; id -g"], user=DEV_USER, cwd=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4321", "4321"]
    assert idpool.url.startswith("https://")
    idpool.assert_clean()


def test_bob_cannot_touch_alices_session(idpool: Pool) -> None:
    proc, session_id = alices_running_session(idpool, 6)
    bob = signer_of(idpool, "devbox-b").for_user(Identity("root", 0, 0, "root", "/root"))
    try:
        for method, path, verb in (
            ("DELETE", f"/api/sessions/{session_id}", "end"),
            ("POST", f"/api/sessions/{session_id}/renew", "renew"),
            ("GET", f"/api/sessions/{session_id}", "read"),
        ):
            status, body = call(idpool, method, path, bob)
            assert status == 403, (method, path, body)
            assert f"root@devbox-b may not {verb} session {session_id}" in body["message"]
            assert f"belongs to {DEV_USER}@{MACHINE}" in body["message"]
        status, listed = call(idpool, "GET", "/api/sessions", bob)
        [hers] = [s for s in listed if s["id"] == session_id]
        assert "secret_sha256" not in hers and "host" not in hers and "owner" not in hers
        # nor on the node: Bob holds no credential the agent takes for her session
        node_url = idpool.pool()["nodes"][0]["url"]
        agent = urllib.request.Request(
            f"{node_url}/hwsched/sessions/{session_id}",
            method="DELETE",
            headers={"Authorization": f"token {bob}"},
        )
        context = ssl.create_default_context(cafile=idpool.ca)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(agent, timeout=30, context=context)
        assert refused.value.code == 403
        refused.value.close()
        # nor through its websocket (her command's stream), nor the node's kernel list
        for path in (f"/hwsched/sessions/{session_id}/command", "/api/kernels"):
            assert node_refuses(idpool, node_url, path, bob) == 403, path
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.split() == ["started", "done"]  # every line, after all of Bob's attempts
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    idpool.assert_clean()


def test_root_on_one_machine_cannot_speak_for_another(idpool: Pool) -> None:
    root_a = signer_of(idpool, MACHINE)
    as_alice = root_a.for_user(alice())
    # what a request says of its machine does not count: the session is Alice's on devbox-a
    claim = {"request": {"gpus": 1}, "user": DEV_USER, "host": "devbox-b"}
    status, made = call(idpool, "POST", "/api/sessions", as_alice, claim)
    assert status == 201 and made["host"] == MACHINE and made["owner"]["uid"] == 4321
    assert call(idpool, "DELETE", f"/api/sessions/{made['id']}", as_alice)[0] == 200
    # and a credential for one user is not one for another
    claim = {"request": {"gpus": 1}, "user": "root", "host": MACHINE}
    status, body = call(idpool, "POST", "/api/sessions", as_alice, claim)
    assert status == 403
    assert f"you are {DEV_USER}@{MACHINE}: a session is asked for as yourself" in body["message"]
    # a machine certificate registers no node, and a node registers only as itself
    node = {"url": "https://127.0.0.1:1", "gpus": [{"index": 0, "model": "X", "memory": 1}]}
    node["protocol"] = 1
    status, body = call(idpool, "PUT", "/api/nodes/fake", root_a.for_user(alice()), node)
    assert status == 403 and "only that node may" in body["message"]
    other_node = signer_of(idpool, "node-x", role="node").for_self()
    status, body = call(idpool, "PUT", f"/api/nodes/{idpool.node}", other_node, node)
    assert status == 403 and f"node node-x may not register node {idpool.node}" in body["message"]
    status, body = call(idpool, "POST", f"/api/nodes/{idpool.node}/heartbeat", "", {"sessions": []})
    assert status == 401 and "no credential" in body["message"]
    assert idpool.pool()["nodes"][0]["url"] != "https://127.0.0.1:1"  # nothing changed


def test_bad_credentials_say_what_to_fix(idpool: Pool) -> None:
    root_a = signer_of(idpool, MACHINE)
    expired = root_a.for_user(alice(), seconds=-120)
    status, body = call(idpool, "GET", "/api/pool", expired)
    assert status == 401 and "has expired" in body["message"]
    status, body = call(idpool, "GET", "/api/pool", "not-a-credential")
    assert status == 401 and "share agent on their machine" in body["message"]
    too_high = {"request": {"gpus": 1, "priority": 50}, "user": DEV_USER, "host": MACHINE}
    status, body = call(idpool, "POST", "/api/sessions", root_a.for_user(alice()), too_high)
    assert status == 403 and "--priority 50 is above" in body["message"]


def test_revoking_takes_effect_at_once(idpool: Pool) -> None:
    bob = signer_of(idpool, "devbox-b").for_user(Identity("root", 0, 0, "root", "/root"))
    assert call(idpool, "GET", "/api/pool", bob)[0] == 200
    proc, session_id = alices_running_session(idpool, 60)
    try:
        idpool.revoked.write_text(f"devbox-b\n{DEV_USER}@{MACHINE}\n")
        status, body = call(idpool, "GET", "/api/pool", bob)
        assert status == 401 and "devbox-b has been revoked" in body["message"]
        _, err = proc.communicate(timeout=60)  # her live session ends with the reason
        assert proc.returncode != 0
        assert "revoked by the pool's operator" in err

        def ended_session() -> dict[str, Any] | None:
            record = dict(idpool.api("GET", f"/api/sessions/{session_id}"))
            return record if record["state"] == "ended" else None

        # her client may have been refused while its session still started: the scheduler
        # ends the session itself, on its next tick, while the revocation stands
        ended = wait_for(ended_session, 30, "the scheduler to end her session")
    finally:
        idpool.revoked.unlink()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "revoked" in ended["end_reason"]
    time.sleep(0.5)  # the scheduler reads the file again when it changes
    assert call(idpool, "GET", "/api/pool", bob)[0] == 200
    idpool.assert_clean()


def test_the_pool_token_is_the_operators(idpool: Pool) -> None:
    pool = asyncio.run(_operator_pool(idpool))
    assert pool["nodes"][0]["name"] == idpool.node


async def _operator_pool(pool: Pool) -> dict[str, Any]:
    from jupyter_hwsched.protocol.clients import SchedulerClient

    async with SchedulerClient(pool.url, pool.token, pool.ca) as api:
        return await api.pool()


def node_refuses(pool: Pool, node_url: str, path: str, credential: str) -> int:
    """The status a node agent answers a request (a websocket upgrade for ``.../command``)
    with ``credential``."""

    async def attempt() -> int:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        scheme = "wss" if path.endswith("/command") else "https"
        request = HTTPRequest(
            node_url.replace("https", scheme, 1) + path,
            headers={"Authorization": f"token {credential}"},
            ssl_options=ssl.create_default_context(cafile=pool.ca),
        )
        try:
            if scheme == "wss":
                ws = await websocket_connect(request)
                ws.close()
                return 101
            from tornado.httpclient import AsyncHTTPClient

            client = AsyncHTTPClient(force_instance=True)
            try:
                return (await client.fetch(request)).code
            finally:
                client.close()
        except HTTPClientError as exc:
            return exc.code

    return asyncio.run(attempt())
