"""The timeline: each server's period cut into disjoint up, down and unknown rows.

Every report table is read from one timeline (:func:`timeline_parts`), built in steps:

1. :func:`confirm_outages`: runs of fewer than ``confirm_after`` failed checks become ``up``
   (blips); confirmed runs get an ``outage_id``. This runs *before* clipping, so a run that
   began before the period is judged on all its failures.
2. Each server's rows are clipped to its *scope*: the period, from ``added_at`` if later
   (:func:`clip_to_period` for the period part).
3. Gaps in the scope without any row become ``unknown`` (no data).

The maintenance windows are merged beside it (:mod:`reports.windows`). Times are int64
nanoseconds since the epoch inside, for speed and exactness. Pure: frames in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from core.errors import ReportInputError
from history.frames import ns_array, require_columns, utc_index
from reports.windows import Spans, merged_windows

__all__ = [
    "DOWN",
    "INTERVAL_COLUMNS",
    "STATES",
    "UNKNOWN",
    "UP",
    "Timeline",
    "TimelineParts",
    "clip_to_period",
    "confirm_outages",
    "timeline_parts",
]

STATES: tuple[str, ...] = ("up", "down", "unknown")
#: The interval frame every function here reads (the store's ``check_intervals`` columns).
INTERVAL_COLUMNS = ("server", "state", "start", "end", "checks", "failures", "first_error")


def _ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"period bound {value!r} must be timezone-aware")
    return int(pd.Timestamp(value).value)


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
    require_columns(intervals, ("server", "state", "start", "end", "failures"), "intervals")
    frame = intervals.sort_values(["server", "start"], kind="stable").reset_index(drop=True)
    if "first_error" not in frame.columns:
        frame["first_error"] = None
    if "checks" not in frame.columns:
        frame["checks"] = frame["failures"]
    server = frame["server"].to_numpy()
    down = (frame["state"] == "down").to_numpy()
    start = ns_array(frame["start"], "intervals.start")
    end = ns_array(frame["end"], "intervals.end")
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


def clip_to_period(intervals: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Keep the part of each interval inside ``[start, end)``.

    Rows entirely outside are dropped; the others get ``start``/``end`` clipped and keep
    their original bounds in ``orig_start``/``orig_end`` (to tell an outage that began before
    the period or was still going at its end).
    """
    require_columns(intervals, ("start", "end"), "intervals")
    lo, hi = _ns(start), _ns(end)
    s = ns_array(intervals["start"], "intervals.start")
    e = ns_array(intervals["end"], "intervals.end")
    keep = (e > lo) & (s < hi)
    out = intervals.loc[keep].copy()
    out["orig_start"] = utc_index(s[keep])
    out["orig_end"] = utc_index(e[keep])
    out["start"] = utc_index(np.clip(s[keep], lo, hi))
    out["end"] = utc_index(np.clip(e[keep], lo, hi))
    return out.reset_index(drop=True)


def _scopes(
    servers: pd.DataFrame, start: datetime, end: datetime
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each server's observed scope: the period, from ``added_at`` when that is later."""
    require_columns(servers, ("server",), "servers")
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


#: The state codes of :attr:`Timeline.state` (int8).
UP, DOWN, UNKNOWN = 0, 1, 2


@dataclass(frozen=True)
class Timeline:
    """Each server's scope cut into disjoint rows covering it exactly (gaps are unknown),
    as arrays sorted by ``pos`` (the server's row in ``servers``) then ``s``.

    ``state`` is ``UP``, ``DOWN`` or ``UNKNOWN``; ``s``, ``e`` the row clipped to the
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
    sorted so, touching down rows merged and unconfirmed runs turned ``UP``.
    """
    column = intervals["state"]
    state = np.where(
        (column == "down").to_numpy(dtype=bool),
        DOWN,
        np.where((column == "unknown").to_numpy(dtype=bool), UNKNOWN, UP),
    ).astype(np.int8)
    s = ns_array(intervals["start"], "intervals.start")
    e = ns_array(intervals["end"], "intervals.end")
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
    down = state == DOWN
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
    down = state == DOWN
    confirmed = down & (failures >= confirm_after)
    state = np.where(down & ~confirmed, UP, state).astype(np.int8)
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
) -> Timeline:
    """Each server's scope cut into disjoint rows covering it exactly (see :class:`Timeline`)."""
    require_columns(intervals, INTERVAL_COLUMNS[:4], "intervals")
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
    return Timeline(
        pos=merged(pos, g_pos.astype(np.int64)),
        state=merged(state, np.full(n_gap, UNKNOWN, dtype=np.int8)),
        s=merged(cs, g_s.astype(np.int64)),
        e=merged(ce, g_e.astype(np.int64)),
        outage_id=merged(outage, np.full(n_gap, -1, dtype=np.int64)),
        first_error=merged(first_error, np.full(n_gap, None, dtype=object)),
        orig_s=merged(orig_s, g_s.astype(np.int64)),
        orig_e=merged(orig_e, g_e.astype(np.int64)),
    )


@dataclass(frozen=True)
class TimelineParts:
    """What the tables share: the timeline and its window overlaps."""

    timeline: Timeline
    spans: Spans
    servers: pd.DataFrame
    start: datetime
    end: datetime

    @property
    def names(self) -> npt.NDArray[Any]:
        """Server names in the order of ``servers`` (``timeline.pos`` indexes them)."""
        return self.servers["server"].astype(str).to_numpy(dtype=object)


def timeline_parts(
    intervals: pd.DataFrame,
    windows: pd.DataFrame | None,
    servers: pd.DataFrame,
    start: datetime,
    end: datetime,
    confirm_after: int,
) -> TimelineParts:
    timeline = _timeline(intervals, servers, start, end, confirm_after)
    names = [str(n) for n in servers["server"]]
    spans = merged_windows(windows, names)
    return TimelineParts(timeline, spans, servers, start, end)
