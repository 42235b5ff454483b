"""Validation of the report's input frames with great-expectations, before any computing.

A report number is only as good as its input. :func:`validate_inputs` checks the three
frames :mod:`reports.compute` reads (state intervals, maintenance windows, servers) with
great-expectations suites built in code here, and raises :class:`ReportInputError` naming
every failed expectation and the offending rows. It never repairs data: a report stops
with the reason rather than print a silently wrong number.

Timestamps are checked as int64 nanoseconds since the epoch (derived columns ``*_ns``): GX
compares numbers exactly, whatever the frame's datetime unit or zone. The overlap check
needs each row's predecessor, so the frame also gets ``prev_end_ns`` (the end of the
previous row of the same server, in start order) and the suite expects
``start_ns >= prev_end_ns``.

GX runs in the process's ephemeral context of :mod:`core.gx` (created once,
in memory, no files, no analytics), under its lock. great-expectations is imported lazily:
importing this module is cheap, and :class:`ReportInputError` is importable without GX.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.errors import ReportInputError

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

__all__ = [
    "INTERVAL_STATES",
    "ReportInputError",
    "validate_frame",
    "validate_inputs",
]

INTERVAL_STATES: tuple[str, ...] = ("up", "down", "unknown")
_SHOWN_ROWS = 10


def _ns(series: pd.Series, what: str) -> np.ndarray:
    """Aware timestamps as int64 ns; a naive or non-datetime column is an error here."""
    if len(series) == 0:
        return np.empty(0, dtype=np.int64)
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        raise ReportInputError(
            "timestamps_are_aware",
            f"{what} must hold timezone-aware timestamps, got dtype {series.dtype}",
        )
    values = series.to_numpy(dtype="datetime64[ns]").view(np.int64).astype("float64")
    # NaT becomes NaN so that GX's not-null expectation sees it.
    values[series.isna().to_numpy()] = np.nan
    return values


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportInputError(
            "columns_present", f"{what} lacks columns: {', '.join(missing)}", rows=missing
        )


def _describe(frame: pd.DataFrame, index: int, columns: Sequence[str]) -> str:
    row = frame.iloc[index]
    cells = ", ".join(f"{c}={row[c]!s}" for c in columns if c in frame.columns)
    return f"row {index}: {cells}"


def validate_frame(
    frame: pd.DataFrame, checks: Sequence[tuple[str, Expectation]], what: str, show: Sequence[str]
) -> list[str]:
    """Validate ``frame`` with named expectations; return one problem line per failure.

    Args:
        frame: the frame (its index is reset: a reported row is a position).
        checks: ``(name, expectation)`` pairs.
        what: the frame's name in messages (``intervals``).
        show: columns shown for an offending row.

    Returns:
        ``"<what>: <name>: <n> row(s): row 3: server=web1, ..."`` lines; empty when valid.
    """
    import great_expectations as gx

    from core.gx import run_suite

    if len(frame) == 0 or not checks:
        return []
    data = frame.reset_index(drop=True)
    for name, expectation in checks:
        expectation.meta = {"name": name}
    # Built with its expectations: add_expectation would look for a saved suite in GX's
    # current context's store. This suite belongs to no context and is never saved.
    suite = gx.ExpectationSuite(
        name=f"caretaker-report-{what}", expectations=[e for _, e in checks]
    )
    result = run_suite(data, suite)
    problems: list[str] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        name = str((config.meta or {}).get("name", config.type)) if config else "unknown"
        indices = [int(i) for i in (item.result or {}).get("unexpected_index_list") or []]
        raised = item.exception_info or {}
        error = ""
        if isinstance(raised, dict):
            found = [raised] if "raised_exception" in raised else list(raised.values())
            for entry in found:
                if isinstance(entry, dict) and entry.get("raised_exception"):
                    error = str(entry.get("exception_message") or "GX raised an exception")
        shown = "; ".join(_describe(data, i, show) for i in indices[:_SHOWN_ROWS])
        more = f" (and {len(indices) - _SHOWN_ROWS} more)" if len(indices) > _SHOWN_ROWS else ""
        detail = (
            f"could not be evaluated: {error}"
            if error
            else f"{len(indices)} row(s): {shown}{more}"
            if indices
            else "failed"
        )
        problems.append(f"{what}: {name}: {detail}")
    return problems


def _interval_checks(
    frame: pd.DataFrame,
    known: Sequence[str],
    start: datetime,
    end: datetime,
    tolerance: timedelta,
) -> tuple[pd.DataFrame, list[tuple[str, Expectation]]]:
    import great_expectations.expectations as gxe

    data = pd.DataFrame(
        {
            "server": frame["server"].astype("object").to_numpy(),
            "state": frame["state"].astype("object").to_numpy(),
            "start": frame["start"].to_numpy(),
            "end": frame["end"].to_numpy(),
            "start_ns": _ns(frame["start"], "intervals.start"),
            "end_ns": _ns(frame["end"], "intervals.end"),
            "checks": pd.to_numeric(frame["checks"]).to_numpy(),
            "failures": pd.to_numeric(frame["failures"]).to_numpy(),
        }
    )
    order = data.sort_values(["server", "start_ns"], kind="stable").index
    ordered = data.loc[order]
    prev_end = ordered.groupby("server", sort=False)["end_ns"].shift(1)
    data["prev_end_ns"] = prev_end.reindex(data.index)
    lo = float(pd.Timestamp(start).value - pd.Timedelta(tolerance).value)
    hi = float(pd.Timestamp(end).value + pd.Timedelta(tolerance).value)
    checks: list[tuple[str, Expectation]] = [
        ("interval_server_not_null", gxe.ExpectColumnValuesToNotBeNull(column="server")),
        ("interval_start_not_null", gxe.ExpectColumnValuesToNotBeNull(column="start_ns")),
        ("interval_end_not_null", gxe.ExpectColumnValuesToNotBeNull(column="end_ns")),
        (
            "interval_state_allowed",
            gxe.ExpectColumnValuesToBeInSet(column="state", value_set=list(INTERVAL_STATES)),
        ),
        (
            "interval_server_known",
            gxe.ExpectColumnValuesToBeInSet(column="server", value_set=list(known)),
        ),
        (
            "interval_start_before_end",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="end_ns", column_B="start_ns", or_equal=False
            ),
        ),
        (
            "interval_no_overlap",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="start_ns",
                column_B="prev_end_ns",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
        ),
        (
            "interval_ends_after_period_start",
            gxe.ExpectColumnValuesToBeBetween(column="end_ns", min_value=lo),
        ),
        (
            "interval_starts_before_period_end",
            gxe.ExpectColumnValuesToBeBetween(column="start_ns", max_value=hi),
        ),
        (
            "interval_checks_not_negative",
            gxe.ExpectColumnValuesToBeBetween(column="checks", min_value=0),
        ),
        (
            "interval_failures_within_checks",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="checks", column_B="failures", or_equal=True
            ),
        ),
        (
            "interval_failures_not_negative",
            gxe.ExpectColumnValuesToBeBetween(column="failures", min_value=0),
        ),
    ]
    return data, checks


def _window_checks(
    frame: pd.DataFrame, known: Sequence[str]
) -> tuple[pd.DataFrame, list[tuple[str, Expectation]]]:
    import great_expectations.expectations as gxe

    servers = (
        frame["server"].astype("object").to_numpy()
        if "server" in frame.columns
        else np.full(len(frame), None, dtype=object)
    )
    data = pd.DataFrame(
        {
            "server": servers,
            "start": frame["start"].to_numpy(),
            "end": frame["end"].to_numpy(),
            "start_ns": _ns(frame["start"], "windows.start"),
            "end_ns": _ns(frame["end"], "windows.end"),
        }
    )
    data["server"] = data["server"].where(pd.notna(data["server"]), None)
    checks: list[tuple[str, Expectation]] = [
        ("window_start_not_null", gxe.ExpectColumnValuesToNotBeNull(column="start_ns")),
        ("window_end_not_null", gxe.ExpectColumnValuesToNotBeNull(column="end_ns")),
        (
            "window_start_before_end",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="end_ns", column_B="start_ns", or_equal=False
            ),
        ),
        # Null means "every server of the client": in-set expectations skip nulls.
        (
            "window_server_known",
            gxe.ExpectColumnValuesToBeInSet(column="server", value_set=list(known)),
        ),
    ]
    return data, checks


def _server_checks(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, Expectation]]]:
    import great_expectations.expectations as gxe

    data = pd.DataFrame({"server": frame["server"].astype("object").to_numpy()})
    checks: list[tuple[str, Expectation]] = [
        ("server_not_null", gxe.ExpectColumnValuesToNotBeNull(column="server")),
        ("server_unique", gxe.ExpectColumnValuesToBeUnique(column="server")),
    ]
    if "sla_target_pct" in frame.columns:
        data["sla_target_pct"] = pd.to_numeric(frame["sla_target_pct"]).to_numpy(dtype="float64")
        checks.append(
            (
                "server_sla_target_in_range",
                gxe.ExpectColumnValuesToBeBetween(
                    column="sla_target_pct", min_value=0, max_value=100
                ),
            )
        )
    if "added_at" in frame.columns:
        _ns(frame["added_at"].dropna(), "servers.added_at")
    return data, checks


def validate_inputs(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    tolerance: timedelta = timedelta(0),
) -> None:
    """Validate the report's input frames; raise if anything is wrong.

    Expectations (names as they appear in the error):

    - intervals: ``interval_server_not_null``, ``interval_start_not_null``,
      ``interval_end_not_null``, ``interval_state_allowed`` (up, down, unknown),
      ``interval_server_known`` (a server of ``servers``), ``interval_start_before_end``,
      ``interval_no_overlap`` (per server, in start order), ``interval_ends_after_period_start``
      and ``interval_starts_before_period_end`` (each interval overlaps the period widened
      by ``tolerance``), ``interval_checks_not_negative``, ``interval_failures_not_negative``,
      ``interval_failures_within_checks``;
    - windows: ``window_start_not_null``, ``window_end_not_null``,
      ``window_start_before_end``, ``window_server_known`` (or null: the whole client);
    - servers: ``server_not_null``, ``server_unique``, ``server_sla_target_in_range``
      (0 to 100, or null).

    Before GX runs, missing columns (``columns_present``) and naive timestamps
    (``timestamps_are_aware``) are refused directly.

    Raises:
        ReportInputError: with every failed expectation and up to 10 offending rows each.
    """
    _require(
        intervals,
        ("server", "state", "start", "end", "checks", "failures"),
        "intervals",
    )
    _require(servers, ("server",), "servers")
    if start >= end:
        raise ReportInputError("period_ordered", f"the period {start} .. {end} is empty")
    known = [str(s) for s in servers["server"].dropna()]
    problems: list[str] = []
    server_data, server_checks = _server_checks(servers)
    problems += validate_frame(server_data, server_checks, "servers", ("server",))
    data, checks = _interval_checks(intervals, known, start, end, tolerance)
    problems += validate_frame(
        data, checks, "intervals", ("server", "state", "start", "end", "checks", "failures")
    )
    if windows is not None and len(windows):
        _require(windows, ("start", "end"), "windows")
        window_data, window_checks = _window_checks(windows, known)
        problems += validate_frame(
            window_data, window_checks, "windows", ("server", "start", "end")
        )
    if problems:
        first = problems[0].split(": ")[1]
        rows = [p.split(": ", 2)[-1] for p in problems]
        raise ReportInputError(first, "invalid report input", rows=rows, problems=problems)
