"""Maintenance windows against state intervals: planned time, and outages split at edges.

A piece of an outage inside a maintenance window (the server's own or a client-wide one)
is planned; a piece outside is unplanned (docs/reports.md). :func:`split_planned` is the
rule on frames; the array forms beside it (:class:`Spans`, :func:`merged_windows`,
:func:`window_overlap`, :func:`split_pieces`) are what the timeline and the uptime tables
use on every row at once, without a loop. Pure, frames and arrays in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from history.frames import ns_array, require_columns, utc_index

__all__ = ["Spans", "merged_windows", "split_pieces", "split_planned", "window_overlap"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class Spans:
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


def merged_windows(windows: pd.DataFrame | None, names: Sequence[str]) -> Spans:
    """Per server, its windows (own plus client-wide) merged into disjoint sorted spans.

    Windows of servers not in ``names`` are ignored.
    """
    index = pd.Index([str(n) for n in names], dtype=object)
    empty = np.empty(0, np.int64)
    if windows is None or len(windows) == 0 or len(index) == 0:
        return Spans(index, empty, empty, empty)
    require_columns(windows, ("start", "end"), "windows")
    ws = ns_array(windows["start"], "windows.start")
    we = ns_array(windows["end"], "windows.end")
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
        return Spans(index, empty, empty, empty)
    order = np.lexsort((a, code))
    code, a, b = code[order], a[order], b[order]
    # Merge: a span starts where its start lies after every earlier end of its server.
    reach = pd.Series(b).groupby(code).cummax().to_numpy()
    first = np.r_[True, code[1:] != code[:-1]]
    new = first | np.r_[True, a[1:] > reach[:-1]]
    idx = np.flatnonzero(new)
    return Spans(index, code[idx], a[idx], np.maximum.reduceat(b, idx))


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
    code: npt.NDArray[np.int64], t: npt.NDArray[np.int64], spans: Spans
) -> npt.NDArray[np.int64]:
    """Window time of server ``code`` in ``(-inf, t)``, plus a per-server constant.

    The constant (the windows of earlier servers) cancels in a difference of two calls
    for the same server, which is how :func:`window_overlap` uses it.
    """
    cum = np.r_[0, np.cumsum(spans.b - spans.a)]
    k = _pair_search(spans.code, spans.a, code, t, "right") - 1
    kk = np.clip(k, 0, None)
    valid = (k >= 0) & (spans.code[kk] == code)
    inside = np.minimum(t - spans.a[kk], spans.b[kk] - spans.a[kk])
    base = cum[np.searchsorted(spans.code, code, side="left")]
    return np.where(valid, cum[kk] + inside, base)


def window_overlap(
    code: npt.NDArray[np.int64],
    s: npt.NDArray[np.int64],
    e: npt.NDArray[np.int64],
    spans: Spans,
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


def split_pieces(
    code: npt.NDArray[np.int64], s: npt.NDArray[np.int64], e: npt.NDArray[np.int64], spans: Spans
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
    require_columns(outages, ("server", "start", "end"), "outages")
    server = outages["server"].astype(str).to_numpy(dtype=object)
    codes, uniques = pd.factorize(server)
    spans = merged_windows(windows, [str(n) for n in uniques])
    s = ns_array(outages["start"], "outages.start")
    e = ns_array(outages["end"], "outages.end")
    row, piece_s, piece_e, is_window = split_pieces(codes.astype(np.int64), s, e, spans)
    out = outages.take(row).reset_index(drop=True)
    out["start"] = utc_index(piece_s)
    out["end"] = utc_index(piece_e)
    out["planned"] = is_window.astype(bool)
    out["duration_s"] = (piece_e - piece_s) / _NS
    return out
