"""Uptime, incidents, the SLA budget and daily bars: the report's numbers, from one timeline.

Time inside a maintenance window is *planned*; outages are split at window edges
(:mod:`reports.windows`). Uptime = 1 - unplanned downtime / (observed time - planned
time); unknown (no data) time is reported, never counted as up, and below a coverage
threshold the SLA is not judged (:func:`sla_verdict`). Every number and rule is explained
in docs/reports.md. Pure: frames in, frames out (STYLE item 10).

The ``*_table`` functions and :func:`daily_uptime` each build their own timeline, for a
test or a single table; :func:`uptime_frames` gives them all from one timeline (what
:func:`reports.compute.compute_report` uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from history.frames import utc_index
from reports.periods import local_days
from reports.timeline import DOWN, UNKNOWN, TimelineParts, timeline_parts
from reports.windows import Spans, split_pieces, window_overlap

__all__ = [
    "DAILY_COLUMNS",
    "DEFAULT_MIN_COVERAGE_PCT",
    "INCIDENT_COLUMNS",
    "INSUFFICIENT_DATA",
    "SLA_COLUMNS",
    "TOTAL_ROW",
    "UPTIME_COLUMNS",
    "client_uptime",
    "daily_uptime",
    "incidents_table",
    "sla_table",
    "sla_verdict",
    "sla_words",
    "uptime_frames",
    "uptime_table",
]

_NS = 1_000_000_000


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
    "coverage_pct",
)

#: ``sla_met`` when there is too little data to judge the SLA.
INSUFFICIENT_DATA = "insufficient data"
#: The inventory's default ``monitoring.min_coverage_pct``.
DEFAULT_MIN_COVERAGE_PCT = 90.0


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


TOTAL_ROW = "(all servers)"


_KINDS = ("up_s", "unplanned_down_s", "maintenance_s", "unknown_s")


def _sums_by_kind(
    key: npt.NDArray[np.int64],
    size: int,
    code: npt.NDArray[np.int64],
    state: npt.NDArray[np.int8],
    s: npt.NDArray[np.int64],
    e: npt.NDArray[np.int64],
    spans: Spans,
) -> npt.NDArray[np.int64]:
    """Nanoseconds of up, unplanned down, maintenance and unknown (:data:`_KINDS`) of the
    rows ``[s, e)`` of server ``code``, summed per ``key`` in ``range(size)``.

    Returns a ``(size, 4)`` int64 array. The sums are exact: ``bincount`` adds float64,
    which holds every integer below 2**53 ns (104 days), and a key here is one server's
    local day (per-server totals add the days up in int64).
    """
    duration = e - s
    planned = window_overlap(code, s, e, spans)
    unknown = state == UNKNOWN
    down = state == DOWN
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


def _pieces(parts: TimelineParts) -> _Pieces:
    t = parts.timeline
    rows = np.flatnonzero(t.outage_id >= 0)
    row, s, e, planned = split_pieces(t.pos[rows], t.s[rows], t.e[rows], parts.spans)
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


def _incidents(parts: TimelineParts, pieces: _Pieces | None = None) -> pd.DataFrame:
    p = pieces if pieces is not None else _pieces(parts)
    frame = pd.DataFrame(
        {
            "start": utc_index(p.s),
            "end": utc_index(p.e),
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


def _coverage(observed: pd.Series, unknown: pd.Series) -> pd.Series:
    """Data coverage, %: observed / (observed + unknown); NaN when the server had no time."""
    scope = observed + unknown
    with np.errstate(invalid="ignore", divide="ignore"):
        return (100.0 * observed / scope).where(scope > 0)


def _min_coverage(servers: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Each server's ``min_coverage_pct`` (the servers frame's column, else the default)."""
    if "min_coverage_pct" not in servers.columns:
        return np.full(len(servers), DEFAULT_MIN_COVERAGE_PCT)
    column = pd.to_numeric(servers["min_coverage_pct"]).astype("float64")
    return column.fillna(DEFAULT_MIN_COVERAGE_PCT).to_numpy()


def _uptime(
    parts: TimelineParts, pieces: _Pieces, ns: npt.NDArray[np.int64] | None = None
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
    out["coverage_pct"] = _coverage(out["observed_s"], out["unknown_s"])
    out["sla_met"] = sla_verdict(
        out["uptime_pct"], out["sla_target_pct"], out["coverage_pct"], _min_coverage(parts.servers)
    )
    return out.rename_axis("server").reset_index()[list(UPTIME_COLUMNS)]


def sla_verdict(
    uptime_pct: pd.Series,
    target: pd.Series,
    coverage_pct: pd.Series,
    min_coverage_pct: float | npt.NDArray[np.float64] = DEFAULT_MIN_COVERAGE_PCT,
) -> pd.Series:
    """``sla_met`` per row: True (met), False (missed), :data:`INSUFFICIENT_DATA`, or NA.

    The rule, in order: no target, or no time in the period at all (coverage unknown):
    NA, never a guess; data for less than ``min_coverage_pct`` of the time:
    ``"insufficient data"`` (six seconds of checks do not prove a month's uptime); no
    time outside planned maintenance (uptime unknown): NA; else met when
    ``uptime >= target``. ``min_coverage_pct``: one threshold, or one per row.
    """
    up = uptime_pct.to_numpy(dtype="float64")
    goal = target.to_numpy(dtype="float64")
    coverage = coverage_pct.to_numpy(dtype="float64")
    out = pd.Series([bool(v) for v in up >= goal], index=uptime_pct.index, dtype=object)
    out[np.isnan(up)] = pd.NA
    out[coverage < min_coverage_pct] = INSUFFICIENT_DATA
    out[np.isnan(goal) | np.isnan(coverage)] = pd.NA
    return out


def sla_words(sla_met: Any, coverage_pct: Any) -> str:
    """A verdict of :func:`sla_verdict` in words, for summary lines: ``met``, ``missed``,
    ``insufficient data (coverage 16.13 %)`` or ``n/a`` (no target)."""
    if isinstance(sla_met, str):
        coverage = float(coverage_pct)
        return f"{sla_met} (coverage {coverage:.2f} %)" if coverage == coverage else sla_met
    if sla_met is None or sla_met is pd.NA:
        return "n/a"
    return "met" if bool(sla_met) else "missed"


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
    unplanned time of one outage. ``coverage_pct`` is observed / (observed + unknown);
    ``sla_met`` is :func:`sla_verdict` (``insufficient data`` below the server's
    ``min_coverage_pct`` in ``servers``, default :data:`DEFAULT_MIN_COVERAGE_PCT`).
    """
    parts = timeline_parts(intervals, windows, servers, start, end, confirm_after)
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
    return _incidents(timeline_parts(intervals, windows, servers, start, end, confirm_after))


def _daily_ns(parts: TimelineParts, tz: tzinfo) -> tuple[list[date], npt.NDArray[np.int64]]:
    """The local days and, per server and day, nanoseconds by kind: an int64 array of
    shape ``(servers, days, 4)``."""
    t = parts.timeline
    days, bounds = local_days(parts.start, parts.end, tz)
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
    parts: TimelineParts,
    tz: tzinfo,
    daily_ns: tuple[list[date], npt.NDArray[np.int64]] | None = None,
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
    return _daily(timeline_parts(intervals, windows, servers, start, end, confirm_after), tz)


def client_uptime(
    uptime: pd.DataFrame,
    sla_target_pct: float | None = None,
    min_coverage_pct: float = DEFAULT_MIN_COVERAGE_PCT,
) -> pd.DataFrame:
    """The client's total row, with the columns of uptime.csv and server ``(all servers)``.

    Seconds and incidents are summed over servers, so uptime and coverage are
    time-weighted; the longest outage is the longest of any server. The target is
    ``sla_target_pct`` if given, else the servers' common target; when their targets
    differ it is NaN and ``sla_met`` NA. ``sla_met`` is :func:`sla_verdict`.
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
    out["coverage_pct"] = _coverage(out["observed_s"], out["unknown_s"])
    out["sla_met"] = sla_verdict(
        out["uptime_pct"], out["sla_target_pct"], out["coverage_pct"], min_coverage_pct
    )
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
    out["coverage_pct"] = _coverage(uptime["observed_s"], uptime["unknown_s"])
    with np.errstate(invalid="ignore", divide="ignore"):
        up = uptime["observed_s"] - uptime["maintenance_s"] - uptime["unplanned_down_s"]
        out["mtbf_s"] = (up / uptime["incidents"]).where(uptime["incidents"] > 0)
        basis = uptime["observed_s"] - uptime["maintenance_s"]
        out["allowed_down_s"] = (1.0 - uptime["sla_target_pct"] / 100.0) * basis
        used = 100.0 * uptime["unplanned_down_s"] / out["allowed_down_s"]
        used = used.where(uptime["unplanned_down_s"] > 0, 0.0)
        out["budget_used_pct"] = used.where(uptime["sla_target_pct"].notna())
    return out[list(SLA_COLUMNS)]


def uptime_frames(
    parts: TimelineParts, tz: tzinfo, client_sla_target_pct: float | None = None
) -> dict[str, pd.DataFrame]:
    """Every table of this module from one timeline: ``uptime``, ``total`` (the client's
    row, :func:`client_uptime`: judged on the strictest of the servers' coverage
    thresholds), ``sla``, ``incidents`` and ``daily`` (days in ``tz``)."""
    daily_ns = _daily_ns(parts, tz)
    pieces = _pieces(parts)
    # Per-server sums are the daily sums added up (exact integers): one classification.
    uptime = _uptime(parts, pieces, daily_ns[1].sum(axis=1))
    thresholds = _min_coverage(parts.servers)
    strictest = float(thresholds.max()) if len(thresholds) else DEFAULT_MIN_COVERAGE_PCT
    total = client_uptime(uptime, client_sla_target_pct, strictest)
    return {
        "uptime": uptime,
        "total": total,
        "sla": sla_table(pd.concat([uptime, total], ignore_index=True)),
        "incidents": _incidents(parts, pieces),
        "daily": _daily(parts, tz, daily_ns),
    }
