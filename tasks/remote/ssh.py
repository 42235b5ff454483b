"""``SshRemoteHost``: run shell commands on hosts over SSH (paramiko), and ``SessionPool``.

Everything else in caretaker talks to hosts through the small ``RemoteHost``
interface (``run(command) -> CommandResult``); unit tests pass a scripted fake,
integration tests and flows pass ``SshRemoteHost``. See docs/remote.md.

Guarantees of ``SshRemoteHost``:

- host keys are always verified against the identity block's known_hosts
  (``RejectPolicy``; nothing is read from or written to ``~/.ssh``);
- one SSH connection per host, opened lazily and reused by every command
  (paramiko channels on one transport run concurrently, so threads may share it);
- third-party errors are translated in one place, ``translate_error``, into the
  ``RemoteError`` family and chained with ``raise ... from exc``;
- only establishing the connection is retried (``ConnectError``); a command
  that ran is never repeated here;
- nothing it logs, returns or raises contains the private key, its passphrase
  or the sudo password (``redact``).

Command strings are built with ``sh_join`` so nothing from the inventory
reaches a shell unquoted.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Self

import paramiko

from blocks.ssh import SshIdentity
from core.errors import CommandTimeout, ConfigError, RemoteError
from tasks.remote.base import CommandResult, SshTarget, redact, sudo_wrap
from tasks.remote.errors import (
    TRANSLATABLE,
    _connect_error,
    _RejectUnknownHostKeys,
    translate_error,
)

log = logging.getLogger(__name__)

_CHUNK = 65536
_KEEPALIVE_S = 30


# --- the SSH implementation ---------------------------------------------------------


class SshRemoteHost:
    """A ``RemoteHost`` over one reused paramiko SSH connection.

    Connects on the first ``run`` (retrying ``ConnectError`` with exponential
    backoff), reconnects if the connection died since (a reboot), and runs each
    command on its own channel of the same transport, so threads may call ``run``
    concurrently.

    Args:
        target: Where and as whom to connect.
        identity: Key, passphrase, sudo password and known_hosts for the target.
        jump_identity: Identity for the bastion; default: ``identity``.
        connect_timeout: Seconds for TCP connect, banner, auth and channel open.
        connect_retries: Extra connection attempts after the first on a retryable error.
        backoff_s: Sleep before the first retry; doubles each retry.
    """

    def __init__(
        self,
        target: SshTarget,
        identity: SshIdentity,
        *,
        jump_identity: SshIdentity | None = None,
        connect_timeout: float = 10,
        connect_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.name = target.name
        self.target = target
        self.user = target.user or identity.username
        self.connect_timeout = connect_timeout
        self.connect_retries = connect_retries
        self.backoff_s = backoff_s
        #: How many connection attempts were made so far (observability and tests).
        self.connect_attempts = 0
        self._identity = identity
        self._jump_identity = jump_identity or identity
        self._secrets = identity.secrets() + (jump_identity.secrets() if jump_identity else [])
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._jump_client: paramiko.SSHClient | None = None

    @property
    def transport(self) -> paramiko.Transport | None:
        """The live paramiko transport, or None before the first command."""
        client = self._client
        return client.get_transport() if client else None

    def run(
        self,
        command: str,
        *,
        timeout: float = 300,
        sudo: bool = False,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run a shell command on the host.

        Args:
            command: One shell command line; build it with ``sh_join``.
            timeout: Seconds the command may run; then the channel is closed.
            sudo: Run as root (wrapped in sudo when the login user is not root).
            check: Raise ``CommandFailed`` on a non-zero exit.
            stdin: Text fed to the command's standard input, then EOF.

        Returns:
            Exit code, stdout, stderr and duration (secrets redacted).

        Raises:
            ConnectError: The connection could not be made (after retries), or it
                was lost while the command ran (then ``retryable`` is False: the
                command may have run).
            HostKeyError: The host key is unknown or changed.
            AuthenticationError: The host refused the key.
            CommandTimeout: The command ran longer than ``timeout``.
            CommandFailed: ``check`` is set and the command exited non-zero.
            ConfigError: The identity is unusable, or sudo is needed but not allowed.
        """
        shown = redact(command, self._secrets)
        wire, feed = self._prepare(command, sudo=sudo, stdin=stdin)
        transport = self._ensure_transport()
        log.debug("%s: run %s%s", self.name, shown, " (sudo)" if sudo else "")
        started = time.monotonic()
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except TRANSLATABLE as exc:
            raise translate_error(
                exc, self.name, stage="opening a session", secrets=self._secrets
            ) from exc
        try:
            out, err, code = self._exchange(channel, wire, feed, started, timeout, shown)
        finally:
            channel.close()
        result = CommandResult(
            host=self.name,
            command=shown,
            exit_code=code,
            stdout=redact(out.decode("utf-8", errors="replace"), self._secrets),
            stderr=redact(err.decode("utf-8", errors="replace"), self._secrets),
            duration_s=time.monotonic() - started,
        )
        log.debug("%s: exit %d in %.3fs: %s", self.name, code, result.duration_s, shown)
        return result.check() if check else result

    def close(self) -> None:
        """Close the connection (and the bastion's); the next ``run`` reconnects."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------

    def _ensure_transport(self) -> paramiko.Transport:
        # The lock makes concurrent first calls share one connection instead of racing.
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    log.info("%s: connection was lost; reconnecting", self.name)
                self._close_locked()
                self._connect_locked()
                transport = self._client.get_transport() if self._client else None
            assert transport is not None
            return transport

    def _connect_locked(self) -> None:
        # Configuration problems are not retried: they raise ConfigError here, before the loop.
        pkey = self._identity.load_pkey()
        jump_pkey = self._jump_identity.load_pkey() if self.target.jump else None
        delay = self.backoff_s
        for attempt in range(1, self.connect_retries + 2):
            self.connect_attempts += 1
            try:
                self._connect_once(pkey, jump_pkey)
                log.debug("%s: connected on attempt %d", self.name, attempt)
                return
            except RemoteError as err:
                if not err.retryable or attempt > self.connect_retries:
                    err.add_note(f"{self.name}: gave up after {attempt} connection attempt(s)")
                    raise
                log.warning(
                    "%s: connection attempt %d failed (%s); retrying in %.2fs",
                    self.name,
                    attempt,
                    err,
                    delay,
                )
                time.sleep(delay)
                delay *= 2

    def _connect_once(self, pkey: paramiko.PKey, jump_pkey: paramiko.PKey | None) -> None:
        target, jump = self.target, self.target.jump
        jump_client: paramiko.SSHClient | None = None
        client: paramiko.SSHClient | None = None
        sock: paramiko.Channel | None = None
        stage = ""
        try:
            if jump is not None and jump_pkey is not None:
                jump_user = jump.user or self._jump_identity.username
                stage = f"jump host ssh {jump_user}@{jump.address}:{jump.port}"
                jump_client = self._new_client(self._jump_identity, jump.address, jump.port)
                self._dial(jump_client, jump.address, jump.port, jump_user, jump_pkey, None)
                jump_transport = jump_client.get_transport()
                assert jump_transport is not None
                stage = f"tunnel via {jump.address}:{jump.port} to {target.address}:{target.port}"
                sock = jump_transport.open_channel(
                    "direct-tcpip",
                    (target.address, target.port),
                    ("127.0.0.1", 0),
                    timeout=self.connect_timeout,
                )
            stage = f"ssh {self.user}@{target.address}:{target.port}"
            client = self._new_client(self._identity, target.address, target.port)
            self._dial(client, target.address, target.port, self.user, pkey, sock)
            transport = client.get_transport()
            assert transport is not None
            # Keepalives notice a silently dead peer (link down) instead of hanging a run.
            transport.set_keepalive(_KEEPALIVE_S)
        except BaseException as exc:
            for c in (client, jump_client):
                if c is not None:
                    c.close()
            if isinstance(exc, TRANSLATABLE):
                raise translate_error(exc, self.name, stage=stage, secrets=self._secrets) from exc
            raise
        self._client, self._jump_client = client, jump_client

    def _dial(
        self,
        client: paramiko.SSHClient,
        address: str,
        port: int,
        user: str,
        pkey: paramiko.PKey,
        sock: paramiko.Channel | None,
    ) -> None:
        client.connect(
            address,
            port,
            username=user,
            pkey=pkey,
            sock=sock,
            timeout=self.connect_timeout,
            banner_timeout=self.connect_timeout,
            auth_timeout=self.connect_timeout,
            channel_timeout=self.connect_timeout,
            # Only the block's key: no agent, no ~/.ssh keys of whoever runs the worker.
            look_for_keys=False,
            allow_agent=False,
        )

    @staticmethod
    def _new_client(identity: SshIdentity, address: str, port: int) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # Only the block's known_hosts; load_system_host_keys is deliberately never called.
        # Only the entries that can match this host (its name as paramiko looks it up, or
        # a hashed name): HostKeys.add scans every entry, so adding a fleet's whole file
        # for each connection grew with the cube of the fleet.
        lookup = address if port == 22 else f"[{address}]:{port}"
        keys = client.get_host_keys()
        for entry in identity.host_key_entries_for(lookup):
            for hostname in entry.hostnames:
                if hostname == lookup or hostname.startswith("|1|"):
                    keys.add(hostname, entry.key.get_name(), entry.key)
        client.set_missing_host_key_policy(_RejectUnknownHostKeys())
        return client

    def _close_locked(self) -> None:
        for client in (self._client, self._jump_client):
            if client is not None:
                _shutdown(client)
                client.close()
        self._client = self._jump_client = None

    # -- one command -----------------------------------------------------------------

    def _prepare(self, command: str, *, sudo: bool, stdin: str | None) -> tuple[str, str | None]:
        if not sudo or self.user == "root":
            return command, stdin
        if not self.target.sudo:
            raise ConfigError(
                f"{self.name}: a command needs root but user {self.user!r} may not use sudo "
                "(target.sudo is False)"
            )
        secret = self._identity.sudo_password
        password = secret.get_secret_value() if secret else ""
        if not password:
            return sudo_wrap(command, with_password=False), stdin
        # sudo -S reads the first line of stdin as the password; the rest reaches the command.
        return sudo_wrap(command, with_password=True), password + "\n" + (stdin or "")

    def _exchange(
        self,
        channel: paramiko.Channel,
        wire: str,
        feed: str | None,
        started: float,
        timeout: float,
        shown: str,
    ) -> tuple[bytes, bytes, int]:
        deadline = started + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        pending = feed.encode() if feed else b""
        try:
            # A guard for the blocking calls; the loop below enforces the real deadline.
            channel.settimeout(max(timeout, 1.0))
            channel.exec_command(wire)
            if not pending:
                channel.shutdown_write()  # commands that read stdin see EOF, not a hang
            # Drain both streams as data arrives: waiting on one while the other's window
            # fills is the classic deadlock on large outputs.
            while True:
                progressed = False
                if channel.recv_ready():
                    out.append(channel.recv(_CHUNK))
                    progressed = True
                if channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(_CHUNK))
                    progressed = True
                if pending and channel.send_ready():
                    sent = channel.send(pending[:_CHUNK])
                    pending = pending[sent:]
                    if not pending:
                        channel.shutdown_write()
                    progressed = True
                drained = not channel.recv_ready() and not channel.recv_stderr_ready()
                if (channel.eof_received or channel.closed) and drained:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(self.name, shown, timeout)
                if not progressed:
                    # The channel's fileno is readable when either stream has data;
                    # poll faster while stdin waits for window space.
                    select.select([channel], [], [], min(remaining, 0.05 if pending else 1.0))
            while not channel.exit_status_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(self.name, shown, timeout)
                channel.status_event.wait(min(remaining, 1.0))
            code = channel.recv_exit_status()
        except TRANSLATABLE as exc:
            err_ = translate_error(
                exc, self.name, stage=f"while running {shown}", secrets=self._secrets
            )
            err_.retryable = False  # the command may have run: never repeat it blindly
            raise err_ from exc
        transport = channel.get_transport()
        # No exit status: either the process died of a signal (sshd sent EOF and close,
        # the transport lives) or the connection died under it (no EOF; the transport
        # thread closes channels just before it marks itself inactive).
        lost = transport is None or not transport.is_active() or not channel.eof_received
        if code == -1 and lost:
            raise _connect_error(
                self.name,
                f"connection lost while running {shown}; it may have run (partly)",
                retryable=False,
            )
        return b"".join(out), b"".join(err), code


def _shutdown(client: paramiko.SSHClient) -> None:
    """End the connection now: paramiko's ``close`` closes the socket while its transport
    thread may sit in ``recv`` on it, and the kernel keeps the connection established
    until that ``recv`` times out (0.1 s). A shutdown sends the FIN at once and wakes the
    thread, so a closed session is closed for the host (and for the session limit)."""
    transport = client.get_transport()
    sock = transport.sock if transport is not None else None
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, EOFError, paramiko.SSHException):
        pass  # already gone: nothing to end


# --- pool ---------------------------------------------------------------------------


class SessionPool:
    """One ``SshRemoteHost`` per target, reused; thread-safe; closes all on exit.

    Args:
        identity: The identity for every target, or a function choosing one per target.
        jump_identity: Identity for bastions; default: the target's identity.
        connect_timeout: Passed to each ``SshRemoteHost``.
        connect_retries: Passed to each ``SshRemoteHost``.
        backoff_s: Passed to each ``SshRemoteHost``.

    Example:
        ```python
        with SessionPool(identity) as pool:
            pool.get(target).run(sh_join(["uptime"]), check=True)
        ```
    """

    def __init__(
        self,
        identity: SshIdentity | Callable[[SshTarget], SshIdentity],
        *,
        jump_identity: SshIdentity | None = None,
        connect_timeout: float = 10,
        connect_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self._identity = identity
        self._jump_identity = jump_identity
        self._options = (connect_timeout, connect_retries, backoff_s)
        self._lock = threading.Lock()
        self._hosts: dict[SshTarget, SshRemoteHost] = {}

    def get(self, target: SshTarget) -> SshRemoteHost:
        """The host for ``target``, created on first use (it connects lazily)."""
        with self._lock:
            host = self._hosts.get(target)
            if host is None:
                identity = (
                    self._identity
                    if isinstance(self._identity, SshIdentity)
                    else self._identity(target)
                )
                timeout, retries, backoff = self._options
                host = SshRemoteHost(
                    target,
                    identity,
                    jump_identity=self._jump_identity,
                    connect_timeout=timeout,
                    connect_retries=retries,
                    backoff_s=backoff,
                )
                self._hosts[target] = host
            return host

    def close_all(self) -> None:
        """Close every connection and forget the hosts."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_all()
