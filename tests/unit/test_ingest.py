"""Interval compression, ingestion, daily rollups and the history import (reports/ingest.py)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import ImportRejected
from history.cli import main
from history.fold import CheckSample, Interval, extend_intervals
from history.importer import import_file
from history.ingest import ingest
from history.intervals import read_intervals
from history.rollups import read_rollups, rebuild_rollups, rollup_seconds
from history.store import HistoryStore, open_store

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + minutes * MIN


def up(minutes: float, server: str = "web1") -> CheckSample:
    return CheckSample(server, at(minutes), True, latency_ms=3.0)


def down(minutes: float, error: str = "tcp 10.0.0.1:22: connection refused") -> CheckSample:
    return CheckSample("web1", at(minutes), False, error=error)


def fold(samples: list[CheckSample], max_gap: timedelta = 15 * MIN) -> list[Interval]:
    """All intervals (closed, then the open one) after folding ``samples`` in order."""
    closed: list[Interval] = []
    current: Interval | None = None
    for sample in samples:
        done, current = extend_intervals(current, sample, max_gap)
        closed += done
    assert current is not None
    return [*closed, current]


def shape(intervals: list[Interval]) -> list[tuple[str, float, float, int, int]]:
    return [
        (i.state, (i.start - T0) / MIN, (i.end - T0) / MIN, i.checks, i.failures) for i in intervals
    ]


# --------------------------------------------------------------------------- pure


def test_steady_up_checks_make_one_interval() -> None:
    assert shape(fold([up(0), up(5), up(10), up(15)])) == [("up", 0, 15, 4, 0)]


def test_a_blip_is_a_one_check_down_interval_between_two_up_intervals() -> None:
    intervals = fold([up(0), up(5), down(10), up(15), up(20)])
    assert shape(intervals) == [
        ("up", 0, 10, 2, 0),
        ("down", 10, 15, 1, 1),
        ("up", 15, 20, 2, 0),
    ]
    assert intervals[1].first_error == "tcp 10.0.0.1:22: connection refused"


def test_a_state_change_closes_the_interval_at_the_first_check_that_saw_it() -> None:
    intervals = fold([up(0), up(5), down(10, "first"), down(15, "second")])
    assert shape(intervals) == [("up", 0, 10, 2, 0), ("down", 10, 15, 2, 2)]
    assert intervals[1].first_error == "first"


def test_a_gap_longer_than_max_gap_is_unknown() -> None:
    intervals = fold([up(0), up(5), up(40), up(45)])
    assert shape(intervals) == [
        ("up", 0, 5, 2, 0),
        ("unknown", 5, 40, 0, 0),
        ("up", 40, 45, 2, 0),
    ]


def test_a_gap_of_exactly_max_gap_is_still_continuous() -> None:
    assert shape(fold([up(0), up(15)])) == [("up", 0, 15, 2, 0)]


def test_a_late_sample_is_counted_without_moving_time_backwards() -> None:
    intervals = fold([up(0), up(10), down(5), up(10)])
    assert shape(intervals) == [("up", 0, 10, 4, 1)]


def test_the_open_interval_keeps_its_row_id_when_closed() -> None:
    start = Interval("web1", "up", at(0), at(5), 2, 0, id=7)
    closed, current = extend_intervals(start, down(10))
    assert [c.id for c in closed] == [7] and current.id is None


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        CheckSample("web1", datetime(2026, 1, 1), True)


def test_rollups_split_at_utc_midnight_and_count_overlapping_windows_once() -> None:
    night = datetime(2026, 10, 1, 23, 0, tzinfo=UTC)
    windows = {"web1": [(night, night + 90 * MIN), (night + 30 * MIN, night + 60 * MIN)]}
    out = rollup_seconds([("web1", "down", night, night + 2 * 60 * MIN)], windows)
    assert out[("web1", date(2026, 10, 1))] == {
        "up_s": 0.0,
        "down_s": 3600.0,
        "unknown_s": 0.0,
        "maintenance_s": 3600.0,
    }
    assert out[("web1", date(2026, 10, 2))]["down_s"] == 3600.0
    assert out[("web1", date(2026, 10, 2))]["maintenance_s"] == 1800.0


# --------------------------------------------------------------------------- store


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    with open_store(f"sqlite:///{tmp_path / 'caretaker.db'}") as opened:
        yield opened


def test_ingest_extends_the_stored_open_interval_across_runs(store: HistoryStore) -> None:
    ingest(store, "acme", [up(0), up(5)])
    ingest(store, "acme", [up(10)])
    ingest(store, "acme", [down(15)])
    assert shape(read_intervals(store, "acme")) == [("up", 0, 15, 3, 0), ("down", 15, 15, 1, 1)]
    assert read_intervals(store, "other") == []


def test_a_confirmed_outage_is_dated_from_its_first_failure_and_a_blip_is_no_change(
    store: HistoryStore,
) -> None:
    assert ingest(store, "acme", [up(0), down(5), up(10)]).changes == []
    result = ingest(store, "acme", [down(15, "refused")])
    assert result.changes == []
    result = ingest(store, "acme", [down(20)])
    [change] = result.changes
    assert (change.state, change.since, change.observed, change.checks) == (
        "down",
        at(15),
        at(20),
        2,
    )
    assert change.error == "refused"
    assert ingest(store, "acme", [down(25)]).changes == []  # already known down
    [back] = ingest(store, "acme", [up(30)]).changes
    assert (back.state, back.since, back.server, back.client) == ("up", at(30), "web1", "acme")


def test_daily_rollups_follow_the_timeline_and_maintenance_windows(store: HistoryStore) -> None:
    store.record_window("acme", at(10), at(20), "run", "CHG-1", server="web1")
    ingest(store, "acme", [up(0), up(5), up(10)])
    ingest(store, "acme", [down(15), down(20), up(60)])
    [row] = read_rollups(store, "acme")
    # up 0..15, down 15..20 (then a 40-minute gap: unknown 20..60), open up at 60.
    assert (row.day, row.up_s, row.down_s, row.unknown_s) == (T0.date(), 900.0, 300.0, 2400.0)
    assert row.maintenance_s == 600.0
    assert rebuild_rollups(store, "acme") == 1
    assert read_rollups(store, "acme") == [row]


def test_a_planned_window_counts_in_the_rollups_from_its_announcement(
    store: HistoryStore,
) -> None:
    # Announced at 15 for 10..20: only 15..20 is maintenance (docs/reports.md).
    store.record_window("acme", at(10), at(20), server="web1", announced_at=at(15))
    store.record_window("acme", at(30), at(40), server="web1", announced_at=at(45))  # late
    ingest(store, "acme", [up(m) for m in range(0, 50, 5)])
    [row] = read_rollups(store, "acme")
    assert (row.up_s, row.maintenance_s) == (2700.0, 300.0)


def test_a_round_of_many_servers_writes_what_one_ingest_per_server_writes(
    tmp_path: Path,
) -> None:
    """The ingest writes every server's rows at once; the result is the same as server by
    server: intervals (new, extended, closed), confirmed changes and rollups with a window
    of one server and a client-wide one."""

    def sample(server: str, minute: float, ok: bool) -> CheckSample:
        return CheckSample(server, at(minute), ok, None if ok else f"{server} down")

    rounds = [
        [sample(f"s{i}", 0, True) for i in range(6)],
        [sample(f"s{i}", 5, i % 2 == 0) for i in range(6)],
        [sample(f"s{i}", 10, i % 2 == 0) for i in range(1, 7)],  # s0 silent, s6 new
        [sample(f"s{i}", 40, i != 3) for i in range(7)],  # after a gap: unknown
    ]
    stores = []
    for name in ("together", "one-by-one"):
        opened = open_store(f"sqlite:///{tmp_path / name}.db")
        opened.record_window("acme", at(3), at(8), "run", "CHG-1", server="s1")
        opened.record_window("acme", at(9), at(12), "run", "CHG-2")
        stores.append(opened)
    together, one_by_one = stores
    for samples in rounds:
        changes = ingest(together, "acme", samples).changes
        each = [c for s in samples for c in ingest(one_by_one, "acme", [s]).changes]
        assert sorted(changes, key=lambda c: c.server) == sorted(each, key=lambda c: c.server)
    assert [c.state for c in ingest(together, "acme", []).changes] == []

    def content(opened: HistoryStore) -> tuple[object, object]:
        intervals = [
            (i.server, i.state, i.start, i.end, i.checks, i.failures, i.first_error)
            for i in read_intervals(opened, "acme")
        ]
        return intervals, read_rollups(opened, "acme")

    assert content(together) == content(one_by_one)
    intervals, rollups = content(together)
    assert {i[0] for i in intervals} == {f"s{i}" for i in range(7)}
    assert any(r.maintenance_s > 0 for r in rollups)
    for opened in stores:
        opened.close()


def test_two_concurrent_writers_lose_no_sample(store: HistoryStore) -> None:
    ingest_concurrently(store)


def ingest_concurrently(store: HistoryStore, per_thread: int = 40) -> None:
    """Two 'health-check runs' ingest interleaved samples for two servers at once."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                minute = 2 * i + offset
                ok = (i // 5) % 2 == 0
                samples = [
                    CheckSample(name, at(minute), ok, None if ok else "down")
                    for name in ("web1", "db1")
                ]
                ingest(store, "acme", samples)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name in ("web1", "db1"):
        intervals = read_intervals(store, "acme", name)
        assert sum(i.checks for i in intervals) == 2 * per_thread
        assert sum(i.failures for i in intervals) == per_thread
        for before, after in itertools.pairwise(intervals):
            assert before.end == after.start, "intervals overlap or leave a hole"
        total = sum(r.up_s + r.down_s + r.unknown_s for r in read_rollups(store, "acme", name))
        assert total == (intervals[-1].end - intervals[0].start).total_seconds()


# --------------------------------------------------------------------------- import


GOOD_CSV = """server,ts,ok,latency_ms
web1,2026-10-01T12:00:00Z,true,3.5
web1,2026-10-01T12:05:00+00:00,false,
db1,2026-10-01T12:00:00Z,1,
"""

BAD_CSV = """server,ts,ok,latency_ms
web1,2026-10-01T12:00:00Z,true,3.5
web1,2026-10-01 12:05:00,true,
,2026-10-01T12:10:00Z,maybe,-1
web1,yesterday,false,
"""


def test_a_good_csv_is_imported(store: HistoryStore, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text(GOOD_CSV)
    result = import_file(store, "acme", path)
    assert result.samples == 3
    assert shape(read_intervals(store, "acme", "web1")) == [
        ("up", 0, 5, 1, 0),
        ("down", 5, 5, 1, 1),
    ]


def test_a_csv_with_bad_rows_is_rejected_with_line_numbers_and_nothing_imported(
    store: HistoryStore, tmp_path: Path
) -> None:
    path = tmp_path / "history.csv"
    path.write_text(BAD_CSV)
    with pytest.raises(ImportRejected) as caught:
        import_file(store, "acme", path)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5"]
    assert "no time zone" in problems[0]
    assert "server" in problems[1] and "maybe" in problems[1] and ">= 0" in problems[1]
    assert "yesterday" in problems[2]
    assert read_intervals(store, "acme") == [] and read_rollups(store, "acme") == []


def test_a_csv_without_a_required_column_is_rejected(store: HistoryStore, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("server,when,ok\nweb1,2026-10-01T12:00:00Z,true\n")
    with pytest.raises(ImportRejected, match="line 1: missing column"):
        import_file(store, "acme", path)


def test_parquet_is_imported_and_bad_rows_are_named(store: HistoryStore, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    good = tmp_path / "good.parquet"
    pq.write_table(
        pa.table(
            {
                "server": ["web1", "web1", "web1"],
                "ts": [at(0), at(1), at(2)],
                "ok": [True, True, False],
                "latency_ms": [1.0, None, None],
            }
        ),
        good,
    )
    assert import_file(store, "acme", good, max_gap=3 * MIN).samples == 3
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"server": ["web1", "web1"], "ts": [at(3), None], "ok": [True, None]}), bad
    )
    with pytest.raises(ImportRejected) as caught:
        import_file(store, "acme", bad)
    assert [p.split(":")[0] for p in caught.value.problems] == ["row 2"]
    assert sum(i.checks for i in read_intervals(store, "acme")) == 3


def test_the_import_command_reports_problems_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_CSV)
    assert main(["import", str(bad), "--client", "acme", "--store", url]) == 1
    assert "line 3" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    assert main(["import", str(good), "--client", "acme", "--store", url]) == 0
    assert "imported 3 check(s)" in capsys.readouterr().out
    with open_store(url) as opened:
        assert len(read_intervals(opened, "acme")) == 3
