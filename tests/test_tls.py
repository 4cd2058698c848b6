"""TLS between the machines: the pool CA, a scheduler serving HTTPS, and clients that verify.

The scheduler runs as a real process with a certificate the test's own pool CA issued; clients
are the package's protocol clients, as every part of the pool uses them.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from harness import Service, free_port

from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import RequestError, UnavailableError
from jupyter_hwsched.protocol.pki import holder, init_ca, issue

HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]


def pool_of(url: str, token: str, ca_file: str) -> dict[str, object]:
    async def ask() -> dict[str, object]:
        async with SchedulerClient(url, token, ca_file) as api:
            return await api.pool()

    return asyncio.run(ask())


def test_the_ca_issues_certificates_for_names_and_addresses(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    again = init_ca(tmp_path / "ca")
    assert again.cert.read_bytes() == ca.cert.read_bytes()  # an existing CA is kept
    made = issue(tmp_path / "ca", "node-3", "node", tmp_path / "out", ("10.0.0.7", "gpu3"))
    assert holder(made.cert.read_bytes()) == ("node-3", "node")
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"10.0.0.7"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"node-3", "gpu3"}
    for key in (ca.key, made.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(RequestError, match="role 'admin' is not one of"):
        issue(tmp_path / "ca", "x", "admin", tmp_path / "out")


@pytest.fixture(scope="module")
def tls_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A scheduler serving HTTPS on 127.0.0.1 with a certificate for that address only.
    Yields (url, token, the CA's certificate)."""
    work = tmp_path_factory.mktemp("tls")
    ca = init_ca(work / "ca")
    made = issue(work / "ca", "scheduler", "scheduler", work / "issued", ("127.0.0.1",))
    port, token = free_port(), "tls-test-token"
    service = Service(
        "scheduler",
        [
            *HWSCHED,
            "scheduler",
            f"--port={port}",
            f"--db={work / 's.sqlite'}",
            f"--certfile={made.cert}",
            f"--keyfile={made.key}",
        ],
        {**os.environ, "HWSCHED_TOKEN": token},
        work / "scheduler.log",
    )
    try:
        line = service.wait_line("HWSCHED_SCHEDULER_READY")
        assert line.split()[1] == f"https://127.0.0.1:{port}"
        yield f"https://127.0.0.1:{port}", token, ca.cert
    finally:
        service.stop()


def test_a_client_with_the_pool_ca_reaches_the_scheduler(
    tls_scheduler: tuple[str, str, Path],
) -> None:
    url, token, ca = tls_scheduler
    assert "nodes" in pool_of(url, token, str(ca))


def test_a_client_with_another_ca_refuses_and_says_what_to_set(
    tls_scheduler: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, token, _ = tls_scheduler
    other = init_ca(tmp_path / "other")
    with pytest.raises(RequestError, match=r"does not trust .*set HWSCHED_CA"):
        pool_of(url, token, str(other.cert))


def test_a_name_the_certificate_does_not_carry_is_refused(
    tls_scheduler: tuple[str, str, Path],
) -> None:
    url, token, ca = tls_scheduler
    with pytest.raises(RequestError, match="use the name or address its certificate was issued"):
        pool_of(url.replace("127.0.0.1", "localhost"), token, str(ca))


def test_plain_http_to_the_scheduler_is_not_answered(
    tls_scheduler: tuple[str, str, Path],
) -> None:
    url, token, _ = tls_scheduler
    with pytest.raises(UnavailableError, match="cannot reach the scheduler"):
        pool_of(url.replace("https://", "http://"), token, "")


def test_an_unreadable_ca_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="cannot be read as a certificate"):
        SchedulerClient("https://127.0.0.1:1", "t", str(tmp_path / "missing.pem"))


def test_plain_http_off_loopback_is_refused_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HWSCHED_ALLOW_INSECURE", raising=False)
    with pytest.raises(RequestError, match=r"refusing plain http to the scheduler at 10\.231"):
        SchedulerClient("http://10.231.9.9:8765", "t")
    SchedulerClient("http://127.0.0.1:8765", "t").close()  # loopback never leaves the machine
    monkeypatch.setenv("HWSCHED_ALLOW_INSECURE", "1")
    SchedulerClient("http://10.231.9.9:8765", "t").close()


def test_a_scheduler_will_not_serve_plain_http_off_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HWSCHED_ALLOW_INSECURE"}
    done = subprocess.run(
        [*HWSCHED, "scheduler", "--ip=0.0.0.0", f"--port={free_port()}", f"--db={tmp_path / 'db'}"],
        env={**env, "HWSCHED_TOKEN": "t"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to serve plain HTTP on 0.0.0.0: set --certfile and --keyfile" in done.stderr
