"""The developer's share mounted on the node with sshfs (FUSE).

sshfs runs in the foreground as the agent's child, so the agent sees at once when a mount dies.
The session's private key and the share's pinned host key live in the session's own directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from jupyter_hwsched.protocol.errors import UnavailableError
from jupyter_hwsched.protocol.records import ShareGrant

DEFAULT_OPTIONS = [
    "no_contain_symlinks",  # absolute symlinks (/lib64/ld-linux...) must resolve in the container
    "reconnect",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=3",
    # coherence: a file changed on the developer's side is seen within a second, in a run
    # that has it open too (auto_cache drops its cached pages when its mtime or size moved);
    # the read-mostly trees come from the node's cache instead (agent/cache)
    "auto_cache",
    "entry_timeout=1",
    "attr_timeout=1",
    "negative_timeout=1",
    # AES-GCM where the CPU has AES instructions: about 1.4x chacha20's throughput measured
    "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
]


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [_unescape(line.split()[1]) for line in f]


def mounted(path: str | Path) -> bool:
    return str(path) in mount_points()


def mounts_under(base: str | Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    return [p for p in mount_points() if p.startswith(prefix)]


def unmount(path: str | Path) -> None:
    """Unmount a FUSE mount; lazily when busy. Never raises for an already-gone mount."""
    if not mounted(path):
        return
    for cmd in (["fusermount3", "-u", str(path)], ["fusermount", "-u", str(path)]):
        if shutil.which(cmd[0]):
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return
            break
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _escape(option: str) -> str:
    """One -o option as sshfs (libfuse) reads a comma-separated list: ``\\,`` is a comma."""
    return option.replace("\\", "\\\\").replace(",", "\\,")


class SshfsMount:
    """One sshfs mount of one session's share."""

    def __init__(
        self, share: ShareGrant, mountpoint: Path, keydir: Path, options: list[str]
    ) -> None:
        self.share = share
        self.mountpoint = mountpoint
        self.keydir = keydir
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    def mount(self, timeout: float = 20.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = self.keydir / "id_share"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.share.private_key)
        known = self.keydir / "known_hosts"
        alias = f"hwsched-share-{self.mountpoint.name}"
        known.write_text(f"{alias} {self.share.host_key}\n")
        options = [
            f"IdentityFile={key}",
            f"UserKnownHostsFile={known}",
            f"HostKeyAlias={alias}",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            f"port={self.share.port}",
            *self.options,
        ]
        if os.geteuid() == 0:
            options.append("allow_other")  # the container runs as the developer's uid
        host = f"[{self.share.host}]" if ":" in self.share.host else self.share.host
        source = f"{self.share.user}@{host}:{self.share.root}"
        log = self.keydir / "sshfs.log"
        with open(log, "wb") as err:
            self.process = subprocess.Popen(
                [
                    "sshfs",
                    "-f",
                    "-o",
                    ",".join(map(_escape, options)),
                    source,
                    str(self.mountpoint),
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not mounted(self.mountpoint):
            if self.process.poll() is not None:
                detail = log.read_text(errors="replace").strip()
                raise UnavailableError(f"mounting the developer's share failed: {detail}")
            if time.monotonic() > deadline:
                self.unmount()
                raise UnavailableError("mounting the developer's share timed out")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def responsive(self, timeout: float = 5.0) -> bool:
        """Whether the share still answers. A dropped connection blocks file access in the
        container, and sshfs (with ``reconnect``) keeps running, so ask it: a statfs goes all
        the way to the developer's SFTP server. Run in a child, which may hang, not us."""
        if not self.alive():
            return False
        try:
            probe = subprocess.run(
                ["stat", "-f", "-c", "%b", str(self.mountpoint)],
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def unmount(self) -> None:
        unmount(self.mountpoint)
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            self.mountpoint.rmdir()
        except OSError:
            pass
        shutil.rmtree(self.keydir, ignore_errors=True)
