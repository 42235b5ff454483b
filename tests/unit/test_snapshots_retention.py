"""Snapshot retention: which snapshots go (decided on hand-made lists), and in-use ones kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.base import SnapshotRecord, SnapshotState, select_for_deletion
from tasks.snapshots.tasks import apply_retention

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def snap(
    server: str,
    day: int,
    state: SnapshotState = "completed",
    copies: dict[str, str] | None = None,
) -> SnapshotRecord:
    """A record taken ``day`` days after T0, id ``<server>-d<day>``."""
    return SnapshotRecord(
        provider="aws",
        kind="volumes",
        server=server,
        client="acme",
        change_ref=f"CHG-{day}",
        ids=[f"{server}-d{day}"],
        state=state,
        created_at=T0 + timedelta(days=day),
        encrypted_copies=copies or {},
    )


def ids(records: list[SnapshotRecord]) -> list[str]:
    return [r.ids[0] for r in records]


def test_the_newest_keep_snapshots_of_a_server_survive_and_older_ones_go_oldest_first() -> None:
    records = [snap("web", d) for d in (3, 1, 5, 2, 4)]
    assert ids(select_for_deletion(records, keep=2, protect_ids=set())) == [
        "web-d1",
        "web-d2",
        "web-d3",
    ]


def test_each_server_keeps_its_own_newest_snapshots() -> None:
    records = [snap("web", d) for d in (1, 2, 3)] + [snap("db", d) for d in (1, 2)]
    assert ids(select_for_deletion(records, keep=2, protect_ids=set())) == ["web-d1"]


def test_this_runs_snapshot_is_never_deleted_even_when_it_is_not_among_the_newest() -> None:
    records = [snap("web", d) for d in (1, 2, 3)]
    assert ids(select_for_deletion(records, keep=1, protect_ids={"web-d1"})) == ["web-d2"]


def test_a_protected_encrypted_copy_protects_its_whole_record() -> None:
    records = [snap("web", 1, copies={"web-d1": "copy-1"}), snap("web", 2)]
    assert select_for_deletion(records, keep=1, protect_ids={"copy-1"}) == []


def test_failed_snapshots_are_deleted_and_do_not_count_towards_keep() -> None:
    records = [snap("web", 1), snap("web", 2), snap("web", 3, state="error")]
    assert ids(select_for_deletion(records, keep=2, protect_ids=set())) == ["web-d3"]


def test_pending_snapshots_and_accepted_risks_are_always_kept() -> None:
    records = [
        snap("web", 1, state="pending"),
        snap("web", 2, state="accepted-risk"),
        snap("web", 3),
    ]
    assert select_for_deletion(records, keep=1, protect_ids=set()) == []


def test_keep_zero_deletes_every_completed_snapshot_but_this_runs() -> None:
    records = [snap("web", 1), snap("web", 2)]
    assert ids(select_for_deletion(records, keep=0, protect_ids={"web-d2"})) == ["web-d1"]


def test_a_negative_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="keep"):
        select_for_deletion([], keep=-1, protect_ids=set())


# --------------------------------------------------------------------------- apply_retention


class ScriptedProvider:
    """A provider whose snapshots, in-use answers and delete failures are given."""

    name = "aws"

    def __init__(
        self,
        records: list[SnapshotRecord],
        in_use: dict[str, str] | None = None,
        refuse: set[str] | None = None,
    ) -> None:
        self.records = records
        self.busy = in_use or {}
        self.refuse = refuse or set()
        self.deleted: list[str] = []

    def list(self, server: Server) -> list[SnapshotRecord]:
        return [r for r in self.records if r.server == server.name]

    def in_use(self, record: SnapshotRecord) -> str | None:
        return self.busy.get(record.ids[0])

    def delete(self, record: SnapshotRecord) -> None:
        if record.ids[0] in self.refuse:
            raise SnapshotError(f"refused to delete {record.ids[0]}")
        self.deleted.append(record.ids[0])


@pytest.fixture()
def web() -> Server:
    return Server.model_validate(
        {
            "name": "web",
            "role": "production",
            "address": "10.0.0.5",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {"type": "none", "reason": "scripted provider in a unit test"},
        }
    )


def test_retention_deletes_old_snapshots_and_reports_what_it_kept(web: Server) -> None:
    provider = ScriptedProvider([snap("web", d) for d in (1, 2, 3)])
    result = apply_retention(provider, web, keep=2, protect_ids={"web-d3"})  # type: ignore[arg-type]
    assert provider.deleted == ["web-d1"]
    assert ids(result.deleted) == ["web-d1"]
    assert ids(result.kept) == ["web-d2", "web-d3"]
    assert result.ok


def test_retention_skips_a_snapshot_still_in_use_and_says_why(web: Server) -> None:
    provider = ScriptedProvider(
        [snap("web", d) for d in (1, 2, 3)], in_use={"web-d1": "backs image ami-1"}
    )
    result = apply_retention(provider, web, keep=1, protect_ids=set())  # type: ignore[arg-type]
    assert provider.deleted == ["web-d2"]
    assert [(s.record.ids[0], s.reason) for s in result.skipped] == [
        ("web-d1", "backs image ami-1")
    ]
    assert result.ok


def test_a_refused_deletion_is_reported_and_the_others_still_happen(web: Server) -> None:
    provider = ScriptedProvider([snap("web", d) for d in (1, 2, 3)], refuse={"web-d1"})
    result = apply_retention(provider, web, keep=1, protect_ids=set())  # type: ignore[arg-type]
    assert provider.deleted == ["web-d2"]
    assert [f.record.ids[0] for f in result.failed] == ["web-d1"]
    assert "refused" in result.failed[0].reason
    assert not result.ok
