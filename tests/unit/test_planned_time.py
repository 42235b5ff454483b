"""Planned time that was really planned, and an SLA judged only with enough data.

Planned maintenance is a window announced before it began (counted from its
announcement) or the time a maintenance run worked, bounded by its window; never a
schedule slot on which nothing was announced or done. The case of issue 12: ``acme``
(02:00-06:00 Europe/London every night in the schedule) had any outage between 02:00 and
06:00 counted as maintenance. Frames are built as the report builds them
(:func:`reports.inputs.windows_frame`, :func:`reports.inputs.servers_frame`) from the
example inventory and a real SQLite store.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from history.change import ChangeRecord, ChangeWindow, Outcome, PlanSummary
from history.store import open_store
from history.windows import StoredWindow
from inventory import load_client_by_slug
from reports.compute import compute_report
from reports.inputs import run_windows, servers_frame, windows_frame
from reports.periods import period_bounds
from reports.render import ReportContext, render_files
from reports.uptime import INSUFFICIENT_DATA, sla_verdict
from tasks.records import ChangeRecorder

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 10, 1, tzinfo=UTC)  # when rows were written (long before)


def london(day: int, hour: float, month: int = 10) -> datetime:
    """2026-<month>-<day> <hour> o'clock in London, as an aware UTC datetime."""
    local = datetime(2026, month, day, tzinfo=LONDON) + timedelta(hours=hour)
    return local.astimezone(UTC)


def stored(
    start: datetime,
    end: datetime,
    kind: str = "planned",
    announced_at: datetime | None = None,
    server: str | None = None,
) -> StoredWindow:
    return StoredWindow(
        id=0,
        client="acme",
        server=server,
        start=start,
        end=end,
        kind=kind,  # type: ignore[arg-type]
        change_ref=None,
        recorded_at=NOW,
        announced_at=announced_at,
    )


def record(
    started: datetime,
    ended: datetime | None,
    window: tuple[datetime, datetime],
    plan: PlanSummary | None = None,
) -> ChangeRecord:
    return ChangeRecord(
        client="acme",
        change_ref="CHG-7",
        flow_run_id="run-7",
        requester="schedule",
        window=ChangeWindow(start=window[0], end=window[1], inside=True),
        plan=plan,
        outcome=Outcome.COMPLETED if ended else None,
        started=started,
        ended=ended,
    )


PLAN = PlanSummary(policy="all", staging=("acme-stg-1",), production=("acme-web-1",))


# ----------------------------------------------------------------- the case


def october_of_acme(windows: pd.DataFrame) -> pd.Series:
    """acme's October report with acme-web-1 down 03:00-03:30 on the 14th (local), every
    server up otherwise: the row of acme-web-1."""
    acme = load_client_by_slug(CLIENTS, "acme")
    start, end = period_bounds("2026-10", acme.tz)
    names = [s.name for s in acme.servers]
    rows = [(n, "up", start, end, 0) for n in names if n != "acme-web-1"]
    rows += [
        ("acme-web-1", "up", start, london(14, 3), 0),
        ("acme-web-1", "down", london(14, 3), london(14, 3.5), 6),
        ("acme-web-1", "up", london(14, 3.5), end, 0),
    ]
    intervals = pd.DataFrame(rows, columns=["server", "state", "start", "end", "failures"])
    intervals["checks"] = intervals["failures"].clip(lower=1)
    for column in ("start", "end"):
        intervals[column] = pd.to_datetime(intervals[column], utc=True)
    tables = compute_report(intervals, windows, servers_frame(acme), start, end, acme.tz)
    return tables.uptime.set_index("server").loc["acme-web-1"]


def test_an_outage_at_3am_on_a_night_without_maintenance_is_unplanned() -> None:
    acme = load_client_by_slug(CLIENTS, "acme")
    slots = acme.windows_between(*period_bounds("2026-10", acme.tz))
    assert len(slots) == 31  # the schedule has a slot every night: none of it is planned
    row = october_of_acme(windows_frame([]))
    assert (row["maintenance_s"], row["unplanned_down_s"], row["incidents"]) == (0, 1800, 1)
    october = 31 * 86_400 + 3600  # the clocks went back on the 25th
    assert row["uptime_pct"] == pytest.approx(100 * (1 - 1800 / october))


def test_the_same_outage_inside_an_announced_window_is_planned() -> None:
    window = stored(london(14, 2), london(14, 6), announced_at=london(10, 9))
    row = october_of_acme(windows_frame([window]))
    assert (row["maintenance_s"], row["unplanned_down_s"], row["incidents"]) == (14_400, 0, 0)
    assert row["uptime_pct"] == 100.0 and row["sla_met"] is True


def test_an_announcement_made_during_the_outage_plans_only_what_follows_it() -> None:
    # Announced at 03:10 (the window began at 02:00): 02:00-03:10 is not planned; the
    # outage's first 10 minutes stay unplanned, the rest is planned.
    window = stored(london(14, 2), london(14, 6), announced_at=london(14, 3 + 10 / 60))
    row = october_of_acme(windows_frame([window]))
    assert row["maintenance_s"] == 14_400 - 70 * 60
    assert row["unplanned_down_s"] == 600


def test_a_window_announced_after_it_ended_plans_nothing() -> None:
    window = stored(london(14, 2), london(14, 6), announced_at=london(15, 9))
    assert windows_frame([window]).empty
    row = october_of_acme(windows_frame([window]))
    assert (row["maintenance_s"], row["unplanned_down_s"]) == (0, 1800)


def test_a_run_that_worked_plans_its_time_in_the_window_on_the_servers_it_planned() -> None:
    # The run worked 02:30-03:20 on acme-stg-1 and acme-web-1, announced to nobody.
    run = record(london(14, 2.5), london(14, 3 + 20 / 60), (london(14, 2), london(14, 6)), PLAN)
    row = october_of_acme(windows_frame([], [run]))
    assert row["maintenance_s"] == 50 * 60
    assert row["unplanned_down_s"] == 600  # 03:20-03:30: the run had ended


# ----------------------------------------------------------------- the frame builders


def test_planned_windows_count_from_their_announcement_and_runs_whole() -> None:
    t = datetime(2026, 10, 4, 2, tzinfo=UTC)
    h = timedelta(hours=1)
    frame = windows_frame(
        [
            stored(t, t + 4 * h, announced_at=t - 72 * h),  # announced days before
            stored(t, t + 4 * h, announced_at=t + h, server="web1"),  # an hour late
            stored(t, t + 4 * h, announced_at=t + 5 * h),  # after it ended: nothing
            stored(t, t + 4 * h, announced_at=None),  # pre-version-6 row: from recorded_at
            stored(t + 6 * h, t + 7 * h, kind="run", server="web2"),
        ]
    )
    assert list(frame.columns) == ["server", "start", "end", "kind"]
    got = [
        (None if pd.isna(server) else server, start.to_pydatetime() - t, kind)
        for server, start, kind in frame[["server", "start", "kind"]].to_numpy()
    ]
    assert got == [
        (None, timedelta(0), "planned"),
        ("web1", h, "planned"),
        (None, timedelta(0), "planned"),  # recorded_at (Oct 1) was before the window
        ("web2", 6 * h, "run"),
    ]
    assert isinstance(frame["start"].dtype, pd.DatetimeTZDtype)


@pytest.mark.parametrize(
    ("started", "ended", "plan", "expected"),
    [
        # started before its window, ended inside: from the window's start
        (1.0, 3.0, PLAN, [("acme-stg-1", 2.0, 3.0), ("acme-web-1", 2.0, 3.0)]),
        # started inside, outlasted the window: to the window's end
        (3.0, 9.0, PLAN, [("acme-stg-1", 3.0, 6.0), ("acme-web-1", 3.0, 6.0)]),
        # ran wholly outside its window (an override): no planned time
        (7.0, 8.0, PLAN, []),
        # stopped in preflight: it planned (and changed) nothing
        (2.5, 3.0, None, []),
        # never ended (died, or still going): no known working time
        (2.5, None, PLAN, []),
    ],
)
def test_run_windows_are_bounded_by_the_window_and_the_plan(
    started: float, ended: float | None, plan: PlanSummary | None, expected: list[tuple]
) -> None:
    day = datetime(2026, 10, 4, tzinfo=UTC)
    hours = timedelta(hours=1)
    run = record(
        day + started * hours,
        None if ended is None else day + ended * hours,
        (day + 2 * hours, day + 6 * hours),
        plan,
    )
    got = [(server, (a - day) / hours, (b - day) / hours) for server, a, b, _ in run_windows([run])]
    assert got == expected


def test_servers_frame_carries_the_coverage_threshold() -> None:
    acme = load_client_by_slug(CLIENTS, "acme")
    assert servers_frame(acme)["min_coverage_pct"].tolist() == [90.0] * len(acme.servers)


# ----------------------------------------------------------------- the SLA verdict


@pytest.mark.parametrize(
    ("uptime", "target", "coverage", "threshold", "verdict"),
    [
        (99.95, 99.9, 100.0, 90.0, True),
        (99.0, 99.9, 100.0, 90.0, False),
        (99.9, 99.9, 90.0, 90.0, True),  # at the threshold: judged
        (100.0, 99.9, 89.99, 90.0, INSUFFICIENT_DATA),  # a perfect uptime on too little data
        (10.0, 99.9, 50.0, 90.0, INSUFFICIENT_DATA),  # a miss on too little data: not judged
        (100.0, 99.9, 0.0002, 90.0, INSUFFICIENT_DATA),  # six seconds of a month
        (100.0, 99.9, 50.0, 0.0, True),  # threshold 0: any data is enough
        (np.nan, 99.9, 0.0, 90.0, INSUFFICIENT_DATA),  # no data at all
        (np.nan, 99.9, 100.0, 90.0, None),  # all of it planned: no uptime, no verdict
        (100.0, np.nan, 100.0, 90.0, None),  # no target: never a guess
        (100.0, np.nan, 10.0, 90.0, None),
        (np.nan, 99.9, np.nan, 90.0, None),  # not in scope at all (added after the period)
    ],
)
def test_the_sla_is_judged_only_with_enough_data(
    uptime: float, target: float, coverage: float, threshold: float, verdict: object
) -> None:
    (got,) = sla_verdict(
        pd.Series([uptime]), pd.Series([target]), pd.Series([coverage]), threshold
    ).tolist()
    if verdict is None:
        assert got is pd.NA
    else:
        assert got == verdict and type(got) is type(verdict)


def test_a_month_with_six_seconds_of_data_has_insufficient_data_not_a_met_sla() -> None:
    # The demo's December: every check in six seconds, 100 % up, coverage 0.00 %.
    start, end = period_bounds("2026-12", UTC)
    t = datetime(2026, 12, 5, 1, tzinfo=UTC)
    intervals = pd.DataFrame(
        {
            "server": ["web1"],
            "state": ["up"],
            "start": pd.to_datetime([t], utc=True),
            "end": pd.to_datetime([t + timedelta(seconds=6)], utc=True),
        }
    )
    intervals["checks"], intervals["failures"] = 3, 0
    servers = pd.DataFrame({"server": ["web1"], "sla_target_pct": [99.9]})
    tables = compute_report(intervals, None, servers, start, end, UTC)
    row, total = tables.uptime.iloc[0], tables.total.iloc[0]
    assert row["uptime_pct"] == 100.0
    assert row["sla_met"] == total["sla_met"] == INSUFFICIENT_DATA
    assert row["coverage_pct"] == pytest.approx(100 * 6 / (31 * 86_400))
    # Shown so in report.html (never "yes") and in uptime.csv, with the coverage beside it.
    context = ReportContext("acme", "ACME", "2026-12", start, end, UTC, tables)
    files = render_files(context)
    assert "insufficient data (0.00\u00a0% coverage)" in files["report.html"]
    assert ">yes<" not in files["report.html"]
    csv_rows = list(csv.DictReader(io.StringIO(files["uptime.csv"])))
    assert [(r["sla_met"], float(r["coverage_pct"])) for r in csv_rows] == [
        (INSUFFICIENT_DATA, pytest.approx(row["coverage_pct"]))
    ] * 2
    # The client lowered its threshold to 0: the same data is judged.
    servers["min_coverage_pct"] = 0.0
    judged = compute_report(intervals, None, servers, start, end, UTC)
    assert judged.uptime.iloc[0]["sla_met"] is True and judged.total.iloc[0]["sla_met"] is True


# ----------------------------------------------------------------- the pre-change notice


def test_the_notice_records_its_window_announced_for_each_planned_server(tmp_path: Path) -> None:
    window = (datetime(2026, 10, 4, 2, tzinfo=UTC), datetime(2026, 10, 4, 6, tzinfo=UTC))
    run = record(datetime(2026, 10, 4, 2, 0, 5, tzinfo=UTC), None, window, PLAN)
    at = datetime(2026, 10, 4, 2, 0, 6, tzinfo=UTC)
    with open_store(f"sqlite:///{tmp_path / 'caretaker.db'}") as store:
        recorder = ChangeRecorder(run, store)
        recorder.record_announcement("[caretaker] ACME: maintenance CHG-7 starts", at)
        recorder.record_announcement("again: a rerun of the change", at + timedelta(hours=1))
        found = store.windows("acme", *window)
        planless = ChangeRecorder(record(at, None, window, None), store)
        planless.record_announcement("nothing planned", at)
        assert len(store.windows("acme", *window)) == 2
    assert [(w.server, w.kind, w.change_ref) for w in found] == [
        ("acme-stg-1", "planned", "CHG-7"),
        ("acme-web-1", "planned", "CHG-7"),
    ]
    for w in found:  # the first announcement stands: a rerun does not move it
        assert (w.start, w.end, w.announced_at) == (*window, at)
        assert w.announced_by == "notice:run-7"
        assert w.reason == "[caretaker] ACME: maintenance CHG-7 starts"
    # From 02:00:06: the six seconds before the notice are not planned.
    frame = windows_frame(found)
    assert frame["start"].tolist() == [pd.Timestamp(at)] * 2


@pytest.mark.parametrize(
    ("blocks", "failures", "recorded"),
    [
        ((), [], False),  # no notification block: nobody was told, nothing is planned
        (("ops-mail",), [], True),  # sent
        (("ops-mail",), ["ops-mail: connection refused"], True),  # attempted: recorded too
    ],
)
def test_the_notice_records_its_window_only_when_sent_or_attempted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blocks: tuple[str, ...],
    failures: list[str],
    recorded: bool,
) -> None:
    import tasks.maintenance as maintenance

    sent: list[tuple[str, ...]] = []

    def notify(names: tuple[str, ...], subject: str, body: str) -> list[str]:
        sent.append(tuple(names))  # stands in for the Prefect task (tested in test_notify)
        return list(failures)

    monkeypatch.setattr(maintenance, "notify", notify)
    acme = load_client_by_slug(CLIENTS, "acme")
    inventory = acme.model_copy(
        update={"client": acme.client.model_copy(update={"notify": list(blocks)})}
    )
    window = (datetime(2026, 10, 4, 2, tzinfo=UTC), datetime(2026, 10, 4, 6, tzinfo=UTC))
    run = record(window[0], None, window, PLAN)
    with open_store(f"sqlite:///{tmp_path / 'caretaker.db'}") as store:
        recorder = ChangeRecorder(run, store)
        me = SimpleNamespace(inv=inventory, record=run, recorder=recorder)
        maintenance.Maintenance.announce(me)  # type: ignore[arg-type]
        found = store.windows("acme", *window)
    assert sent == [tuple(blocks)]
    assert run.notification_failures == failures
    assert [w.server for w in found] == (["acme-stg-1", "acme-web-1"] if recorded else [])
