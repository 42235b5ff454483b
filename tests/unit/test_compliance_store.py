"""The history store's compliance part (history/compliance.py): audit results and
verification results, on SQLite here and on PostgreSQL in
tests/integration/test_store_postgres.py (the same contract)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from history.change import ChangeRecord, ChangeWindow, Rollback, Verification
from history.compliance import AuditFinding, PendingUpdate, StoredAudit
from history.store import HistoryStore, open_store

T0 = datetime(2026, 10, 3, 2, tzinfo=UTC)


def audit(server: str, run: str, at: datetime = T0, **fields: object) -> StoredAudit:
    return StoredAudit.model_validate(
        {
            "client": "acme",
            "server": server,
            "flow_run_id": run,
            "audited_at": at,
            "status": "passed",
        }
        | fields
    )


def change(
    run: str, *verifications: Verification, rolled_back: tuple[str, ...] = ()
) -> ChangeRecord:
    return ChangeRecord(
        client="acme",
        change_ref="CHG-7",
        flow_run_id=run,
        requester="schedule",
        window=ChangeWindow(start=T0, end=T0 + timedelta(hours=4), inside=True),
        verifications=list(verifications),
        rollbacks=[Rollback(server=s, restored_ok=True, verified_ok=True) for s in rolled_back],
        started=T0,
    )


def verified(server: str, minutes: int, passed: bool = True) -> Verification:
    return Verification(
        server=server,
        phase="production",
        passed=passed,
        failures=() if passed else ("token=abc123 in the output",),
        at=T0 + timedelta(minutes=minutes),
    )


class ComplianceStoreContract:
    """What every backend does with audits and verifications (``store_url`` fixture)."""

    @pytest.fixture()
    def store(self, store_url: str) -> Iterator[HistoryStore]:
        with open_store(store_url) as store:
            yield store

    def test_an_audit_is_stored_per_server_and_read_back_by_its_flow_run(
        self, store: HistoryStore
    ) -> None:
        first = audit(
            "web-1",
            "run-1",
            status="findings",
            findings=[
                AuditFinding(key="no_unexpected_ports", text="unexpected listening ports: 8080")
            ],
            warnings=["firewall unknown"],
            pending_security=[PendingUpdate(package="openssl", version="3.0.15")],
        )
        unreachable = audit(
            "db-1",
            "run-1",
            status="unreachable",
            findings=[AuditFinding(key="unreachable", text="not audited: timed out")],
        )
        store.save_audits([first, unreachable])
        store.save_audits([audit("web-1", "run-2", T0 + timedelta(days=30), pending_security=[])])

        assert store.audits("acme", flow_run_id="run-1") == [unreachable, first]
        later = store.audits("acme", flow_run_id="run-2")[0]
        # Read, nothing pending (empty) is not the same as could not be read (None).
        assert (later.pending_security, unreachable.pending_security) == ((), None)
        assert [a.flow_run_id for a in store.audits("acme", until=T0 + timedelta(days=1))] == [
            "run-1",
            "run-1",
        ]
        assert store.audits("other") == []

    def test_a_retried_write_replaces_the_rows_instead_of_adding_them(
        self, store: HistoryStore
    ) -> None:
        store.save_audits([audit("web-1", "run-1")])
        again = audit(
            "web-1", "run-1", status="findings", findings=[AuditFinding(key="k", text="t")]
        )
        store.save_audits([again])

        assert store.audits("acme") == [again]

    def test_a_secret_in_a_finding_or_warning_is_never_stored(self, store: HistoryStore) -> None:
        store.save_audits(
            [
                audit(
                    "web-1",
                    "run-1",
                    status="unreachable",
                    findings=[AuditFinding(key="unreachable", text="auth failed password=hunter2")],
                    warnings=["from https://bob:s3cret@10.0.0.1/x"],
                )
            ]
        )

        with store.engine.connect() as conn:
            raw = str(conn.exec_driver_sql("SELECT findings, warnings FROM audit_results").all())
        assert "hunter2" not in raw and "s3cret" not in raw
        assert store.audits("acme")[0].findings[0].text == "auth failed password=***"

    def test_a_naive_time_is_refused(self, store: HistoryStore) -> None:
        with pytest.raises(ValueError, match="naive"):
            store.audits("acme", until=datetime(2026, 1, 1))

    def test_each_save_of_a_change_record_rewrites_its_verification_rows(
        self, store: HistoryStore
    ) -> None:
        record = change("run-1", verified("web-1", 10))
        store.save_verifications(record)
        record.verifications.append(verified("db-1", 20, passed=False))
        record.rollbacks.append(Rollback(server="db-1", restored_ok=True, verified_ok=True))
        store.save_verifications(record)

        rows = store.verifications("acme")
        assert [(v.server, v.passed, v.rolled_back, v.seq) for v in rows] == [
            ("web-1", True, False, 0),
            ("db-1", False, True, 1),
        ]
        assert rows[1].failures == ("token=*** in the output",)

    def test_saving_a_change_record_stores_its_verifications_in_the_same_write(
        self, store: HistoryStore
    ) -> None:
        record = change("run-1", verified("web-1", 10))
        store.save_change_record(record)
        record.verifications.append(verified("db-1", 20))
        store.save_change_record(record)
        # A rerun continues the change (one record); its next save moves the rows to it.
        continued = change("run-2", *record.verifications, verified("app-1", 30))
        store.continue_change_record(continued, "run-1")
        store.save_change_record(continued)

        rows = store.verifications("acme")
        assert [(v.flow_run_id, v.server) for v in rows] == [
            ("run-2", "web-1"),
            ("run-2", "db-1"),
            ("run-2", "app-1"),
        ]

    def test_a_version_6_store_gets_the_verifications_of_its_records_on_upgrade(
        self, store_url: str
    ) -> None:
        with open_store(store_url) as store:
            store.save_change_record(
                change("run-1", verified("web-1", 10), verified("db-1", 20), rolled_back=("db-1",))
            )
        # Back to version 6: the two tables of version 7 gone, the record kept.
        with open_store(store_url) as store, store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE verification_results")
            conn.exec_driver_sql("DROP TABLE audit_results")
            conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 7")

        with open_store(store_url) as store:
            assert store.schema_version() == 7
            rows = store.verifications("acme")
            assert [(v.server, v.rolled_back, v.at) for v in rows] == [
                ("web-1", False, T0 + timedelta(minutes=10)),
                ("db-1", True, T0 + timedelta(minutes=20)),
            ]
            assert store.audits("acme") == []

    def test_a_rerun_that_continues_the_change_leaves_one_set_of_rows_under_its_run(
        self, store: HistoryStore
    ) -> None:
        store.save_verifications(change("run-1", verified("web-1", 10)))
        continued = change("run-2", verified("web-1", 10), verified("db-1", 90))
        store.save_verifications(continued)

        rows = store.verifications("acme", change_ref="CHG-7")
        assert [(v.flow_run_id, v.server) for v in rows] == [("run-2", "web-1"), ("run-2", "db-1")]
        assert [v.server for v in store.verifications("acme", until=T0 + timedelta(hours=1))] == [
            "web-1"
        ]


class TestSqliteComplianceStore(ComplianceStoreContract):
    """The contract on SQLite."""

    @pytest.fixture()
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'caretaker.db'}"
