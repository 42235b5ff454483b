"""The report's IO: its inputs from the history store and Prefect, and its Prefect artifacts.

The ``maintenance-report`` flow reads everything through the thin tasks here and hands
pure frames to :mod:`reports.validate`, :mod:`reports.compute` and :mod:`reports.render`:

* :func:`read_report_inputs`: the store's state intervals, maintenance windows (recorded
  runs and planned windows) and change records for one client and period, plus the
  windows the inventory's schedule declares (:meth:`ClientInventory.windows_between`);
* :func:`read_maintenance_runs`: Prefect's run history of ``server-maintenance`` for the
  client, paginated (200 a page). Only a complement: the store is the source of truth and
  a report never depends on Prefect keeping old runs (:func:`complement_activity`);
* :func:`publish_report_artifacts`: a markdown summary and a table of uptime per server.

The pure helpers beside them (:func:`resolve_period`, the ``*_frame`` builders,
:func:`complement_activity`, :func:`summary_markdown`, :func:`uptime_rows`) are tested
without a store or an API.

This domain reads :mod:`reports` (the store's queries) as well as :mod:`blocks`: the store
is the report's outside system, as SSH is the maintenance tasks'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from history.change import ChangeRecord
from history.ingest import read_intervals_frame
from history.store import StoredWindow, open_store
from inventory import ClientInventory
from reports.compute import TOTAL_ROW, ReportTables, period_bounds
from tasks.records import artifact_key

__all__ = [
    "API_PAGE_SIZE",
    "MAINTENANCE_FLOW_NAME",
    "MaintenanceRun",
    "ReportInputs",
    "ReportPeriod",
    "complement_activity",
    "publish_report_artifacts",
    "read_maintenance_runs",
    "read_report_inputs",
    "resolve_period",
    "servers_frame",
    "summary_markdown",
    "uptime_rows",
    "windows_frame",
    "with_time",
]

#: The flow whose runs are maintenance activity.
MAINTENANCE_FLOW_NAME = "server-maintenance"
#: Prefect's API pages: never ask for more than this many runs at once.
API_PAGE_SIZE = 200

_RELATIVE = {"last-month", "last-quarter"}
_RANGE_SEPARATOR = re.compile(r"\s*(?:\.\.|/)\s*")


# ------------------------------------------------------------------------------ period


@dataclass(frozen=True)
class ReportPeriod:
    """A report's period, resolved in the client's timezone.

    Attributes:
        label: the canonical name, also the folder name: ``2026-10``, ``2026-Q3`` or
            ``2026-10-01..2026-10-15``.
        start: local midnight of the first day (aware, client timezone).
        end: local midnight after the last day, exclusive.
    """

    label: str
    start: datetime
    end: datetime


def _month_start(day: date, months_back: int) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def resolve_period(period: str | None, tz: tzinfo, now: datetime | None = None) -> ReportPeriod:
    """Turn the flow's ``period`` parameter into a :class:`ReportPeriod` (pure).

    Args:
        period: ``2026-10`` (a month), ``2026-Q3`` (a quarter), ``2026-10-01..2026-10-15``
            (dates, both included), ``last-month``, ``last-quarter``, or None (the
            previous full month).
        tz: the client's timezone: "previous" and day boundaries are read in it.
        now: the current time (aware); default now.

    Raises:
        ValueError: the period is not one of those forms, or ends before it starts.
    """
    text = (period or "last-month").strip()
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    if text == "last-month":
        first = _month_start(today, 1)
        text = f"{first:%Y-%m}"
    elif text == "last-quarter":
        this_quarter = _month_start(today, (today.month - 1) % 3)
        first = _month_start(this_quarter, 3)
        text = f"{first.year}-Q{(first.month - 1) // 3 + 1}"
    start, end = period_bounds(text, tz)
    parts = _RANGE_SEPARATOR.split(text)
    if len(parts) == 2:
        label = f"{parts[0]}..{parts[1]}"
    else:
        label = text.upper() if "q" in text.lower() else text
    return ReportPeriod(label=label, start=start.to_pydatetime(), end=end.to_pydatetime())


# ------------------------------------------------------------------------------ frames


def with_time(intervals: pd.DataFrame) -> pd.DataFrame:
    """The store's intervals as :mod:`reports.compute` reads them: zero-length ones left out.

    The store holds a zero-length interval whenever the latest check changed a server's
    state (or preceded a silence) and no later check has extended it yet. It carries no
    time, so no number changes; the report's validation would refuse it
    (``interval_start_before_end``), which must not stop a report made mid-outage.
    """
    return intervals.loc[intervals["end"] > intervals["start"]].reset_index(drop=True)


def windows_frame(
    stored: Sequence[StoredWindow], declared: Sequence[tuple[datetime, datetime]]
) -> pd.DataFrame:
    """Planned maintenance time: the store's windows and the schedule's declared windows.

    Args:
        stored: the store's windows (kind ``run``: when a run worked; ``planned``).
        declared: the inventory's window slots in the period (the whole client).

    Returns:
        ``server`` (None: every server), ``start``, ``end``, ``kind``
        (``run``, ``planned`` or ``declared``).
    """
    rows: list[tuple[str | None, datetime, datetime, str]] = [
        (w.server, w.start, w.end, w.kind) for w in stored
    ]
    rows += [(None, start, end, "declared") for start, end in declared]
    frame = pd.DataFrame(rows, columns=["server", "start", "end", "kind"])
    frame["server"] = frame["server"].astype("object")
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def servers_frame(inventory: ClientInventory) -> pd.DataFrame:
    """The client's servers, one row each, in inventory order.

    ``added_at`` is the start of the server's ``added`` day in the client's time zone (NaT:
    in scope for the whole period); ``sla_target_pct`` is the server's own target, else the
    client's ``monitoring.sla_target_pct`` (NaN: no target, ``sla_met`` n/a).
    """
    client_target = inventory.monitoring.sla_target_pct
    tz = inventory.tz
    added = [
        None if s.added is None else datetime.combine(s.added, datetime.min.time(), tzinfo=tz)
        for s in inventory.servers
    ]
    targets = [
        s.sla_target_pct if s.sla_target_pct is not None else client_target
        for s in inventory.servers
    ]
    return pd.DataFrame(
        {
            "server": [s.name for s in inventory.servers],
            "added_at": pd.to_datetime(pd.Series(added, dtype="object"), utc=True),
            "sla_target_pct": pd.Series(
                [math.nan if t is None else float(t) for t in targets], dtype="float64"
            ),
        }
    )


# ------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class ReportInputs:
    """What the store (and the inventory's schedule) says about one client and period.

    Attributes:
        intervals: state intervals overlapping the period.
        windows: planned maintenance time (:func:`windows_frame`).
        servers: the client's servers (:func:`servers_frame`).
        change_records: the maintenance runs that started in the period, oldest first.
    """

    intervals: pd.DataFrame
    windows: pd.DataFrame
    servers: pd.DataFrame
    change_records: list[ChangeRecord]


@task(name="read-report-inputs", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_report_inputs(inventory: ClientInventory, start: datetime, end: datetime) -> ReportInputs:
    """Read a client's history for ``[start, end)`` from the store (a read: safe to retry).

    Args:
        inventory: the client's inventory (servers, timezone, declared window).
        start: the period's start (aware).
        end: the period's end, exclusive (aware).

    Returns:
        The report's input frames and change records.
    """
    slug = inventory.slug
    with open_store() as store:
        intervals = read_intervals_frame(store, slug, start, end)
        stored = store.windows(slug, start, end)
        records = store.change_records(slug, since=start, until=end)
    declared = inventory.windows_between(start, end)
    get_run_logger().info(
        "%s: %d interval(s), %d stored and %d declared window(s), %d change record(s)",
        slug,
        len(intervals),
        len(stored),
        len(declared),
        len(records),
    )
    return ReportInputs(
        intervals=with_time(intervals),
        windows=windows_frame(stored, declared),
        servers=servers_frame(inventory),
        change_records=records,
    )


# ------------------------------------------------------------------------------ Prefect


class MaintenanceRun(BaseModel):
    """One ``server-maintenance`` flow run as Prefect remembers it."""

    flow_run_id: str = Field(description="The Prefect flow run id.")
    name: str = Field(description="The run's name.")
    state: str = Field(description="Its state's name (Completed, Failed, Crashed, ...).")
    change_ref: str | None = Field(default=None, description="The run's change_ref parameter.")
    dry_run: bool = Field(default=False, description="The run's dry_run parameter.")
    started: datetime | None = Field(default=None, description="When it started (aware).")
    ended: datetime | None = Field(default=None, description="When it ended (aware).")


@task(name="read-maintenance-runs", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_maintenance_runs(client: str, start: datetime, end: datetime) -> list[MaintenanceRun]:
    """The client's ``server-maintenance`` runs that started in ``[start, end)``, oldest first.

    Pages through the API ``API_PAGE_SIZE`` runs at a time; runs of other clients are
    dropped here (Prefect cannot filter on parameters).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[MaintenanceRun] = []
    offset = 0
    with get_client(sync_client=True) as api:
        while True:
            page = api.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[MAINTENANCE_FLOW_NAME])),
                flow_run_filter=FlowRunFilter(
                    start_time=FlowRunFilterStartTime(after_=start, before_=end)
                ),
                sort=FlowRunSort.START_TIME_ASC,
                limit=API_PAGE_SIZE,
                offset=offset,
            )
            for run in page:
                parameters = run.parameters or {}
                # after_/before_ are inclusive; the period's end is not.
                if parameters.get("client") != client or (run.start_time or end) >= end:
                    continue
                runs.append(
                    MaintenanceRun(
                        flow_run_id=str(run.id),
                        name=run.name,
                        state=run.state.name if run.state else "Unknown",
                        change_ref=parameters.get("change_ref"),
                        dry_run=bool(parameters.get("dry_run", False)),
                        started=run.start_time,
                        ended=run.end_time,
                    )
                )
            if len(page) < API_PAGE_SIZE:
                break
            offset += API_PAGE_SIZE
    return runs


def complement_activity(activity: pd.DataFrame, runs: Sequence[MaintenanceRun]) -> pd.DataFrame:
    """Add to the activity table what only Prefect knows (pure).

    The change records are the truth. Prefect's history adds:

    * a run with a record but no end (it died before finishing it): its end and duration,
      and its Prefect state as the outcome (``prefect:Crashed``);
    * a run without any record (it failed before saving one): a row with its change ref,
      times and Prefect state (``prefect:Failed``), counts left empty.

    Dry runs change nothing and are left out.
    """
    out = activity.copy()
    known = {str(v): i for i, v in zip(out.index, out["flow_run_id"], strict=True)}
    extra: list[dict[str, Any]] = []
    for run in runs:
        if run.dry_run:
            continue
        ended = pd.Timestamp(run.ended) if run.ended else pd.NaT
        started = pd.Timestamp(run.started) if run.started else pd.NaT
        duration = (
            (ended - started).total_seconds()
            if not (pd.isna(ended) or pd.isna(started))
            else math.nan
        )
        if run.flow_run_id in known:
            index = known[run.flow_run_id]
            if pd.isna(out.at[index, "ended"]) and not pd.isna(ended):
                out.at[index, "ended"] = ended
                out.at[index, "duration_s"] = (ended - out.at[index, "started"]).total_seconds()
            if pd.isna(out.at[index, "outcome"]):
                out.at[index, "outcome"] = f"prefect:{run.state}"
            continue
        extra.append(
            {
                "client": out["client"].iloc[0] if len(out) else None,
                "change_ref": run.change_ref,
                "flow_run_id": run.flow_run_id,
                "started": started,
                "ended": ended,
                "duration_s": duration,
                "outcome": f"prefect:{run.state}",
            }
        )
    if not extra:
        return out
    added = pd.DataFrame(extra).reindex(columns=out.columns)
    for column in ("started", "ended"):
        added[column] = pd.to_datetime(added[column], utc=True)
    frames = [f for f in (out, added) if len(f)]
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    merged = merged.astype(out.dtypes.to_dict()) if len(out) else merged
    return merged.sort_values("started", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ artifacts


def _number(value: Any) -> Any:
    """A JSON-friendly cell: NaN/NA become None, numpy scalars plain Python."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def uptime_rows(tables: ReportTables) -> list[dict[str, Any]]:
    """uptime.csv's rows (servers, then the client total) as JSON-friendly dicts (pure)."""
    frame = pd.concat([tables.uptime, tables.total], ignore_index=True)
    return [
        {column: _number(value) for column, value in row.items()}
        for row in frame.astype("object").to_dict("records")
    ]


def _pct(value: Any) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{float(value):.3f} %"


def summary_markdown(
    client_name: str,
    period: ReportPeriod,
    tables: ReportTables,
    files: dict[str, str],
    notes: Sequence[str] = (),
) -> str:
    """The report's headline as markdown for the Prefect UI (pure)."""
    total = tables.total.iloc[0]
    lines = [
        f"# {client_name}: maintenance report {period.label}",
        "",
        f"{period.start.isoformat()} to {period.end.isoformat()}",
        "",
        "| | |",
        "| --- | --- |",
        f"| uptime ({TOTAL_ROW}) | {_pct(total['uptime_pct'])} |",
        f"| unplanned downtime | {float(total['unplanned_down_s']):.0f} s |",
        f"| unknown (no data) | {float(total['unknown_s']):.0f} s |",
        f"| incidents | {int(total['incidents'])} |",
        f"| maintenance runs | {len(tables.activity)} |",
        "",
        "## Files",
        "",
        *[f"- `{name}`: {path}" for name, path in files.items()],
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


@task(name="publish-report-artifacts", cache_policy=NO_CACHE)
def publish_report_artifacts(
    client: str, period_label: str, markdown: str, rows: list[dict[str, Any]]
) -> list[str]:
    """Publish the summary (markdown) and the uptime table as Prefect artifacts.

    Returns:
        The artifact keys: ``report-<client>-<period>`` and ``uptime-<client>-<period>``.
    """
    report_key = artifact_key("report", client, period_label)
    uptime_key = artifact_key("uptime", client, period_label)
    create_markdown_artifact(
        key=report_key, markdown=markdown, description=f"Report {client} {period_label}"
    )
    create_table_artifact(
        key=uptime_key, table=rows, description=f"Uptime per server, {client} {period_label}"
    )
    return [report_key, uptime_key]
