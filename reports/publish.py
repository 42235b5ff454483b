"""The report's last steps: delivery to its storage block, and its Prefect artifacts.

:func:`store_report` writes the files to the client's storage block
(:mod:`blocks.report_storage`: S3, a folder) and makes a link to each;
:func:`publish_report_link` publishes report.html's link as a link artifact;
:func:`publish_report_artifacts` the summary (markdown) and the uptime table. What they
publish is built by pure functions tested without Prefect: :func:`summary_markdown` (the
headline for the Prefect UI), :func:`headline_lines` (the notice's) and
:func:`uptime_rows` (uptime.csv's rows as JSON-friendly dicts). Artifact keys follow
:func:`core.artifacts.artifact_key`, as the maintenance records do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from blocks.report_storage import StoredFile, describe_storage, load_report_storage, store_files
from core.artifacts import artifact_key
from reports.compute import ReportTables
from reports.periods import ReportPeriod
from reports.uptime import TOTAL_ROW, sla_words

__all__ = [
    "headline_lines",
    "publish_report_artifacts",
    "publish_report_link",
    "store_report",
    "summary_markdown",
    "uptime_rows",
]


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


def _count(frame: pd.DataFrame, column: str) -> int:
    """Rows whose count in ``column`` is above zero (unknown is not)."""
    return int((pd.to_numeric(frame[column]).fillna(0) > 0).sum()) if len(frame) else 0


def summary_markdown(
    client_name: str,
    period: ReportPeriod,
    tables: ReportTables,
    files: dict[str, str],
    notes: Sequence[str] = (),
) -> str:
    """The report's headline as markdown for the Prefect UI (pure)."""
    total = tables.total.iloc[0]
    compliance = tables.compliance
    pending = _count(compliance, "pending_security")
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
        f"| SLA met | {sla_words(total['sla_met'], total['coverage_pct'])} |",
        f"| incidents | {int(total['incidents'])} |",
        f"| maintenance runs | {len(tables.activity)} |",
        f"| servers with security updates pending at the end | {pending} of {len(compliance)} |",
        f"| servers with audit findings open | {_count(compliance, 'findings_open')} |",
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
    client: str,
    client_name: str,
    period: ReportPeriod,
    tables: ReportTables,
    files: dict[str, str],
    notes: Sequence[str] = (),
) -> list[str]:
    """Publish the summary (markdown) and the uptime table as Prefect artifacts.

    Args:
        client: the client's slug (in the keys).
        client_name: the client's name (in the summary's title).
        period: the report's period.
        tables: the computed tables.
        files: the written files by name (listed in the summary).
        notes: caveats shown in the summary.

    Returns:
        The artifact keys: ``report-<client>-<period>`` and ``uptime-<client>-<period>``.
    """
    label = period.label
    report_key = artifact_key("report", client, label)
    uptime_key = artifact_key("uptime", client, label)
    create_markdown_artifact(
        key=report_key,
        markdown=summary_markdown(client_name, period, tables, files, notes),
        description=f"Report {client} {label}",
    )
    create_table_artifact(
        key=uptime_key,
        table=uptime_rows(tables),
        description=f"Uptime per server, {client} {label}",
    )
    return [report_key, uptime_key]


def headline_lines(tables: ReportTables) -> list[str]:
    """The client's headline for the report notice (pure): uptime, SLA, incidents, runs."""
    total = tables.total.iloc[0]
    return [
        f"Uptime ({TOTAL_ROW}): {_pct(total['uptime_pct'])};"
        f" SLA: {sla_words(total['sla_met'], total['coverage_pct'])}.",
        f"Incidents: {int(total['incidents'])}; maintenance runs: {len(tables.activity)}.",
    ]


@task(name="store-report", cache_policy=NO_CACHE)
def store_report(
    storage: str | None,
    client: str,
    label: str,
    files: Mapping[str, str],
    expiry: timedelta,
) -> dict[str, StoredFile]:
    """Deliver the report's files to the client's storage block and link each.

    Args:
        storage: the inventory's ``reports.storage`` (a block name); None: ``<data>/reports``.
        client: the client's slug.
        label: the period's label; the files go to ``<client>/<label>/<name>``.
        files: the local files by name.
        expiry: how long an S3 link stays valid.

    Returns:
        Each file's location and link, by name.

    Raises:
        ConfigError: the storage block does not exist.
        ReportNotStored: a file could not be written or linked.
    """
    block = load_report_storage(storage)
    stored = store_files(block, f"{client}/{label}", {n: Path(p) for n, p in files.items()}, expiry)
    # The locations only: a presigned link is for the contact and the link artifact.
    get_run_logger().info(
        "%s %s: stored in %s: %s",
        client,
        label,
        describe_storage(block),
        ", ".join(s.location for s in stored.values()),
    )
    return stored


@task(name="publish-report-link", cache_policy=NO_CACHE)
def publish_report_link(client: str, label: str, report: StoredFile) -> str:
    """Publish report.html's link as a Prefect link artifact ``report-link-<client>-<period>``.

    Returns:
        The artifact's key.
    """
    key = artifact_key("report-link", client, label)
    expires = (
        f"; the link works until {report.expires:%Y-%m-%d %H:%M} UTC" if report.expires else ""
    )
    create_link_artifact(
        key=key,
        link=report.link,
        link_text=f"{client} {label}: {report.name}",
        description=f"Report {client} {label}, stored at {report.location}{expires}",
    )
    return key
