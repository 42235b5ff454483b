"""The report's tables, all at once: uptime, incidents, SLA, daily bars and activity.

Frames in, frames out (STYLE item 10). Nothing here reads the store, calls Prefect or writes
a file; the ``maintenance-report`` flow reads the frames (:mod:`reports.inputs`), validates
them (:mod:`reports.validate`), calls :func:`compute_report` and hands the tables to
:mod:`reports.render` and :mod:`reports.publish`. Every number and rule is explained in
``docs/reports.md``.

Inputs (timestamps are timezone-aware; any zone, they are compared as instants):

``intervals``
    The store's ``check_intervals``: ``server``, ``state`` (``up``, ``down``, ``unknown``),
    ``start``, ``end``, ``checks``, ``failures``, ``first_error``. A ``down`` row is a run of
    consecutive failed checks, dated from its first failure. Rows of one server never overlap.
``windows``
    Planned maintenance: ``server`` (None/NA: every server of the client), ``start``, ``end``:
    windows announced to the client (from their announcement) and the time maintenance
    runs worked (:func:`reports.inputs.windows_frame`); never a bare schedule slot.
``servers``
    ``server``, optionally ``added_at`` (observed only from then) and ``sla_target_pct``.

Where each part is computed:

- :mod:`reports.periods`: the period's bounds and local days;
- :mod:`reports.timeline`: confirmation of outages, clipping to each server's scope, the
  unknown gaps (one timeline shared by every table);
- :mod:`reports.windows`: planned time and outages split at window edges;
- :mod:`reports.uptime`: uptime.csv, incidents.csv, the SLA budget, the daily bars;
- :mod:`reports.activity`: activity.csv from the change records and Prefect's runs;
- :mod:`reports.compliance`: compliance.csv from the stored audits, verifications and the
  change records' restore tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

import pandas as pd

from history.change import ChangeRecord
from reports.activity import activity_table, complement_activity
from reports.compliance import (
    COMPLIANCE_COLUMNS,
    ComplianceInputs,
    compliance_table,
    empty_compliance_inputs,
)
from reports.timeline import timeline_parts
from reports.uptime import uptime_frames

if TYPE_CHECKING:
    from reports.inputs import MaintenanceRun

__all__ = ["ReportTables", "compute_report"]


@dataclass(frozen=True)
class ReportTables:
    """Every table of one report, computed from one timeline."""

    uptime: pd.DataFrame
    total: pd.DataFrame
    sla: pd.DataFrame
    incidents: pd.DataFrame
    daily: pd.DataFrame
    activity: pd.DataFrame
    compliance: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(COMPLIANCE_COLUMNS))
    )


def compute_report(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    *,
    change_records: Sequence[ChangeRecord] = (),
    maintenance_runs: Sequence[MaintenanceRun] = (),
    compliance: ComplianceInputs | None = None,
    confirm_after: int = 2,
    client_sla_target_pct: float | None = None,
) -> ReportTables:
    """All report tables at once (the timeline is built once).

    Validate the frames first (:func:`reports.validate.validate_inputs`); this function
    only re-checks what would make a number silently wrong (overlaps, unknown servers).
    ``maintenance_runs`` (Prefect's history, :func:`reports.inputs.read_maintenance_runs`)
    complement the change records' activity (:func:`reports.activity.complement_activity`).
    ``compliance`` (the stored audits and verifications, :mod:`reports.compliance`) makes
    the compliance table; without it the table has a row per server and no audit data.
    """
    parts = timeline_parts(intervals, windows, servers, start, end, confirm_after)
    activity = complement_activity(activity_table(change_records), maintenance_runs)
    compliance_frame = compliance_table(
        [str(s) for s in servers["server"]],
        compliance or empty_compliance_inputs(),
        change_records,
        start,
        end,
    )
    return ReportTables(
        **uptime_frames(parts, tz, client_sla_target_pct),
        activity=activity,
        compliance=compliance_frame,
    )
