"""Maintenance activity: one row per maintenance run, from its change record.

The change records in the history store are the truth (:func:`activity_table`); what only
Prefect's run history knows (a run that died before finishing its record, or before
saving one) is added by :func:`complement_activity`. Pure: records and runs in, a frame
out (activity.csv, :data:`ACTIVITY_COLUMNS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from history.change import ChangeRecord

if TYPE_CHECKING:
    from reports.inputs import MaintenanceRun

__all__ = ["ACTIVITY_COLUMNS", "activity_table", "complement_activity"]


#: activity.csv: one row per maintenance run.
ACTIVITY_COLUMNS: tuple[str, ...] = (
    "client",
    "change_ref",
    "flow_run_id",
    "started",
    "ended",
    "duration_s",
    "outcome",
    "hosts_changed",
    "packages_changed",
    "packages_per_host",
    "reboots",
    "approvals",
    "rollbacks",
    "restore_test_server",
    "restore_test_ok",
    "restore_rto_s",
    "snapshots_taken",
    "snapshot_ids",
)


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else delta.total_seconds()


def activity_table(change_records: Sequence[ChangeRecord]) -> pd.DataFrame:
    """One row per maintenance run, from its change record (:data:`ACTIVITY_COLUMNS`).

    Lists are flattened into readable cells: ``packages_per_host`` is ``"web1: 3; web2: 5"``,
    ``approvals`` ``"alice 2026-10-04T09:12:00+00:00"`` (counted approvals only),
    ``rollbacks`` the servers rolled back, ``snapshot_ids`` the ids of completed snapshots.
    """
    rows: list[dict[str, Any]] = []
    for record in sorted(change_records, key=lambda r: r.started):
        per_host: dict[str, int] = {}
        for change in record.package_changes:
            per_host[change.server] = per_host.get(change.server, 0) + 1
        taken = [s for s in record.snapshots if s.state == "completed"]
        restore = record.restore_test
        rows.append(
            {
                "client": record.client,
                "change_ref": record.change_ref,
                "flow_run_id": record.flow_run_id,
                "started": pd.Timestamp(record.started),
                "ended": pd.Timestamp(record.ended) if record.ended else pd.NaT,
                "duration_s": _seconds(record.duration),
                "outcome": record.outcome.value if record.outcome else None,
                "hosts_changed": len(per_host),
                "packages_changed": len(record.package_changes),
                "packages_per_host": "; ".join(f"{h}: {n}" for h, n in sorted(per_host.items())),
                "reboots": len(record.reboots),
                "approvals": "; ".join(
                    f"{a.approver} {a.at.isoformat()}" for a in record.counted_approvals
                ),
                "rollbacks": "; ".join(r.server for r in record.rollbacks),
                "restore_test_server": restore.server if restore else None,
                "restore_test_ok": restore.ok if restore else None,
                "restore_rto_s": restore.rto_s if restore else None,
                "snapshots_taken": sum(len(s.ids) for s in taken),
                "snapshot_ids": "; ".join(i for s in taken for i in s.ids),
            }
        )
    frame = pd.DataFrame(rows, columns=list(ACTIVITY_COLUMNS))
    for column in ("started", "ended"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["restore_test_ok"] = frame["restore_test_ok"].astype("boolean")
    frame["duration_s"] = frame["duration_s"].astype("float64")
    frame["restore_rto_s"] = frame["restore_rto_s"].astype("float64")
    return frame


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
