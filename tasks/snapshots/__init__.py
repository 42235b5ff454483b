"""Snapshots: take one before a change, restore from it, prove it restores, keep a few.

* ``base``: the records, the :class:`~tasks.snapshots.base.SnapshotProvider` protocol
  and the shared pure helpers (retention's choice, the bounded wait);
* ``aws/``, ``rackspace/``, ``sandbox``, ``none``: the providers, one each;
* ``factory``: :func:`~tasks.snapshots.factory.provider_for`, the provider a server's
  inventory entry names, with its credentials;
* ``tasks``: the plain functions and the thin Prefect tasks the flows call.

The names the flows use are re-exported here. See docs/snapshots.md.
"""

from __future__ import annotations

from tasks.snapshots.base import (
    RestoreTestResult,
    RetentionResult,
    SnapshotProvider,
    SnapshotRecord,
    select_for_deletion,
)
from tasks.snapshots.factory import provider_for
from tasks.snapshots.tasks import (
    apply_retention,
    apply_snapshot_retention,
    create_snapshot,
    probe_snapshot_provider,
    restore_from_snapshot,
    run_restore_test,
    take_snapshot,
    wait_for_snapshot,
)

__all__ = [
    "RestoreTestResult",
    "RetentionResult",
    "SnapshotProvider",
    "SnapshotRecord",
    "apply_retention",
    "apply_snapshot_retention",
    "create_snapshot",
    "probe_snapshot_provider",
    "provider_for",
    "restore_from_snapshot",
    "run_restore_test",
    "select_for_deletion",
    "take_snapshot",
    "wait_for_snapshot",
]
