"""Timestamps as int64 nanoseconds and back, and a column check, for frames of intervals.

The interval fold (:mod:`history.fold`) and the report computations (``reports/``) both
handle times as int64 nanoseconds since the epoch, for speed and exactness; these are the
conversions they share. A bad input raises :class:`core.errors.ReportInputError`, named
after the expectation it broke.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pandas as pd

from core.errors import ReportInputError

__all__ = ["ns_array", "require_columns", "utc_index"]


def ns_array(values: pd.Series | pd.Index, what: str) -> npt.NDArray[np.int64]:
    """Aware timestamps as int64 ns since the epoch (NaT becomes a ReportInputError)."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        if len(values) == 0:
            return np.empty(0, dtype=np.int64)
        raise ReportInputError(
            "timestamps_are_aware", f"{what} must be timezone-aware timestamps, got {values.dtype}"
        )
    out = values.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if (out == np.iinfo(np.int64).min).any():
        raise ReportInputError("timestamps_not_null", f"{what} has missing timestamps")
    return out


def utc_index(ns: npt.ArrayLike) -> pd.DatetimeIndex:
    """int64 ns since the epoch as an aware UTC index."""
    values = np.asarray(ns, dtype=np.int64)
    if len(values) == 0:  # the dtype pandas gives an empty one (datetime64[s, UTC])
        return pd.to_datetime(values, utc=True)
    # A view of the integers, localised: pd.to_datetime on int64 took a per-object path.
    return pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ReportInputError (``columns_present``) when ``frame`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportInputError("columns_present", f"{what} lacks columns: {', '.join(missing)}")
