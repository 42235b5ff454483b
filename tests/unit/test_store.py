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
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from blocks.change import ChangeRecord, ChangeWindow, Outcome, PackageChange
from blocks.errors import ConfigError, MaintenanceInProgress
from reports.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    HistoryStore,
    LockHandle,
    metadata,
    open_store,
    run_locks,
    schema_version,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 3, 2, 0, tzinfo=UTC)


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
from blocks.errors import MaintenanceInProgress
from reports.store import open_store

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
            old.record_window("acme", T0, T0 + timedelta(hours=4), change_ref="CHG-1")
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
            assert len(new.windows("acme", T0, T0 + timedelta(days=1))) == 1
            lock = new.run_lock("acme")
            assert lock is not None and lock.holder_flow_run_id == "run-1"
            assert lock.acquired_at == T0
            assert {"check_intervals", "daily_rollups", "run_lock_events"} <= set(
                sa.inspect(new.engine).get_table_names()
            )

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

        def is_stale(run_id: str) -> bool:
            asked.append(run_id)
            return True  # e.g. run-1 crashed

        handle = store.acquire_run_lock("acme", "run-2", "CHG-2", is_stale=is_stale)

        assert asked == ["run-1"]
        assert handle.took_over_from == "run-1" and handle.took_over_change_ref == "CHG-1"
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
            store.acquire_run_lock("acme", "run-2", "CHG-2", is_stale=lambda run_id: False)

        assert [e.event for e in store.lock_events("acme")] == ["acquired"]

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
                    "acme", f"run-{i}", f"CHG-{i}", is_stale=lambda run: run == "run-dead"
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

    error = MaintenanceInProgress("acme", "run-1", "CHG-1", T0)

    again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object

    assert (again.holder_flow_run_id, again.change_ref, again.since) == ("run-1", "CHG-1", T0)
    assert str(again) == str(error)
