"""Rendering the report: self-contained HTML with the numbers and SVG bars; exact CSVs."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from reports.compute import ACTIVITY_COLUMNS, INCIDENT_COLUMNS, compute_report
from reports.render import ReportContext, render_files, render_html, write_report

UPTIME_CSV_HEADER = (
    "server,observed_s,maintenance_s,unplanned_down_s,unknown_s,uptime_pct,incidents,"
    "mttr_s,longest_outage_s,sla_target_pct,sla_met"
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
    assert "97.826 %" in html  # web1's uptime
    assert "100.000 %" in html  # web2's uptime
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


def test_write_report_writes_the_four_files(tmp_path: Path) -> None:
    written = write_report(tmp_path / "acme" / "2026-10", context())
    assert sorted(written) == ["activity.csv", "incidents.csv", "report.html", "uptime.csv"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in written.values())
    assert "<svg" in (tmp_path / "acme" / "2026-10" / "report.html").read_text()
