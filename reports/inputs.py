"""The report's reads: its input frames from the history store, and Prefect's run history.

The first step of the ``maintenance-report`` flow (read -> validate -> compute -> render ->
publish). Two thin tasks do the IO, both reads and safe to retry:

* :func:`read_report_inputs`: the store's state intervals, maintenance windows (announced
  windows and recorded runs) and change records for one client and period; a schedule
  slot on which nothing was announced or done is not planned time (docs/reports.md);
* :func:`read_maintenance_runs`: Prefect's run history of ``server-maintenance`` for the
  client, paginated (:data:`API_PAGE_SIZE` a page). Only a complement: the store is the
  source of truth and a report never depends on Prefect keeping old runs
  (:func:`reports.activity.complement_activity`).

The pure frame builders beside them (:func:`with_time`, :func:`windows_frame`,
:func:`run_windows`, :func:`servers_frame`) are tested without a store. The store is the
report's outside system, as SSH is the maintenance tasks'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from history.change import ChangeRecord
from history.intervals import read_intervals_frame
from history.store import open_store
from history.windows import StoredWindow
from inventory import ClientInventory
from reports.compliance import ComplianceInputs, audit_frames, verifications_frame

__all__ = [
    "API_PAGE_SIZE",
    "MAINTENANCE_FLOW_NAME",
    "MaintenanceRun",
    "ReportInputs",
    "read_maintenance_runs",
    "read_report_inputs",
    "run_windows",
    "servers_frame",
    "windows_frame",
    "with_time",
]

#: The flow whose runs are maintenance activity.
MAINTENANCE_FLOW_NAME = "server-maintenance"
#: Prefect's API pages: never ask for more than this many runs at once.
API_PAGE_SIZE = 200
#: How long before the period a run may have started and still worked inside it (its
#: window is at most a day; a run may start before its window).
RUN_LOOKBACK = timedelta(days=7)


def with_time(intervals: pd.DataFrame) -> pd.DataFrame:
    """The store's intervals as :mod:`reports.compute` reads them: zero-length ones left out.

    The store holds a zero-length interval whenever the latest check changed a server's
    state (or preceded a silence) and no later check has extended it yet. It carries no
    time, so no number changes; the report's validation would refuse it
    (``interval_start_before_end``), which must not stop a report made mid-outage.
    """
    return intervals.loc[intervals["end"] > intervals["start"]].reset_index(drop=True)


WindowRow = tuple[str | None, datetime, datetime, str]


def run_windows(records: Sequence[ChangeRecord]) -> list[WindowRow]:
    """The time each maintenance run worked, bounded by its window, per server it planned.

    From the run's start to its end, cut to its window (``record.window``); for each
    staging and production server of its plan. A run that never planned (it stopped in
    preflight) worked on no server; one without an end (it died, or is still going) has
    no known working time: neither counts, though an announced window still does.

    Returns:
        ``(server, start, end, "run")`` rows.
    """
    rows: list[WindowRow] = []
    for record in records:
        if record.plan is None or record.ended is None:
            continue
        start = max(record.started, record.window.start)
        end = min(record.ended, record.window.end)
        if end > start:
            servers = [*record.plan.staging, *record.plan.production]
            rows += [(str(server), start, end, "run") for server in servers]
    return rows


def windows_frame(
    stored: Sequence[StoredWindow], records: Sequence[ChangeRecord] = ()
) -> pd.DataFrame:
    """Planned maintenance time: announced windows, from their announcement, and the time
    maintenance runs worked, bounded by their windows (docs/reports.md, "Planned time").

    A ``planned`` window counts from ``max(start, announced_at)``: an announcement made
    after the window began makes only the rest of it planned, one made after it ended
    nothing. A stored ``run`` window counts whole; the change records add
    :func:`run_windows`. A schedule slot on which nothing was announced or done is not
    here: it is when changes *may* be made, not maintenance.

    Args:
        stored: the store's windows (``planned``: announced; ``run``: when a run worked).
        records: change records whose working time counts (:func:`run_windows`).

    Returns:
        ``server`` (None: every server), ``start``, ``end``, ``kind`` (``planned``, ``run``).
    """
    rows: list[WindowRow] = []
    for w in stored:
        start = w.start
        if w.kind == "planned":
            start = max(start, w.announced_at or w.recorded_at)
        if w.end > start:
            rows.append((w.server, start, w.end, w.kind))
    rows += run_windows(records)
    frame = pd.DataFrame(rows, columns=["server", "start", "end", "kind"])
    frame["server"] = frame["server"].astype("object")
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def servers_frame(inventory: ClientInventory) -> pd.DataFrame:
    """The client's servers, one row each, in inventory order.

    ``added_at`` is the start of the server's ``added`` day in the client's time zone (NaT:
    in scope for the whole period); ``sla_target_pct`` is the server's own target, else the
    client's ``monitoring.sla_target_pct`` (NaN: no target, ``sla_met`` n/a);
    ``min_coverage_pct`` the client's ``monitoring.min_coverage_pct`` (below it the SLA is
    not judged: ``insufficient data``).
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
            "min_coverage_pct": pd.Series(
                [float(inventory.monitoring.min_coverage_pct)] * len(inventory.servers),
                dtype="float64",
            ),
        }
    )


@dataclass(frozen=True)
class ReportInputs:
    """What the store says about one client and period.

    Attributes:
        intervals: state intervals overlapping the period.
        windows: planned maintenance time (:func:`windows_frame`).
        servers: the client's servers (:func:`servers_frame`).
        change_records: the maintenance runs that started in the period, oldest first.
        compliance: the stored audits and verifications before the period's end, and the
            RTO target (:mod:`reports.compliance`).
    """

    intervals: pd.DataFrame
    windows: pd.DataFrame
    servers: pd.DataFrame
    change_records: list[ChangeRecord]
    compliance: ComplianceInputs | None = None


@task(name="read-report-inputs", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_report_inputs(inventory: ClientInventory, start: datetime, end: datetime) -> ReportInputs:
    """Read a client's history for ``[start, end)`` from the store (a read: safe to retry).

    Args:
        inventory: the client's inventory (slug, servers, SLA targets).
        start: the period's start (aware).
        end: the period's end, exclusive (aware).

    Returns:
        The report's input frames and change records.
    """
    slug = inventory.slug
    with open_store() as store:
        intervals = read_intervals_frame(store, slug, start, end)
        stored = store.windows(slug, start, end)
        # A run that started shortly before the period may have worked inside it.
        records = store.change_records(slug, since=start - RUN_LOOKBACK, until=end)
        # Every audit and verification before the end: earlier ones date what is still
        # pending or open, and when each server was last patched.
        audits = store.audits(slug, until=end)
        verifications = store.verifications(slug, until=end)
    in_period = [r for r in records if r.started >= start]
    windows = windows_frame(stored, records)
    get_run_logger().info(
        "%s: %d interval(s), %d stored window(s), %d planned span(s), %d change record(s),"
        " %d audit result(s), %d verification(s)",
        slug,
        len(intervals),
        len(stored),
        len(windows),
        len(in_period),
        len(audits),
        len(verifications),
    )
    return ReportInputs(
        intervals=with_time(intervals),
        windows=windows,
        servers=servers_frame(inventory),
        change_records=in_period,
        compliance=ComplianceInputs(
            audit_frames(audits),
            verifications_frame(verifications),
            inventory.restore_test.timeout.total_seconds(),
        ),
    )


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
