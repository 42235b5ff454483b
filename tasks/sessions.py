"""SSH sessions for one flow run: one connection per host, reused, closed at the end.

``open_sessions`` hands out a ``RemoteHost`` per server; tasks receive the host, never
the inventory or the credentials. Where the hosts come from is passed in (STYLE 8): the
default, :func:`ssh_hosts`, loads the SSH identity blocks the selected servers name
(once each) and opens pooled SSH sessions; a unit test passes scripted hosts instead.

Every session :func:`ssh_hosts` opens in a flow or task run holds a slot of the estate-wide
``caretaker-ssh-sessions`` limit while its connection is open (:class:`CountedHost`,
``tasks.limits.SessionSlots``; decision 78), unless a health-check batch's slots already
count it. Before a run waits for an answer (suspended or paused in process) it closes
its sessions (:func:`close_sessions`): a waiting run holds no session and no slot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

from blocks.ssh import SshIdentity
from core.errors import ConfigError
from inventory import ClientInventory, Server
from tasks.limits import SessionSlots, session_slots, sessions_counted_by_batch
from tasks.remote import CommandResult, RemoteHost, SessionPool, SshJump, SshTarget
from tasks.remote.ssh import SshRemoteHost


def ssh_target(server: Server) -> SshTarget:
    """Where and as whom to reach ``server`` (pure)."""
    jump = server.jump
    return SshTarget(
        name=server.name,
        address=server.address,
        port=server.port,
        user=server.user,
        sudo=server.sudo,
        jump=SshJump(address=jump.address, port=jump.port, user=jump.user) if jump else None,
    )


def load_identity(name: str, client: str) -> SshIdentity:
    """Load an SSH identity block, with an error that says what to do when it is missing."""
    try:
        identity = SshIdentity.load(name)
    except ValueError as exc:
        raise ConfigError(
            f"{client}: SSH identity block {name!r} does not exist on this Prefect API; "
            f"create it (block type 'Caretaker SSH Identity') or fix ssh_block in the inventory"
        ) from exc
    assert isinstance(identity, SshIdentity)
    return identity


#: A server's host: ``RemoteHost`` for the server (a lazily connecting SSH session).
HostFactory = Callable[[Server], RemoteHost]

#: Opens the hosts of a run and closes them when the block ends (``ssh_hosts``, or scripted).
HostSource = Callable[[ClientInventory, Sequence[Server]], AbstractContextManager[HostFactory]]


class FleetSessions:
    """The hosts of one run, by server name."""

    def __init__(self, factory: HostFactory) -> None:
        self._factory = factory

    def host(self, server: Server) -> RemoteHost:
        """The (lazily connecting) host for ``server``."""
        return self._factory(server)


class CountedHost:
    """An SSH host whose open connection holds one slot of ``caretaker-ssh-sessions``.

    The slot is taken before a command (waiting for one, bounded), kept between commands,
    and given back on :meth:`close`, when the connection failed or was lost, or when the
    run's other sessions need it while this one is idle (:meth:`disconnect`). Inside a
    health-check batch (whose slots count its threads' sessions) no slot is taken.
    """

    def __init__(self, host: SshRemoteHost, slots: SessionSlots) -> None:
        self.name = host.name
        self._host = host
        self._slots = slots

    def run(self, command: str, **options: Any) -> CommandResult:
        """``SshRemoteHost.run`` (the same options), holding the session's slot."""
        if sessions_counted_by_batch():
            return self._host.run(command, **options)
        self._slots.enter(self)
        try:
            return self._host.run(command, **options)
        finally:
            transport = self._host.transport
            self._slots.leave(self, connected=transport is not None and transport.is_active())

    def close(self) -> None:
        """Close the connection and give its slot back; the next command reconnects."""
        try:
            self._host.close()
        finally:
            self._slots.release(self)

    def disconnect(self) -> None:
        """Close the connection only (its slot is being handed to another session)."""
        self._host.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never the host's private parts (nor a copy's recursion)
            raise AttributeError(name)
        return getattr(self._host, name)


class _RunSessions:
    """The hosts one ``ssh_hosts`` block handed out, to close them before a wait."""

    def __init__(self) -> None:
        self.hosts: dict[str, RemoteHost] = {}
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            hosts = list(self.hosts.values())
        for host in hosts:
            host.close()


_open_runs: ContextVar[tuple[_RunSessions, ...]] = ContextVar("caretaker_open_sessions", default=())


def close_sessions() -> int:
    """Close every SSH session the blocks open here handed out, and give back their
    slots; each reconnects (taking a slot again) at its next command. Called before a run
    waits for an answer. Returns how many hosts were closed."""
    runs = _open_runs.get()
    for run in runs:
        run.close()
    return sum(len(run.hosts) for run in runs)


@contextmanager
def ssh_hosts(inventory: ClientInventory, servers: Sequence[Server]) -> Iterator[HostFactory]:
    """Pooled SSH sessions with the identity blocks the servers name; closed at the end.

    In a flow or task run each session holds a slot of ``caretaker-ssh-sessions`` while
    it is open (:class:`CountedHost`); all are given back when the block ends.

    Args:
        inventory: the client, for error messages.
        servers: the servers the run works on.

    Yields:
        The host factory: one reused session per server.
    """
    client = inventory.client.slug
    blocks = {s.ssh_block for s in servers}
    for server in servers:
        if server.jump and server.jump.ssh_block not in (None, server.ssh_block):
            raise ConfigError(
                f"{client}/{server.name}: a bastion with its own SSH identity block is not "
                "supported yet; give the jump host the server's ssh_block"
            )
    identities = {name: load_identity(name, client) for name in sorted(blocks)}
    block_of = {s.name: s.ssh_block for s in servers}
    targets = {s.name: ssh_target(s) for s in servers}
    pool = SessionPool(lambda target: identities[block_of[target.name]])
    slots = session_slots()
    handed = _RunSessions()

    def host(server: Server) -> RemoteHost:
        with handed.lock:
            found = handed.hosts.get(server.name)
            if found is None:
                inner = pool.get(targets[server.name])
                found = inner if slots is None else CountedHost(inner, slots)
                handed.hosts[server.name] = found
            return found

    token = _open_runs.set((*_open_runs.get(), handed))
    try:
        yield host
    finally:
        try:
            _open_runs.reset(token)
        except ValueError:  # ended in another context than it began: nothing to undo there
            pass
        try:
            pool.close_all()  # the connections first: then their slots
        finally:
            if slots is not None:
                slots.close()


@contextmanager
def open_sessions(
    inventory: ClientInventory, servers: Sequence[Server], hosts: HostSource = ssh_hosts
) -> Iterator[FleetSessions]:
    """Open the sessions of a run; every connection is closed when the block ends.

    Args:
        inventory: the client, for error messages.
        servers: the servers the run works on.
        hosts: where the hosts come from: SSH with the inventory's identity blocks by
            default; scripted hosts in unit tests.

    Yields:
        The run's hosts.
    """
    with hosts(inventory, servers) as factory:
        yield FleetSessions(factory)
