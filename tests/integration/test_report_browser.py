"""report.html in a real browser, and report.pdf: Debian's headless chromium.

The page is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
browser reads commands on fd 3 and answers on fd 4; no port, no network). At a 1200 px wide
window, for a 3-day period, a month and a quarter:

- no console message at all: the report has no scripts, so any line (an error, a warning,
  a failed resource) means something is wrong; a page known to be broken proves that the
  detector sees exceptions, console calls and failed loads;
- no horizontal page scroll (``scrollWidth <= 1200``), and no table overflows its container
  (the table's width and its box's ``scrollWidth`` within the box's ``clientWidth``, no cell
  whose content is wider than the cell): tables wrap, they neither scroll nor get cut;
- every time is shown to the minute in the client's zone (no seconds, fractions or offsets);
- no two visible date labels of the daily bars overlap (their bounding boxes, from JS), and
  each lies inside the drawing;
- with print media at the width of A4 landscape's printable area (the PDF's page), nothing
  is wider than the page and no table overflows its container.

The screenshots are kept in ``test-artifacts/`` (git-ignored; CI uploads it). The PDF is
printed by :func:`reports.render.write_pdf` and checked for its signature and its pages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from history.change import Approval, ChangeRecord, ChangeWindow, Outcome, PackageChange
from reports.compute import compute_report
from reports.periods import period_bounds
from reports.render import ReportContext, render_files, write_pdf

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WINDOW = (1200, 1600)
#: A4 landscape (297 mm) less the print stylesheet's 12 mm side margins, in CSS px (96/in).
A4_PRINTABLE_PX = int((297 - 2 * 12) / 25.4 * 96)
PERIODS = {"3-days": "2026-05-29..2026-05-31", "month": "2026-10", "quarter": "2026-Q3"}

#: What the page looks like, measured in the browser.
MEASURE = """(() => {
  const box = (r) => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                       width: r.width, height: r.height});
  const svg = document.querySelector('#daily svg');
  const labels = [...document.querySelectorAll('#daily svg text.day')]
    .map((t) => ({text: t.textContent, box: box(t.getBoundingClientRect())}))
    .filter((l) => l.box.width > 0 && l.box.height > 0);
  const overlaps = [];
  for (let i = 0; i < labels.length; i++) {
    for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i].box, b = labels[j].box;
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) {
        overlaps.push([labels[i].text, labels[j].text]);
      }
    }
  }
  return {
    text: document.body.innerText,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    svg: svg ? box(svg.getBoundingClientRect()) : null,
    labels: labels,
    overlaps: overlaps,
    bars: document.querySelectorAll('#daily svg rect').length,
    barTitles: [...document.querySelectorAll('#daily svg rect')]
      .filter((r) => r.querySelector('title')).length,
    tables: [...document.querySelectorAll('table')].map((t) => {
      const box = t.parentElement;
      return {
        id: t.id,
        width: t.getBoundingClientRect().width,
        right: t.getBoundingClientRect().right,
        boxWidth: box.clientWidth,
        boxScrollWidth: box.scrollWidth,
        boxRight: box.getBoundingClientRect().right,
        // cells whose content is wider than the cell (cut or spilling over)
        spilling: [...t.querySelectorAll('th, td')]
          .filter((c) => c.scrollWidth > c.clientWidth)
          .map((c) => c.textContent.trim().slice(0, 40)),
      };
    }),
  };
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, or a skip saying how to get it."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; ./run test does)")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


# ------------------------------------------------------------------ DevTools over a pipe


@dataclass
class DevTools:
    """One headless chromium and one page, driven over ``--remote-debugging-pipe``."""

    process: subprocess.Popen[bytes]
    send_fd: int
    recv_fd: int
    session: str = ""
    console: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    _buffer: bytes = b""
    _next_id: int = 0

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.recv_fd], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.recv_fd, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message["method"], message.get("params", {})
        self.events.append(method)
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params["args"]
            )
            self.console.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] != "verbose":
            entry = params["entry"]
            self.console.append(f"{entry['level']} ({entry['source']}): {entry['text']}")

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self._event(answer)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        """Read until ``event`` arrives (or has arrived already)."""
        deadline = time.monotonic() + timeout
        while event not in self.events:
            answer = self._read(deadline)
            if "method" in answer:
                self._event(answer)

    def open(self, url: str, width: int, height: int, media: str = "screen") -> None:
        """Show ``url`` in a ``width`` x ``height`` viewport; wait for its load event."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Emulation.setEmulatedMedia", media=media)
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def devtools(browser: str, profile: Path) -> Iterator[DevTools]:
    """A headless chromium with one page attached; closed (and its processes killed) after."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def give_fds_3_and_4() -> None:  # in the child, before exec
        read, write = os.dup(to_browser_r), os.dup(from_browser_w)  # never 3 or 4 themselves
        os.dup2(read, 3)
        os.dup2(write, 4)

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
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "about:blank",
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=give_fds_3_and_4,  # the test process has no other thread forking
        close_fds=False,  # the pipes' other fds are not inheritable (Python's default)
        start_new_session=True,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    tools = DevTools(process, to_browser_w, from_browser_r)
    try:
        targets = tools.call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        tools.session = tools.call("Target.attachToTarget", targetId=page, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        yield tools
    finally:
        with contextlib.suppress(Exception):
            tools.call("Browser.close", timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)


def overflowing(measured: dict[str, Any]) -> list[str]:
    """Every table wider than its container, or with a cell whose content spills over."""
    problems = []
    for table in measured["tables"]:
        if table["width"] > table["boxWidth"] + 0.5 or table["boxScrollWidth"] > table["boxWidth"]:
            problems.append(
                f"table {table['id']}: {table['width']:.0f} px in a {table['boxWidth']} px box"
            )
        if table["right"] > table["boxRight"] + 0.5:
            problems.append(f"table {table['id']} ends past its box ({table['right']:.0f} px)")
        if table["spilling"]:
            problems.append(f"table {table['id']}: cells spill over: {table['spilling']}")
    return problems


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof that it is a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# ----------------------------------------------------------------------------- the data


def change_record(client: str, start: pd.Timestamp) -> ChangeRecord:
    """A run with many package changes and two approvals: a wide activity row."""
    hosts = ["app-1", "db-1", "edge-cache-eu-west-2a.internal.example.net"]
    packages = ["openssl", "libssl3", "nginx", "openssh-server", "linux-image-amd64", "tzdata"]
    return ChangeRecord(
        client=client,
        change_ref="CHG-2026-0042",
        flow_run_id="8d3c6f0e-1b7a-4c1e-9d0b-5b0f3c2a9e71",
        requester="schedule",
        window=ChangeWindow(start=start, end=start + pd.Timedelta(hours=2), inside=True),
        package_changes=[
            PackageChange(server=h, name=p, from_version="1.0.0-1", to_version="1.0.0-2+deb12u1")
            for h in hosts
            for p in packages
        ],
        approvals=[
            Approval(
                approver=who,
                decision="approve",
                # as recorded: to the microsecond (the 20:02:28.888979+00:00)
                at=start - pd.Timedelta(hours=1) + pd.Timedelta(microseconds=888979),
                counted=True,
            )
            for who in ("alice.longname@client.example", "bob.otherperson@client.example")
        ],
        outcome=Outcome.COMPLETED,
        started=start,
        ended=start + pd.Timedelta(minutes=95),
    )


def sample_report(period: str) -> dict[str, str]:
    """A rendered report for ``period``: three servers (one with a long name), an outage on
    the second day, a maintenance window, a day without data, a long error message and a
    maintenance run with many packages (the widest tables the report makes)."""
    tz = ZoneInfo("Europe/London")
    start, end = period_bounds(period, tz)
    s, e = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    day = pd.Timedelta(days=1)
    long_name = "edge-cache-eu-west-2a.internal.example.net"
    error = (
        "http 503 from /health: upstream connect error or disconnect/reset before headers;"
        " reset reason: connection_termination;/var/lib/caretaker/checks/edge/long-path-"
        "without-any-space-at-all-that-must-wrap-inside-its-cell-and-not-widen-the-page"
    )
    out1, out2 = s + day + pd.Timedelta(hours=10), s + day + pd.Timedelta(hours=12, minutes=30)
    gap1, gap2 = s + 2 * day, s + 2 * day + pd.Timedelta(hours=20)
    rows = [
        ("app-1", "up", s, out1, 700, 0, None),
        ("app-1", "down", out1, out2, 30, 30, error),
        ("app-1", "up", out2, gap1, 450, 0, None),
        ("app-1", "unknown", gap1, gap2, 0, 0, None),
        ("app-1", "up", gap2, e, 5000, 0, None),
        ("db-1", "up", s, e, 9000, 0, None),
        (long_name, "up", s, e, 9000, 0, None),
    ]
    intervals = pd.DataFrame(
        rows, columns=["server", "state", "start", "end", "checks", "failures", "first_error"]
    )
    window = s + day + pd.Timedelta(hours=11)
    windows = pd.DataFrame(
        {"server": [None], "start": [window], "end": [window + pd.Timedelta(hours=2)]}
    )
    servers = pd.DataFrame(
        {"server": ["app-1", "db-1", long_name], "sla_target_pct": [99.5, 99.5, 99.9]}
    )
    tables = compute_report(
        intervals,
        windows,
        servers,
        start,
        end,
        tz,
        change_records=[change_record("browserco", window)],
    )
    context = ReportContext(
        client="browserco",
        client_name="Browser Co",
        period=period,
        start=start,
        end=end,
        tz=tz,
        tables=tables,
        generated_at=datetime(2026, 12, 25, 6, 0, tzinfo=UTC),
    )
    return render_files(context)


# ------------------------------------------------------------------------------- tests


def test_a_broken_page_is_caught_by_the_console_check(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<p>x</p><img src="missing.png">'
        '<script>console.warn("careful"); throw new Error("boom")</script>',
        encoding="utf-8",
    )
    with devtools(chromium, tmp_path / "profile") as tools:
        tools.open(page.as_uri(), *WINDOW)
        tools.evaluate("document.readyState")  # reads the events queued meanwhile
    lines = tools.console
    assert any("Uncaught Error: boom" in line or "Error: boom" in line for line in lines), lines
    assert any("console.warning: careful" in line for line in lines), lines
    assert any("missing.png" in line or "ERR_FILE_NOT_FOUND" in line for line in lines), lines


def test_overlapping_date_labels_and_overflowing_tables_are_caught(
    chromium: str, tmp_path: Path
) -> None:
    page = tmp_path / "overlap.html"
    page.write_text(
        '<!DOCTYPE html><div id="daily"><svg width="300" height="40">'
        '<text class="day" x="10" y="20" font-size="10">1 Jun</text>'
        '<text class="day" x="20" y="20" font-size="10">2 Jun</text></svg></div>'
        # the old layout's failure: a table scrolling (cut) inside a narrower box
        '<div style="width: 400px; overflow-x: auto"><table id="cut"><tr>'
        + "<td style='white-space: nowrap'>snapshots-column-</td>"
        * 30
        + "</tr></table></div>"
        # a cell whose content is cut
        '<div style="width: 400px"><table id="clipped" style="table-layout: fixed;'
        ' width: 100%"><tr><td style="overflow: hidden">' + "x" * 200 + "</td></tr></table></div>",
        encoding="utf-8",
    )
    with devtools(chromium, tmp_path / "profile") as tools:
        tools.open(page.as_uri(), *WINDOW)
        measured = tools.evaluate(MEASURE)
    assert measured["overlaps"] == [["1 Jun", "2 Jun"]]
    problems = overflowing(measured)
    assert any(p.startswith("table cut:") for p in problems), problems
    assert any(p.startswith("table clipped: cells spill over") for p in problems), problems


@pytest.mark.parametrize("name", list(PERIODS))
def test_the_report_reads_well_at_1200_px_and_fits_a4(
    chromium: str, tmp_path: Path, name: str
) -> None:
    period = PERIODS[name]
    page = tmp_path / "report.html"
    page.write_text(sample_report(period)["report.html"], encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"maintenance-report-{name}.png"
    screenshot.unlink(missing_ok=True)

    with devtools(chromium, tmp_path / "profile") as tools:
        tools.open(page.as_uri(), *WINDOW)
        screen = tools.evaluate(MEASURE)
        tools.screenshot(screenshot)
        tools.open(page.as_uri(), A4_PRINTABLE_PX, 1100, media="print")
        printed = tools.evaluate(MEASURE)
        console = tools.console

    assert console == [], "console messages:\n" + "\n".join(console)
    assert screen["innerWidth"] == WINDOW[0]
    assert screen["scrollWidth"] <= WINDOW[0], f"the page scrolls sideways: {screen}"
    assert {"uptime", "incidents", "activity"} <= {t["id"] for t in screen["tables"]}
    assert overflowing(screen) == [], "at 1200 px"
    raw_times = re.findall(r"\d\d:\d\d:\d\d[.+]\S*|T\d\d:\d\d\S*", screen["text"])
    assert raw_times == [], "times shown with seconds, fractions or offsets"
    assert "alice.longname@client.example 2026-" in screen["text"]
    assert overflowing(printed) == [], "on A4 landscape"
    tz = ZoneInfo("Europe/London")
    start, end = period_bounds(period, tz)
    days = (end.astimezone(tz).date() - start.astimezone(tz).date()).days
    assert screen["bars"] == 3 * days == screen["barTitles"], "a bar per server and day"
    labels = screen["labels"]
    assert len(labels) >= (3 if name == "3-days" else 6), labels
    assert screen["overlaps"] == [], f"date labels overlap: {screen['overlaps']}"
    svg = screen["svg"]
    for label in labels:
        assert svg["left"] <= label["box"]["left"] and label["box"]["right"] <= svg["right"], (
            f"a date label is cut off: {label}, drawing {svg}"
        )
    assert printed["scrollWidth"] <= A4_PRINTABLE_PX, f"wider than A4 when printed: {printed}"
    assert printed["overlaps"] == []
    assert all(t["right"] <= A4_PRINTABLE_PX + 1 for t in printed["tables"]), printed["tables"]

    assert png_size(screenshot) == WINDOW
    # A blank 1200x1600 page compresses to a few kB; tables and bars take far more.
    blank = tmp_path / "blank.png"
    with devtools(chromium, tmp_path / "profile-blank") as tools:
        tools.open("about:blank", *WINDOW)
        tools.screenshot(blank)
    assert screenshot.stat().st_size > 4 * blank.stat().st_size


def pdf_pages(data: bytes) -> int:
    """Page objects in a PDF (chromium writes them uncompressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


@pytest.mark.parametrize("name", ["3-days", "quarter"])
def test_the_report_prints_to_an_a4_pdf(chromium: str, tmp_path: Path, name: str) -> None:
    html = tmp_path / "report.html"
    html.write_text(sample_report(PERIODS[name])["report.html"], encoding="utf-8")

    pdf = write_pdf(html)

    assert pdf == tmp_path / "report.pdf"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert pdf_pages(data) >= 1
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert boxes, "no page size"
    for width, height in boxes:  # A4 landscape: 297 x 210 mm = 841.9 x 595.3 pt
        assert abs(float(width) - 841.9) < 2 and abs(float(height) - 595.3) < 2, boxes
    assert not list(tmp_path.glob(".*partial")), "no partial file is left"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(pdf, ARTIFACTS / f"maintenance-report-{name}.pdf")
