"""Rendering the report tables: one self-contained HTML page and the CSV files.

Two separate steps (STYLE item 10):

- :func:`render_html` and :func:`render_files` are pure: a :class:`ReportContext` in,
  strings out. The HTML has inline CSS and the daily uptime bars as inline SVG; it
  references nothing outside itself (no scripts, fonts, images or links), so it opens
  offline and in a mail client.
- :func:`write_report` writes ``report.html``, ``uptime.csv``, ``incidents.csv``,
  ``activity.csv`` and ``compliance.csv`` into a directory.
- :func:`write_pdf` prints report.html to ``report.pdf`` (A4 landscape) with headless
  chromium when a chromium binary is on PATH; otherwise it raises :class:`PdfNotMade`.

uptime.csv has exactly the columns of DESIGN.md §3 (:data:`reports.uptime.UPTIME_COLUMNS`):
one row per server, then the client total row (``(all servers)``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from core.errors import PdfNotMade
from reports.activity import ACTIVITY_COLUMNS
from reports.compliance import COMPLIANCE_COLUMNS
from reports.compute import ReportTables
from reports.uptime import INCIDENT_COLUMNS, UPTIME_COLUMNS

__all__ = [
    "CHROMIUM_NAMES",
    "CSV_FILES",
    "ReportContext",
    "daily_bars_svg",
    "day_step",
    "find_chromium",
    "fmt_approvals",
    "fmt_local",
    "label_every",
    "label_width",
    "render_files",
    "render_html",
    "write_pdf",
    "write_report",
]

TEMPLATES = Path(__file__).parent / "templates"
#: The CSV files of a report and their columns, in order.
CSV_FILES: dict[str, tuple[str, ...]] = {
    "uptime.csv": UPTIME_COLUMNS,
    "incidents.csv": INCIDENT_COLUMNS,
    "activity.csv": ACTIVITY_COLUMNS,
    "compliance.csv": COMPLIANCE_COLUMNS,
}

# Daily bars: one column per day, height proportional to uptime. Sizes are SVG user units
# (CSS px at 100 %); the page scales the whole drawing down when its box is narrower.
_BAR_H = 40
_ROW_GAP = 8
_LABEL_W = 150  # the server names' column
_SERVER_CHARS = 20  # longer names are cut (the full name is in a tooltip)
_CHART_W = 900  # the bars' area for a long period
_MAX_STEP = 48.0  # one day's column at most, so that a few days are not one huge bar each
_DAY_FONT = 10  # px, the date labels
# A date label's width estimate, per character, in em: at least the average of the widest
# label in DejaVu Sans, the widest common sans-serif ("30 May": 3.66 em, 0.61 per
# character), so that the estimate errs on the wide side.
_DAY_CHAR_EM = 0.64
_DAY_LABEL_GAP = 6  # px, at least, between two date labels
_AXIS_H = 22  # ticks and date labels under the rows


@dataclass(frozen=True)
class ReportContext:
    """Everything one report shows.

    Attributes:
        client: the client's slug.
        client_name: the client's display name.
        period: the period as asked (``2026-10``, ``2026-Q3``, dates).
        start: the period's start (aware).
        end: the period's end, exclusive (aware).
        tz: the client's timezone; times are shown in it.
        tables: the computed tables (:func:`reports.compute.compute_report`).
        confirm_after: the confirmation rule in force (failed checks).
        generated_at: when the report was made (aware).
        notes: extra lines shown under the title (e.g. data caveats).
    """

    client: str
    client_name: str
    period: str
    start: datetime
    end: datetime
    tz: tzinfo
    tables: ReportTables
    confirm_after: int = 2
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ format


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def fmt_pct(value: Any, digits: int = 3) -> str:
    """``99.954 %``; ``n/a`` when unknown."""
    return "n/a" if _missing(value) else f"{float(value):.{digits}f} %"


def fmt_duration(value: Any) -> str:
    """Seconds as ``2 d 03:04:05`` / ``03:04:05``; ``n/a`` when unknown, ``∞`` when infinite."""
    if _missing(value):
        return "n/a"
    seconds = float(value)
    if math.isinf(seconds):
        return "∞"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} d {clock}" if days else clock


def fmt_seconds(value: Any) -> str:
    """A short measured time such as an RTO: ``0.4 s``, ``12.3 s`` below a minute (a clock
    would round it to ``00:00:00``), else as :func:`fmt_duration`."""
    if _missing(value):
        return "n/a"
    seconds = float(value)
    return f"{seconds:.1f} s" if 0 <= seconds < 59.95 else fmt_duration(seconds)


def fmt_restore(server: Any, ok: Any) -> str:
    """A restore test cell: ``web-1: ok`` / ``web-1: FAILED``; empty when the run had none."""
    if _missing(server) or not str(server):
        return ""
    return f"{server}: {'n/a' if _missing(ok) else ('ok' if bool(ok) else 'FAILED')}"


def _tie_units(text: str) -> str:
    """For the HTML: a no-break space ties a number to its unit, so that a narrow column
    wraps ``2 d`` / ``03:04:05``, never ``2`` / ``d 03:04:05``, and keeps ``99.954 %`` whole."""
    return text.replace(" %", "\u00a0%").replace(" d ", "\u00a0d ")


def fmt_local(value: Any, tz: tzinfo) -> str:
    """A moment in the client's time zone, to the minute: ``2026-10-04 10:12``.

    The zone is named once, at the top of the report, not in every cell. Only a wall time
    that happens twice (the hour the clocks go back) carries its abbreviation, so that
    ``01:30 BST`` and ``01:30 GMT`` stay apart. Empty when missing; the minute is truncated,
    as a clock shows it.
    """
    if _missing(value):
        return ""
    local = pd.Timestamp(value).tz_convert(tz).to_pydatetime()
    text = f"{local:%Y-%m-%d %H:%M}"
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        text += f" {local.tzname()}"
    return text


def fmt_approvals(value: Any, tz: tzinfo) -> list[str]:
    """The activity's ``approvals`` cell (``alice 2026-10-04T09:12:00.123+00:00; bob ...``,
    ISO UTC as in activity.csv) as one line per approval, its time as :func:`fmt_local`."""
    lines = []
    for part in fmt_text(value).split("; "):
        who, _, when = part.rpartition(" ")
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            lines.append(part)  # no time in it: shown as it is
            continue
        lines.append(f"{who} {fmt_local(moment, tz)}" if moment.tzinfo else part)
    return [line for line in lines if line]


def fmt_bool(value: Any) -> str:
    """``yes``/``no``; ``n/a`` when unknown; a verdict in words (``insufficient data``) as
    it is, never read as a truth value."""
    if isinstance(value, str):
        return value
    return "n/a" if _missing(value) else ("yes" if bool(value) else "no")


def fmt_days(value: Any) -> str:
    """An age in days: ``12.5 d``; ``n/a`` when unknown."""
    return "n/a" if _missing(value) else f"{float(value):.1f} d"


def fmt_text(value: Any) -> str:
    """A cell's text; empty when missing."""
    return "" if _missing(value) else str(value)


# ------------------------------------------------------------------------------ svg


def _bar_colour(pct: float, target: float) -> str:
    if math.isnan(pct):
        return "#b8b8b8"
    if pct >= 100.0:
        return "#2e8540"
    if not math.isnan(target) and pct >= target:
        return "#7bb661"
    return "#d83933"


def day_label(day: date) -> str:
    """A date label under the bars: ``1 Oct``."""
    return f"{day.day} {day:%b}"


def day_step(n_days: int, chart_width: float = _CHART_W) -> float:
    """One day's column width: the chart width shared by the days, at most ``_MAX_STEP``."""
    return min(_MAX_STEP, chart_width / max(1, n_days))


def label_width(text: str, font_size: float = _DAY_FONT) -> float:
    """An upper estimate of a label's drawn width, px."""
    return len(text) * _DAY_CHAR_EM * font_size


def label_every(n_days: int, chart_width: float = _CHART_W, widest: str = "30 Sep") -> int:
    """Label every Nth day so that date labels never collide: the smallest N whose spacing
    (N day columns) holds the widest label plus a gap."""
    step = day_step(n_days, chart_width)
    return max(1, math.ceil((label_width(widest) + _DAY_LABEL_GAP) / step))


def _minutes(seconds: Any) -> str:
    if _missing(seconds):
        return "n/a"
    minutes = float(seconds) / 60
    return f"{minutes:.0f}" if minutes == round(minutes) else f"{minutes:.1f}"


def _num(value: float) -> str:
    """A coordinate without trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _bar_title(server: str, item: Any, pct: float) -> str:
    uptime = "no data" if math.isnan(pct) else f"{pct:.3f} % up"
    return (
        f"{server} {item.day}: {uptime}; down {_minutes(item.unplanned_down_s)} min,"
        f" unknown {_minutes(item.unknown_s)} min, planned {_minutes(item.maintenance_s)} min"
    )


def daily_bars_svg(daily: pd.DataFrame, targets: dict[str, float]) -> str:
    """The daily uptime bars as one inline ``<svg>`` element (no external references).

    One row per server, one bar per local day: the bar's height is the day's uptime
    (0 to 100 %), its colour green at 100 %, light green at or above the SLA target, red
    below it, and grey for a day without data (uptime unknown). Each bar has a ``<title>``
    tooltip: server, day, uptime and the day's unplanned down, unknown and planned minutes.

    The drawing is at most ``_LABEL_W + _CHART_W`` wide whatever the period (a day's column
    shrinks as days are added); every Nth day is labelled under the bars (:func:`label_every`)
    so that the labels never overlap, on a short period as on a long one.
    """
    servers = [str(s) for s in dict.fromkeys(daily["server"])]
    days: list[date] = list(dict.fromkeys(daily["day"]))
    step = day_step(len(days))
    gap = step * 0.2
    labels = [day_label(d) for d in days]
    widest = max(labels, key=len, default="")
    every = label_every(len(days), widest=widest) if days else 1
    pad = label_width(widest) / 2 + 4  # room for the last label, centred on its day
    width = math.ceil(_LABEL_W + len(days) * step + pad)
    rows_h = len(servers) * (_BAR_H + _ROW_GAP)
    height = rows_h + _AXIS_H
    parts = [
        f'<svg role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label="daily uptime per server">'
    ]
    by_server = {str(name): frame for name, frame in daily.groupby("server", sort=False)}
    for row, server in enumerate(servers):
        top = row * (_BAR_H + _ROW_GAP)
        shown_name = server
        if len(server) > _SERVER_CHARS:
            shown_name = server[: _SERVER_CHARS - 1] + "…"
        parts.append(
            f'<text class="server" x="0" y="{top + _BAR_H // 2 + 4}" font-size="12">'
            f"<title>{escape(server)}</title>{escape(shown_name)}</text>"
        )
        target = targets.get(server, math.nan)
        for col, item in enumerate(by_server[server].itertuples(index=False)):
            pct = float(item.uptime_pct) if not _missing(item.uptime_pct) else math.nan
            shown = 100.0 if math.isnan(pct) else pct
            h = max(1.0, _BAR_H * shown / 100.0)
            x = _LABEL_W + col * step + gap / 2
            y = top + _BAR_H - h
            parts.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(step - gap)}" height="{_num(h)}"'
                f' fill="{_bar_colour(pct, target)}"><title>'
                f"{escape(_bar_title(server, item, pct))}</title></rect>"
            )
    for col in range(0, len(days), every):
        centre = _LABEL_W + (col + 0.5) * step
        parts.append(
            f'<line x1="{_num(centre)}" y1="{rows_h - _ROW_GAP + 1}" x2="{_num(centre)}"'
            f' y2="{rows_h - _ROW_GAP + 5}" stroke="#888" stroke-width="1"/>'
            f'<text class="day" x="{_num(centre)}" y="{rows_h + 8}" font-size="{_DAY_FONT}"'
            f' text-anchor="middle">'
            f"{escape(labels[col])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------- render


def _environment(tz: tzinfo) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=lambda value, digits=3: _tie_units(fmt_pct(value, digits)),
        duration=lambda value: _tie_units(fmt_duration(value)),
        seconds=lambda value: _tie_units(fmt_seconds(value)),
        when=lambda value: fmt_local(value, tz),
        approvals=lambda value: fmt_approvals(value, tz),
        yesno=fmt_bool,
        days=lambda value: fmt_days(value).replace(" d", "\u00a0d"),
        text=fmt_text,
    )
    env.globals["restore"] = fmt_restore
    return env


def _compliance_view(frame: pd.DataFrame) -> dict[str, Any]:
    """The compliance section's rows (missing values as None) and its summary counts."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {
        "compliance": rows,
        "compliance_counts": {
            "audited": sum(1 for r in rows if r["last_audit_at"] is not None),
            "pending": sum(1 for r in rows if (r["pending_security"] or 0) > 0),
            "open": sum(1 for r in rows if (r["findings_open"] or 0) > 0),
        },
        "rto_target": frame["rto_target_s"].max() if len(frame) else None,
    }


def render_html(context: ReportContext) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no external links)."""
    tables = context.tables
    targets = {
        str(s): float(t)
        for s, t in zip(tables.uptime["server"], tables.uptime["sla_target_pct"], strict=True)
    }
    svg = daily_bars_svg(tables.daily, targets)
    sla = tables.sla.set_index("server")
    template = _environment(context.tz).get_template("report.html.j2")
    return template.render(
        ctx=context,
        tz_name=str(context.tz),
        uptime=tables.uptime.to_dict("records"),
        total=tables.total.to_dict("records")[0] if len(tables.total) else None,
        sla={name: row for name, row in sla.to_dict("index").items()},
        incidents=tables.incidents.to_dict("records"),
        activity=tables.activity.to_dict("records"),
        **_compliance_view(tables.compliance),
        bars=Markup(svg),  # noqa: S704 (daily_bars_svg escapes every text it inserts)
    )


def _csv(frame: pd.DataFrame, columns: tuple[str, ...]) -> str:
    out = frame.reindex(columns=list(columns)).copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = (
                out[column].dt.tz_convert("UTC").map(lambda v: "" if v is pd.NaT else v.isoformat())
            )
    return str(out.to_csv(index=False, lineterminator="\n"))


def render_files(context: ReportContext) -> dict[str, str]:
    """Every file of the report, by name, as text: report.html and the CSV files.

    Timestamps in the CSV files are ISO 8601 in UTC; uptime.csv ends with the client total.
    """
    tables = context.tables
    uptime = pd.concat([tables.uptime, tables.total], ignore_index=True)
    return {
        "report.html": render_html(context),
        "uptime.csv": _csv(uptime, UPTIME_COLUMNS),
        "incidents.csv": _csv(tables.incidents, INCIDENT_COLUMNS),
        "activity.csv": _csv(tables.activity, ACTIVITY_COLUMNS),
        "compliance.csv": _csv(tables.compliance, COMPLIANCE_COLUMNS),
    }


def write_report(out_dir: Path | str, context: ReportContext) -> dict[str, Path]:
    """Render the report and write its files into ``out_dir`` (created if missing).

    Returns:
        The written paths by file name.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, text in render_files(context).items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written[name] = path
    return written


# -------------------------------------------------------------------------------- pdf

#: Browser binaries tried, in order, on PATH (Debian's package is ``chromium``).
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome")
#: Seconds a PDF rendering may take before the browser is killed.
PDF_TIMEOUT_S = 120.0


def find_chromium(names: Sequence[str] | None = None) -> str | None:
    """The first of ``names`` (default :data:`CHROMIUM_NAMES`) found on PATH, or None."""
    for name in CHROMIUM_NAMES if names is None else names:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_pdf(
    html: Path | str,
    pdf: Path | str | None = None,
    *,
    names: Sequence[str] | None = None,
    timeout: float = PDF_TIMEOUT_S,
) -> Path:
    """Print ``html`` (report.html) to ``pdf`` (default: ``report.pdf`` beside it), A4.

    Headless chromium prints the page with its print stylesheet (A4, page numbers, no
    browser header or footer). Nothing is fetched: the page references nothing outside
    itself. The PDF is written under a temporary name and renamed when complete, so a
    ``report.pdf`` is always whole and belongs to this HTML (an older one is removed first).

    Args:
        html: the HTML file.
        pdf: the PDF to write; default ``report.pdf`` in the HTML's folder.
        names: browser binaries to look for on PATH (default :data:`CHROMIUM_NAMES`).
        timeout: seconds before the browser (and every process it started) is killed.

    Returns:
        The PDF's path.

    Raises:
        PdfNotMade: no browser found, it failed or timed out, or its output is not a PDF.
    """
    source = Path(html).resolve()
    target = Path(pdf) if pdf is not None else source.with_suffix(".pdf")
    target.unlink(missing_ok=True)
    looked_for = CHROMIUM_NAMES if names is None else tuple(names)
    browser = find_chromium(looked_for)
    if browser is None:
        raise PdfNotMade(
            f"no chromium binary on PATH (looked for {', '.join(looked_for)});"
            " install Debian's chromium package to get report.pdf"
        )
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="caretaker-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={partial}",
            source.as_uri(),
        ]
        # Its own session, so that a timeout kills the renderer and helpers too.
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as error:  # not executable, vanished since the lookup
            raise PdfNotMade(f"{browser} could not be started: {error}") from error
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            partial.unlink(missing_ok=True)
            raise PdfNotMade(f"{browser} did not print the PDF within {timeout:g} s") from None
        finally:
            _kill_group(process)  # helpers left behind, if any
    try:
        with partial.open("rb") as handle:
            head = handle.read(5)
    except FileNotFoundError:
        head = b""
    if process.returncode != 0 or head != b"%PDF-":
        partial.unlink(missing_ok=True)
        tail = " | ".join(stderr.strip().splitlines()[-3:]) if stderr else ""
        raise PdfNotMade(
            f"{browser} exited with {process.returncode} and"
            f" {'no PDF' if not head else 'output that is not a PDF'}: {tail}"
        )
    partial.replace(target)
    return target


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Kill what is left of the process group ``process`` leads (it was started alone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)
