"""The ``none`` provider: no snapshot, and the inventory's reason recorded as an accepted risk.

Some servers cannot be snapshotted by us (bare metal at a client's colo, a vendor's
backup regime). Their inventory entry says ``provider: {type: none, reason: ...}``.
This provider makes that explicit instead of silent: ``create`` returns a record in
state ``accepted-risk`` carrying the reason, which the change record shows; a restore
is refused with the reason; the restore test reports itself skipped, not passed.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

from core.errors import SnapshotError
from inventory import NoProvider, Server
from tasks.snapshots.base import ProviderName, RestoreTestResult, SnapshotRecord


def _reason(server: Server) -> str:
    provider = server.provider
    if isinstance(provider, NoProvider):
        return provider.reason
    # Reached only when a caller forces this provider onto another server type.
    return f"server {server.name} has provider {provider.type}, handled as none"


class NoSnapshotProvider:
    """Records the risk instead of taking a snapshot."""

    name: ProviderName = "none"

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """Always None: there is nothing to find, and recording the risk again is harmless."""
        return None

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Record that no snapshot is taken, with the inventory's reason.

        Returns:
            A record in state ``accepted-risk``, no ids, the reason in ``detail``.
        """
        return SnapshotRecord(
            provider="none",
            kind="none",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[],
            state="accepted-risk",
            encrypted=None,
            created_at=datetime.now(UTC),
            detail=_reason(server),
        )

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Nothing to wait for: the record is returned unchanged."""
        return record

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Refuse: there is nothing to restore from.

        Raises:
            SnapshotError: Always, quoting the accepted risk.
        """
        raise SnapshotError(f"{server.name}: no snapshot: risk accepted: {_reason(server)}")

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """Nothing is ever stored."""
        return []

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Nothing to delete, so nothing is in use."""
        return None

    def delete(self, record: SnapshotRecord) -> None:
        """Nothing to delete."""

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Report the test as skipped (``ok=False``): an accepted risk is not a passed test."""
        return RestoreTestResult(
            server=server.name,
            provider="none",
            snapshot_ids=[],
            ok=False,
            rto_s=None,
            detail="skipped: no snapshot provider",
            cleaned_up=True,
        )
