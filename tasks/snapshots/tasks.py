"""The snapshot steps of the maintenance policy, as plain functions and thin Prefect tasks.

They call a provider (see :mod:`tasks.snapshots.factory`) and decide what may be retried:

* :func:`create_snapshot` looks for this change's snapshot first and records a no-op
  when it exists; it is never retried (a blind retry could take a second snapshot).
* :func:`wait_for_snapshot` only reads (and makes idempotent encrypted copies): it is
  retried, but only after a transient endpoint error.
* :func:`restore_from_snapshot` and :func:`run_restore_test` change things: no retries.
* :func:`apply_snapshot_retention` keeps the newest ``retention`` snapshots per server,
  never deletes this run's, and skips (and reports) any still in use.
* :func:`probe_snapshot_provider` is the read-only preflight.

See docs/snapshots.md.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import SnapshotError
from inventory import Server, SnapshotPolicy
from tasks.rollout import snapshot_reusable
from tasks.snapshots.base import (
    RestoreTestResult,
    RetentionResult,
    SkippedDeletion,
    SnapshotProvider,
    SnapshotRecord,
    TransientSnapshotError,
    select_for_deletion,
)
from tasks.snapshots.factory import provider_for

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plain functions


#: How a snapshot taken again (its change's earlier one too old) says so in ``detail``.
RETAKEN = "re-taken"


def take_snapshot(
    provider: SnapshotProvider,
    server: Server,
    client: str,
    change_ref: str,
    max_age: timedelta | None = None,
) -> SnapshotRecord:
    """Find this change's snapshot or take one: at most one fresh snapshot per change and server.

    Args:
        provider: The server's provider.
        server: The server.
        client: The client slug.
        change_ref: The change the snapshot belongs to.
        max_age: Reuse the change's snapshot only while younger than this
            (``snapshots.max_age``); an older one is taken again. None: always reuse.

    Returns:
        The existing record (``reused=True``) or the new one (usually still pending;
        its ``detail`` starts with :data:`RETAKEN` when it replaces a too-old one).
    """
    existing = provider.find(server, change_ref)
    now = datetime.now(UTC)
    if existing is not None and max_age is not None:
        if not snapshot_reusable(existing.created_at, now, max_age):
            age = now - existing.created_at
            log.info(
                "%s: snapshot %s of %s is %s old (max_age %s): taking a fresh one",
                server.name,
                ", ".join(existing.ids),
                change_ref,
                age,
                max_age,
            )
            fresh = provider.create(server, client, change_ref)
            note = (
                f"{RETAKEN}: {', '.join(existing.ids)} was {int(age.total_seconds())} s old"
                f" (max_age {int(max_age.total_seconds())} s)"
            )
            return fresh.model_copy(
                update={"detail": "; ".join(x for x in (note, fresh.detail) if x)}
            )
    if existing is not None:
        log.info(
            "%s: snapshot %s already taken for %s: not taking another",
            server.name,
            ", ".join(existing.ids),
            change_ref,
        )
        return existing.model_copy(update={"reused": True})
    return provider.create(server, client, change_ref)


def apply_retention(
    provider: SnapshotProvider, server: Server, keep: int, protect_ids: set[str]
) -> RetentionResult:
    """Delete the server's snapshots beyond the newest ``keep``; skip those still in use.

    Args:
        provider: The server's provider.
        server: The server.
        keep: Completed snapshots kept (the policy's ``retention``).
        protect_ids: Ids never deleted (this run's snapshots).

    Returns:
        What was kept, deleted, skipped (in use, with why) and failed (with the error).
    """
    records = provider.list(server)
    doomed = select_for_deletion(records, keep, protect_ids)
    doomed_ids = {tuple(r.ids) for r in doomed}
    kept = [r for r in records if tuple(r.ids) not in doomed_ids]
    deleted: list[SnapshotRecord] = []
    skipped: list[SkippedDeletion] = []
    failed: list[SkippedDeletion] = []
    for record in doomed:
        try:
            reason = provider.in_use(record)
            if reason:
                log.warning("%s: keeping %s: %s", server.name, ", ".join(record.ids), reason)
                skipped.append(SkippedDeletion(record=record, reason=reason))
                continue
            provider.delete(record)
        except SnapshotError as exc:
            failed.append(SkippedDeletion(record=record, reason=str(exc)))
        else:
            deleted.append(record)
    return RetentionResult(
        server=server.name, kept=kept, deleted=deleted, skipped=skipped, failed=failed
    )


# --------------------------------------------------------------------------- Prefect tasks


def _only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the endpoint was unreachable or busy, not when the snapshot failed."""
    return isinstance(state.data, TransientSnapshotError)


@task(name="create-snapshot", cache_policy=NO_CACHE, task_run_name="create-snapshot-{server.name}")
def create_snapshot(
    server: Server, client: str, change_ref: str, policy: SnapshotPolicy
) -> SnapshotRecord:
    """Take the pre-change snapshot of one server, unless this change already has one.

    Never retried: if a call fails after the provider accepted it, a retry could take
    a second snapshot. A rerun of the flow finds the first one instead (``reused``).

    Args:
        server: The server (its ``provider`` entry picks the provider).
        client: The client slug (tagged on the snapshot).
        change_ref: The change reference (tagged; what makes a rerun a no-op).
        policy: The client's snapshot policy.

    Returns:
        The snapshot record; for provider none, state ``accepted-risk`` with the reason.

    Raises:
        SnapshotError: The provider could not take it (or encryption is required and
            impossible).
        ConfigError: Credentials or estate missing.
    """
    provider = provider_for(server, policy, client=client)
    return take_snapshot(provider, server, client, change_ref, policy.max_age)


@task(
    name="wait-for-snapshot",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_only_transient,
    task_run_name="wait-for-snapshot-{record.server}",
)
def wait_for_snapshot(
    server: Server,
    record: SnapshotRecord,
    policy: SnapshotPolicy,
    timeout_s: float = 3600,
    poll_s: float = 10,
) -> SnapshotRecord:
    """Wait (bounded) until the snapshot is completed; apply the encryption policy.

    Retried only after a transient endpoint error: a failed or timed-out snapshot is
    not going to improve by asking again.

    Args:
        server: The server.
        record: What ``create_snapshot`` returned.
        policy: The client's snapshot policy (``encrypted_copy`` makes copies here).
        timeout_s: The bound.
        poll_s: Seconds between looks.

    Returns:
        The completed record (with encrypted copies, if made).

    Raises:
        SnapshotError: The snapshot failed or is not completed within ``timeout_s``
            (the message has the ids and last state).
    """
    if record.state == "accepted-risk":
        return record
    provider = provider_for(server, policy, client=record.client)
    return provider.wait(record, timeout_s, poll_s)


@task(
    name="restore-from-snapshot",
    cache_policy=NO_CACHE,
    task_run_name="restore-from-snapshot-{server.name}",
)
def restore_from_snapshot(server: Server, record: SnapshotRecord, policy: SnapshotPolicy) -> None:
    """Put a server back to its snapshot (the rollback of a failed change). Never retried.

    Args:
        server: The server.
        record: A completed snapshot of it.
        policy: The client's snapshot policy.

    Raises:
        SnapshotError: The restore failed, or there is no snapshot (provider none).
    """
    provider = provider_for(server, policy, client=record.client)
    provider.restore(server, record)


@task(name="run-restore-test", cache_policy=NO_CACHE, task_run_name="restore-test-{server.name}")
def run_restore_test(
    server: Server, record: SnapshotRecord, policy: SnapshotPolicy, timeout_s: float = 900
) -> RestoreTestResult:
    """Restore the snapshot to a throwaway, isolated copy, check it, time it, remove it.

    Never retried (it creates things); the provider always cleans up and says so in
    ``cleaned_up``.

    Args:
        server: The server whose snapshot is tested.
        record: The snapshot.
        policy: The client's snapshot policy.
        timeout_s: The RTO bound (the inventory's ``restore_test.timeout``).

    Returns:
        ok, the RTO in seconds, what was checked, and whether everything was removed.
    """
    provider = provider_for(server, policy, client=record.client)
    return provider.restore_test(server, record, timeout_s)


@task(
    name="apply-snapshot-retention",
    cache_policy=NO_CACHE,
    task_run_name="snapshot-retention-{server.name}",
)
def apply_snapshot_retention(
    server: Server, client: str, policy: SnapshotPolicy, protect_ids: set[str]
) -> RetentionResult:
    """Keep the newest ``policy.retention`` snapshots of a server; delete older ones.

    Only caretaker-tagged snapshots of this client are considered; this run's
    (``protect_ids``) are never deleted, and one still in use (backing an AMI, the image
    a server runs from, under a restore test) is skipped and reported.

    Args:
        server: The server.
        client: The client slug.
        policy: The client's snapshot policy.
        protect_ids: Ids of this run's snapshots.

    Returns:
        Kept, deleted, skipped and failed snapshots; ``ok`` is False if a deletion failed.
    """
    provider = provider_for(server, policy, client=client)
    return apply_retention(provider, server, policy.retention, protect_ids)


@task(
    name="probe-snapshot-provider",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_only_transient,
    task_run_name="probe-snapshot-provider-{server.name}",
)
def probe_snapshot_provider(server: Server, client: str, policy: SnapshotPolicy) -> int:
    """Preflight: the server's provider answers (credentials load, the API lists).

    Read-only: it lists the server's caretaker snapshots, so a missing credentials
    block, an unknown instance or an unreachable endpoint fails before anything changes.

    Args:
        server: The server.
        client: The client slug.
        policy: The client's snapshot policy.

    Returns:
        How many caretaker snapshots of the server the provider holds.
    """
    provider = provider_for(server, policy, client=client)
    return len(provider.list(server))
