"""SSH sessions for one flow run: one connection per host, reused, closed at the end.

``open_sessions`` hands out a ``RemoteHost`` per server; tasks receive the host, never
the inventory or the credentials. Where the hosts come from is passed in (STYLE 8): the
default, :func:`ssh_hosts`, loads the SSH identity blocks the selected servers name
(once each) and opens pooled SSH sessions; a unit test passes scripted hosts instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from blocks.ssh import SshIdentity
from core.errors import ConfigError
from inventory import ClientInventory, Server
from tasks.remote import RemoteHost, SessionPool, SshJump, SshTarget


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


@contextmanager
def ssh_hosts(inventory: ClientInventory, servers: Sequence[Server]) -> Iterator[HostFactory]:
    """Pooled SSH sessions with the identity blocks the servers name; closed at the end.

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
    try:
        yield lambda server: pool.get(targets[server.name])
    finally:
        pool.close_all()


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
