"""The report path's pure steps around the computations, on hand-made inputs.

Periods (the flow's ``period`` parameter), the frames the read builds from the store's
rows, Prefect's runs complementing the activity table, and what the publish step puts in
its artifacts: each answer worked out by hand, without a store, an API or a server.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from inventory import load_inventory
from reports.activity import ACTIVITY_COLUMNS, complement_activity
from reports.compute import compute_report
from reports.inputs import MaintenanceRun, servers_frame, windows_frame, with_time
from reports.periods import local_days, period_bounds, resolve_period
from reports.publish import summary_markdown, uptime_rows
from reports.uptime import TOTAL_ROW

LONDON = ZoneInfo("Europe/London")
CLIENTS = Path(__file__).resolve().parents[2] / "clients"


def utc(day: int, hour: float = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, tzinfo=UTC) + timedelta(hours=hour)


# ------------------------------------------------------------------------------ periods


@pytest.mark.parametrize(
    ("period", "now", "label", "first", "after_last"),
    [
        ("2026-10", None, "2026-10", date(2026, 10, 1), date(2026, 11, 1)),
        (" 2026-q3 ", None, "2026-Q3", date(2026, 7, 1), date(2026, 10, 1)),
        (
            "2026-10-01..2026-10-15",
            None,
            "2026-10-01..2026-10-15",
            date(2026, 10, 1),
            date(2026, 10, 16),
        ),
        (
            "2026-10-01 / 2026-10-15",
            None,
            "2026-10-01..2026-10-15",
            date(2026, 10, 1),
            date(2026, 10, 16),
        ),
        (None, utc(15), "2026-09", date(2026, 9, 1), date(2026, 10, 1)),
        ("last-month", utc(15, month=1), "2025-12", date(2025, 12, 1), date(2026, 1, 1)),
        ("last-quarter", utc(15, month=2), "2025-Q4", date(2025, 10, 1), date(2026, 1, 1)),
        ("last-quarter", utc(1, month=4), "2026-Q1", date(2026, 1, 1), date(2026, 4, 1)),
        # 23:30 UTC on 31 October is already November in a zone ahead of UTC: "previous"
        # is read in the client's zone (here London is at UTC+0 after the DST change).
        ("last-month", utc(31, 23.5), "2026-09", date(2026, 9, 1), date(2026, 10, 1)),
    ],
)
def test_a_period_resolves_to_its_label_and_local_midnights(
    period: str | None, now: datetime | None, label: str, first: date, after_last: date
) -> None:
    resolved = resolve_period(period, LONDON, now)
    assert resolved.label == label
    assert resolved.start == datetime.combine(first, datetime.min.time(), tzinfo=LONDON)
    assert resolved.end == datetime.combine(after_last, datetime.min.time(), tzinfo=LONDON)
    # One parser: the bounds are those of period_bounds on the label.
    start, end = period_bounds(label, LONDON)
    assert (resolved.start, resolved.end) == (start.to_pydatetime(), end.to_pydatetime())


def test_last_month_in_a_zone_ahead_of_utc_is_read_on_the_client_clock() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # 20:00 UTC on 30 September is 05:00 on 1 October in Tokyo: last month is September.
    assert resolve_period(None, tokyo, utc(30, 20, month=9)).label == "2026-09"


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("October", "expected YYYY-MM"),
        ("2026-Q5", "expected YYYY-MM"),
        ("2026-10-15..2026-10-01", "ends before it starts"),
        ("next-month", "expected YYYY-MM"),
    ],
)
def test_a_period_that_is_not_one_of_the_forms_is_refused_with_its_text(
    period: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        resolve_period(period, LONDON, utc(15))
    assert repr(period) in str(raised.value)
    with pytest.raises(ValueError, match=message):
        period_bounds(period, LONDON)


def test_local_days_follow_the_client_clock_across_dst() -> None:
    start, end = period_bounds("2026-10-24..2026-10-26", LONDON)
    days, bounds = local_days(start, end, LONDON)
    assert days == [date(2026, 10, 24), date(2026, 10, 25), date(2026, 10, 26)]
    hours = [(b - a) / 3_600e9 for a, b in itertools.pairwise(bounds)]
    assert hours == [24, 25, 24]  # the clocks went back on the 25th


# ------------------------------------------------------------------------- read frames


def test_zero_length_intervals_carry_no_time_and_are_left_out() -> None:
    frame = pd.DataFrame(
        {
            "server": ["web1", "web1"],
            "start": pd.to_datetime([utc(1), utc(2)], utc=True),
            "end": pd.to_datetime([utc(2), utc(2)], utc=True),
        }
    )
    kept = with_time(frame)
    assert kept["start"].tolist() == [pd.Timestamp(utc(1))]
    assert list(kept.index) == [0]


def test_an_empty_windows_frame_still_has_aware_columns() -> None:
    frame = windows_frame([], [])
    assert frame.empty and isinstance(frame["start"].dtype, pd.DatetimeTZDtype)


def test_servers_frame_gives_each_server_its_target_and_the_day_it_was_added() -> None:
    inventories = load_inventory(CLIENTS)
    for inventory in inventories.values():
        frame = servers_frame(inventory)
        assert frame["server"].tolist() == [s.name for s in inventory.servers]
        for server, (_, row) in zip(inventory.servers, frame.iterrows(), strict=True):
            target = server.sla_target_pct or inventory.monitoring.sla_target_pct
            if target is None:
                assert math.isnan(row["sla_target_pct"])
            else:
                assert row["sla_target_pct"] == float(target)
            if server.added is None:
                assert pd.isna(row["added_at"])
            else:
                local = row["added_at"].tz_convert(inventory.tz)
                assert (local.date(), local.hour, local.minute) == (server.added, 0, 0)


# ---------------------------------------------------------------- activity complement


def activity(*rows: dict[str, object]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(ACTIVITY_COLUMNS))
    for column in ("started", "ended"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["duration_s"] = frame["duration_s"].astype("float64")
    return frame


def run(
    run_id: str, started: datetime, ended: datetime | None, state: str, **kw: Any
) -> MaintenanceRun:
    return MaintenanceRun(
        flow_run_id=run_id,
        name=run_id,
        state=state,
        started=started,
        ended=ended,
        **kw,
    )


def test_prefect_completes_a_record_without_end_and_adds_a_run_without_record() -> None:
    recorded = activity(
        {
            "client": "acme",
            "change_ref": "CHG-1",
            "flow_run_id": "r1",
            "started": utc(4, 2),
            "ended": None,
            "duration_s": None,
            "outcome": None,
        },
    )
    runs = [
        run("r1", utc(4, 2), utc(4, 3), "Crashed"),
        run("r2", utc(2, 1), utc(2, 1.5), "Failed", change_ref="CHG-0"),
        run("r3", utc(5), utc(5, 1), "Completed", dry_run=True),
    ]
    out = complement_activity(recorded, runs)
    assert out["flow_run_id"].tolist() == ["r2", "r1"]  # by start; the dry run left out
    by_id = out.set_index("flow_run_id")
    assert by_id.at["r1", "ended"] == pd.Timestamp(utc(4, 3))
    assert by_id.at["r1", "duration_s"] == 3600
    assert by_id.at["r1", "outcome"] == "prefect:Crashed"
    assert by_id.at["r2", "change_ref"] == "CHG-0"
    assert by_id.at["r2", "duration_s"] == 1800
    assert by_id.at["r2", "outcome"] == "prefect:Failed"
    assert by_id.at["r2", "client"] == "acme"


def test_a_record_keeps_its_own_end_and_outcome_and_no_runs_change_nothing() -> None:
    recorded = activity(
        {
            "client": "acme",
            "change_ref": "CHG-1",
            "flow_run_id": "r1",
            "started": utc(4, 2),
            "ended": utc(4, 4),
            "duration_s": 7200.0,
            "outcome": "success",
        },
    )
    same = complement_activity(recorded, [run("r1", utc(4, 2), utc(4, 3), "Completed")])
    pd.testing.assert_frame_equal(same, recorded)
    pd.testing.assert_frame_equal(complement_activity(recorded, []), recorded)


# ------------------------------------------------------------------------------ publish


def test_the_summary_and_uptime_rows_give_the_client_total_and_the_files() -> None:
    start, end = period_bounds("2026-10", UTC)
    intervals = pd.DataFrame(
        {
            "server": ["web1", "web1", "web1"],
            "state": ["up", "down", "up"],
            "start": pd.to_datetime([utc(1), utc(10), utc(10, 2)], utc=True),
            "end": pd.to_datetime(
                [utc(10), utc(10, 2), datetime(2026, 11, 1, tzinfo=UTC)], utc=True
            ),
            "checks": [100, 24, 100],
            "failures": [0, 24, 0],
            "first_error": [None, "timeout", None],
        }
    )
    servers = pd.DataFrame({"server": ["web1", "db1"], "sla_target_pct": [99.0, 99.0]})
    tables = compute_report(intervals, None, servers, start, end, UTC)
    period = resolve_period("2026-10", UTC)
    text = summary_markdown("ACME", period, tables, {"report.html": "/r/report.html"}, ["a caveat"])
    month = 31 * 86_400
    assert text.startswith("# ACME: maintenance report 2026-10\n")
    assert f"| uptime ({TOTAL_ROW}) | {100 * (1 - 7200 / month):.3f} % |" in text
    assert "| unplanned downtime | 7200 s |" in text
    assert f"| unknown (no data) | {month} s |" in text  # db1 never reported
    assert "| incidents | 1 |" in text
    assert "| SLA met | insufficient data (coverage 50.00 %) |" in text  # db1 never reported
    # No audit stored: no server counted as pending or with findings (unknown is not 0).
    assert "| servers with security updates pending at the end | 0 of 2 |" in text
    assert "| servers with audit findings open | 0 |" in text
    assert "- `report.html`: /r/report.html" in text
    assert text.endswith("## Notes\n\n- a caveat\n")
    rows = uptime_rows(tables)
    assert [r["server"] for r in rows] == ["web1", "db1", TOTAL_ROW]
    assert rows[1]["uptime_pct"] is None  # no data: no uptime, and no SLA verdict
    assert rows[1]["sla_met"] == "insufficient data" and rows[1]["coverage_pct"] == 0
    assert rows[2]["sla_met"] == "insufficient data"  # the client: half its time unknown
    assert rows[0]["incidents"] == 1 and type(rows[0]["incidents"]) is int
    assert rows[0]["sla_met"] is True
