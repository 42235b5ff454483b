"""Rendering the report tables: one self-contained HTML page and the CSV files.

Two separate steps (STYLE item 10):

- :func:`render_html` and :func:`render_files` are pure: a :class:`ReportContext` in,
  strings out. The HTML has inline CSS and the daily uptime bars as inline SVG; it
  references nothing outside itself (no scripts, fonts, images or links), so it opens
  offline and in a mail client.
- :func:`write_report` writes ``report.html``, ``uptime.csv``, ``incidents.csv`` and
  ``activity.csv`` into a directory.

uptime.csv has exactly the columns of DESIGN.md §3 (:data:`reports.compute.UPTIME_COLUMNS`):
one row per server, then the client total row (``(all servers)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from reports.compute import (
    ACTIVITY_COLUMNS,
    INCIDENT_COLUMNS,
    UPTIME_COLUMNS,
    ReportTables,
)

__all__ = [
    "CSV_FILES",
    "ReportContext",
    "daily_bars_svg",
    "render_files",
    "render_html",
    "write_report",
]

TEMPLATES = Path(__file__).parent / "templates"
#: The CSV files of a report and their columns, in order.
CSV_FILES: dict[str, tuple[str, ...]] = {
    "uptime.csv": UPTIME_COLUMNS,
    "incidents.csv": INCIDENT_COLUMNS,
    "activity.csv": ACTIVITY_COLUMNS,
}

# Daily bars: one column per day, height proportional to uptime.
_BAR_W = 10
_BAR_GAP = 2
_BAR_H = 40
_LABEL_W = 150
_ROW_GAP = 8


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


def _fmt_time(tz: tzinfo) -> Any:
    def fmt(value: Any) -> str:
        if _missing(value):
            return ""
        return pd.Timestamp(value).tz_convert(tz).strftime("%Y-%m-%d %H:%M %Z")

    return fmt


def fmt_bool(value: Any) -> str:
    """``yes``/``no``; ``n/a`` when unknown."""
    return "n/a" if _missing(value) else ("yes" if bool(value) else "no")


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


def daily_bars_svg(daily: pd.DataFrame, targets: dict[str, float]) -> str:
    """The daily uptime bars as one inline ``<svg>`` element (no external references).

    One row per server, one bar per local day: the bar's height is the day's uptime
    (0 to 100 %), its colour green at 100 %, light green at or above the SLA target, red
    below it, and grey for a day without data (uptime unknown). Each bar has a ``<title>``
    with the day and the exact figure.
    """
    servers = list(dict.fromkeys(daily["server"]))
    days = list(dict.fromkeys(daily["day"]))
    width = _LABEL_W + len(days) * (_BAR_W + _BAR_GAP)
    height = len(servers) * (_BAR_H + _ROW_GAP) + 16
    parts = [
        f'<svg role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label="daily uptime per server">'
    ]
    by_server = {name: frame for name, frame in daily.groupby("server", sort=False)}
    for row, server in enumerate(servers):
        top = row * (_BAR_H + _ROW_GAP)
        parts.append(
            f'<text x="0" y="{top + _BAR_H // 2 + 4}" font-size="12">{escape(server)}</text>'
        )
        target = targets.get(server, math.nan)
        for col, item in enumerate(by_server[server].itertuples(index=False)):
            pct = float(item.uptime_pct) if not _missing(item.uptime_pct) else math.nan
            shown = 100.0 if math.isnan(pct) else pct
            h = max(1.0, _BAR_H * shown / 100.0)
            x = _LABEL_W + col * (_BAR_W + _BAR_GAP)
            y = top + _BAR_H - h
            label = f"{item.day}: {'no data' if math.isnan(pct) else f'{pct:.3f} %'}"
            parts.append(
                f'<rect x="{x}" y="{y:.1f}" width="{_BAR_W}" height="{h:.1f}"'
                f' fill="{_bar_colour(pct, target)}"><title>'
                f"{escape(label)}</title></rect>"
            )
    if days:
        bottom = len(servers) * (_BAR_H + _ROW_GAP) + 12
        parts.append(f'<text x="{_LABEL_W}" y="{bottom}" font-size="10">{days[0]}</text>')
        last_x = _LABEL_W + (len(days) - 1) * (_BAR_W + _BAR_GAP)
        parts.append(
            f'<text x="{last_x + _BAR_W}" y="{bottom}" font-size="10"'
            f' text-anchor="end">{days[-1]}</text>'
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
        pct=fmt_pct,
        duration=fmt_duration,
        when=_fmt_time(tz),
        yesno=fmt_bool,
        text=fmt_text,
    )
    return env


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
