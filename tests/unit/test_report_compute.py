"""The report computations on tiny hand-made histories, answers worked out by hand.

Times are UTC unless a test is about the client's timezone. A 5-minute check cadence is
assumed when counting failures (a 2-hour outage is 24 failed checks).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from core.errors import ReportInputError
from history.change import (
    Approval,
    ChangeRecord,
    ChangeWindow,
    Outcome,
    PackageChange,
    RestoreTestResult,
    Rollback,
    SnapshotRecord,
)
from reports.activity import ACTIVITY_COLUMNS, activity_table
from reports.compute import compute_report
from reports.periods import period_bounds
from reports.timeline import clip_to_period, confirm_outages
from reports.uptime import (
    INCIDENT_COLUMNS,
    UPTIME_COLUMNS,
    daily_uptime,
    incidents_table,
    uptime_table,
)
from reports.validate import validate_inputs
from reports.windows import split_planned

LONDON = ZoneInfo("Europe/London")


def at(day: int, hour: float = 0, month: int = 10) -> pd.Timestamp:
    """2026-<month>-<day> plus ``hour`` hours, UTC."""
    return pd.Timestamp(2026, month, day, tz="UTC") + pd.Timedelta(hours=hour)


def history(*rows: tuple[Any, ...]) -> pd.DataFrame:
    """Rows of (server, state, start, end, failures[, first_error]); checks = failures or 1."""
    records = []
    for row in rows:
        server, state, start, end, failures = row[:5]
        error = row[5] if len(row) > 5 else ("timeout" if state == "down" else None)
        records.append(
            {
                "server": server,
                "state": state,
                "start": start,
                "end": end,
                "checks": max(failures, 1),
                "failures": failures,
                "first_error": error,
            }
        )
    columns = ["server", "state", "start", "end", "checks", "failures", "first_error"]
    frame = pd.DataFrame(records, columns=columns)
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def fleet(
    *names: str, sla: float | None = 99.0, added: dict[str, Any] | None = None
) -> pd.DataFrame:
    added = added or {}
    return pd.DataFrame(
        {
            "server": list(names),
            "added_at": pd.to_datetime([added.get(n) for n in names], utc=True),
            "sla_target_pct": [sla] * len(names),
        }
    )


def windows(*rows: tuple[str | None, pd.Timestamp, pd.Timestamp]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["server", "start", "end"])
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


NO_WINDOWS = windows()


def one(frame: pd.DataFrame, server: str = "web1") -> pd.Series:
    return frame.set_index("server").loc[server]


# ------------------------------------------------------------------ confirmation rule


def test_a_blip_shorter_than_the_confirmation_rule_counts_as_up() -> None:
    # One failed check at 10:00 (a 5-minute interval), up around it. With the default
    # rule (2 failures) it is a blip: 0 s down, 100 % up, no incident.
    h = history(
        ("web1", "up", at(1), at(1, 10), 0),
        ("web1", "down", at(1, 10), at(1, 10 + 5 / 60), 1),
        ("web1", "up", at(1, 10 + 5 / 60), at(2), 0),
    )
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2)))
    assert row["unplanned_down_s"] == 0
    assert row["uptime_pct"] == 100.0
    assert row["incidents"] == 0
    assert row["observed_s"] == 86_400
    assert incidents_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2)).empty
    # With confirm_after=1 the same failure is an outage of 300 s: 1 - 300/86400.
    strict = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2), confirm_after=1))
    assert strict["unplanned_down_s"] == 300
    assert strict["uptime_pct"] == pytest.approx(100 * (1 - 300 / 86_400))


def test_touching_down_rows_are_one_run_of_failures() -> None:
    # The store split one run in two rows of 1 failure each: together 2 failures, confirmed,
    # one outage of 10 minutes dated from the first failure, with the first error.
    h = history(
        ("web1", "down", at(1, 1), at(1, 1 + 5 / 60), 1, "refused"),
        ("web1", "down", at(1, 1 + 5 / 60), at(1, 1 + 10 / 60), 1, "timeout"),
    )
    confirmed = confirm_outages(h)
    assert len(confirmed) == 1
    assert confirmed.loc[0, "state"] == "down"
    assert confirmed.loc[0, "failures"] == 2
    assert confirmed.loc[0, "start"] == at(1, 1)
    assert confirmed.loc[0, "first_error"] == "refused"


# ------------------------------------------------------------------ midnight, boundary


def test_an_outage_across_midnight_is_one_incident_split_into_both_days() -> None:
    # Down 23:30 on the 1st to 00:45 on the 2nd: 4500 s, one incident.
    # Day 1: 1800 s down; day 2: 2700 s down. Two days observed: 1 - 4500/172800.
    h = history(
        ("web1", "up", at(1), at(1, 23.5), 0),
        ("web1", "down", at(1, 23.5), at(2, 0.75), 15),
        ("web1", "up", at(2, 0.75), at(3), 0),
    )
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(3)))
    assert row["unplanned_down_s"] == 4500
    assert row["incidents"] == 1
    assert row["mttr_s"] == 4500
    assert row["longest_outage_s"] == 4500
    assert row["uptime_pct"] == pytest.approx(100 * (1 - 4500 / 172_800))
    daily = daily_uptime(h, NO_WINDOWS, fleet("web1"), at(1), at(3), UTC)
    assert daily["unplanned_down_s"].tolist() == [1800, 2700]
    assert daily["uptime_pct"].tolist() == pytest.approx(
        [100 * (1 - 1800 / 86_400), 100 * (1 - 2700 / 86_400)]
    )
    incidents = incidents_table(h, NO_WINDOWS, fleet("web1"), at(1), at(3))
    assert incidents["duration_s"].tolist() == [4500]


def test_outages_across_the_period_boundaries_are_clipped_and_flagged() -> None:
    # Period: the 1st. Down from 23:00 on Sep 30 to 01:00 (3600 s inside), and from 23:00
    # to 02:00 on the 2nd (3600 s inside). 7200 s down in 86400: 91.666... %.
    h = history(
        ("web1", "down", at(30, 23, month=9), at(1, 1), 24),
        ("web1", "up", at(1, 1), at(1, 23), 0),
        ("web1", "down", at(1, 23), at(2, 2), 36),
    )
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2)))
    assert row["unplanned_down_s"] == 7200
    assert row["incidents"] == 2
    assert row["unknown_s"] == 0
    assert row["uptime_pct"] == pytest.approx(100 * (1 - 7200 / 86_400))
    incidents = incidents_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2))
    assert incidents["start"].tolist() == [at(1), at(1, 23)]
    assert incidents["began_before_period"].tolist() == [True, False]
    assert incidents["ongoing_at_end"].tolist() == [False, True]


def test_a_run_confirmed_only_with_failures_before_the_period_still_counts() -> None:
    # Two failures: 23:55 on Sep 30 (outside) and 00:00 on the 1st (inside); the outage is
    # confirmed on the whole run, then clipped: 300 s inside the period.
    h = history(
        ("web1", "down", at(30, 23 + 55 / 60, month=9), at(1, 5 / 60), 2),
        ("web1", "up", at(1, 5 / 60), at(2), 0),
    )
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2)))
    assert row["unplanned_down_s"] == 300
    assert row["incidents"] == 1


def test_clip_to_period_keeps_the_original_bounds() -> None:
    h = history(("web1", "up", at(30, 12, month=9), at(1, 12), 0))
    clipped = clip_to_period(h, at(1), at(2))
    assert clipped.loc[0, "start"] == at(1)
    assert clipped.loc[0, "end"] == at(1, 12)
    assert clipped.loc[0, "orig_start"] == at(30, 12, month=9)


# ------------------------------------------------------------------ maintenance windows


def test_an_outage_half_inside_a_window_is_split_at_the_window_edge() -> None:
    # Down 02:00-04:00; client-wide window 03:00-05:00. Unplanned 02-03 (3600 s), planned
    # 03-04. Maintenance time 03-05 = 7200 s (1 h down + 1 h up, both planned).
    # uptime = 1 - 3600 / (86400 - 7200) = 95.4545... %.
    h = history(
        ("web1", "up", at(1), at(1, 2), 0),
        ("web1", "down", at(1, 2), at(1, 4), 24),
        ("web1", "up", at(1, 4), at(2), 0),
    )
    w = windows((None, at(1, 3), at(1, 5)))
    row = one(uptime_table(h, w, fleet("web1"), at(1), at(2)))
    assert row["maintenance_s"] == 7200
    assert row["unplanned_down_s"] == 3600
    assert row["observed_s"] == 86_400
    assert row["incidents"] == 1
    assert row["uptime_pct"] == pytest.approx(100 * (1 - 3600 / 79_200))
    incidents = incidents_table(h, w, fleet("web1"), at(1), at(2))
    assert incidents[["start", "end", "planned", "duration_s"]].values.tolist() == [
        [at(1, 2), at(1, 3), False, 3600.0],
        [at(1, 3), at(1, 4), True, 3600.0],
    ]


def test_an_outage_outlasting_a_window_is_one_incident_in_three_pieces() -> None:
    # Down 02:00-06:00 around the server's own window 03:00-04:00: unplanned 02-03 and
    # 04-06 (10800 s, one incident, longest 10800 s), planned 03-04.
    h = history(
        ("web1", "up", at(1), at(1, 2), 0),
        ("web1", "down", at(1, 2), at(1, 6), 48),
        ("web1", "up", at(1, 6), at(2), 0),
    )
    w = windows(("web1", at(1, 3), at(1, 4)), ("other", at(1, 8), at(1, 9)))
    row = one(uptime_table(h, w, fleet("web1", "other"), at(1), at(2)))
    assert row["unplanned_down_s"] == 10_800
    assert row["maintenance_s"] == 3600
    assert row["incidents"] == 1
    assert row["longest_outage_s"] == 10_800
    pieces = split_planned(history(("web1", "down", at(1, 2), at(1, 6), 48)), w)
    assert pieces["planned"].tolist() == [False, True, False]
    assert pieces["duration_s"].tolist() == [3600, 3600, 7200]


# ------------------------------------------------------------------ unknown and scope


def test_a_day_with_no_data_is_unknown_not_up() -> None:
    # Three days; data on the 1st and the 3rd only. unknown = 86400 s, observed = 172800 s,
    # uptime over the observed time only (100 %); the middle bar is "no data".
    h = history(("web1", "up", at(1), at(2), 0), ("web1", "up", at(3), at(4), 0))
    result = compute_report(h, NO_WINDOWS, fleet("web1"), at(1), at(4), UTC)
    row = one(result.uptime)
    assert row["unknown_s"] == 86_400
    assert row["observed_s"] == 172_800
    assert row["uptime_pct"] == 100.0
    assert one(result.sla)["coverage_pct"] == pytest.approx(200 / 3)
    middle = result.daily.iloc[1]
    assert middle["day"] == date(2026, 10, 2)
    assert middle["unknown_s"] == 86_400
    assert pd.isna(middle["uptime_pct"])


def test_an_explicit_unknown_interval_is_unknown_time() -> None:
    h = history(("web1", "up", at(1), at(1, 12), 0), ("web1", "unknown", at(1, 12), at(2), 0))
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2)))
    assert (row["observed_s"], row["unknown_s"]) == (43_200, 43_200)


def test_a_server_without_any_data_has_no_uptime_and_insufficient_data_for_the_sla() -> None:
    row = one(uptime_table(history(), NO_WINDOWS, fleet("web1"), at(1), at(2)))
    assert row["unknown_s"] == 86_400
    assert pd.isna(row["uptime_pct"])
    assert (row["sla_met"], row["coverage_pct"]) == ("insufficient data", 0)


def test_a_server_added_mid_period_is_observed_only_from_its_addition() -> None:
    # Period: 1st-3rd. web2 added on the 2nd at 12:00, monitored from 18:00:
    # scope 43200 s, of which 21600 s unknown (12:00-18:00) and 21600 s up.
    h = history(
        ("web1", "up", at(1), at(3), 0),
        ("web2", "up", at(2, 18), at(3), 0),
    )
    servers = fleet("web1", "web2", added={"web2": at(2, 12)})
    table = uptime_table(h, NO_WINDOWS, servers, at(1), at(3))
    web2 = one(table, "web2")
    assert (web2["observed_s"], web2["unknown_s"]) == (21_600, 21_600)
    assert web2["uptime_pct"] == 100.0
    assert one(table, "web1")["observed_s"] == 172_800
    daily = daily_uptime(h, NO_WINDOWS, servers, at(1), at(3), UTC)
    first_day = daily[(daily["server"] == "web2") & (daily["day"] == date(2026, 10, 1))].iloc[0]
    assert first_day[["up_s", "unknown_s"]].tolist() == [0, 0]


# ------------------------------------------------------------------ timezone and DST


def test_periods_follow_the_client_calendar_across_dst() -> None:
    start, end = period_bounds("2026-10", LONDON)
    assert start == pd.Timestamp("2026-09-30 23:00", tz="UTC")  # 00:00 BST
    assert end == pd.Timestamp("2026-11-01 00:00", tz="UTC")  # 00:00 GMT
    assert (end - start) == timedelta(days=31, hours=1)
    start, end = period_bounds("2026-03", LONDON)
    assert (end - start) == timedelta(days=31) - timedelta(hours=1)
    start, end = period_bounds("2026-Q3", LONDON)
    assert (start.date(), end.date()) == (date(2026, 7, 1), date(2026, 10, 1))
    assert period_bounds("2026-10-01..2026-10-15", LONDON)[1] == pd.Timestamp(
        "2026-10-16", tz=LONDON
    )
    with pytest.raises(ValueError, match="expected"):
        period_bounds("October", LONDON)


def test_the_day_clocks_go_back_has_25_hours() -> None:
    # 25 Oct 2026, Europe/London: 00:00 BST (Oct 24 23:00 UTC) to 00:00 GMT (Oct 26 00:00
    # UTC) = 90000 s. One hour down: uptime 1 - 3600/90000 = 96 %.
    start, end = period_bounds((date(2026, 10, 25), date(2026, 10, 25)), LONDON)
    h = history(
        ("web1", "up", at(24, 23), at(25, 0.5), 0),
        ("web1", "down", at(25, 0.5), at(25, 1.5), 12),
        ("web1", "up", at(25, 1.5), at(26), 0),
    )
    row = one(uptime_table(h, NO_WINDOWS, fleet("web1"), start, end))
    assert row["observed_s"] == 90_000
    assert row["uptime_pct"] == pytest.approx(96.0)
    daily = daily_uptime(h, NO_WINDOWS, fleet("web1"), start, end, LONDON)
    assert daily["day"].tolist() == [date(2026, 10, 25)]
    assert daily.loc[0, "up_s"] + daily.loc[0, "unplanned_down_s"] == 90_000


# ------------------------------------------------------------------ SLA


def test_sla_met_and_missed_with_the_budget_used() -> None:
    # One day, target 99 %: allowed downtime 864 s. web1 down 432 s: 99.5 %, met, 50 % of
    # the budget. web2 down 3600 s: 95.83 %, missed, 416.7 % of the budget.
    h = history(
        ("web1", "up", at(1), at(1, 1), 0),
        ("web1", "down", at(1, 1), at(1, 1.12), 2),
        ("web1", "up", at(1, 1.12), at(2), 0),
        ("web2", "down", at(1), at(1, 1), 12),
        ("web2", "up", at(1, 1), at(2), 0),
    )
    result = compute_report(h, NO_WINDOWS, fleet("web1", "web2"), at(1), at(2), UTC)
    assert one(result.uptime, "web1")["sla_met"]
    assert not one(result.uptime, "web2")["sla_met"]
    assert one(result.sla, "web1")["budget_used_pct"] == pytest.approx(50.0)
    assert one(result.sla, "web2")["budget_used_pct"] == pytest.approx(3600 / 864 * 100)
    # MTBF: web2's up time 82800 s over 1 incident.
    assert one(result.sla, "web2")["mtbf_s"] == 82_800
    # The client: 4032 s down in 172800 s; the common target 99 %, missed.
    total = result.total.iloc[0]
    assert total["uptime_pct"] == pytest.approx(100 * (1 - 4032 / 172_800))
    assert total["incidents"] == 2
    assert not total["sla_met"]
    assert list(result.uptime.columns) == list(UPTIME_COLUMNS)
    assert list(result.incidents.columns) == list(INCIDENT_COLUMNS)


# ------------------------------------------------------------------ activity


def test_activity_has_one_row_per_run_with_its_evidence() -> None:
    t0 = datetime(2026, 10, 4, 2, tzinfo=UTC)
    record = ChangeRecord(
        client="acme",
        change_ref="CHG-1",
        flow_run_id="run-1",
        requester="schedule",
        window=ChangeWindow(start=t0, end=t0 + timedelta(hours=4), inside=True),
        snapshots=[
            SnapshotRecord(
                server="web1", provider="aws", ids=("snap-1",), encrypted=True, state="completed"
            )
        ],
        package_changes=[
            PackageChange(server="web1", name="openssl", from_version="1", to_version="2"),
            PackageChange(server="web1", name="curl", from_version="1", to_version="2"),
            PackageChange(server="web2", name="curl", from_version="1", to_version="2"),
        ],
        approvals=[
            Approval(
                approver="alice", decision="approve", at=t0 + timedelta(minutes=30), counted=True
            )
        ],
        rollbacks=[Rollback(server="web2", restored_ok=True, verified_ok=True)],
        restore_test=RestoreTestResult(server="web1", ok=True, rto_s=420.0),
        outcome=Outcome.COMPLETED_WITH_ROLLBACKS,
        started=t0,
        ended=t0 + timedelta(minutes=90),
    )
    table = activity_table([record])
    assert list(table.columns) == list(ACTIVITY_COLUMNS)
    row = table.iloc[0]
    assert row["duration_s"] == 5400
    assert row["packages_per_host"] == "web1: 2; web2: 1"
    assert row["approvals"].startswith("alice 2026-10-04T02:30")
    assert row["rollbacks"] == "web2"
    assert row["restore_rto_s"] == 420
    assert row["snapshots_taken"] == 1
    assert row["outcome"] == "completed-with-rollbacks"


# ------------------------------------------------------------------ validation


def test_overlapping_intervals_stop_the_computation() -> None:
    h = history(("web1", "up", at(1), at(1, 12), 0), ("web1", "up", at(1, 11), at(2), 0))
    with pytest.raises(ReportInputError) as caught:
        uptime_table(h, NO_WINDOWS, fleet("web1"), at(1), at(2))
    assert caught.value.expectation == "interval_no_overlap"


def test_validation_names_the_expectation_and_the_offending_rows() -> None:
    h = history(
        ("web1", "up", at(1), at(1, 12), 0),
        ("web1", "up", at(1, 11), at(2), 0),  # overlaps the row before
        ("ghost", "up", at(1), at(2), 0),  # not in the inventory
        ("web1", "sideways", at(2), at(2, 1), 0),  # not a state
    )
    w = windows(("web1", at(1, 5), at(1, 4)))  # ends before it starts
    with pytest.raises(ReportInputError) as caught:
        validate_inputs(h, w, fleet("web1"), at(1), at(2))
    text = str(caught.value)
    assert "interval_no_overlap: 1 row(s): row 1: server=web1" in text
    assert "interval_server_known: 1 row(s): row 2: server=ghost" in text
    assert "interval_state_allowed" in text and "sideways" in text
    assert "window_start_before_end" in text
    assert len(caught.value.problems) == 4


def test_validation_refuses_intervals_outside_the_period_and_passes_good_input() -> None:
    good = history(("web1", "up", at(30, 12, month=9), at(2), 0))
    validate_inputs(good, NO_WINDOWS, fleet("web1"), at(1), at(2))  # overlaps: fine
    stale = history(("web1", "up", at(1, month=9), at(2, month=9), 0))
    with pytest.raises(ReportInputError, match="interval_ends_after_period_start"):
        validate_inputs(stale, NO_WINDOWS, fleet("web1"), at(1), at(2))
    validate_inputs(stale, NO_WINDOWS, fleet("web1"), at(1), at(2), tolerance=timedelta(days=40))


def test_naive_timestamps_are_refused() -> None:
    h = history(("web1", "up", at(1), at(2), 0))
    h["start"] = h["start"].dt.tz_localize(None)
    with pytest.raises(ReportInputError, match="timezone-aware"):
        validate_inputs(h, NO_WINDOWS, fleet("web1"), at(1), at(2))


# ------------------------------------------- vectorised against simple references


def reference_split(outages: pd.DataFrame, wins: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Split each outage minute by minute-free: walk its merged windows in a plain loop."""
    out = []
    for row in outages.itertuples(index=False):
        spans = sorted(
            (w.start, w.end)
            for w in wins.itertuples(index=False)
            if pd.isna(w.server) or w.server == row.server
        )
        merged: list[list[pd.Timestamp]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        cursor = row.start
        for a, b in merged:
            if b <= row.start or a >= row.end:
                continue
            a, b = max(a, row.start), min(b, row.end)
            if a > cursor:
                out.append((row.server, cursor, a, False))
            out.append((row.server, a, b, True))
            cursor = b
        if cursor < row.end:
            out.append((row.server, cursor, row.end, False))
    return out


def reference_confirm(h: pd.DataFrame, confirm_after: int) -> list[tuple[Any, ...]]:
    """Merge touching down rows, then keep runs with enough failures, in a plain loop."""
    rows: list[list[Any]] = []
    for r in h.sort_values(["server", "start"], kind="stable").itertuples(index=False):
        last = rows[-1] if rows else None
        if (
            last is not None
            and r.state == "down"
            and last[1] == "down"
            and last[0] == r.server
            and last[3] == r.start
        ):
            last[3] = r.end
            last[4] += r.failures
        else:
            rows.append([r.server, r.state, r.start, r.end, r.failures])
    out = []
    for server, state, start, end, failures in rows:
        if state == "down" and failures < confirm_after:
            state = "up"
        out.append((server, state, start, end, failures))
    return out


def random_history(rng: Any, servers: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for server in servers:
        t = at(1) + pd.Timedelta(minutes=int(rng.integers(0, 120)))
        for _ in range(int(rng.integers(0, 12))):
            length = pd.Timedelta(minutes=5 * int(rng.integers(1, 30)))
            state = rng.choice(["up", "down", "down", "unknown"])
            failures = int(rng.integers(1, 5)) if state == "down" else 0
            rows.append((server, state, t, t + length, failures))
            t += length + pd.Timedelta(minutes=5 * int(rng.choice([0, 0, 0, 3])))
    return history(*rows)


def random_windows(rng: Any, servers: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for _ in range(int(rng.integers(0, 6))):
        who = rng.choice([*servers, None])
        start = at(1) + pd.Timedelta(minutes=5 * int(rng.integers(0, 200)))
        rows.append((who, start, start + pd.Timedelta(minutes=5 * int(rng.integers(1, 40)))))
    return windows(*rows)


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_split_and_confirmation_match_plain_loops_on_random_histories(
    seed: int,
) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    servers = ("web1", "web2", "db1")
    h = random_history(rng, servers)
    wins = random_windows(rng, servers)
    confirm_after = int(rng.integers(1, 4))

    confirmed = confirm_outages(h, confirm_after)
    got = [
        (r.server, r.state, r.start, r.end, r.failures) for r in confirmed.itertuples(index=False)
    ]
    assert got == reference_confirm(h, confirm_after)

    outages = confirmed.loc[confirmed["state"] == "down", ["server", "start", "end"]]
    pieces = split_planned(outages.reset_index(drop=True), wins)
    got_pieces = [
        (r.server, r.start, r.end, bool(r.planned)) for r in pieces.itertuples(index=False)
    ]
    assert got_pieces == reference_split(outages, wins)
    durations = (pieces["end"] - pieces["start"]).dt.total_seconds().tolist()
    assert pieces["duration_s"].tolist() == durations


def reference_tables(
    h: pd.DataFrame,
    wins: pd.DataFrame,
    servers: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    confirm_after: int,
) -> tuple[dict[str, dict[str, float]], dict[tuple[str, date], dict[str, float]]]:
    """Per server and per (server, London day): seconds by kind and the outage figures,
    walking the period minute by minute (every time in these histories is on that grid)."""
    minute = pd.Timedelta(minutes=1)

    def minutes(a: pd.Timestamp, b: pd.Timestamp) -> range:
        return range(int((a - start) / minute), int((b - start) / minute))

    origin = start.to_pydatetime()
    rows = reference_confirm(h, confirm_after)
    per_server: dict[str, dict[str, float]] = {}
    per_day: dict[tuple[str, date], dict[str, float]] = {}
    for server, added in zip(servers["server"], servers["added_at"], strict=True):
        # Minute (from the period start) -> the row covering it, and the planned minutes.
        row_at = {m: i for i, r in enumerate(rows) if r[0] == server for m in minutes(r[2], r[3])}
        planned = {
            m
            for w in wins.itertuples(index=False)
            if pd.isna(w.server) or w.server == server
            for m in minutes(w.start, w.end)
        }
        sums = dict.fromkeys(("up_s", "unplanned_down_s", "maintenance_s", "unknown_s"), 0.0)
        unplanned_by_outage: dict[int, float] = {}
        first = start if pd.isna(added) else max(start, added)
        for m in minutes(first, end):
            row = row_at.get(m)
            state = "unknown" if row is None else rows[row][1]
            if state == "unknown":
                kind = "unknown_s"
            elif m in planned:
                kind = "maintenance_s"
            elif state == "down":
                kind = "unplanned_down_s"
                assert row is not None
                unplanned_by_outage[row] = unplanned_by_outage.get(row, 0.0) + 60.0
            else:
                kind = "up_s"
            sums[kind] += 60.0
            local_day = (origin + timedelta(minutes=m)).astimezone(LONDON).date()
            day = per_day.setdefault((server, local_day), dict.fromkeys(sums, 0.0))
            day[kind] += 60.0
        per_server[server] = {
            **sums,
            "incidents": float(len(unplanned_by_outage)),
            "longest_outage_s": max(unplanned_by_outage.values(), default=0.0),
        }
    return per_server, per_day


@pytest.mark.parametrize("seed", range(25))
def test_report_tables_match_a_slot_by_slot_reference_on_random_histories(seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(1000 + seed)
    names = ("web1", "web2", "db1")
    h = random_history(rng, names)
    wins = random_windows(rng, names)
    confirm_after = int(rng.integers(1, 4))
    start = at(1) + pd.Timedelta(minutes=5 * int(rng.integers(0, 60)))
    end = start + pd.Timedelta(minutes=5 * int(rng.integers(1, 500)))
    added = {names[1]: start + pd.Timedelta(minutes=5 * int(rng.integers(0, 100)))}
    servers = fleet(*names, added=added if rng.random() < 0.5 else None)

    tables = compute_report(h, wins, servers, start, end, LONDON, confirm_after=confirm_after)
    per_server, per_day = reference_tables(h, wins, servers, start, end, confirm_after)

    for row in tables.uptime.itertuples(index=False):
        want = per_server[row.server]
        assert row.observed_s == want["up_s"] + want["unplanned_down_s"] + want["maintenance_s"]
        assert (row.maintenance_s, row.unplanned_down_s, row.unknown_s) == (
            want["maintenance_s"],
            want["unplanned_down_s"],
            want["unknown_s"],
        ), row.server
        assert (row.incidents, row.longest_outage_s) == (
            want["incidents"],
            want["longest_outage_s"],
        ), row.server
    zero = dict.fromkeys(("up_s", "unplanned_down_s", "maintenance_s", "unknown_s"), 0.0)
    for row in tables.daily.itertuples(index=False):
        want = per_day.get((row.server, row.day), zero)
        got = (row.up_s, row.unplanned_down_s, row.maintenance_s, row.unknown_s)
        assert got == tuple(want.values()), (row.server, row.day)
    assert set(per_day) <= {(r.server, r.day) for r in tables.daily.itertuples(index=False)}


def test_a_categorical_server_column_gives_the_same_tables_as_strings() -> None:
    # The store's read gives categoricals; their category order need not be name order,
    # and a filter can leave a category unused.
    import numpy as np

    rng = np.random.default_rng(7)
    names = ("web1", "web2", "db1")
    h = random_history(rng, names)
    wins = random_windows(rng, names)
    servers = fleet(*names)
    as_categories = h.assign(
        server=pd.Categorical(h["server"], categories=["web2", "zz-gone", "web1", "db1"]),
        state=pd.Categorical(h["state"]),
    )

    want = compute_report(h, wins, servers, at(1), at(3), LONDON)
    got = compute_report(as_categories, wins, servers, at(1), at(3), LONDON)

    assert len(want.incidents) > 0  # outages numbered by server name order on both sides
    for table in ("uptime", "incidents", "daily", "sla", "total"):
        pd.testing.assert_frame_equal(getattr(got, table), getattr(want, table), obj=table)
