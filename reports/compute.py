"""The report computations: uptime, incidents, daily bars and activity, as pure functions.

Frames in, frames out (STYLE item 10). Nothing here reads the store, calls Prefect or writes
a file; the ``maintenance-report`` flow loads the frames, validates them
(:mod:`reports.validate`), calls these functions and hands the tables to
:mod:`reports.render`. Every number and rule is explained in ``docs/reports.md``.

Inputs (timestamps are timezone-aware; any zone, they are compared as instants):

``intervals``
    The store's ``check_intervals``: ``server``, ``state`` (``up``, ``down``, ``unknown``),
    ``start``, ``end``, ``checks``, ``failures``, ``first_error``. A ``down`` row is a run of
    consecutive failed checks, dated from its first failure. Rows of one server never overlap.
``windows``
    Planned maintenance: ``server`` (None/NA: every server of the client), ``start``, ``end``.
    Both declared windows and recorded maintenance runs go here.
``servers``
    ``server``, optionally ``added_at`` (observed only from then) and ``sla_target_pct``.

The pipeline, shared by every table (:func:`compute_report` runs it once):

1. :func:`confirm_outages`: runs of fewer than ``confirm_after`` failed checks become ``up``
   (blips); confirmed runs get an ``outage_id``. This runs *before* clipping, so a run that
   began before the period is judged on all its failures.
2. Each server's rows are clipped to its *scope*: the period, from ``added_at`` if later
   (:func:`clip_to_period` for the period part).
3. Gaps in the scope without any row become ``unknown`` (no data).
4. Time inside a maintenance window is *planned*; outages are split at window edges
   (:func:`split_planned`).

Times are handled as int64 nanoseconds since the epoch inside, for speed and exactness.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from history.change import ChangeRecord
from history.frames import ns_array as _ns_array
from history.frames import require_columns as _require
from history.frames import utc_index as _utc
from reports.validate import ReportInputError

__all__ = [
    "ACTIVITY_COLUMNS",
    "DAILY_COLUMNS",
    "INCIDENT_COLUMNS",
    "INTERVAL_COLUMNS",
    "SLA_COLUMNS",
    "STATES",
    "UPTIME_COLUMNS",
    "ReportTables",
    "activity_table",
    "client_uptime",
    "clip_to_period",
    "compute_report",
    "confirm_outages",
    "daily_uptime",
    "incidents_table",
    "local_midnight",
    "period_bounds",
    "sla_table",
    "split_planned",
    "uptime_table",
]

STATES: tuple[str, ...] = ("up", "down", "unknown")

#: uptime.csv, exactly as DESIGN.md §3 fixes it.
UPTIME_COLUMNS: tuple[str, ...] = (
    "server",
    "observed_s",
    "maintenance_s",
    "unplanned_down_s",
    "unknown_s",
    "uptime_pct",
    "incidents",
    "mttr_s",
    "longest_outage_s",
    "sla_target_pct",
    "sla_met",
)
#: incidents.csv: one row per piece of a confirmed outage (split at window edges).
INCIDENT_COLUMNS: tuple[str, ...] = (
    "start",
    "end",
    "duration_s",
    "server",
    "planned",
    "first_error",
    "outage_id",
    "began_before_period",
    "ongoing_at_end",
)
#: What did not fit uptime.csv: MTBF, the SLA budget and data coverage.
SLA_COLUMNS: tuple[str, ...] = (
    "server",
    "scope_s",
    "coverage_pct",
    "mtbf_s",
    "allowed_down_s",
    "budget_used_pct",
)
DAILY_COLUMNS: tuple[str, ...] = (
    "server",
    "day",
    "up_s",
    "unplanned_down_s",
    "maintenance_s",
    "unknown_s",
    "uptime_pct",
)
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

TOTAL_ROW = "(all servers)"
_NS = 1_000_000_000
#: The interval frame every function here reads (the store's ``check_intervals`` columns).
INTERVAL_COLUMNS = ("server", "state", "start", "end", "checks", "failures", "first_error")


# ------------------------------------------------------------------------------ periods


def local_midnight(day: date, tz: tzinfo) -> pd.Timestamp:
    """The first instant of local ``day`` in ``tz``, aware.

    A zone that skips midnight (DST at 00:00) starts the day at the first existing instant;
    one that repeats it takes the first occurrence.
    """
    return pd.Timestamp(day).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_QUARTER = re.compile(r"^(\d{4})-[Qq]([1-4])$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\s*(?:\.\.|/)\s*(\d{4}-\d{2}-\d{2})$")


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_bounds(period: str | tuple[date, date], tz: tzinfo) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Turn a period into ``[start, end)`` in the client's timezone, DST-correct.

    Args:
        period: ``"2026-10"`` (a month), ``"2026-Q3"`` (a quarter), ``"2026-10-01..2026-10-15"``
            (explicit dates, both days included; ``/`` works too) or a ``(first, last)``
            tuple of dates, both included.
        tz: the client's timezone (``ClientInventory.tz``).

    Returns:
        Aware timestamps in ``tz``: local midnight of the first day and local midnight after
        the last day. The period's length follows the calendar: October in Europe/London is
        31 days and 1 hour.

    Raises:
        ValueError: the period is not one of those forms, or ends before it starts.
    """
    if isinstance(period, tuple):
        first, last = period
    elif match := _MONTH.match(period.strip()):
        first = date(int(match[1]), int(match[2]), 1)
        last = _add_months(first, 1) - timedelta(days=1)
    elif match := _QUARTER.match(period.strip()):
        first = date(int(match[1]), 3 * int(match[2]) - 2, 1)
        last = _add_months(first, 3) - timedelta(days=1)
    elif match := _RANGE.match(period.strip()):
        first, last = date.fromisoformat(match[1]), date.fromisoformat(match[2])
    else:
        raise ValueError(f"period {period!r}: expected YYYY-MM, YYYY-Qn or YYYY-MM-DD..YYYY-MM-DD")
    if last < first:
        raise ValueError(f"period {period!r} ends before it starts")
    return local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz)


def _local_days(start: datetime, end: datetime, tz: tzinfo) -> tuple[list[date], npt.NDArray]:
    """Local days touching ``[start, end)`` and their boundaries (ns, one more than days)."""
    first = pd.Timestamp(start).tz_convert(tz).date()
    last = (pd.Timestamp(end) - pd.Timedelta(1, "ns")).tz_convert(tz).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    bounds = [local_midnight(d, tz).value for d in days]
    bounds.append(local_midnight(last + timedelta(days=1), tz).value)
    return days, np.asarray(bounds, dtype=np.int64)


# ------------------------------------------------------------------------------ helpers


def _ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"period bound {value!r} must be timezone-aware")
    return int(pd.Timestamp(value).value)


# ------------------------------------------------------------------------ confirmation


def confirm_outages(intervals: pd.DataFrame, confirm_after: int = 2) -> pd.DataFrame:
    """Apply the confirmation rule to state intervals.

    Touching ``down`` rows of one server (one ends where the next starts) are one run of
    consecutive failed checks and are merged. A run with at least ``confirm_after`` failures
    is a confirmed outage, dated from its first failure (its start) and numbered with an
    ``outage_id``; a shorter run is a *blip* and becomes ``up`` (the server answered on the
    checks around it). ``unknown`` rows are left alone.

    Args:
        intervals: state intervals (columns of the store's ``check_intervals``).
        confirm_after: failures needed to confirm an outage (the inventory's setting).

    Returns:
        A new frame sorted by server and start with the input columns, ``state`` rewritten,
        plus ``outage_id`` (Int64, NA unless a confirmed outage).
    """
    if confirm_after < 1:
        raise ValueError("confirm_after must be at least 1")
    _require(intervals, ("server", "state", "start", "end", "failures"), "intervals")
    frame = intervals.sort_values(["server", "start"], kind="stable").reset_index(drop=True)
    if "first_error" not in frame.columns:
        frame["first_error"] = None
    if "checks" not in frame.columns:
        frame["checks"] = frame["failures"]
    server = frame["server"].to_numpy()
    down = (frame["state"] == "down").to_numpy()
    start = _ns_array(frame["start"], "intervals.start")
    end = _ns_array(frame["end"], "intervals.end")
    same_server = np.r_[False, server[1:] == server[:-1]]
    touching = np.r_[False, start[1:] == end[:-1]]
    continues = down & np.r_[False, down[:-1]] & same_server & touching
    run = np.cumsum(~continues)
    if continues.any():
        grouped = frame.groupby(run, sort=False)
        merged = grouped.first()
        merged["end"] = grouped["end"].last()
        merged["checks"] = grouped["checks"].sum()
        merged["failures"] = grouped["failures"].sum()
        merged["first_error"] = grouped["first_error"].first()  # first non-null
        frame = merged.reset_index(drop=True)
        down = (frame["state"] == "down").to_numpy()
    failures = frame["failures"].fillna(0).to_numpy()
    confirmed = down & (failures >= confirm_after)
    frame.loc[down & ~confirmed, "state"] = "up"
    outage = pd.array(np.cumsum(confirmed), dtype="Int64")
    outage[~confirmed] = pd.NA
    frame["outage_id"] = outage
    return frame


# ----------------------------------------------------------------------------- clipping


def clip_to_period(intervals: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Keep the part of each interval inside ``[start, end)``.

    Rows entirely outside are dropped; the others get ``start``/``end`` clipped and keep
    their original bounds in ``orig_start``/``orig_end`` (to tell an outage that began before
    the period or was still going at its end).
    """
    _require(intervals, ("start", "end"), "intervals")
    lo, hi = _ns(start), _ns(end)
    s = _ns_array(intervals["start"], "intervals.start")
    e = _ns_array(intervals["end"], "intervals.end")
    keep = (e > lo) & (s < hi)
    out = intervals.loc[keep].copy()
    out["orig_start"] = _utc(s[keep])
    out["orig_end"] = _utc(e[keep])
    out["start"] = _utc(np.clip(s[keep], lo, hi))
    out["end"] = _utc(np.clip(e[keep], lo, hi))
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------ windows


@dataclass(frozen=True)
class _Spans:
    """Every server's maintenance windows, merged, as flat arrays (no dict, no loop).

    ``code`` is the server's position in ``names``; rows are sorted by ``code`` then
    ``a``, and the spans ``[a, b)`` of one server are disjoint (touching windows merged).
    """

    names: pd.Index
    code: npt.NDArray[np.int64]
    a: npt.NDArray[np.int64]
    b: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.code)


def _merged_windows(windows: pd.DataFrame | None, names: Sequence[str]) -> _Spans:
    """Per server, its windows (own plus client-wide) merged into disjoint sorted spans.

    Windows of servers not in ``names`` are ignored.
    """
    index = pd.Index([str(n) for n in names], dtype=object)
    empty = np.empty(0, np.int64)
    if windows is None or len(windows) == 0 or len(index) == 0:
        return _Spans(index, empty, empty, empty)
    _require(windows, ("start", "end"), "windows")
    ws = _ns_array(windows["start"], "windows.start")
    we = _ns_array(windows["end"], "windows.end")
    if "server" in windows.columns:
        who = windows["server"].to_numpy(dtype=object)
        everyone = pd.isna(who)
    else:
        who = np.full(len(windows), None, dtype=object)
        everyone = np.ones(len(windows), dtype=bool)
    own = ~everyone
    own_code = index.get_indexer(pd.Index(who[own]).astype(str)) if own.any() else empty
    known = own_code >= 0
    n_all = int(everyone.sum())
    code = np.r_[np.repeat(np.arange(len(index), dtype=np.int64), n_all), own_code[known]]
    a = np.r_[np.tile(ws[everyone], len(index)), ws[own][known]]
    b = np.r_[np.tile(we[everyone], len(index)), we[own][known]]
    if len(code) == 0:
        return _Spans(index, empty, empty, empty)
    order = np.lexsort((a, code))
    code, a, b = code[order], a[order], b[order]
    # Merge: a span starts where its start lies after every earlier end of its server.
    reach = pd.Series(b).groupby(code).cummax().to_numpy()
    first = np.r_[True, code[1:] != code[:-1]]
    new = first | np.r_[True, a[1:] > reach[:-1]]
    idx = np.flatnonzero(new)
    return _Spans(index, code[idx], a[idx], np.maximum.reduceat(b, idx))


def _pair_search(
    keys_code: npt.NDArray[np.int64],
    keys_val: npt.NDArray[np.int64],
    code: npt.NDArray[np.int64],
    val: npt.NDArray[np.int64],
    side: str,
) -> npt.NDArray[np.int64]:
    """``searchsorted`` on (code, value) pairs, ``keys`` sorted by code then value.

    Values are replaced by their rank among the keys' distinct values, so the pair packs
    into one int64 key without overflow (times in ns times server codes would not fit).
    A query value ranks where it would be inserted among them (right: after equal keys,
    minus one, so an equal key counts as "not after"; left: before equal keys), which
    keeps each comparison with a key as it was. Only the few keys are sorted; the many
    queries are searched, not sorted.
    """
    distinct = np.unique(keys_val)
    width = len(distinct) + 1
    key = keys_code * width + np.searchsorted(distinct, keys_val)
    if side == "right":
        rank = np.searchsorted(distinct, val, side="right") - 1
    else:
        rank = np.searchsorted(distinct, val, side="left")
    return np.searchsorted(key, code * width + rank, side=side).astype(np.int64)  # type: ignore[call-overload]


def _window_time_before(
    code: npt.NDArray[np.int64], t: npt.NDArray[np.int64], spans: _Spans
) -> npt.NDArray[np.int64]:
    """Window time of server ``code`` in ``(-inf, t)``, plus a per-server constant.

    The constant (the windows of earlier servers) cancels in a difference of two calls
    for the same server, which is how :func:`_overlap` uses it.
    """
    cum = np.r_[0, np.cumsum(spans.b - spans.a)]
    k = _pair_search(spans.code, spans.a, code, t, "right") - 1
    kk = np.clip(k, 0, None)
    valid = (k >= 0) & (spans.code[kk] == code)
    inside = np.minimum(t - spans.a[kk], spans.b[kk] - spans.a[kk])
    base = cum[np.searchsorted(spans.code, code, side="left")]
    return np.where(valid, cum[kk] + inside, base)


def _overlap(
    code: npt.NDArray[np.int64],
    s: npt.NDArray[np.int64],
    e: npt.NDArray[np.int64],
    spans: _Spans,
) -> npt.NDArray[np.int64]:
    """Window time inside each ``[s, e)`` of server ``code`` (all rows at once).

    Only rows that meet a window of *some* server are searched per server: windows are
    short and few, so most rows are ruled out by one search among the merged union of
    all windows (a small array).
    """
    out = np.zeros(len(s), dtype=np.int64)
    if len(spans) == 0 or len(s) == 0:
        return out
    order = np.argsort(spans.a, kind="stable")
    a, b = spans.a[order], spans.b[order]
    reach = np.maximum.accumulate(b)
    heads = np.flatnonzero(np.r_[True, a[1:] > reach[:-1]])
    union_a, union_b = a[heads], np.maximum.reduceat(b, heads)
    k = np.searchsorted(union_b, s, side="right")  # the first union span ending after s
    near = k < len(union_a)
    near[near] = union_a[k[near]] < e[near]
    rows = np.flatnonzero(near)
    if len(rows):
        c = code[rows]
        both = _window_time_before(np.r_[c, c], np.r_[e[rows], s[rows]], spans)
        out[rows] = both[: len(rows)] - both[len(rows) :]
    return out


def _split(
    code: npt.NDArray[np.int64], s: npt.NDArray[np.int64], e: npt.NDArray[np.int64], spans: _Spans
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]
]:
    """:func:`split_planned` on arrays: each piece's row, start, end and whether it is
    planned, in row order then time order (``code`` indexes ``spans.names``)."""
    n = len(s)
    if len(spans):
        # Windows overlapping [s, e): from the first ending after s to the last starting
        # before e (one server's spans are disjoint, so both their starts and ends sort).
        lo = _pair_search(spans.code, spans.b, code, s, "right")
        hi = _pair_search(spans.code, spans.a, code, e, "left")
        n_win = np.maximum(hi - lo, 0)
    else:
        lo = np.zeros(n, dtype=np.int64)
        n_win = np.zeros(n, dtype=np.int64)
    # Each outage gives 2 * n_win + 1 candidate pieces, alternating: gap, window, gap, ...
    n_piece = 2 * n_win + 1
    row = np.repeat(np.arange(n), n_piece)
    k = np.arange(len(row)) - np.repeat(np.cumsum(n_piece) - n_piece, n_piece)
    is_window = (k % 2) == 1
    w = lo[row] + k // 2  # the window of a window piece, or the one after a gap piece
    rs, re_ = s[row], e[row]
    last = len(spans) - 1
    wa = spans.a[np.clip(w, 0, max(last, 0))] if len(spans) else np.zeros(len(row), np.int64)
    wb_prev = (
        spans.b[np.clip(w - 1, 0, max(last, 0))] if len(spans) else np.zeros(len(row), np.int64)
    )
    wb = spans.b[np.clip(w, 0, max(last, 0))] if len(spans) else np.zeros(len(row), np.int64)
    gap_first = (k // 2) == 0
    gap_last = (k // 2) == n_win[row]
    piece_s = np.where(is_window, np.maximum(wa, rs), np.where(gap_first, rs, wb_prev))
    piece_e = np.where(is_window, np.minimum(wb, re_), np.where(gap_last, re_, wa))
    # A planned piece is always kept (as the loop did); an empty unplanned gap is not.
    keep = is_window | (piece_e > piece_s)
    row, piece_s, piece_e, is_window = row[keep], piece_s[keep], piece_e[keep], is_window[keep]
    return row, piece_s, piece_e, is_window.astype(bool)


def split_planned(outages: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Split outages at maintenance-window edges into planned and unplanned pieces.

    The rule: a piece of an outage inside a window (the server's own or a client-wide one)
    is planned; a piece outside is unplanned. An outage that starts before a window and
    runs into it gives an unplanned piece up to the window's start and a planned piece
    after it; one that outlasts a window gives a planned piece and an unplanned one from
    the window's end. Overlapping windows are merged first.

    Args:
        outages: rows with ``server``, ``start``, ``end`` (other columns are carried along).
        windows: ``server`` (NA for all servers), ``start``, ``end``.

    Returns:
        One row per piece, in time order per outage, with ``planned`` (bool) and
        ``duration_s`` added; ``start``/``end`` are the piece's bounds.
    """
    _require(outages, ("server", "start", "end"), "outages")
    server = outages["server"].astype(str).to_numpy(dtype=object)
    codes, uniques = pd.factorize(server)
    spans = _merged_windows(windows, [str(n) for n in uniques])
    s = _ns_array(outages["start"], "outages.start")
    e = _ns_array(outages["end"], "outages.end")
    row, piece_s, piece_e, is_window = _split(codes.astype(np.int64), s, e, spans)
    out = outages.take(row).reset_index(drop=True)
    out["start"] = _utc(piece_s)
    out["end"] = _utc(piece_e)
    out["planned"] = is_window.astype(bool)
    out["duration_s"] = (piece_e - piece_s) / _NS
    return out


# ----------------------------------------------------------------------------- timeline


def _scopes(
    servers: pd.DataFrame, start: datetime, end: datetime
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each server's observed scope: the period, from ``added_at`` when that is later."""
    _require(servers, ("server",), "servers")
    if servers["server"].duplicated().any():
        dup = servers.loc[servers["server"].duplicated(), "server"].tolist()
        raise ReportInputError("servers_unique", f"servers listed twice: {dup}")
    names = servers["server"].astype(str).to_numpy(dtype=object)
    lo, hi = _ns(start), _ns(end)
    scope_start = np.full(len(names), lo, dtype=np.int64)
    if "added_at" in servers.columns and servers["added_at"].notna().any():
        added = servers["added_at"]
        if not isinstance(added.dtype, pd.DatetimeTZDtype):
            raise ReportInputError("timestamps_are_aware", "servers.added_at must be aware")
        known = added.notna().to_numpy()
        added_ns = added.to_numpy(dtype="datetime64[ns]").view(np.int64)
        scope_start = np.where(known, np.maximum(lo, added_ns), lo)
    scope_start = np.minimum(scope_start, hi)
    return names, scope_start, np.full(len(names), hi, dtype=np.int64)


_UP, _DOWN, _UNKNOWN = 0, 1, 2


@dataclass(frozen=True)
class _Timeline:
    """Each server's scope cut into disjoint rows covering it exactly (gaps are unknown),
    as arrays sorted by ``pos`` (the server's row in ``servers``) then ``s``.

    ``state`` is ``_UP``, ``_DOWN`` or ``_UNKNOWN``; ``s``, ``e`` the row clipped to the
    server's scope and ``orig_s``, ``orig_e`` before clipping (int64 ns); ``outage_id``
    is -1 unless the row is a confirmed outage; ``first_error`` (object) its first error.
    """

    pos: npt.NDArray[np.int64]
    state: npt.NDArray[np.int8]
    s: npt.NDArray[np.int64]
    e: npt.NDArray[np.int64]
    outage_id: npt.NDArray[np.int64]
    first_error: npt.NDArray[Any]
    orig_s: npt.NDArray[np.int64]
    orig_e: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.pos)


def _confirmed(
    intervals: pd.DataFrame, code: npt.NDArray[np.int64], confirm_after: int
) -> tuple[npt.NDArray[Any], ...]:
    """:func:`confirm_outages` on arrays, for the timeline (no frame, no string per row).

    ``code`` is each row's server as its rank in name order, so sorting by (code, start)
    is the stable sort by (server, start) of :func:`confirm_outages`, and outages are
    numbered in the same order. Returns ``code, state, s, e, outage_id, first_error``
    sorted so, touching down rows merged and unconfirmed runs turned ``_UP``.
    """
    column = intervals["state"]
    state = np.where(
        (column == "down").to_numpy(dtype=bool),
        _DOWN,
        np.where((column == "unknown").to_numpy(dtype=bool), _UNKNOWN, _UP),
    ).astype(np.int8)
    s = _ns_array(intervals["start"], "intervals.start")
    e = _ns_array(intervals["end"], "intervals.end")
    failures = intervals["failures"].fillna(0).to_numpy(dtype=np.float64)
    if "first_error" in intervals.columns:
        first_error = intervals["first_error"].to_numpy(dtype=object)
    else:
        first_error = np.full(len(s), None, dtype=object)
    n = len(s)
    if n > 1 and not bool(
        ((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (s[1:] >= s[:-1]))).all()
    ):
        order = np.lexsort((s, code))  # stable
        code, state, s, e = code[order], state[order], s[order], e[order]
        failures, first_error = failures[order], first_error[order]
    down = state == _DOWN
    continues = np.r_[False, down[1:] & down[:-1] & (code[1:] == code[:-1]) & (s[1:] == e[:-1])]
    if continues.any():
        # A run of touching down rows is one row: the first's start and state, the last's
        # end, the failures summed, the first error that is not missing.
        heads = np.flatnonzero(~continues)
        bounds = np.r_[heads, n]
        found = np.minimum.reduceat(np.where(pd.isna(first_error), n, np.arange(n)), heads)
        first_error = first_error[np.where(found < bounds[1:], found, heads)]
        e = e[bounds[1:] - 1]
        failures = np.add.reduceat(failures, heads)
        code, state, s = code[heads], state[heads], s[heads]
    down = state == _DOWN
    confirmed = down & (failures >= confirm_after)
    state = np.where(down & ~confirmed, _UP, state).astype(np.int8)
    outage_id = np.where(confirmed, np.cumsum(confirmed), -1).astype(np.int64)
    return code, state, s, e, outage_id, first_error


def _server_codes(column: pd.Series) -> tuple[npt.NDArray[np.int64], pd.Index]:
    """Each row's server as its rank in name order, and the names: once, columnar (no
    string per row after this). A categorical column (the store's read) is not turned
    into strings: its codes are renumbered in name order."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(str)
    code, uniques = pd.factorize(column, sort=True)
    names = pd.Index([str(u) for u in uniques], dtype=object)
    rank = np.argsort(np.argsort(names.to_numpy(), kind="stable"), kind="stable")
    if (rank != np.arange(len(rank))).any():
        code, names = rank[code], names[np.argsort(rank)]
    return code.astype(np.int64), names


def _timeline(
    intervals: pd.DataFrame,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    confirm_after: int,
) -> _Timeline:
    """Each server's scope cut into disjoint rows covering it exactly (see :class:`_Timeline`)."""
    _require(intervals, INTERVAL_COLUMNS[:4], "intervals")
    if _ns(start) >= _ns(end):
        raise ValueError("the period must end after it starts")
    names, scope_s, scope_e = _scopes(servers, start, end)
    code, uniques = _server_codes(intervals["server"])
    unknown_servers = sorted(set(uniques.tolist()) - set(names))
    if unknown_servers:
        raise ReportInputError(
            "interval_server_known", f"intervals of servers not in the inventory: {unknown_servers}"
        )
    if "failures" not in intervals.columns:
        raise ReportInputError("columns_present", "intervals lacks columns: failures")
    if confirm_after < 1:
        raise ValueError("confirm_after must be at least 1")
    code, state, s, e, outage, first_error = _confirmed(intervals, code, confirm_after)
    if (e <= s).any():
        raise ReportInputError("interval_start_before_end", "an interval does not end after start")
    same = code[1:] == code[:-1]
    if (same & (s[1:] < e[:-1])).any():
        raise ReportInputError("interval_no_overlap", "intervals of one server overlap")
    # Touching rows of one server in the same state, outside any outage (an up row, a blip
    # turned up, the up row after it), are one row: no sum changes, and every later step
    # has about a quarter of the rows (182 blips a server-year in the benchmark).
    quiet = outage < 0
    joins = np.r_[
        False, same & quiet[1:] & quiet[:-1] & (state[1:] == state[:-1]) & (s[1:] == e[:-1])
    ]
    if joins.any():
        heads = np.flatnonzero(~joins)
        e = e[np.r_[heads[1:], len(s)] - 1]
        code, state, s, outage, first_error = (
            a[heads] for a in (code, state, s, outage, first_error)
        )

    pos = pd.Index(names).get_indexer(uniques).astype(np.int64)[code]
    if len(pos) > 1 and not bool((pos[1:] >= pos[:-1]).all()):
        # Servers listed out of name order: put each server's rows (a block) in list order.
        order = np.argsort(pos, kind="stable")
        pos, state, s, e = pos[order], state[order], s[order], e[order]
        outage, first_error = outage[order], first_error[order]
    lo, hi = scope_s[pos], scope_e[pos]
    keep = (e > lo) & (s < hi)
    state, outage, first_error = state[keep], outage[keep], first_error[keep]
    orig_s, orig_e = s[keep], e[keep]
    pos = pos[keep]
    cs, ce = np.clip(orig_s, lo[keep], hi[keep]), np.clip(orig_e, lo[keep], hi[keep])

    # Gaps: before each row (from the previous row's end, or the scope start) and after the
    # last row of each server (to the scope end); servers without rows are all gap.
    first_of_server = np.r_[True, pos[1:] != pos[:-1]]
    prev_end = np.where(first_of_server, scope_s[pos], np.r_[0, ce[:-1]])
    gap = cs > prev_end
    last_of_server = np.r_[pos[1:] != pos[:-1], True] if len(pos) else np.empty(0, bool)
    tail = last_of_server & (ce < scope_e[pos])
    empty = np.setdiff1d(np.arange(len(names)), pos)
    empty = empty[scope_s[empty] < scope_e[empty]]

    g_pos = np.r_[pos[gap], pos[tail], empty]
    g_s = np.r_[prev_end[gap], ce[tail], scope_s[empty]]
    g_e = np.r_[cs[gap], scope_e[pos[tail]], scope_e[empty]]
    # Rows are in (pos, s) order; each gap goes in before its row, each tail after its
    # server's last row, each empty server before the first row of a later server. With
    # row i at 4i + 2, those are 4i + 1, 4i + 3 and 4j: the gaps (few) are sorted, the
    # rows are not (a merge, not a sort of everything).
    n, rows = len(pos), np.arange(len(pos), dtype=np.int64)
    g_key = np.r_[4 * rows[gap] + 1, 4 * rows[tail] + 3, 4 * np.searchsorted(pos, empty)]
    g_order = np.argsort(g_key, kind="stable")
    g_key = g_key[g_order]
    row_at = rows + np.searchsorted(g_key, 4 * rows + 2)
    gap_at = np.arange(len(g_key)) + np.clip((g_key + 1) // 4, 0, n)

    def merged(row_values: npt.NDArray[Any], gap_values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.empty(n + len(g_key), dtype=row_values.dtype)
        out[row_at] = row_values
        out[gap_at] = gap_values[g_order]
        return out

    n_gap = len(g_key)
    return _Timeline(
        pos=merged(pos, g_pos.astype(np.int64)),
        state=merged(state, np.full(n_gap, _UNKNOWN, dtype=np.int8)),
        s=merged(cs, g_s.astype(np.int64)),
        e=merged(ce, g_e.astype(np.int64)),
        outage_id=merged(outage, np.full(n_gap, -1, dtype=np.int64)),
        first_error=merged(first_error, np.full(n_gap, None, dtype=object)),
        orig_s=merged(orig_s, g_s.astype(np.int64)),
        orig_e=merged(orig_e, g_e.astype(np.int64)),
    )


@dataclass(frozen=True)
class _Parts:
    """What the tables share: the timeline and its window overlaps."""

    timeline: _Timeline
    spans: _Spans
    servers: pd.DataFrame
    start: datetime
    end: datetime

    @property
    def names(self) -> npt.NDArray[Any]:
        """Server names in the order of ``servers`` (``timeline.pos`` indexes them)."""
        return self.servers["server"].astype(str).to_numpy(dtype=object)


def _parts(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    confirm_after: int,
) -> _Parts:
    timeline = _timeline(intervals, servers, start, end, confirm_after)
    names = [str(n) for n in servers["server"]]
    spans = _merged_windows(windows, names)
    return _Parts(timeline, spans, servers, start, end)


_KINDS = ("up_s", "unplanned_down_s", "maintenance_s", "unknown_s")


def _sums_by_kind(
    key: npt.NDArray[np.int64],
    size: int,
    code: npt.NDArray[np.int64],
    state: npt.NDArray[np.int8],
    s: npt.NDArray[np.int64],
    e: npt.NDArray[np.int64],
    spans: _Spans,
) -> npt.NDArray[np.int64]:
    """Nanoseconds of up, unplanned down, maintenance and unknown (:data:`_KINDS`) of the
    rows ``[s, e)`` of server ``code``, summed per ``key`` in ``range(size)``.

    Returns a ``(size, 4)`` int64 array. The sums are exact: ``bincount`` adds float64,
    which holds every integer below 2**53 ns (104 days), and a key here is one server's
    local day (per-server totals add the days up in int64).
    """
    duration = e - s
    planned = _overlap(code, s, e, spans)
    unknown = state == _UNKNOWN
    down = state == _DOWN
    outside = (duration - planned).astype(np.float64)
    out = np.empty((size, 4), dtype=np.int64)
    for k, weights in enumerate(
        (
            np.where(down | unknown, 0.0, outside),
            np.where(down, outside, 0.0),
            np.where(unknown, 0.0, planned.astype(np.float64)),
            np.where(unknown, duration.astype(np.float64), 0.0),
        )
    ):
        out[:, k] = np.bincount(key, weights=weights, minlength=size).astype(np.int64)
    return out


def _pct(up: pd.Series, down: pd.Series) -> pd.Series:
    """Uptime percent: up / (up + unplanned down), NaN when there is no such time."""
    denominator = up + down
    with np.errstate(invalid="ignore", divide="ignore"):
        return (100.0 * (1.0 - down / denominator)).where(denominator > 0)


# ------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Pieces:
    """The confirmed outages in the period, split at window edges, as arrays in the order
    of incidents.csv (start, then server name). ``pos`` indexes ``servers``."""

    pos: npt.NDArray[np.int64]
    s: npt.NDArray[np.int64]
    e: npt.NDArray[np.int64]
    planned: npt.NDArray[np.bool_]
    outage_id: npt.NDArray[np.int64]
    first_error: npt.NDArray[Any]
    began_before_period: npt.NDArray[np.bool_]
    ongoing_at_end: npt.NDArray[np.bool_]


def _pieces(parts: _Parts) -> _Pieces:
    t = parts.timeline
    rows = np.flatnonzero(t.outage_id >= 0)
    row, s, e, planned = _split(t.pos[rows], t.s[rows], t.e[rows], parts.spans)
    rows = rows[row]
    pos = t.pos[rows]
    # By start, then server name (stable: one server's pieces keep their time order).
    rank = np.argsort(np.argsort(parts.names, kind="stable"), kind="stable")
    order = np.lexsort((rank[pos], s))
    rows = rows[order]
    return _Pieces(
        pos=pos[order],
        s=s[order],
        e=e[order],
        planned=planned[order],
        outage_id=t.outage_id[rows],
        first_error=t.first_error[rows],
        began_before_period=t.orig_s[rows] < t.s[rows],
        ongoing_at_end=t.orig_e[rows] > t.e[rows],
    )


def _incidents(parts: _Parts, pieces: _Pieces | None = None) -> pd.DataFrame:
    p = pieces if pieces is not None else _pieces(parts)
    frame = pd.DataFrame(
        {
            "start": _utc(p.s),
            "end": _utc(p.e),
            "duration_s": (p.e - p.s) / _NS,
            "server": pd.Series(parts.names[p.pos], dtype=object),
            "planned": p.planned,
            "first_error": pd.Series(p.first_error, dtype=object),
            "outage_id": p.outage_id,
            "began_before_period": p.began_before_period,
            "ongoing_at_end": p.ongoing_at_end,
        }
    )
    return frame[list(INCIDENT_COLUMNS)]


def _outage_figures(
    pieces: _Pieces, n_servers: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per server: outages with unplanned time, and the longest such time of one outage."""
    unplanned = ~pieces.planned
    ids, outage = np.unique(pieces.outage_id[unplanned], return_inverse=True)
    seconds = (pieces.e - pieces.s)[unplanned] / _NS
    per_outage = np.bincount(outage, weights=seconds, minlength=len(ids))
    owner = np.zeros(len(ids), dtype=np.int64)
    owner[outage] = pieces.pos[unplanned]
    count = np.bincount(owner, minlength=n_servers).astype(np.int64)
    longest = np.zeros(n_servers, dtype=np.float64)
    np.maximum.at(longest, owner, per_outage)
    return count, longest


def _uptime(
    parts: _Parts, pieces: _Pieces, ns: npt.NDArray[np.int64] | None = None
) -> pd.DataFrame:
    """``ns``: the servers' nanoseconds by kind when the caller has them (the daily sums
    added up over days: the same exact integers)."""
    names = parts.servers["server"].astype(str)
    if ns is None:
        ns = _daily_ns(parts, UTC)[1].sum(axis=1)
    sums = pd.DataFrame(ns / _NS, index=names, columns=list(_KINDS))
    count, longest = _outage_figures(pieces, len(names))
    out = pd.DataFrame(index=names)
    out["observed_s"] = sums["up_s"] + sums["unplanned_down_s"] + sums["maintenance_s"]
    out["maintenance_s"] = sums["maintenance_s"]
    out["unplanned_down_s"] = sums["unplanned_down_s"]
    out["unknown_s"] = sums["unknown_s"]
    out["uptime_pct"] = _pct(sums["up_s"], sums["unplanned_down_s"])
    out["incidents"] = count
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mttr_s"] = (out["unplanned_down_s"] / out["incidents"]).where(out["incidents"] > 0)
    out["longest_outage_s"] = longest
    if "sla_target_pct" in parts.servers.columns:
        target = pd.to_numeric(parts.servers["sla_target_pct"]).to_numpy(dtype="float64")
    else:
        target = np.full(len(names), np.nan)
    out["sla_target_pct"] = target
    out["sla_met"] = _sla_met(out["uptime_pct"], out["sla_target_pct"])
    return out.rename_axis("server").reset_index()[list(UPTIME_COLUMNS)]


def _sla_met(uptime_pct: pd.Series, target: pd.Series) -> pd.Series:
    """Met when uptime >= target; NA when either is unknown (never a guess)."""
    met = pd.array(uptime_pct.to_numpy() >= target.to_numpy(), dtype="boolean")
    met[(uptime_pct.isna() | target.isna()).to_numpy()] = pd.NA
    return pd.Series(met, index=uptime_pct.index)


def uptime_table(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    confirm_after: int = 2,
) -> pd.DataFrame:
    """Uptime per server: exactly the columns of uptime.csv (:data:`UPTIME_COLUMNS`).

    ``observed_s`` is time with data (up, down or in maintenance), ``unknown_s`` time
    without; ``uptime_pct = 100 * (1 - unplanned_down_s / (observed_s - maintenance_s))``,
    NaN when that denominator is 0. ``incidents`` counts confirmed outages with unplanned
    time; ``mttr_s`` is unplanned downtime per incident; ``longest_outage_s`` the longest
    unplanned time of one outage. ``sla_met`` is NA when uptime or target is unknown.
    """
    parts = _parts(intervals, windows, servers, start, end, confirm_after)
    return _uptime(parts, _pieces(parts))


def incidents_table(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    confirm_after: int = 2,
) -> pd.DataFrame:
    """Confirmed outages in the period, split at window edges (:data:`INCIDENT_COLUMNS`)."""
    return _incidents(_parts(intervals, windows, servers, start, end, confirm_after))


def _daily_ns(parts: _Parts, tz: tzinfo) -> tuple[list[date], npt.NDArray[np.int64]]:
    """The local days and, per server and day, nanoseconds by kind: an int64 array of
    shape ``(servers, days, 4)``."""
    t = parts.timeline
    days, bounds = _local_days(parts.start, parts.end, tz)
    s, e = t.s, t.e
    # Each row is cut at every local midnight inside it.
    first = np.searchsorted(bounds, s, side="right") - 1
    last = np.searchsorted(bounds, e, side="left") - 1
    count = last - first + 1
    rep = np.repeat(np.arange(len(t)), count)
    offset = np.arange(len(rep)) - np.repeat(np.cumsum(count) - count, count)
    day = first[rep] + offset
    ps = np.maximum(s[rep], bounds[day])
    pe = np.minimum(e[rep], bounds[day + 1])
    pos = t.pos[rep]
    n_servers, n_days = len(parts.servers), len(days)
    sums = _sums_by_kind(
        pos * n_days + day, n_servers * n_days, pos, t.state[rep], ps, pe, parts.spans
    )
    return days, sums.reshape(n_servers, n_days, len(_KINDS))


def _daily(
    parts: _Parts, tz: tzinfo, daily_ns: tuple[list[date], npt.NDArray[np.int64]] | None = None
) -> pd.DataFrame:
    days, ns = daily_ns if daily_ns is not None else _daily_ns(parts, tz)
    names = parts.names
    n_days = len(days)
    sums = pd.DataFrame(ns.reshape(-1, len(_KINDS)) / _NS, columns=list(_KINDS))
    # Taken from a small column of names (no string object per row for pandas to convert).
    server = pd.Series(names).array.take(np.repeat(np.arange(len(names)), n_days))
    sums.insert(0, "server", server)
    sums.insert(1, "day", np.tile(np.asarray(days, dtype=object), len(names)))
    sums["uptime_pct"] = _pct(sums["up_s"], sums["unplanned_down_s"])
    return sums[list(DAILY_COLUMNS)]


def daily_uptime(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    *,
    confirm_after: int = 2,
) -> pd.DataFrame:
    """Per server per local day (in ``tz``): seconds by kind and uptime (:data:`DAILY_COLUMNS`).

    Days follow the client's clock: a DST day is 23 or 25 hours long. A day before a
    server's ``added_at`` has no time at all (all zeros, uptime NaN).
    """
    return _daily(_parts(intervals, windows, servers, start, end, confirm_after), tz)


def client_uptime(uptime: pd.DataFrame, sla_target_pct: float | None = None) -> pd.DataFrame:
    """The client's total row, with the columns of uptime.csv and server ``(all servers)``.

    Seconds and incidents are summed over servers, so uptime is time-weighted; the longest
    outage is the longest of any server. The target is ``sla_target_pct`` if given, else
    the servers' common target; when their targets differ it is NaN and ``sla_met`` NA.
    """
    total: dict[str, Any] = {"server": TOTAL_ROW}
    for column in ("observed_s", "maintenance_s", "unplanned_down_s", "unknown_s"):
        total[column] = float(uptime[column].sum())
    up = total["observed_s"] - total["maintenance_s"] - total["unplanned_down_s"]
    total["uptime_pct"] = float(
        _pct(pd.Series([up]), pd.Series([total["unplanned_down_s"]])).iloc[0]
    )
    total["incidents"] = int(uptime["incidents"].sum())
    total["mttr_s"] = (
        total["unplanned_down_s"] / total["incidents"] if total["incidents"] else np.nan
    )
    total["longest_outage_s"] = float(uptime["longest_outage_s"].max()) if len(uptime) else 0.0
    if sla_target_pct is None:
        targets = uptime["sla_target_pct"].dropna().unique()
        all_set = uptime["sla_target_pct"].notna().all()
        sla_target_pct = float(targets[0]) if len(targets) == 1 and all_set else np.nan
    total["sla_target_pct"] = sla_target_pct
    out = pd.DataFrame([total])
    out["sla_met"] = _sla_met(out["uptime_pct"], out["sla_target_pct"])
    return out[list(UPTIME_COLUMNS)]


def sla_table(uptime: pd.DataFrame) -> pd.DataFrame:
    """MTBF, the SLA budget and data coverage, per row of an uptime table (:data:`SLA_COLUMNS`).

    - ``scope_s`` = observed + unknown: the time the server was in the report;
    - ``coverage_pct`` = observed / scope: how much of it had data;
    - ``mtbf_s`` = up time (observed - maintenance - unplanned) / incidents (NaN without);
    - ``allowed_down_s`` = (1 - target / 100) * (observed - maintenance);
    - ``budget_used_pct`` = unplanned / allowed * 100 (over 100: the SLA was missed; inf
      when the target is 100 % and there was downtime, 0 without downtime).
    """
    out = pd.DataFrame({"server": uptime["server"]})
    out["scope_s"] = uptime["observed_s"] + uptime["unknown_s"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["coverage_pct"] = (100.0 * uptime["observed_s"] / out["scope_s"]).where(
            out["scope_s"] > 0
        )
        up = uptime["observed_s"] - uptime["maintenance_s"] - uptime["unplanned_down_s"]
        out["mtbf_s"] = (up / uptime["incidents"]).where(uptime["incidents"] > 0)
        basis = uptime["observed_s"] - uptime["maintenance_s"]
        out["allowed_down_s"] = (1.0 - uptime["sla_target_pct"] / 100.0) * basis
        used = 100.0 * uptime["unplanned_down_s"] / out["allowed_down_s"]
        used = used.where(uptime["unplanned_down_s"] > 0, 0.0)
        out["budget_used_pct"] = used.where(uptime["sla_target_pct"].notna())
    return out[list(SLA_COLUMNS)]


# ----------------------------------------------------------------------------- activity


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


# ------------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class ReportTables:
    """Every table of one report, computed from one timeline."""

    uptime: pd.DataFrame
    total: pd.DataFrame
    sla: pd.DataFrame
    incidents: pd.DataFrame
    daily: pd.DataFrame
    activity: pd.DataFrame


def compute_report(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    *,
    change_records: Sequence[ChangeRecord] = (),
    confirm_after: int = 2,
    client_sla_target_pct: float | None = None,
) -> ReportTables:
    """All report tables at once (the timeline is built once).

    Validate the frames first (:func:`reports.validate.validate_inputs`); this function
    only re-checks what would make a number silently wrong (overlaps, unknown servers).
    """
    parts = _parts(intervals, windows, servers, start, end, confirm_after)
    daily_ns = _daily_ns(parts, tz)
    pieces = _pieces(parts)
    # Per-server sums are the daily sums added up (exact integers): one classification.
    uptime = _uptime(parts, pieces, daily_ns[1].sum(axis=1))
    total = client_uptime(uptime, client_sla_target_pct)
    return ReportTables(
        uptime=uptime,
        total=total,
        sla=sla_table(pd.concat([uptime, total], ignore_index=True)),
        incidents=_incidents(parts, pieces),
        daily=_daily(parts, tz, daily_ns),
        activity=activity_table(change_records),
    )
