"""The ``maintenance-report`` flow: one client, one period, uptime and maintenance activity.

Orchestration only, one way through ``reports/``:

    resolve_period (reports.periods: client timezone; default: the previous full month)
      ─► read_report_inputs (reports.inputs: store intervals, announced and run windows,
         change records; planned time is only what was announced or worked) and
         read_maintenance_runs (Prefect's history, a complement only)
      ─► validate_inputs (reports.validate: great-expectations; a failure stops the report
         with the reason)
      ─► compute_report (reports.compute: every table, activity complemented by the runs)
      ─► write_report (reports.render: report.html, uptime.csv, incidents.csv, activity.csv)
      ─► write_pdf (report.pdf from report.html with headless chromium; skipped, with a
         warning saying why, when there is no chromium or it fails)
      ─► store_report (reports.publish: every file to the client's storage block,
         blocks.report_storage: S3 with a presigned link, or a folder; default <data>/reports)
      ─► publish_report_artifacts (reports.publish: markdown summary + uptime table) and
         publish_report_link (report.html's link)
      ─► notify (tasks.notify: the contact gets the links through the client's
         notification blocks; a failed send is logged and kept in the result)

The store is the source of truth: if Prefect's API cannot be read, the report is still
made, with a note saying so. Every number is explained in docs/reports.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from core.errors import PdfNotMade
from core.logs import redact_logs
from core.settings import settings
from inventory import load_client_by_slug
from reports.compute import compute_report
from reports.inputs import MaintenanceRun, read_maintenance_runs, read_report_inputs
from reports.periods import resolve_period
from reports.publish import (
    headline_lines,
    publish_report_artifacts,
    publish_report_link,
    store_report,
)
from reports.render import ReportContext, write_pdf, write_report
from reports.uptime import sla_words
from reports.validate import validate_inputs
from tasks.hygiene.steps import monthly_notes
from tasks.notify import notice_report, notify

__all__ = ["ReportResult", "default_out_dir", "maintenance_report"]


class ReportResult(BaseModel):
    """Where a report was written and its headline numbers (the client total)."""

    client: str = Field(description="Client slug.")
    period: str = Field(description="The period's canonical label (2026-10, 2026-Q3, a..b).")
    start: datetime = Field(description="The period's start (client timezone).")
    end: datetime = Field(description="The period's end, exclusive.")
    out_dir: str = Field(description="The folder holding the files.")
    files: dict[str, str] = Field(description="Written paths by file name (report.html, ...).")
    stored: dict[str, str] = Field(
        default_factory=dict,
        description="Where each file was delivered (storage block): a path or s3://bucket/key.",
    )
    notice_problems: list[str] = Field(
        default_factory=list, description="Notification blocks the report notice failed on."
    )
    artifacts: list[str] = Field(description="Keys of the Prefect artifacts published.")
    uptime_pct: float | None = Field(description="The client's uptime, %; None without data.")
    unplanned_down_s: float = Field(description="Unplanned downtime, all servers, seconds.")
    unknown_s: float = Field(description="Time without data, all servers, seconds.")
    incidents: int = Field(description="Confirmed outages with unplanned time.")
    sla: str = Field(
        default="n/a",
        description="The client's SLA verdict: met, missed, insufficient data (coverage), n/a.",
    )
    maintenance_runs: int = Field(description="Rows of activity.csv.")
    notes: list[str] = Field(default_factory=list, description="Caveats shown in the report.")

    @property
    def report_html(self) -> Path:
        """The path of report.html."""
        return Path(self.files["report.html"])


def default_out_dir(client: str, period_label: str) -> Path:
    """``<data>/reports/<client>/<period>/``."""
    return settings().data / "reports" / client / period_label


def _float(value: Any) -> float | None:
    number = float(value)
    return None if number != number else number  # NaN: no data outside windows


@flow(name="maintenance-report", validate_parameters=True)
def maintenance_report(
    client: str, period: str | None = None, out_dir: str | None = None
) -> ReportResult:
    """Report one client's uptime, incidents and maintenance activity for one period.

    Args:
        client: the client's slug (``clients/<slug>.yaml``).
        period: ``2026-10``, ``2026-Q3``, ``2026-10-01..2026-10-15``, ``last-month`` or
            ``last-quarter``, in the client's timezone; default: the previous full month.
        out_dir: where the files go; default ``<data>/reports/<client>/<period>/``.

    Returns:
        The written paths and the headline numbers.

    Raises:
        ReportInputError: the store's data failed validation (the message names every
            failed expectation and rows); nothing is written.
    """
    redact_logs()  # every log line of the run is masked from here on (core/logs.py)
    logger = get_run_logger()
    inventory = load_client_by_slug(settings().inventory_dir, client)
    resolved = resolve_period(period, inventory.tz)
    logger.info(
        "%s: report for %s (%s to %s)", client, resolved.label, resolved.start, resolved.end
    )

    inputs = read_report_inputs(inventory, resolved.start, resolved.end)
    # The schedule's review and the providers' scheduled maintenance (tasks/hygiene).
    notes: list[str] = monthly_notes(inventory, datetime.now(UTC))
    runs_state = read_maintenance_runs(client, resolved.start, resolved.end, return_state=True)
    runs: list[MaintenanceRun] = []
    if runs_state.is_completed():
        runs = runs_state.result()
    else:
        notes.append(
            "Prefect's run history could not be read; maintenance activity is from the"
            f" history store only ({runs_state.message})."
        )
        logger.warning(notes[-1])

    validate_inputs(inputs.intervals, inputs.windows, inputs.servers, resolved.start, resolved.end)
    tables = compute_report(
        inputs.intervals,
        inputs.windows,
        inputs.servers,
        resolved.start,
        resolved.end,
        inventory.tz,
        change_records=inputs.change_records,
        maintenance_runs=runs,
        compliance=inputs.compliance,
        confirm_after=inventory.monitoring.confirm_after,
        client_sla_target_pct=inventory.monitoring.sla_target_pct,
    )

    directory = Path(out_dir) if out_dir else default_out_dir(client, resolved.label)
    context = ReportContext(
        client=client,
        client_name=inventory.client.name,
        period=resolved.label,
        start=resolved.start,
        end=resolved.end,
        tz=inventory.tz,
        tables=tables,
        confirm_after=inventory.monitoring.confirm_after,
        notes=tuple(notes),
    )
    files = {name: str(path) for name, path in write_report(directory, context).items()}
    try:
        files["report.pdf"] = str(write_pdf(files["report.html"]))
    except PdfNotMade as reason:  # the PDF is a convenience: the report stands without it
        logger.warning("%s %s: no report.pdf made: %s", client, resolved.label, reason)
    stored = store_report(
        inventory.reports.storage, client, resolved.label, files, inventory.reports.link_expiry
    )
    locations = {name: item.location for name, item in stored.items()}
    artifacts = publish_report_artifacts(
        client, inventory.client.name, resolved, tables, locations, notes
    )
    artifacts.append(publish_report_link(client, resolved.label, stored["report.html"]))
    contact = inventory.client.contact
    notice_problems = notify(
        inventory.client.notify,
        *notice_report(
            inventory.client.name,
            f"{contact.name} <{contact.email}>",
            resolved.label,
            resolved.start,
            resolved.end,
            {name: item.link for name, item in stored.items()},
            headline=headline_lines(tables),
            expires=stored["report.html"].expires,
            tz=inventory.tz,
        ),
    )
    total = tables.total.iloc[0]
    result = ReportResult(
        client=client,
        period=resolved.label,
        start=resolved.start,
        end=resolved.end,
        out_dir=str(directory),
        files=files,
        stored=locations,
        notice_problems=notice_problems,
        artifacts=artifacts,
        uptime_pct=_float(total["uptime_pct"]),
        unplanned_down_s=float(total["unplanned_down_s"]),
        unknown_s=float(total["unknown_s"]),
        incidents=int(total["incidents"]),
        sla=sla_words(total["sla_met"], total["coverage_pct"]),
        maintenance_runs=len(tables.activity),
        notes=notes,
    )
    logger.info(
        "%s %s: uptime %s, SLA met: %s, written to %s, delivered to %s",
        client,
        resolved.label,
        result.uptime_pct,
        result.sla,
        directory,
        locations["report.html"],
    )
    return result
