"""Rendering the report: self-contained HTML with the numbers and SVG bars; exact CSVs."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from core.errors import PdfNotMade
from reports.activity import ACTIVITY_COLUMNS
from reports.compute import compute_report
from reports.render import (
    ReportContext,
    daily_bars_svg,
    day_step,
    find_chromium,
    label_every,
    label_width,
    render_files,
    render_html,
    write_pdf,
    write_report,
)
from reports.uptime import DAILY_COLUMNS, INCIDENT_COLUMNS

UPTIME_CSV_HEADER = (
    "server,observed_s,maintenance_s,unplanned_down_s,unknown_s,uptime_pct,incidents,"
    "mttr_s,longest_outage_s,sla_target_pct,sla_met,coverage_pct"
)


def at(hour: float) -> pd.Timestamp:
    return pd.Timestamp(2026, 10, 1, tz="UTC") + pd.Timedelta(hours=hour)


def context() -> ReportContext:
    # web1 down 10:00-12:00 (24 failures, "connection <refused>"), window 11:00-13:00:
    # unplanned 3600 s, maintenance 7200 s, uptime 1 - 3600/(172800-7200) = 97.826 %.
    intervals = pd.DataFrame(
        {
            "server": ["web1", "web1", "web1", "web2"],
            "state": ["up", "down", "up", "up"],
            "start": [at(0), at(10), at(12), at(0)],
            "end": [at(10), at(12), at(48), at(48)],
            "checks": [120, 24, 432, 576],
            "failures": [0, 24, 0, 0],
            "first_error": [None, "connection <refused>", None, None],
        }
    )
    windows = pd.DataFrame({"server": [None], "start": [at(11)], "end": [at(13)]})
    servers = pd.DataFrame({"server": ["web1", "web2"], "sla_target_pct": [99.0, 99.0]})
    tables = compute_report(intervals, windows, servers, at(0), at(48), UTC)
    return ReportContext(
        client="acme",
        client_name="Acme & Co",
        period="2026-10-01..2026-10-02",
        start=at(0),
        end=at(48),
        tz=UTC,
        tables=tables,
        generated_at=datetime(2026, 10, 3, tzinfo=UTC),
    )


def test_the_html_shows_the_numbers_and_inline_svg_bars() -> None:
    html = render_html(context())
    assert "97.826\u00a0%" in html  # web1's uptime (a no-break space before the unit)
    assert "100.000\u00a0%" in html  # web2's uptime
    assert "01:00:00" in html  # the unplanned hour, and the planned one
    assert "<svg" in html and html.count("<rect") == 4  # 2 servers x 2 days
    assert "Acme &amp; Co" in html
    assert "connection &lt;refused&gt;" in html  # escaped, never raw


def test_the_html_references_nothing_outside_itself() -> None:
    html = render_html(context())
    assert not re.search(r"https?:", html)
    assert "<script" not in html
    assert not re.search(r"\b(src|href)\s*=", html)
    assert "@import" not in html and "url(" not in html


def test_the_csv_files_have_exactly_the_contracted_columns() -> None:
    files = render_files(context())
    assert files["uptime.csv"].splitlines()[0] == UPTIME_CSV_HEADER
    rows = list(csv.DictReader(io.StringIO(files["uptime.csv"])))
    assert [r["server"] for r in rows] == ["web1", "web2", "(all servers)"]
    assert rows[0]["unplanned_down_s"] == "3600.0"
    assert rows[0]["sla_met"] == "False"
    assert files["incidents.csv"].splitlines()[0] == ",".join(INCIDENT_COLUMNS)
    incident = next(csv.DictReader(io.StringIO(files["incidents.csv"])))
    assert incident["start"] == "2026-10-01T10:00:00+00:00"
    assert files["activity.csv"].splitlines()[0] == ",".join(ACTIVITY_COLUMNS)


def test_write_report_writes_the_five_files(tmp_path: Path) -> None:
    written = write_report(tmp_path / "acme" / "2026-10", context())
    assert sorted(written) == [
        "activity.csv",
        "compliance.csv",
        "incidents.csv",
        "report.html",
        "uptime.csv",
    ]
    assert all(path.is_file() and path.stat().st_size > 0 for path in written.values())
    assert "<svg" in (tmp_path / "acme" / "2026-10" / "report.html").read_text()


# ------------------------------------------------------------------------- daily bars


def daily_frame(days: int, servers: tuple[str, ...] = ("web1",)) -> pd.DataFrame:
    first = date(2026, 7, 1)
    return pd.DataFrame(
        [
            (server, first + timedelta(days=i), 86100.0, 300.0, 0.0, 0.0, 100 * 86100 / 86400)
            for server in servers
            for i in range(days)
        ],
        columns=list(DAILY_COLUMNS),
    )


def test_every_nth_day_is_labelled_so_that_labels_never_collide() -> None:
    widest = label_width("30 Sep")
    for days in range(1, 400):
        every = label_every(days)
        assert every * day_step(days) >= widest + 6, days  # centres further apart than a label
        assert every == 1 or (every - 1) * day_step(days) < widest + 6, days  # the smallest N
    assert [label_every(n) for n in (3, 7, 31, 92)] == [1, 1, 2, 5]


def test_the_drawing_keeps_its_width_and_labels_every_nth_day() -> None:
    for days, labels in ((3, 3), (31, 16), (92, 19)):
        svg = daily_bars_svg(daily_frame(days), {"web1": 99.0})
        width = int(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
        assert width <= 150 + 900 + label_width("30 Sep") / 2 + 5, (days, width)
        assert svg.count('class="day"') == labels == math.ceil(days / label_every(days))
    assert ">1 Jul<" in svg and ">6 Jul<" in svg  # the quarter: every 5th day


def test_each_bar_has_a_tooltip_with_the_days_figures() -> None:
    html = render_html(context())
    titles = re.findall(r"<rect[^>]*><title>([^<]*)</title></rect>", html)
    assert len(titles) == 4
    # web1 on 1 October: down 10:00-12:00, window 11:00-13:00: 60 min unplanned, 120 planned.
    assert "web1 2026-10-01: 95.455 % up; down 60 min, unknown 0 min, planned 120 min" in titles
    assert "web2 2026-10-02: 100.000 % up; down 0 min, unknown 0 min, planned 0 min" in titles


def test_a_day_without_data_says_so_and_a_long_server_name_is_cut() -> None:
    frame = daily_frame(2, ("a-very-long-server-name-of-the-estate-01",))
    frame.loc[1, ["up_s", "unplanned_down_s", "unknown_s", "uptime_pct"]] = [0, 0, 86400, None]
    svg = daily_bars_svg(frame, {})
    assert "2026-07-02: no data; down 0 min, unknown 1440 min, planned 0 min" in svg
    assert "2026-07-01: 99.653 % up; down 5 min," in svg
    assert ">a-very-long-server-…</text>" in svg
    assert "<title>a-very-long-server-name-of-the-estate-01</title>" in svg


# ------------------------------------------------------------------------------- pdf
# (printing a real PDF with chromium: tests/integration/test_report_browser.py)


def test_without_chromium_no_pdf_is_made_and_the_reason_says_so(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(render_html(context()), encoding="utf-8")

    with pytest.raises(PdfNotMade, match="no chromium binary on PATH") as caught:
        write_pdf(html, names=["no-such-chromium-here"])
    assert "no-such-chromium-here" in str(caught.value)
    assert "install Debian's chromium package" in str(caught.value)
    assert not (tmp_path / "report.pdf").exists()


def test_the_default_lookup_reads_chromium_names_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("reports.render.CHROMIUM_NAMES", ("no-such-chromium-here",))
    assert find_chromium() is None
    with pytest.raises(PdfNotMade, match="no-such-chromium-here"):
        write_pdf(tmp_path / "report.html")


def test_a_failing_browser_leaves_no_pdf_and_says_why(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text("<!DOCTYPE html><title>x</title>", encoding="utf-8")
    (tmp_path / "report.pdf").write_bytes(b"%PDF- an older one")
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(PdfNotMade, match="exited with 3 and no PDF: cannot open display"):
        write_pdf(html, names=[str(fake)])
    assert not (tmp_path / "report.pdf").exists(), "a stale PDF is not left beside new HTML"


def test_a_hung_browser_is_killed_at_the_timeout(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text("<!DOCTYPE html><title>x</title>", encoding="utf-8")
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nsleep 300 &\nsleep 300\n")
    fake.chmod(0o755)

    began = time.monotonic()
    with pytest.raises(PdfNotMade, match=r"did not print the PDF within 1 s"):
        write_pdf(html, names=[str(fake)], timeout=1)
    assert time.monotonic() - began < 20
    assert not (tmp_path / "report.pdf").exists()


def test_the_activity_row_shows_a_restore_test_only_when_there_was_one() -> None:
    from history.change import ChangeRecord, ChangeWindow, Outcome, RestoreTestResult
    from reports.activity import activity_table

    t0 = datetime(2026, 10, 1, 2, tzinfo=UTC)

    def record(ref: str, restore: RestoreTestResult | None) -> ChangeRecord:
        return ChangeRecord(
            client="acme",
            change_ref=ref,
            flow_run_id=f"run-{ref}",
            requester="schedule",
            window=ChangeWindow(start=t0, end=t0 + timedelta(hours=4), inside=True),
            restore_test=restore,
            outcome=Outcome.COMPLETED,
            started=t0,
            ended=t0 + timedelta(minutes=30),
        )

    records = [
        record("CHG-NONE", None),
        record("CHG-FAST", RestoreTestResult(server="web1", ok=True, rto_s=0.42)),
        record("CHG-BAD", RestoreTestResult(server="web2", ok=False, rto_s=75.0)),
    ]
    base = context()
    tables = dataclasses.replace(base.tables, activity=activity_table(records))
    html = render_html(dataclasses.replace(base, tables=tables))
    rows = {ref: html[html.index(ref) :].split("</tr>")[0] for ref in ("NONE", "FAST", "BAD")}
    assert "FAILED" not in rows["NONE"] and "web" not in rows["NONE"]
    assert "web1: ok" in rows["FAST"] and "<td>0.4 s</td>" in rows["FAST"]  # not 00:00:00
    assert "web2: FAILED" in rows["BAD"] and "00:01:15" in rows["BAD"]
