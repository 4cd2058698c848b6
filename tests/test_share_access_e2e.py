"""A session's share admits the placed node's address and no other.

A real per-session sshd (the share agent's :class:`SftpShare`) is opened for a node said to
be at 127.0.0.2; OpenSSH's ``sftp`` then logs in with the session's key from 127.0.0.2, and
again from 127.0.0.1 (both loopback addresses of this machine, so nothing leaves it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_hwsched.developer.share.sftp import SftpShare
from jupyter_hwsched.protocol.records import ShareGrant

NODE = "127.0.0.2"
ELSEWHERE = "127.0.0.1"


@pytest.fixture
def share() -> Iterator[tuple[SftpShare, ShareGrant, Path]]:
    if os.geteuid() != 0 or not shutil.which("sftp"):
        pytest.fail("needs root and OpenSSH's sftp client (bash scripts/setup.sh)")
    # outside /tmp: sshd's StrictModes refuses keys under a world-writable directory
    base = Path("/var/lib/hwsched-test") / f"share-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True, mode=0o711)
    opened = SftpShare(
        session_id="s" + uuid.uuid4().hex[:8],
        user=pwd.getpwuid(0),
        directory=base / "share",
        ip="127.0.0.1",
        root="/",
        allowed_from=(NODE,),
    )
    try:
        grant = opened.open()
        yield opened, grant, base
    finally:
        opened.close()
        shutil.rmtree(base, ignore_errors=True)


def sftp_from(source: str, grant: ShareGrant, base: Path) -> subprocess.CompletedProcess[str]:
    key, known = base / "key", base / "known_hosts"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(grant.private_key)
    known.write_text(f"share {grant.host_key}\n")
    return subprocess.run(
        [
            "sftp",
            "-b",
            "-",
            "-i",
            str(key),
            "-P",
            str(grant.port),
            "-o",
            f"BindAddress={source}",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "HostKeyAlias=share",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"{grant.user}@{grant.host}",
        ],
        input="ls /\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_placed_node_may_mount_the_share(
    share: tuple[SftpShare, ShareGrant, Path],
) -> None:
    _, grant, base = share
    done = sftp_from(NODE, grant, base)
    assert done.returncode == 0, done.stderr
    assert "/usr" in done.stdout


def test_any_other_host_is_refused_even_with_the_key(
    share: tuple[SftpShare, ShareGrant, Path],
) -> None:
    _, grant, base = share
    done = sftp_from(ELSEWHERE, grant, base)
    assert done.returncode != 0
    assert "Permission denied" in done.stderr
