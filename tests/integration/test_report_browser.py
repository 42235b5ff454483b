"""report.html in a real browser: Debian's headless chromium renders it with no console message.

The report has no scripts, so *any* console line (an error, a warning, a CSP or resource
complaint) means something is wrong. Chromium prints console messages to stderr with
``--enable-logging=stderr`` as ``...:CONSOLE:<line>] "<message>", source: ...``; a page
known to be broken proves the detector sees them. The screenshot is kept in
``test-artifacts/`` (git-ignored; CI uploads it).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from reports.compute import compute_report, period_bounds
from reports.render import ReportContext, render_files

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WINDOW = (1200, 1600)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, or a skip saying how to get it."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; ./run test does)")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


def open_in_chromium(browser: str, page: Path, screenshot: Path, profile: Path) -> list[str]:
    """Load ``page`` headless, save a screenshot, return the console lines chromium logged."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={screenshot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof that it is a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def sample_report() -> dict[str, str]:
    """A rendered report: two servers over a week, an outage, a window, a day without data."""
    tz = ZoneInfo("Europe/London")
    start, end = period_bounds("2026-06-01..2026-06-07", tz)

    def t(text: str) -> pd.Timestamp:
        return pd.Timestamp(f"2026-06-{text}", tz="UTC")

    intervals = pd.DataFrame(
        [
            ("app-1", "up", t("01 00:00"), t("03 10:00"), 700, 0, None),
            ("app-1", "down", t("03 10:00"), t("03 12:30"), 30, 30, "http 503 from /health"),
            ("app-1", "up", t("03 12:30"), t("05 00:00"), 450, 0, None),
            ("app-1", "up", t("06 00:00"), t("07 23:00"), 570, 0, None),
            ("db-1", "up", t("01 00:00"), t("07 23:00"), 2000, 0, None),
        ],
        columns=["server", "state", "start", "end", "checks", "failures", "first_error"],
    )
    windows = pd.DataFrame({"server": [None], "start": [t("04 01:00")], "end": [t("04 03:00")]})
    servers = pd.DataFrame({"server": ["app-1", "db-1"], "sla_target_pct": [99.5, 99.5]})
    tables = compute_report(intervals, windows, servers, start, end, tz)
    context = ReportContext(
        client="browserco",
        client_name="Browser Co",
        period="2026-06-01..2026-06-07",
        start=start,
        end=end,
        tz=tz,
        tables=tables,
        generated_at=datetime(2026, 6, 8, 6, 0, tzinfo=UTC),
    )
    return render_files(context)


def test_a_broken_page_is_caught_by_the_console_check(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<p>x</p><script>throw new Error("boom")</script>', encoding="utf-8")
    lines = open_in_chromium(chromium, page, tmp_path / "broken.png", tmp_path / "profile")
    assert any("Uncaught Error: boom" in line for line in lines), lines


def test_the_report_renders_in_chromium_without_console_errors(
    chromium: str, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(sample_report()["report.html"], encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "maintenance-report.png"
    screenshot.unlink(missing_ok=True)

    lines = open_in_chromium(chromium, page, screenshot, tmp_path / "profile")

    assert lines == [], "console messages:\n" + "\n".join(lines)
    assert png_size(screenshot) == WINDOW
    # A blank 1200x1600 page compresses to a few kB; tables and bars take far more.
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>", encoding="utf-8")
    open_in_chromium(chromium, blank, tmp_path / "blank.png", tmp_path / "profile-blank")
    assert screenshot.stat().st_size > 4 * (tmp_path / "blank.png").stat().st_size
