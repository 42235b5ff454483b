"""A real, throwaway OpenSSH sshd on 127.0.0.1 for the remote-layer integration tests.

Each ``Sshd`` runs ``/usr/sbin/sshd -D -e -f <own config>`` as root on a free
port, with its own ed25519 host key, ``authorized_keys``, pid file and log in a
temporary directory; nothing of the machine's own sshd configuration is used.
The process group is terminated on ``stop``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
# sshd refuses to start without its privilege-separation directory (compile-time path).
PRIVSEP_DIR = Path("/run/sshd")


def require_sshd() -> None:
    """Skip the calling test unless we are root and OpenSSH's sshd is installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a throwaway sshd")
    if not SSHD.exists():
        pytest.skip(f"{SSHD} is missing (install openssh-server)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, *, key_type: str = "ed25519", passphrase: str = "") -> Path:
    """Generate a key pair at ``path`` (private) and ``path.pub``; return ``path``."""
    cmd = [SSH_KEYGEN, "-q", "-t", key_type, "-N", passphrase, "-C", "", "-f", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def fingerprint(pub_path: Path) -> str:
    """The SHA256 fingerprint of a public key file, as OpenSSH prints it."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


@dataclass
class Sshd:
    """A running sshd; ``known_hosts_line`` trusts exactly its host key."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    host_key: Path
    log_path: Path
    authorized_keys: Path
    address: str = "127.0.0.1"
    _stopped: bool = field(default=False, repr=False)

    @property
    def lookup_name(self) -> str:
        """The name paramiko looks up in known_hosts for this server."""
        return f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        """A plain known_hosts line for this server's host key."""
        key_type, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.lookup_name} {key_type} {b64}\n"

    @property
    def host_key_fingerprint(self) -> str:
        """SHA256 fingerprint of the host key."""
        return fingerprint(self.host_key.with_suffix(".pub"))

    def log(self) -> str:
        """Everything sshd logged so far."""
        return self.log_path.read_text(errors="replace")

    def accepted_logins(self) -> int:
        """How many SSH connections authenticated (one line per connection)."""
        return len(re.findall(r"Accepted publickey for ", self.log()))

    def stop(self) -> None:
        """Terminate sshd and its per-connection children (its own process group)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_sshd(directory: Path, authorized: list[Path], *, log_level: str = "VERBOSE") -> Sshd:
    """Start an sshd in ``directory`` that accepts the given public keys for any user.

    Args:
        directory: Empty directory for its keys, config, pid file and log.
        authorized: Public key files (``*.pub``) written to its authorized_keys.
        log_level: sshd LogLevel; DEBUG1 also logs direct-tcpip forwarding.

    Returns:
        The running server, listening when this returns.
    """
    require_sshd()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    host_key = keygen(directory / "ssh_host_ed25519_key")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text("".join(p.read_text() for p in authorized))
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile {directory / "sshd.pid"}
AuthorizedKeysFile {authorized_keys}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
MaxSessions 32
MaxStartups 64
LogLevel {log_level}
"""
    )
    log_path = directory / "sshd.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() reaches the children
        )
    server = Sshd(directory, port, process, host_key, log_path, authorized_keys)
    deadline = time.monotonic() + 10
    while f"listening on 127.0.0.1 port {port}" not in server.log():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"sshd did not start:\n{server.log()}")
        time.sleep(0.02)
    return server
