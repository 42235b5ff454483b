"""The check -> interval fold: health checks folded into state intervals, one at a time or
all at once.

A run of checks in one state is one :class:`Interval`, closed at the first check of the
next run; a silence longer than ``max_gap`` closes the run at its last check and becomes
an ``unknown`` interval; a late or duplicate check joins the open interval without
changing its state.

* :func:`extend_intervals` is the scalar fold: one :class:`CheckSample` against a
  server's open interval (what :func:`history.ingest.ingest` does as checks arrive).
* :func:`fold_checks` is the same fold vectorised (int64 arrays in, arrays out, any time
  unit); :func:`raw_checks_to_intervals` and :func:`intervals_from_arrays` give the frame
  of the store's ``check_intervals`` (what an import of another tool's history uses).
  Both give the same intervals (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from core.errors import ReportInputError
from history.frames import ns_array, require_columns, utc_index
from history.schema import require_aware

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_MAX_GAP",
    "CheckSample",
    "Interval",
    "State",
    "extend_intervals",
    "fold_checks",
    "intervals_frame",
    "intervals_from_arrays",
    "raw_checks_to_intervals",
]


#: A state interval's state (``unknown``: no data, a gap between checks).
State = Literal["up", "down", "unknown"]

#: How often the deployed health-check flow runs.
DEFAULT_CHECK_INTERVAL = timedelta(minutes=5)
#: A silence longer than this between two checks of a server is recorded as ``unknown``.
DEFAULT_MAX_GAP = 3 * DEFAULT_CHECK_INTERVAL
#: A failure's message is kept up to this many characters.
_MAX_ERROR = 2000


@dataclass(frozen=True)
class CheckSample:
    """One health check of one server: did it pass, and if not, why.

    Attributes:
        server: server name (unique within the client).
        ts: when the check ran (timezone-aware; stored in UTC).
        ok: every check of the server passed.
        error: why it failed (first line of evidence), or None.
        latency_ms: response time when something answered, or None.
    """

    server: str
    ts: datetime
    ok: bool
    error: str | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", require_aware(self.ts, "sample time"))


@dataclass(frozen=True)
class Interval:
    """A run of checks of one server in one state.

    Attributes:
        server: server name.
        state: ``up``, ``down`` or ``unknown`` (no data: a gap between checks).
        start: the first check of the interval (for ``unknown``: the last check before).
        end: the last check while open; once closed, the next interval's start.
        checks: checks folded into the interval (0 for ``unknown``).
        failures: how many of them failed.
        first_error: the first failure's message.
        id: the row id in ``check_intervals``; None until written.
    """

    server: str
    state: State
    start: datetime
    end: datetime
    checks: int
    failures: int
    first_error: str | None = None
    id: int | None = None

    @property
    def seconds(self) -> float:
        """Length of the interval in seconds."""
        return (self.end - self.start).total_seconds()


def _state(sample: CheckSample) -> State:
    return "up" if sample.ok else "down"


def _error(sample: CheckSample) -> str | None:
    if sample.ok:
        return None
    return (sample.error or "check failed")[:_MAX_ERROR]


def _opened(sample: CheckSample) -> Interval:
    return Interval(
        server=sample.server,
        state=_state(sample),
        start=sample.ts,
        end=sample.ts,
        checks=1,
        failures=0 if sample.ok else 1,
        first_error=_error(sample),
    )


def extend_intervals(
    open_interval: Interval | None,
    sample: CheckSample,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> tuple[list[Interval], Interval]:
    """Fold one check into a server's open interval (pure).

    * No open interval: the sample opens one (``start = end = ts``).
    * Same state, within ``max_gap`` of the interval's end: the interval grows
      (``end = ts``, ``checks + 1``, ``failures + 1`` when down, ``first_error`` kept).
    * Another state: the open interval is closed at ``ts`` (intervals are contiguous:
      the change is dated from the first check that saw it) and the sample opens a new one.
    * More than ``max_gap`` after the interval's end: the interval is closed at its last
      check, an ``unknown`` interval (0 checks) covers the silence, the sample opens a new one.
    * Late or duplicate (``ts`` not after the interval's end, e.g. two runs racing): the
      sample is counted in the open interval (``checks``, ``failures``) without moving
      its end or changing its state, so no check is lost and time never runs backwards.

    Args:
        open_interval: the server's latest interval, or None for a new server.
        sample: the check.
        max_gap: the longest silence still read as continuity (3 check periods).

    Returns:
        ``(closed, open)``: the intervals closed by this sample, oldest first (the
        previous open interval keeps its ``id``), and the new open interval.
    """
    if open_interval is None:
        return [], _opened(sample)
    if sample.server != open_interval.server:
        raise ValueError(f"sample of {sample.server!r} given to {open_interval.server!r}")
    failed = 0 if sample.ok else 1
    first_error = open_interval.first_error or _error(sample)
    if sample.ts <= open_interval.end:
        return [], replace(
            open_interval,
            checks=open_interval.checks + 1,
            failures=open_interval.failures + failed,
            first_error=first_error,
        )
    if sample.ts - open_interval.end > max_gap:
        gap = Interval(
            server=sample.server,
            state="unknown",
            start=open_interval.end,
            end=sample.ts,
            checks=0,
            failures=0,
        )
        return [open_interval, gap], _opened(sample)
    if _state(sample) == open_interval.state:
        return [], replace(
            open_interval,
            end=sample.ts,
            checks=open_interval.checks + 1,
            failures=open_interval.failures + failed,
            first_error=first_error,
        )
    return [replace(open_interval, end=sample.ts)], _opened(sample)


def _compress_sorted(
    code: npt.NDArray[np.int64] | None,
    ts: npt.NDArray[np.int64],
    ok: npt.NDArray[np.bool_],
    max_gap: int,
    step: npt.NDArray[np.int64] | None = None,
    distinct: bool = False,
) -> dict[str, npt.NDArray[Any]]:
    """Checks sorted by (code, ts) folded into intervals, as arrays (see
    :func:`raw_checks_to_intervals`). ``code`` None: all rows are one server (code 0).
    ``ts`` and ``max_gap`` are in one unit, any; ``step``: ``np.diff(ts)`` when the caller
    has it; ``distinct``: no step is 0 (no duplicate). ``first_failure`` is the row of the
    run's first failed check, or -1. A handful of passes over the rows, the rest is per run.
    """
    n = len(ts)
    if n == 0:
        empty = np.empty(0, np.int64)
        return {
            "code": empty,
            "state_down": np.empty(0, bool),
            "start": empty,
            "end": empty,
            "checks": empty,
            "failures": empty,
            "first_failure": empty,
            "unknown": np.empty(0, bool),
        }
    down = ~ok
    # Flags of row i + 1 against row i (n - 1 of them).
    if step is None:
        step = np.diff(ts)
    new_server = None if code is None else code[1:] != code[:-1]
    dup = None if distinct else step == 0
    gap = step > max_gap
    del step
    if new_server is not None:
        gap &= ~new_server
        if dup is not None:
            dup &= ~new_server
    if dup is not None and dup.any():
        # A late or duplicate check joins the open interval without changing its state:
        # the interval's state is that of the latest check that was not a duplicate.
        latest = np.where(np.r_[False, dup], 0, np.arange(n))
        eff = down[np.maximum.accumulate(latest)]
        change = down[1:] != eff[:-1]
        change &= ~dup
        del eff, latest
    else:
        change = down[1:] != down[:-1]
    # Runs open at a silence, a change of state, or a new server.
    change |= gap
    if new_server is not None:
        change |= new_server
    opens = np.flatnonzero(change)
    del change
    opens += 1
    opens = np.r_[0, opens]
    bounds = np.r_[opens, n]
    last = bounds[1:] - 1
    checks = np.diff(bounds)
    fail_rows = np.flatnonzero(down)
    before = np.asarray(np.searchsorted(fail_rows, bounds), dtype=np.int64)
    failures = np.diff(before)
    if len(fail_rows):
        first_failure = np.where(
            failures > 0, fail_rows[np.minimum(before[:-1], len(fail_rows) - 1)], -1
        )
    else:
        first_failure = np.full(len(opens), -1, np.int64)
    # Closed by a change: ends at the next run's first check; otherwise at its last check.
    by_change = np.r_[~gap[opens[1:] - 1], False]
    if new_server is not None:
        by_change[:-1] &= ~new_server[opens[1:] - 1]
    end = np.where(by_change, ts[np.r_[opens[1:], n - 1]], ts[last])
    run_code = np.zeros(len(opens), np.int64) if code is None else code[opens]
    run = {
        "code": run_code,
        "state_down": down[opens],
        "start": ts[opens],
        "end": end,
        "checks": checks.astype(np.int64),
        "failures": failures.astype(np.int64),
        "first_failure": first_failure.astype(np.int64),
    }
    # An unknown interval covers each silence: from the last check before it to the next.
    g = np.flatnonzero(gap) + 1
    unknown = {
        "code": np.zeros(len(g), np.int64) if code is None else code[g],
        "state_down": np.zeros(len(g), bool),
        "start": ts[g - 1],
        "end": ts[g],
        "checks": np.zeros(len(g), np.int64),
        "failures": np.zeros(len(g), np.int64),
        "first_failure": np.full(len(g), -1, np.int64),
    }
    # Order: every run, and each gap right before the run it opens (sort key: row index).
    order = np.argsort(np.r_[2 * opens, 2 * g - 1], kind="stable")
    out = {name: np.r_[run[name], unknown[name]][order] for name in run}
    out["unknown"] = np.r_[np.zeros(len(opens), bool), np.ones(len(g), bool)][order]
    return out


def raw_checks_to_intervals(checks: pd.DataFrame, max_gap: timedelta) -> pd.DataFrame:
    """Fold raw checks into state intervals, all servers at once, without a loop.

    The same result as folding each server's checks in time order with
    :func:`history.fold.extend_intervals`: a run of checks in one state is one interval,
    closed at the first check of the next run; a silence longer than ``max_gap`` closes the
    run at its last check and becomes an ``unknown`` interval (0 checks); a check at the
    same time as the previous one (a duplicate) is counted in the open interval without
    changing its state. The last interval of each server is left open at its last check.

    Args:
        checks: ``server``, ``ts`` (aware), ``ok`` (bool), optionally ``error`` (the
            failure's message; ``"check failed"`` when absent) and ``latency_ms`` (unused).
        max_gap: the longest silence read as continuity.

    Returns:
        The columns of the store's ``check_intervals``: ``server``, ``state``, ``start``,
        ``end`` (UTC), ``checks``, ``failures``, ``first_error``; by server then start.
    """
    require_columns(checks, ("server", "ts", "ok"), "checks")
    if checks["ok"].isna().any():
        raise ReportInputError("ok_not_null", "checks.ok has missing values")
    server = checks["server"].astype(str).to_numpy(dtype=object)
    codes, names = pd.factorize(server, sort=True)
    errors = checks["error"].to_numpy(dtype=object) if "error" in checks.columns else None
    return intervals_from_arrays(
        np.asarray(codes, dtype=np.int64),
        ns_array(checks["ts"], "checks.ts"),
        checks["ok"].to_numpy(dtype=bool),
        np.asarray(names, dtype=object),
        max_gap,
        errors=errors,
    )


def fold_checks(
    code: npt.NDArray[np.int64] | None,
    ts: npt.NDArray[np.int64],
    ok: npt.NDArray[np.bool_],
    max_gap: int,
    *,
    errors: npt.NDArray[Any] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Checks folded into intervals as arrays, the core of :func:`raw_checks_to_intervals`.

    ``code`` is the server per row (None: all rows are one server, code 0); ``ts`` and
    ``max_gap`` are integers in one unit, any (the caller scales ``start``/``end``). Rows
    may come in any order; input already sorted (by code, then time) is not re-sorted.

    Returns:
        Per interval, by code then start: ``code``, ``state`` (object), ``start``, ``end``,
        ``checks``, ``failures``, ``first_error`` (object; None when no check failed).
    """
    step = None
    if code is None:
        # One pass gives both: in time order (no step below 0).
        step = np.diff(ts)
        least = int(step.min()) if len(step) else 1
        in_order = least >= 0
    elif len(code) == 0 or bool((code == code[0]).all()):
        in_order = bool((ts[1:] >= ts[:-1]).all())
    else:
        in_order = bool(
            (code[1:] >= code[:-1]).all() and ((ts[1:] >= ts[:-1]) | (code[1:] != code[:-1])).all()
        )
    if not in_order:
        order = np.argsort(ts, kind="stable") if code is None else np.lexsort((ts, code))
        ts, ok = ts[order], ok[order]
        code = code[order] if code is not None else None
        errors = errors[order] if errors is not None else None
        step = None
    parts = _compress_sorted(code, ts, ok, max_gap, step, step is not None and least > 0)
    first_failure = parts.pop("first_failure")
    if errors is not None and len(errors):
        picked = errors[np.clip(first_failure, 0, None)]
        picked = np.where(pd.isna(picked), "check failed", picked)
    else:
        picked = np.full(len(first_failure), "check failed", dtype=object)
    parts["first_error"] = np.asarray(np.where(first_failure >= 0, picked, None), dtype=object)
    unknown = parts.pop("unknown")
    parts["state"] = np.where(unknown, "unknown", np.where(parts["state_down"], "down", "up"))
    parts["state"] = parts["state"].astype(object)
    del parts["state_down"]
    return parts


def intervals_frame(parts: Mapping[str, npt.NDArray[Any]], names: npt.NDArray[Any]) -> pd.DataFrame:
    """:func:`fold_checks` arrays (``start``/``end`` in ns) as the frame of
    :func:`raw_checks_to_intervals`, server ``names[code]``."""
    return pd.DataFrame(
        {
            "server": np.asarray(names, dtype=object)[parts["code"]],
            "state": parts["state"],
            "start": utc_index(parts["start"]),
            "end": utc_index(parts["end"]),
            "checks": parts["checks"],
            "failures": parts["failures"],
        }
    ).assign(first_error=pd.Series(parts["first_error"], dtype=object))


def intervals_from_arrays(
    code: npt.NDArray[np.int64],
    ts_ns: npt.NDArray[np.int64],
    ok: npt.NDArray[np.bool_],
    names: npt.NDArray[Any],
    max_gap: timedelta,
    *,
    errors: npt.NDArray[Any] | None = None,
) -> pd.DataFrame:
    """:func:`raw_checks_to_intervals` on arrays: server ``names[code]``, ``ts_ns`` in ns.

    Rows may come in any order; already sorted input (by code, then time) is not re-sorted.
    """
    parts = fold_checks(code, ts_ns, ok, int(pd.Timedelta(max_gap).value), errors=errors)
    return intervals_frame(parts, names)
