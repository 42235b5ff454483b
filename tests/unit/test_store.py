"""The history store on SQLite: migrations, change records, windows and the run lock.

:class:`StoreContract` holds the behaviour every backend must show; this module runs it on
a SQLite file in ``tmp_path`` and tests/integration/test_store_postgres.py on a fresh
PostgreSQL database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from core.errors import ConfigError, MaintenanceInProgress
from history.change import ChangeRecord, ChangeWindow, Outcome, PackageChange
from history.cli import main as ingest_main
from history.fold import CheckSample
from history.importer import bulk_import_intervals
from history.ingest import ingest
from history.intervals import read_intervals, read_intervals_frame
from history.lock import LockHandle, Takeover
from history.metrics import (
    DailyMetrics,
    MetricSample,
    read_daily_metrics,
    read_metrics,
    record_metrics,
)
from history.migrations import MIGRATIONS, SCHEMA_VERSION
from history.schema import (
    change_records,
    check_intervals,
    metadata,
    pack_interval,
    run_locks,
    schema_version,
)
from history.store import HistoryStore, open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 3, 2, 0, tzinfo=UTC)
#: A microsecond before midnight, and a time before the Unix epoch.
US_EDGE = datetime(2026, 1, 3, 23, 59, 59, 999_999, tzinfo=UTC)
PRE_EPOCH = datetime(1969, 12, 31, 23, 59, 58, 250_000, tzinfo=UTC)


def write_as_before_version_4(store: HistoryStore, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows as the code of schema versions 1 to 3 wrote them: timestamps as
    SQLAlchemy's ISO text of naive UTC on SQLite (``2026-01-03 02:00:00.123456``),
    timestamptz on PostgreSQL. The table is reflected, so its types are the stored ones."""
    reflected = sa.Table(table, sa.MetaData(), autoload_with=store.engine)
    sqlite = store.dialect == "sqlite"

    def old(value: Any) -> Any:
        if isinstance(value, datetime) and sqlite:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    with store.engine.begin() as conn:
        conn.execute(reflected.insert(), [{k: old(v) for k, v in row.items()} for row in rows])


def interval_row(
    server: str, state: str, start: datetime, end: datetime, error: str | None = None
) -> dict[str, Any]:
    return {
        "client": "acme",
        "server": server,
        "state": state,
        "start": start,
        "end": end,
        "checks": 1,
        "failures": 1 if state == "down" else 0,
        "first_error": error,
    }


def make_record(
    change_ref: str = "CHG-1",
    flow_run_id: str = "run-1",
    client: str = "acme",
    started: datetime = T0,
    outcome: Outcome | None = None,
) -> ChangeRecord:
    return ChangeRecord(
        client=client,
        change_ref=change_ref,
        flow_run_id=flow_run_id,
        requester="schedule",
        window=ChangeWindow(start=T0, end=T0 + timedelta(hours=4), inside=True),
        started=started,
        outcome=outcome,
        ended=started + timedelta(hours=1) if outcome else None,
    )


def race(contenders: int, attempt: Callable[[int], object]) -> list[object]:
    """Run ``attempt(i)`` in ``contenders`` threads released together; results in order."""
    barrier = threading.Barrier(contenders)
    results: list[object] = [None] * contenders

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# A separate process per contender: opens (and so migrates) the store, then asks for the
# lock, once the parent says go. Prints "won" or "refused <holder>".
CONTENDER = """
import sys
from core.errors import MaintenanceInProgress
from history.store import open_store

url, run = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
with open_store(url) as store:
    try:
        store.acquire_run_lock("acme", run, "CHG-" + run)
    except MaintenanceInProgress as exc:
        print("refused", exc.holder_flow_run_id, flush=True)
    else:
        print("won", flush=True)
"""


class StoreContract:
    """What every history-store backend does. Subclasses provide a ``store_url`` fixture."""

    @pytest.fixture()
    def store(self, store_url: str) -> Iterator[HistoryStore]:
        with open_store(store_url) as store:
            yield store

    # ---- migrations

    def test_a_new_store_is_migrated_to_the_latest_version(self, store: HistoryStore) -> None:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version"))
            versions = [row.version for row in rows]

        assert versions == [m.version for m in MIGRATIONS]
        assert store.schema_version() == SCHEMA_VERSION

    def test_the_migrated_schema_is_the_schema_queries_use(self, store: HistoryStore) -> None:
        inspector = sa.inspect(store.engine)

        for table in metadata.sorted_tables:
            columns = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
            expected = {c.name: c.nullable for c in table.columns}
            assert columns == expected, table.name

    def test_a_version_1_store_is_upgraded_and_keeps_its_data(self, store_url: str) -> None:
        with open_store(store_url, migrate_to=1) as old:
            assert old.schema_version() == 1
            old.save_change_record(make_record(outcome=Outcome.COMPLETED))
            # A planned window as version 1 wrote it (no announcement columns yet).
            windows = sa.Table("maintenance_windows", sa.MetaData(), autoload_with=old.engine)
            with old.engine.begin() as conn:
                conn.execute(
                    windows.insert().values(
                        client="acme",
                        start=T0,
                        end=T0 + timedelta(hours=4),
                        kind="planned",
                        change_ref="CHG-1",
                        recorded_at=T0 - timedelta(days=1),
                    )
                )
            with old.engine.begin() as conn:  # a lock held across the upgrade
                conn.execute(
                    run_locks.insert().values(
                        client="acme",
                        holder_flow_run_id="run-1",
                        change_ref="CHG-1",
                        acquired_at=T0,
                    )
                )
            assert "check_intervals" not in sa.inspect(old.engine).get_table_names()

        with open_store(store_url) as new:
            assert new.schema_version() == SCHEMA_VERSION
            assert [r.outcome for r in new.change_records("acme")] == [Outcome.COMPLETED]
            (window,) = new.windows("acme", T0, T0 + timedelta(days=1))
            # Version 6: a planned window counts as announced when it was recorded.
            assert window.announced_at == window.recorded_at == T0 - timedelta(days=1)
            lock = new.run_lock("acme")
            assert lock is not None and lock.holder_flow_run_id == "run-1"
            assert lock.acquired_at == T0
            assert {"check_intervals", "daily_rollups", "run_lock_events"} <= set(
                sa.inspect(new.engine).get_table_names()
            )

    def test_a_version_2_store_with_data_is_upgraded_exactly(self, store_url: str) -> None:
        # Rows written as code before version 4 wrote them (ISO text on SQLite): with
        # microseconds, a microsecond before midnight, before the Unix epoch.
        stamps = [T0 + timedelta(microseconds=123_456), T0, US_EDGE, PRE_EPOCH]
        with open_store(store_url, migrate_to=2) as old:
            write_as_before_version_4(
                old,
                "check_intervals",
                [
                    interval_row("web1", "up", stamps[1], stamps[0]),
                    interval_row("web1", "down", stamps[0], stamps[2], error="refused"),
                    interval_row("web2", "unknown", stamps[3], stamps[1]),
                ],
            )
            write_as_before_version_4(
                old,
                "maintenance_windows",
                [
                    {
                        "client": "acme",
                        "server": None,
                        "start": stamps[0],
                        "end": stamps[2],
                        "kind": "planned",
                        "change_ref": "CHG-1",
                        "recorded_at": stamps[1],
                    }
                ],
            )
            write_as_before_version_4(
                old,
                "run_locks",
                [
                    {
                        "client": "acme",
                        "holder_flow_run_id": "run-1",
                        "change_ref": "CHG-1",
                        "acquired_at": stamps[2],
                    }
                ],
            )
            record = make_record(started=stamps[0], outcome=Outcome.COMPLETED)
            write_as_before_version_4(
                old,
                "change_records",
                [
                    {
                        "client": "acme",
                        "change_ref": "CHG-1",
                        "flow_run_id": "run-1",
                        "outcome": "completed",
                        "started": stamps[0],
                        "ended": None,
                        "body": record.model_dump(mode="json"),
                        "saved_at": stamps[2],
                    }
                ],
            )
            write_as_before_version_4(
                old,
                "run_lock_events",
                [
                    {
                        "client": "acme",
                        "event": "acquired",
                        "holder_flow_run_id": "run-1",
                        "change_ref": "CHG-1",
                        "at": stamps[3],
                    }
                ],
            )

        with open_store(store_url) as new:
            assert new.schema_version() == SCHEMA_VERSION
            intervals = read_intervals(new, "acme")
            assert [(i.server, i.state, i.start, i.end) for i in intervals] == [
                ("web1", "up", stamps[1], stamps[0]),
                ("web1", "down", stamps[0], stamps[2]),
                ("web2", "unknown", stamps[3], stamps[1]),
            ]
            assert intervals[1].first_error == "refused"
            assert all(i.start.tzinfo == UTC for i in intervals)
            frame = read_intervals_frame(new, "acme")
            assert list(frame["start"]) == [stamps[1], stamps[0], stamps[3]]
            assert list(frame["end"]) == [stamps[0], stamps[2], stamps[1]]
            (window,) = new.windows("acme", PRE_EPOCH, US_EDGE + timedelta(days=1))
            assert (window.start, window.end, window.recorded_at) == (stamps[0], US_EDGE, T0)
            lock = new.run_lock("acme")
            assert lock is not None and lock.acquired_at == US_EDGE
            (stored,) = new.change_records("acme")
            assert stored.started == stamps[0]
            with new.engine.connect() as conn:
                ended, saved = conn.execute(
                    sa.select(change_records.c.ended, change_records.c.saved_at)
                ).one()
            assert (ended, saved) == (None, US_EDGE)
            assert [e.at for e in new.lock_events("acme")] == [PRE_EPOCH]
            # Queries on the converted columns still select by time.
            assert len(read_intervals(new, "acme", start=US_EDGE)) == 1
            assert len(read_intervals(new, "acme", end=PRE_EPOCH)) == 1
            # And the new table is there, empty, and usable.
            assert record_metrics(new, "acme", [MetricSample("web1", T0, load1=0.5)]) == 1

    def test_a_version_3_store_with_metrics_is_upgraded_exactly(self, store_url: str) -> None:
        with open_store(store_url, migrate_to=3) as old:
            write_as_before_version_4(
                old,
                "metrics",
                [
                    {
                        "client": "acme",
                        "server": "web1",
                        "ts": T0 + timedelta(microseconds=7),
                        "load1": 0.25,
                        "memory_used_pct": None,
                        "disk_used_pct": 71.5,
                    }
                ],
            )

        with open_store(store_url) as new:
            assert read_metrics(new, "acme") == [
                MetricSample("web1", T0 + timedelta(microseconds=7), 0.25, None, 71.5)
            ]

    def test_opening_again_applies_no_migration_twice(self, store_url: str) -> None:
        for _ in range(3):
            with open_store(store_url):
                pass

        with open_store(store_url) as store, store.engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one()
        assert count == len(MIGRATIONS)

    def test_a_store_newer_than_the_code_is_refused(self, store: HistoryStore) -> None:
        with store.engine.begin() as conn:
            conn.execute(
                schema_version.insert().values(version=99, description="future", applied_at=T0)
            )

        with pytest.raises(ConfigError, match="schema version 99"):
            open_store(store.engine.url.render_as_string(hide_password=False))

    def test_concurrent_openers_of_a_fresh_store_race_for_one_lock_and_one_wins(
        self, store_url: str
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        contenders = [
            subprocess.Popen(
                [sys.executable, "-c", CONTENDER, store_url, f"run-{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
                env=env,
            )
            for i in range(3)
        ]
        try:
            for proc in contenders:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            for proc in contenders:  # go, all at once
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outputs = [proc.communicate(timeout=60) for proc in contenders]
        finally:
            for proc in contenders:
                proc.kill()

        answers = [out.strip() for out, _ in outputs]
        assert all(proc.returncode == 0 for proc in contenders), [err for _, err in outputs]
        assert answers.count("won") == 1, answers
        winner = f"run-{answers.index('won')}"
        assert sorted(answers) == ["refused " + winner] * 2 + ["won"]
        with open_store(store_url) as store:
            lock = store.run_lock("acme")
            assert lock is not None and lock.holder_flow_run_id == winner
            with store.engine.connect() as conn:
                count = conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar_one()
            assert count == len(MIGRATIONS)

    # ---- change records

    def test_a_stored_record_holds_no_secret_and_the_run_keeps_its_own(
        self, store: HistoryStore
    ) -> None:
        record = make_record(outcome=Outcome.FAILED)
        record.outcome_detail = "CommandFailed: postinst said DB_PASSWORD=hunter2"
        record.notification_failures.append("https://hook:s3cr3t@chat.example/x: HTTP 500")
        store.save_change_record(record)

        with store.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT body FROM change_records")).scalar_one()

        assert "hunter2" not in str(stored) and "s3cr3t" not in str(stored)
        [read] = store.change_records("acme")
        assert read.outcome_detail == "CommandFailed: postinst said DB_PASSWORD=***"
        assert read.notification_failures == ["https://***@chat.example/x: HTTP 500"]
        assert "hunter2" in record.outcome_detail  # the caller's record is not changed

    def test_saving_a_run_again_replaces_its_record(self, store: HistoryStore) -> None:
        record = make_record()
        store.save_change_record(record)
        record.package_changes.append(
            PackageChange(server="acme-web-1", name="openssl", from_version="1", to_version="2")
        )
        record.outcome = Outcome.COMPLETED
        record.ended = T0 + timedelta(hours=1)
        store.save_change_record(record)

        records = store.change_records("acme")
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT outcome FROM change_records")).all()

        assert [r.outcome for r in records] == [Outcome.COMPLETED]
        assert records[0].package_changes[0].to_version == "2"
        assert [row.outcome for row in rows] == ["completed"]

    def test_two_runs_of_one_change_keep_two_records(self, store: HistoryStore) -> None:
        store.save_change_record(make_record(flow_run_id="run-1", outcome=Outcome.FAILED))
        store.save_change_record(
            make_record(
                flow_run_id="run-2", started=T0 + timedelta(hours=2), outcome=Outcome.COMPLETED
            )
        )

        records = store.change_records("acme")

        assert [(r.flow_run_id, r.outcome) for r in records] == [
            ("run-1", Outcome.FAILED),
            ("run-2", Outcome.COMPLETED),
        ]

    def test_change_records_are_selected_by_client_and_start_time(
        self, store: HistoryStore
    ) -> None:
        for day in range(5):
            store.save_change_record(
                make_record(f"CHG-{day}", f"run-{day}", started=T0 + timedelta(days=day))
            )
        store.save_change_record(make_record("CHG-X", "run-x", client="globex"))

        picked = store.change_records("acme", T0 + timedelta(days=1), T0 + timedelta(days=3))

        assert [r.change_ref for r in picked] == ["CHG-1", "CHG-2"]
        assert [r.change_ref for r in store.change_records("globex")] == ["CHG-X"]

    def test_timestamps_come_back_as_utc_whatever_zone_they_went_in(
        self, store: HistoryStore
    ) -> None:
        plus_two = timezone(timedelta(hours=2))
        local_start = datetime(2026, 1, 3, 4, 0, tzinfo=plus_two)
        store.save_change_record(make_record(started=local_start))
        store.record_window("acme", local_start, local_start + timedelta(hours=1))

        (record,) = store.change_records("acme", since=T0 - timedelta(seconds=1))
        (window,) = store.windows("acme", T0, T0 + timedelta(hours=1))

        assert record.started == T0 and record.started.tzinfo == UTC
        assert window.start == T0 and window.start.tzinfo == UTC
        assert window.end == T0 + timedelta(hours=1) and window.recorded_at.tzinfo == UTC

    def test_naive_timestamps_are_refused(self, store: HistoryStore) -> None:
        naive = datetime(2026, 1, 3, 2, 0)

        with pytest.raises(ValueError, match="naive"):
            store.record_window("acme", naive, naive + timedelta(hours=1))
        with pytest.raises(ValueError, match="naive"):
            store.windows("acme", naive, naive + timedelta(hours=1))
        with pytest.raises(ValueError, match="naive"):
            store.change_records("acme", since=naive)

    # ---- maintenance windows

    def test_windows_overlapping_a_period_are_returned(self, store: HistoryStore) -> None:
        hour = timedelta(hours=1)
        store.record_window("acme", T0 - 3 * hour, T0 - 2 * hour)  # before
        store.record_window("acme", T0 - hour, T0 + hour, change_ref="CHG-1")  # overlaps start
        store.record_window("acme", T0 + hour, T0 + 2 * hour, kind="run", server="acme-web-1")
        store.record_window("acme", T0 + 5 * hour, T0 + 6 * hour)  # after
        store.record_window("globex", T0, T0 + hour)  # another client

        found = store.windows("acme", T0, T0 + 4 * hour)
        runs = store.windows("acme", T0, T0 + 4 * hour, kind="run")

        assert [(w.start, w.server, w.kind) for w in found] == [
            (T0 - hour, None, "planned"),
            (T0 + hour, "acme-web-1", "run"),
        ]
        assert found[0].change_ref == "CHG-1"
        assert [w.server for w in runs] == ["acme-web-1"]

    def test_recording_the_same_window_twice_stores_it_once(self, store: HistoryStore) -> None:
        first = store.record_window("acme", T0, T0 + timedelta(hours=4), change_ref="CHG-1")
        again = store.record_window("acme", T0, T0 + timedelta(hours=4), change_ref="CHG-1")

        assert again.id == first.id
        assert len(store.windows("acme", T0, T0 + timedelta(hours=4))) == 1

    def test_a_planned_window_keeps_who_announced_it_when_and_why(
        self, store: HistoryStore
    ) -> None:
        told = T0 - timedelta(days=3)
        given = store.record_window(
            "acme", T0, T0 + timedelta(hours=4), announced_at=told, announced_by="bob", reason="fw"
        )
        unsaid = store.record_window("acme", T0 + timedelta(days=1), T0 + timedelta(days=2))
        run = store.record_window("acme", T0, T0 + timedelta(hours=1), kind="run")

        (stored,) = store.windows("acme", T0, T0 + timedelta(hours=4), kind="planned")
        assert (stored.announced_at, stored.announced_by, stored.reason) == (told, "bob", "fw")
        assert stored == given
        assert unsaid.announced_at == unsaid.recorded_at  # no time given: announced now
        assert run.announced_at is None
        with pytest.raises(ValueError, match="not announced"):
            store.record_window("acme", T0, T0 + timedelta(hours=1), kind="run", announced_at=T0)

    def test_a_window_must_end_after_it_starts(self, store: HistoryStore) -> None:
        with pytest.raises(ValueError, match="not after start"):
            store.record_window("acme", T0, T0)

    # ---- run lock

    def test_a_second_run_is_refused_while_the_first_holds_the_lock(
        self, store: HistoryStore
    ) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")

        with pytest.raises(MaintenanceInProgress) as refused:
            store.acquire_run_lock("acme", "run-2", "CHG-2")

        assert refused.value.holder_flow_run_id == "run-1"
        assert refused.value.change_ref == "CHG-1"
        assert "run-1" in str(refused.value) and "CHG-1" in str(refused.value)
        holder = store.run_lock("acme")
        assert holder is not None and holder.holder_flow_run_id == "run-1"

    def test_other_clients_are_not_blocked(self, store: HistoryStore) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")

        handle = store.acquire_run_lock("globex", "run-2", "CHG-2")

        assert handle.client == "globex" and not handle.reentered

    def test_the_holder_asking_again_keeps_its_lock(self, store: HistoryStore) -> None:
        first = store.acquire_run_lock("acme", "run-1", "CHG-1")

        again = store.acquire_run_lock("acme", "run-1", "CHG-1")

        assert again.reentered and again.acquired_at == first.acquired_at

    def test_a_released_lock_goes_to_the_next_run(self, store: HistoryStore) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")

        assert store.release_run_lock("acme", "run-2") is False  # not the holder
        assert store.release_run_lock("acme", "run-1") is True
        handle = store.acquire_run_lock("acme", "run-2", "CHG-2")

        assert handle.holder_flow_run_id == "run-2"
        assert [e.event for e in store.lock_events("acme")] == ["acquired", "released", "acquired"]

    def test_the_lock_outlives_the_process_that_took_it(self, store_url: str) -> None:
        with open_store(store_url) as first:
            first.acquire_run_lock("acme", "run-1", "CHG-1")

        with open_store(store_url) as later, pytest.raises(MaintenanceInProgress):
            later.acquire_run_lock("acme", "run-2", "CHG-2")

    def test_a_finished_holders_lock_is_taken_over_and_the_takeover_recorded(
        self, store: HistoryStore
    ) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")
        asked: list[str] = []

        def crashed(run_id: str) -> Takeover:
            asked.append(run_id)
            return Takeover(True, "its Prefect run is Crashed")

        handle = store.acquire_run_lock("acme", "run-2", "CHG-2", holder_check=crashed)

        assert asked == ["run-1"]
        assert handle.took_over_from == "run-1" and handle.took_over_change_ref == "CHG-1"
        assert handle.took_over_because == "its Prefect run is Crashed"
        takeover = store.lock_events("acme")[-1]
        assert (takeover.event, takeover.holder_flow_run_id, takeover.previous_holder) == (
            "taken-over",
            "run-2",
            "run-1",
        )
        assert takeover.previous_change_ref == "CHG-1"
        # The crashed run coming back cannot release its successor's lock.
        assert store.release_run_lock("acme", "run-1") is False
        holder = store.run_lock("acme")
        assert holder is not None and holder.holder_flow_run_id == "run-2"

    def test_a_live_holder_is_not_taken_over(self, store: HistoryStore) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")

        with pytest.raises(MaintenanceInProgress, match="run-1"):
            store.acquire_run_lock(
                "acme", "run-2", "CHG-2", holder_check=lambda run_id: Takeover(False, "Running")
            )

        assert [e.event for e in store.lock_events("acme")] == ["acquired"]

    def test_a_holder_whose_state_cannot_be_read_keeps_its_lock_and_the_refusal_says_why(
        self, store: HistoryStore
    ) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")
        unreadable = Takeover(False, "its state could not be read (HTTP 503)")

        with pytest.raises(MaintenanceInProgress) as refused:
            store.acquire_run_lock("acme", "run-2", "CHG-2", holder_check=lambda run: unreadable)

        assert refused.value.reason == unreadable.reason
        assert "run-1" in str(refused.value) and "could not be read" in str(refused.value)
        holder = store.run_lock("acme")
        assert holder is not None and holder.holder_flow_run_id == "run-1"
        assert [e.event for e in store.lock_events("acme")] == ["acquired"]

    def test_a_holder_check_that_raises_takes_nothing(self, store: HistoryStore) -> None:
        store.acquire_run_lock("acme", "run-1", "CHG-1")

        def broken(run_id: str) -> Takeover:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            store.acquire_run_lock("acme", "run-2", "CHG-2", holder_check=broken)

        holder = store.run_lock("acme")
        assert holder is not None and holder.holder_flow_run_id == "run-1"

    def test_exactly_one_of_many_threads_racing_for_a_lock_wins(self, store_url: str) -> None:
        stores = [open_store(store_url) for _ in range(6)]
        try:
            results = race(
                len(stores), lambda i: stores[i].acquire_run_lock("acme", f"run-{i}", f"CHG-{i}")
            )
        finally:
            for store in stores:
                store.close()

        winners = [r for r in results if isinstance(r, LockHandle)]
        refusals = [r for r in results if isinstance(r, MaintenanceInProgress)]
        assert len(winners) == 1, results
        assert len(refusals) == len(results) - 1, results
        assert {r.holder_flow_run_id for r in refusals} == {winners[0].holder_flow_run_id}

    def test_racing_takeovers_of_a_stale_lock_leave_one_winner(self, store_url: str) -> None:
        with open_store(store_url) as setup:
            setup.acquire_run_lock("acme", "run-dead", "CHG-0")
        stores = [open_store(store_url) for _ in range(6)]
        try:
            results = race(
                len(stores),
                lambda i: stores[i].acquire_run_lock(
                    "acme",
                    f"run-{i}",
                    f"CHG-{i}",
                    holder_check=lambda run: Takeover(run == "run-dead", "Crashed"),
                ),
            )
            events = stores[0].lock_events("acme")
        finally:
            for store in stores:
                store.close()

        winners = [r for r in results if isinstance(r, LockHandle)]
        assert len(winners) == 1, results
        assert winners[0].took_over_from == "run-dead"
        assert [e.event for e in events] == ["acquired", "taken-over"]

    # ---- metrics

    def test_metrics_are_written_and_read_back_by_server_and_time(
        self, store: HistoryStore
    ) -> None:
        plus_two = timezone(timedelta(hours=2))
        written = record_metrics(
            store,
            "acme",
            [
                MetricSample("web2", T0, load1=1.5, memory_used_pct=40.0, disk_used_pct=80.25),
                MetricSample("web1", T0 + timedelta(minutes=5), load1=0.75),
                # The same instant in another zone: stored in UTC.
                MetricSample("web1", datetime(2026, 1, 3, 4, 0, 0, 5, tzinfo=plus_two)),
                MetricSample("web1", T0 + timedelta(minutes=10), disk_used_pct=12.0),
            ],
        )
        record_metrics(store, "globex", [MetricSample("web1", T0, load1=9.0)])

        samples = read_metrics(store, "acme")

        # The sample without any metric is not stored.
        assert written == 3
        assert samples == [
            MetricSample("web1", T0 + timedelta(minutes=5), 0.75, None, None),
            MetricSample("web1", T0 + timedelta(minutes=10), None, None, 12.0),
            MetricSample("web2", T0, 1.5, 40.0, 80.25),
        ]
        assert all(s.ts.tzinfo == UTC for s in samples)
        assert read_metrics(store, "acme", server="web2") == samples[2:]
        window = read_metrics(store, "acme", T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))
        assert window == samples[:1]  # [start, end)

    def test_writing_the_same_samples_again_replaces_them(self, store: HistoryStore) -> None:
        record_metrics(store, "acme", [MetricSample("web1", T0, load1=1.0)])
        record_metrics(store, "acme", [MetricSample("web1", T0, load1=2.0, disk_used_pct=5.0)])

        assert read_metrics(store, "acme") == [MetricSample("web1", T0, 2.0, None, 5.0)]

    def test_daily_metrics_summarise_each_server_per_utc_day(self, store: HistoryStore) -> None:
        midnight = datetime(2026, 1, 4, tzinfo=UTC)
        before = midnight - timedelta(microseconds=1)
        record_metrics(
            store,
            "acme",
            [
                MetricSample("web1", T0, load1=1.0, memory_used_pct=50.0, disk_used_pct=70.0),
                MetricSample("web1", T0 + timedelta(hours=1), load1=3.0, memory_used_pct=60.0),
                MetricSample("web1", before, memory_used_pct=55.0, disk_used_pct=71.0),
                MetricSample("web1", midnight, load1=0.5, memory_used_pct=10.0),
                MetricSample("web2", T0, disk_used_pct=90.0),
            ],
        )
        record_metrics(store, "globex", [MetricSample("web1", T0, load1=99.0)])

        days = read_daily_metrics(store, "acme")

        assert days == [
            DailyMetrics("acme", "web1", date(2026, 1, 3), 3, 2.0, 3.0, 60.0, 71.0),
            DailyMetrics("acme", "web1", date(2026, 1, 4), 1, 0.5, 0.5, 10.0, None),
            DailyMetrics("acme", "web2", date(2026, 1, 3), 1, None, None, None, 90.0),
        ]
        assert read_daily_metrics(store, "acme", start=midnight) == days[1:2]
        assert read_daily_metrics(store, "acme", end=midnight, server="web2") == days[2:]

    def test_metrics_before_the_epoch_fall_on_their_own_day(self, store: HistoryStore) -> None:
        record_metrics(store, "acme", [MetricSample("web1", PRE_EPOCH, load1=1.0)])

        (day,) = read_daily_metrics(store, "acme")

        assert day.day == PRE_EPOCH.date() == date(1969, 12, 31)
        assert read_metrics(store, "acme")[0].ts == PRE_EPOCH

    def test_a_naive_metric_time_is_refused(self, store: HistoryStore) -> None:
        with pytest.raises(ValueError, match="naive"):
            MetricSample("web1", datetime(2026, 1, 3), load1=1.0)
        with pytest.raises(ValueError, match="naive"):
            read_metrics(store, "acme", start=datetime(2026, 1, 3))

    # ---- intervals as a frame

    def test_the_interval_frame_matches_the_intervals_read_one_by_one(
        self, store: HistoryStore
    ) -> None:
        store.record_window("acme", T0, T0 + timedelta(hours=1))
        minute = timedelta(minutes=1, microseconds=1)
        samples = [
            CheckSample(f"web{k % 3}", T0 + i * minute, ok=(i % 7 != 3), error='refused, "x"')
            for k in range(3)
            for i in range(40)
            if i % 13 not in (5, 6, 7)  # silences: unknown intervals
        ]
        ingest(store, "acme", samples, max_gap=timedelta(minutes=3))
        ingest(store, "globex", samples[:5])

        frame = read_intervals_frame(store, "acme")
        picked = read_intervals_frame(store, "acme", T0 + 10 * minute, T0 + 20 * minute)
        empty = read_intervals_frame(store, "nobody")

        one_by_one = read_intervals(store, "acme")
        assert list(frame.itertuples(index=False, name=None)) == [
            (i.server, i.state, i.start, i.end, i.checks, i.failures, i.first_error)
            for i in one_by_one
        ]
        assert 'refused, "x"' in set(frame["first_error"])
        assert len(picked) == len(
            read_intervals(store, "acme", None, T0 + 10 * minute, T0 + 20 * minute)
        )
        assert len(empty) == 0 and list(empty.columns) == list(frame.columns)

    def test_a_version_4_store_gets_packed_values_and_reads_the_same(self, store_url: str) -> None:
        rows = [
            interval_row("web1", "up", PRE_EPOCH, T0),
            interval_row("web1", "down", T0, US_EDGE, error="refused"),
            interval_row("web1", "unknown", US_EDGE, US_EDGE + timedelta(hours=1)),
            interval_row("web2", "up", T0, T0),  # zero-length: kept, ordered by start, end
            interval_row("web2", "unknown", T0, US_EDGE),
        ]
        with open_store(store_url, migrate_to=4) as old, old.engine.begin() as conn:
            conn.execute(check_intervals.insert(), rows)  # no "packed" key: not in the INSERT

        with open_store(store_url) as new:
            assert_packed_matches_rows(new)
            frame = read_intervals_frame(new, "acme")
            assert list(frame.itertuples(index=False, name=None)) == [
                (r["server"], r["state"], r["start"], r["end"], 1, r["failures"], r["first_error"])
                for r in rows
            ]

    def test_every_write_keeps_the_packed_value_in_step_with_its_row(
        self, store: HistoryStore
    ) -> None:
        minute = timedelta(minutes=1)
        # Extends the open row, closes it, opens new ones, and records a silence.
        ingest(
            store, "acme", [CheckSample("web1", T0 + i * minute, ok=i % 4 != 1) for i in range(6)]
        )
        ingest(store, "acme", [CheckSample("web1", T0 + timedelta(hours=2), ok=False, error="x")])
        bulk_import_intervals(
            store,
            "acme",
            pd.DataFrame(
                {
                    "server": ["web9", "web9"],
                    "state": ["down", "up"],
                    "start": pd.to_datetime([T0, T0 + minute], utc=True),
                    "end": pd.to_datetime([T0 + minute, T0 + 2 * minute], utc=True),
                    "checks": [2, 1],
                    "failures": [2, 0],
                    "first_error": ["refused", None],
                }
            ),
        )

        assert_packed_matches_rows(store)

    def test_rows_without_a_packed_value_are_named_and_repack_fills_them(
        self, store: HistoryStore, store_url: str
    ) -> None:
        ingest(store, "acme", [CheckSample("web1", T0, ok=True)])
        with store.engine.begin() as conn:  # as a tool that knows nothing of "packed"
            conn.execute(check_intervals.insert().values(interval_row("web2", "up", T0, US_EDGE)))

        with pytest.raises(ConfigError, match=r"acme/web2 have no packed value.*repack"):
            read_intervals_frame(store, "acme")
        assert ingest_main(["repack", "--store", store_url]) == 0

        assert_packed_matches_rows(store)
        assert list(read_intervals_frame(store, "acme")["server"]) == ["web1", "web2"]


def assert_packed_matches_rows(store: HistoryStore) -> None:
    """Every ``check_intervals`` row's ``packed`` value is its columns, packed."""
    t = check_intervals
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.id)).all()
    assert rows
    for row in rows:
        expected = pack_interval(row.state, row.start, row.end, row.checks, row.failures)
        assert bytes(row.packed) == expected, row


class TestSqliteStore(StoreContract):
    """The contract on a SQLite file."""

    @pytest.fixture()
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'history' / 'caretaker.db'}"


# ---- opening: URLs and settings (no database server needed)


def test_the_default_store_is_a_sqlite_file_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARETAKER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CARETAKER_HISTORY_STORE_URL", raising=False)

    with open_store() as store:
        store.save_change_record(make_record())

    assert (tmp_path / "caretaker.db").is_file()
    assert store.dialect == "sqlite"


def test_the_store_url_setting_is_used_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARETAKER_HISTORY_STORE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")

    with open_store():
        pass

    assert (tmp_path / "elsewhere.db").is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "SQLite file path"),
        ("sqlite:///:memory:", "SQLite file path"),
        ("mysql://u:hunter2@127.0.0.1/db", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
    ],
)
def test_an_unusable_store_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failed:
        open_store(url)

    assert "hunter2" not in str(failed.value)


def test_an_unreachable_postgresql_is_a_config_error_without_the_password() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(ConfigError, match="cannot be opened") as failed:
        open_store("postgresql+asyncpg://caretaker:hunter2@127.0.0.1:1/caretaker")

    assert "hunter2" not in str(failed.value)
    assert "postgresql+psycopg://caretaker:***@127.0.0.1:1/caretaker" in str(failed.value)


def test_maintenance_in_progress_survives_pickling() -> None:
    import pickle

    error = MaintenanceInProgress(
        "acme", "run-1", "CHG-1", T0, reason="its state could not be read"
    )

    again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object

    assert (again.holder_flow_run_id, again.change_ref, again.since) == ("run-1", "CHG-1", T0)
    assert again.reason == "its state could not be read"
    assert str(again) == str(error)


# ---- SQLite storage of timestamps (schema version 4)


def test_sqlite_stores_timestamps_as_integer_epoch_microseconds(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'caretaker.db'}") as store:
        store.record_window("acme", T0 + timedelta(microseconds=1), US_EDGE)
        with store.engine.connect() as conn:
            row = conn.exec_driver_sql(
                'SELECT start, "end", typeof(start) FROM maintenance_windows'
            ).one()
            declared = {
                c["name"]: str(c["type"]) for c in sa.inspect(conn).get_columns("check_intervals")
            }

    assert tuple(row) == (1_767_405_600_000_001, 1_767_484_799_999_999, "integer")
    assert declared["start"] == declared["end"] == "BIGINT"


def test_a_timestamp_the_upgrade_cannot_read_stops_it_and_changes_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'caretaker.db'}"
    with open_store(url, migrate_to=3) as old:
        write_as_before_version_4(old, "check_intervals", [interval_row("web1", "up", T0, T0)])
        with old.engine.begin() as conn:
            conn.exec_driver_sql(
                'INSERT INTO check_intervals (client, server, state, start, "end", checks,'
                " failures) VALUES ('acme', 'web2', 'up', '2026-01-03 02:00:00',"
                " '3 January 2026', 1, 0)"
            )

    with pytest.raises(ConfigError, match=r"check_intervals\.end holds '3 January 2026'"):
        open_store(url)

    with open_store(url, migrate_to=3) as again:
        assert again.schema_version() == 3
        with again.engine.connect() as conn:
            starts = (
                conn.exec_driver_sql("SELECT start FROM check_intervals ORDER BY id")
                .scalars()
                .all()
            )
    assert starts == ["2026-01-03 02:00:00.000000", "2026-01-03 02:00:00"]


def test_iso_text_without_a_fraction_converts_to_whole_seconds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'caretaker.db'}"
    with open_store(url, migrate_to=3) as old, old.engine.begin() as conn:
        conn.exec_driver_sql(
            'INSERT INTO check_intervals (client, server, state, start, "end", checks,'
            " failures) VALUES ('acme', 'web1', 'up', '2026-01-03 02:00:00',"
            " '2026-01-03T02:00:01.5', 2, 0)"
        )

    with open_store(url) as new:
        (interval,) = read_intervals(new, "acme")

    assert (interval.start, interval.end) == (T0, T0 + timedelta(seconds=1.5))
