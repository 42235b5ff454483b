"""Which snapshot provider serves a server, with its credentials loaded.

:func:`provider_for` reads the server's ``provider`` entry in the inventory and builds
the matching :class:`~tasks.snapshots.base.SnapshotProvider`: aws (a boto3 EC2 client
from the prefect-aws ``AwsCredentials`` block), rackspace (the Rackspace credentials
block), sandbox (the named sandbox estate) or none. Each provider module is imported
only when a server needs it, so a fleet without AWS never imports boto3, and only
``tasks.snapshots.sandbox`` ever reaches into ``sandbox/`` (DESIGN section 2).
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from inventory import (
    AwsProvider,
    NoProvider,
    RackspaceProvider,
    SandboxProvider,
    Server,
    SnapshotPolicy,
)
from tasks.snapshots.base import SnapshotProvider


def provider_for(
    server: Server, snapshot_policy: SnapshotPolicy, *, client: str | None = None
) -> SnapshotProvider:
    """The snapshot provider for ``server``, with its credentials loaded.

    Args:
        server: The inventory entry; ``server.provider`` picks the provider.
        snapshot_policy: The client's snapshot policy (mode, encryption, retention).
        client: The client slug; when given, ``find``/``list`` only see its snapshots.

    Returns:
        A ready provider: aws (boto3 client from the prefect-aws ``AwsCredentials``
        block, in the inventory's region), rackspace (the
        ``caretaker-rackspace-credentials`` block), sandbox (the named estate) or none.

    Raises:
        ConfigError: The credentials block does not exist or the estate is unknown.
    """
    provider = server.provider
    if isinstance(provider, NoProvider):
        from tasks.snapshots.none import NoSnapshotProvider

        return NoSnapshotProvider()
    if isinstance(provider, AwsProvider):
        from prefect_aws import AwsCredentials

        from tasks.snapshots.aws.provider import AwsSnapshotProvider

        credentials = _load_block(AwsCredentials, provider.credentials_block, server)
        params = credentials.aws_client_parameters.get_params_override()
        params["region_name"] = provider.region  # the inventory's region wins over the block's
        ec2 = credentials.get_boto3_session().client("ec2", **params)
        return AwsSnapshotProvider(ec2, provider, snapshot_policy, client=client)
    if isinstance(provider, RackspaceProvider):
        from blocks.rackspace import RackspaceCredentials
        from tasks.snapshots.rackspace.api import RackspaceApi
        from tasks.snapshots.rackspace.provider import RackspaceSnapshotProvider

        rackspace = _load_block(RackspaceCredentials, provider.credentials_block, server)
        api = RackspaceApi(rackspace, provider.region)
        return RackspaceSnapshotProvider(api, provider, snapshot_policy, client=client)
    if isinstance(provider, SandboxProvider):
        # The one way into sandbox/ (test equipment): through the sandbox provider's module.
        from tasks.snapshots.sandbox import sandbox_provider

        return sandbox_provider(server, provider, snapshot_policy, client=client)
    raise ConfigError(f"{server.name}: unknown snapshot provider {provider!r}")  # pragma: no cover


def _load_block(block_type: Any, name: str, server: Server) -> Any:
    try:
        return block_type.load(name)
    except ValueError as exc:
        raise ConfigError(
            f"{server.name}: credentials block {name!r} ({block_type.__name__}) does not exist"
            " on this Prefect API; create it or fix credentials_block in the inventory"
        ) from exc
