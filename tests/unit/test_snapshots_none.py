"""Provider none: no snapshot, the inventory's reason recorded as an accepted risk."""

from __future__ import annotations

import pytest

from core.errors import SnapshotError
from inventory import Server, SnapshotPolicy
from tasks.snapshots.base import SnapshotProvider
from tasks.snapshots.factory import provider_for
from tasks.snapshots.none import NoSnapshotProvider
from tasks.snapshots.tasks import create_snapshot, run_restore_test, wait_for_snapshot

REASON = "bare metal at the client's colo; nightly backups by their vendor"


@pytest.fixture()
def colo() -> Server:
    return Server.model_validate(
        {
            "name": "colo-db-1",
            "role": "production",
            "address": "192.0.2.10",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {"type": "none", "reason": REASON},
        }
    )


def test_a_server_without_provider_gets_the_none_provider(colo: Server) -> None:
    provider = provider_for(colo, SnapshotPolicy())
    assert isinstance(provider, NoSnapshotProvider)
    assert isinstance(provider, SnapshotProvider)


def test_create_records_the_accepted_risk_with_the_inventorys_reason(colo: Server) -> None:
    record = create_snapshot.fn(colo, "globex", "CHG-7", SnapshotPolicy())
    assert record.state == "accepted-risk"
    assert record.provider == "none"
    assert record.ids == []
    assert record.detail == REASON
    assert (record.server, record.client, record.change_ref) == ("colo-db-1", "globex", "CHG-7")


def test_waiting_for_an_accepted_risk_returns_it_unchanged(colo: Server) -> None:
    record = create_snapshot.fn(colo, "globex", "CHG-7", SnapshotPolicy())
    assert wait_for_snapshot.fn(colo, record, SnapshotPolicy(), timeout_s=0) == record


def test_a_restore_is_refused_quoting_the_accepted_risk(colo: Server) -> None:
    provider = NoSnapshotProvider()
    record = provider.create(colo, "globex", "CHG-7")
    with pytest.raises(SnapshotError, match=f"no snapshot: risk accepted: {REASON}"):
        provider.restore(colo, record)


def test_the_restore_test_is_reported_skipped_not_passed(colo: Server) -> None:
    record = NoSnapshotProvider().create(colo, "globex", "CHG-7")
    result = run_restore_test.fn(colo, record, SnapshotPolicy())
    assert result.ok is False
    assert result.detail == "skipped: no snapshot provider"
    assert result.rto_s is None


def test_there_is_never_anything_to_list_or_delete(colo: Server) -> None:
    provider = NoSnapshotProvider()
    assert provider.list(colo) == []
    assert provider.find(colo, "CHG-7") is None
