"""One session's SFTP share: a dedicated OpenSSH server with keys made for that session only.

The server is ``sshd`` started by absolute path with its own config: public-key login for one
user, ``internal-sftp`` forced, no forwarding, no TTY. Its host key and the client key are new
for each session, so the credentials are worthless once the share closes. Closing kills the
listener and every connection process under it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from jupyter_hwsched.protocol.cache_manifest import opened_for_reading
from jupyter_hwsched.protocol.errors import RequestError, UnavailableError
from jupyter_hwsched.protocol.records import ShareGrant

SSHD_CONFIG = """\
ListenAddress {ip}
Port {port}
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin {permit_root}
UsePAM no
StrictModes yes
ForceCommand {sftp_command}
Subsystem sftp internal-sftp
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PermitTunnel no
PermitUserRC no
ClientAliveInterval 15
ClientAliveCountMax 4
LogLevel {log_level}
"""


def keygen(path: Path) -> str:
    """Make an ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hwsched-session", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text().strip()


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SftpShare:
    """A running share for one session."""

    session_id: str
    user: pwd.struct_passwd
    directory: Path
    ip: str
    root: str
    sshd_path: str = "/usr/sbin/sshd"
    log_level: str = "INFO"
    #: the addresses the placed node connects from; no other host may log in
    allowed_from: tuple[str, ...] = ()
    #: OpenSSH's sftp-server, run instead of internal-sftp to log the files it opens
    sftp_server_path: str = "/usr/lib/openssh/sftp-server"
    #: log the files the node opens (to learn the hot set), where the user's shell allows
    log_opens: bool = False
    sftp_command: str = "internal-sftp"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    opened: float = field(default_factory=time.time)

    def open(self, timeout: float = 10.0) -> ShareGrant:
        if not os.path.isabs(self.sshd_path) or not os.access(self.sshd_path, os.X_OK):
            raise UnavailableError(
                f"sshd not found at {self.sshd_path}: install openssh-server "
                "or set ShareAgentApp.sshd_path"
            )
        self._prepare_directory()
        self.sftp_command = self._sftp_command()
        host_pub = keygen(self.directory / "host_key")
        client_pub = keygen(self.directory / "client_key")
        authorized = self.directory / "authorized_keys"
        only = f',from="{",".join(self.allowed_from)}"' if self.allowed_from else ""
        authorized.write_text(f"restrict{only} {client_pub}\n")
        authorized.chmod(0o644)
        private_key = (self.directory / "client_key").read_text()
        (self.directory / "client_key").unlink()
        for attempt in range(5):
            self.port = free_port(self.ip)
            if self._start_sshd(timeout):
                break
            if attempt == 4:
                self.close()
                raise UnavailableError(f"sshd for the share did not start: {self._log_tail()}")
        return ShareGrant(
            host=self.ip,
            port=self.port,
            user=self.user.pw_name,
            private_key=private_key,
            host_key=host_pub,
            root=self.root,
        )

    def _prepare_directory(self) -> None:
        # sshd reads authorized_keys as the user, and with StrictModes insists that the file
        # and every directory above it belong to root or the user and are not group/world
        # writable: a private directory that the user may traverse.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.directory.chmod(0o711)
        (self.directory / "sshd_config").unlink(missing_ok=True)

    @property
    def opens_log(self) -> Path:
        """Where the share's SFTP server logs the files it opens (owned by the user)."""
        return self.directory / "opened.log"

    def _sftp_command(self) -> str:
        """internal-sftp; or, to log opens, sftp-server with its log sent to ``opens_log``.
        sshd runs a command other than internal-sftp through the user's login shell, so a
        user without one (nologin) gets internal-sftp and no log."""
        shell = self.user.pw_shell or "/bin/sh"
        usable = os.access(shell, os.X_OK) and Path(shell).name not in ("nologin", "false")
        if not (self.log_opens and usable and os.access(self.sftp_server_path, os.X_OK)):
            return "internal-sftp"
        self.opens_log.unlink(missing_ok=True)
        fd = os.open(self.opens_log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, self.user.pw_uid, self.user.pw_gid)
        os.close(fd)
        server, log = shlex.quote(self.sftp_server_path), shlex.quote(str(self.opens_log))
        return f"{server} -e -l INFO 2>>{log}"

    def opened_paths(self) -> list[str]:
        """The paths the share's SFTP server opened for reading (none if it kept no log)."""
        try:
            with open(self.opens_log, "rb") as f:  # the user's to write: read a bounded part
                return opened_for_reading(f.read(64 << 20).decode(errors="replace"))
        except OSError:
            return []

    def _start_sshd(self, timeout: float) -> bool:
        config = self.directory / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                sftp_command=self.sftp_command,
                ip=self.ip,
                port=self.port,
                dir=self.directory,
                user=self.user.pw_name,
                permit_root="prohibit-password" if self.user.pw_uid == 0 else "no",
                log_level=self.log_level,
            )
        )
        config.chmod(0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.directory / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [self.sshd_path, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.ip, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self._kill_tree()
        return False

    def _log_tail(self) -> str:
        try:
            return (self.directory / "sshd.log").read_text()[-800:].strip()
        except OSError:
            return "(no log)"

    def connections(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0
        try:
            return len(psutil.Process(self.process.pid).children())
        except psutil.NoSuchProcess:
            return 0

    def _kill_tree(self) -> None:
        if self.process is None:
            return
        try:
            parent = psutil.Process(self.process.pid)
            victims = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        for proc in victims:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)
        self.process.wait()

    def close(self) -> None:
        """Stop the server and every connection; remove keys. Safe to call twice."""
        self._kill_tree()
        shutil.rmtree(self.directory, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user": self.user.pw_name,
            "uid": self.user.pw_uid,
            "host": self.ip,
            "port": self.port,
            "root": self.root,
            "opened": self.opened,
            "pid": self.process.pid if self.process else None,
            "connections": self.connections(),
        }


def check_share_user(user: pwd.struct_passwd, shadow: str = "/etc/shadow") -> None:
    """sshd refuses accounts whose password field marks them locked; say so up front."""
    try:
        lines = Path(shadow).read_text().splitlines()
    except OSError:  # not root: sshd will tell, in its log
        return
    for line in lines:
        name, _, rest = line.partition(":")
        if name == user.pw_name and rest.startswith("!"):
            raise RequestError(
                f"account {user.pw_name!r} is locked (its password field starts with '!'), "
                "so sshd will not let the share log in as it: as root, run "
                f"'usermod -p \"*\" {user.pw_name}' (no password, but not locked)"
            )
