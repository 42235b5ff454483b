"""The one translation boundary: paramiko, socket and OS errors become ``RemoteError``s.

``translate_error`` maps what paramiko and the socket layer raise (``TRANSLATABLE``) to
the caretaker ``RemoteError`` family (docs/remote.md has the table, and
tests/unit/test_remote_errors.py proves it complete); callers raise the result
``from exc``. ``retryable`` is True only where connecting again may succeed. Unknown host
keys are refused by ``_RejectUnknownHostKeys``, which keeps the offered key so the error
can show its fingerprint and the ``ssh-keyscan`` line to check it with.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterable
from typing import Never

import paramiko
from paramiko.ber import BERException
from paramiko.hostkeys import InvalidHostKey
from paramiko.packet import NeedRekeyException
from paramiko.pkey import UnknownKeyType
from paramiko.sftp import SFTPError

from core.errors import (
    AuthenticationError,
    ConnectError,
    HostKeyError,
    RemoteError,
)
from tasks.remote.base import redact

# RFC 4254 5.1: the server refuses this kind of channel by policy; asking again will not help.
_OPEN_ADMINISTRATIVELY_PROHIBITED = 1

# What paramiko and the socket layer raise on connect/exec; everything else is a bug
# and propagates untouched.
TRANSLATABLE: tuple[type[BaseException], ...] = (
    paramiko.SSHException,
    OSError,
    EOFError,
    UnknownKeyType,
    InvalidHostKey,
    BERException,
    NeedRekeyException,
    SFTPError,
)


class _UnknownHostKey(paramiko.SSHException):
    """RejectPolicy's refusal, carrying the offered key so the error can show its fingerprint."""

    def __init__(self, lookup_name: str, key: paramiko.PKey) -> None:
        super().__init__(f"Server {lookup_name!r} not found in known_hosts")
        self.lookup_name = lookup_name
        self.key = key


class _RejectUnknownHostKeys(paramiko.RejectPolicy):
    """Reject unknown host keys like ``RejectPolicy``, but keep the key for the message."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> Never:
        raise _UnknownHostKey(hostname, key)


def _keyscan_hint(lookup_name: str, key_type: str) -> str:
    match = re.fullmatch(r"\[(.+)\]:(\d+)", lookup_name)
    address, port = (match.group(1), match.group(2)) if match else (lookup_name, "22")
    short = key_type.removeprefix("ssh-").split("-")[0]  # ssh-ed25519 -> ed25519
    if short.startswith("ecdsa"):
        short = "ecdsa"
    return f"ssh-keyscan -p {port} -t {short} {address}"


def _connect_error(host: str, message: str, *, retryable: bool) -> ConnectError:
    err = ConnectError(host, message)
    err.retryable = retryable
    return err


def translate_error(
    exc: BaseException, host: str, *, stage: str = "", secrets: Iterable[str] = ()
) -> RemoteError:
    """Map a paramiko/socket/OS exception to the caretaker ``RemoteError`` family.

    The caller raises the result ``from exc``. The table (docs/remote.md) is
    proven complete by tests/unit/test_remote_errors.py.

    Args:
        exc: What paramiko or the socket layer raised.
        host: Inventory name of the host.
        stage: Where it happened, prefixed to the message (``ssh root@10.0.0.5:22``).
        secrets: Values masked in the message.

    Returns:
        A ``RemoteError`` subclass; ``retryable`` is True only where connecting
        again may succeed.
    """
    if isinstance(exc, RemoteError):
        return exc
    kind, message, retryable = _classify(exc)
    prefix = f"{stage}: " if stage else ""
    err = kind(host, redact(prefix + message, secrets))
    err.retryable = retryable
    return err


_Verdict = tuple[type[RemoteError], str, bool]


def _classify(exc: BaseException) -> _Verdict:
    """The mapping table: (error class, message, retryable). Subclasses before bases."""
    if isinstance(exc, paramiko.BadHostKeyException):
        got, expected = exc.key, exc.expected_key
        return (
            HostKeyError,
            f"host key CHANGED for {exc.hostname!r}: it offered {got.get_name()} "
            f"{got.fingerprint}, known_hosts has {expected.get_name()} "
            f"{expected.fingerprint}. If the host was rebuilt, confirm the new fingerprint "
            "out of band (console: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and replace "
            "its entry in the known_hosts field of the SSH identity block; otherwise treat "
            "it as a possible man-in-the-middle and do not connect.",
            False,
        )
    if isinstance(exc, _UnknownHostKey):
        key_type = exc.key.get_name()
        return (
            HostKeyError,
            f"host key UNKNOWN for {exc.lookup_name!r}: it offered {key_type} "
            f"{exc.key.fingerprint}, which is not in known_hosts. Confirm the fingerprint "
            "out of band, then add the line printed by "
            f"`{_keyscan_hint(exc.lookup_name, key_type)}` to the known_hosts field of the "
            "SSH identity block.",
            False,
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        # A plain RejectPolicy refusal, which records no key.
        return (
            HostKeyError,
            f"host key UNKNOWN ({exc}); confirm its fingerprint out of band and add it to "
            "the known_hosts field of the SSH identity block.",
            False,
        )
    if isinstance(exc, InvalidHostKey):
        return HostKeyError, "a known_hosts entry is unreadable; fix the SSH identity block", False
    if isinstance(exc, paramiko.PasswordRequiredException):
        return (
            AuthenticationError,
            "the private key is encrypted and no passphrase is set in the SSH identity block",
            False,
        )
    if isinstance(exc, paramiko.AuthenticationException):
        # Covers BadAuthenticationType, PartialAuthentication, UnableToAuthenticate, AuthFailure.
        return (
            AuthenticationError,
            f"authentication failed ({exc}); check the login user and that the identity's "
            "public key is in that user's authorized_keys",
            False,
        )
    if isinstance(exc, paramiko.ChannelException):
        # The channel never opened, so no command started: safe to try again, unless the
        # server forbids this channel type (e.g. a bastion without TCP forwarding).
        return (
            ConnectError,
            f"could not open an SSH channel: {exc.text} (code {exc.code})",
            exc.code != _OPEN_ADMINISTRATIVELY_PROHIBITED,
        )
    if isinstance(exc, paramiko.ssh_exception.IncompatiblePeer):
        return ConnectError, f"no SSH algorithms in common: {exc}", False
    if isinstance(exc, paramiko.ssh_exception.MessageOrderError):
        # Strict-kex violation: a broken or tampered stream; repeating will not help.
        return ConnectError, f"SSH protocol violation: {exc}", False
    if isinstance(exc, paramiko.ConfigParseError | paramiko.CouldNotCanonicalize):
        return ConnectError, f"SSH configuration problem: {exc}", False
    if isinstance(exc, paramiko.SSHException):
        # Includes "Error reading SSH protocol banner" (sshd busy or still starting),
        # ProxyCommandFailure and a transport that dropped during the handshake.
        return ConnectError, f"SSH connection failed: {exc}", True
    if isinstance(exc, UnknownKeyType | BERException):
        return ConnectError, f"unusable key or signature data: {exc}", False
    if isinstance(exc, SFTPError):
        # Not a transport failure; unused by this layer today but decided, so the table is total.
        return RemoteError, f"SFTP operation failed: {exc}", False
    if isinstance(exc, NeedRekeyException):
        return ConnectError, "the SSH transport needed a re-key mid-handshake", True
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return ConnectError, f"connection refused or host unreachable: {exc}", True
    if isinstance(exc, socket.gaierror):
        # EAI_AGAIN is a resolver hiccup; any other answer means the address is wrong.
        return (
            ConnectError,
            f"cannot resolve the address ({exc.strerror}); check the inventory",
            exc.errno == socket.EAI_AGAIN,
        )
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias since 3.10
        return ConnectError, "timed out connecting or waiting for the host", True
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError, "connection refused (is sshd running?)", True
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return ConnectError, f"network error {name}: {exc.strerror or exc}", True
    if isinstance(exc, EOFError):
        return ConnectError, "the host closed the connection", True
    return RemoteError, f"unexpected {type(exc).__name__}: {exc}", False
