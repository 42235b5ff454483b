"""Report periods: the flow's ``period`` parameter as ``[start, end)`` in the client's zone.

One parser for every form a user types (``2026-10``, ``2026-Q3``,
``2026-10-01..2026-10-15``, ``last-month``, ``last-quarter``): :func:`resolve_period`
gives the flow its :class:`ReportPeriod` (label, start, end); :func:`period_bounds` gives
the bare bounds, also for a ``(first, last)`` tuple of dates. Days follow the client's
clock (:func:`local_midnight`, :func:`local_days`): a DST day is 23 or 25 hours long.
Pure: no store, no Prefect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "ReportPeriod",
    "local_days",
    "local_midnight",
    "period_bounds",
    "resolve_period",
]

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_QUARTER = re.compile(r"^(\d{4})-[Qq]([1-4])$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\s*(?:\.\.|/)\s*(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class ReportPeriod:
    """A report's period, resolved in the client's timezone.

    Attributes:
        label: the canonical name, also the folder name: ``2026-10``, ``2026-Q3`` or
            ``2026-10-01..2026-10-15``.
        start: local midnight of the first day (aware, client timezone).
        end: local midnight after the last day, exclusive.
    """

    label: str
    start: datetime
    end: datetime


def local_midnight(day: date, tz: tzinfo) -> pd.Timestamp:
    """The first instant of local ``day`` in ``tz``, aware.

    A zone that skips midnight (DST at 00:00) starts the day at the first existing instant;
    one that repeats it takes the first occurrence.
    """
    return pd.Timestamp(day).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)


def _add_months(day: date, months: int) -> date:
    """The first of the month ``months`` after ``day``'s month (negative: before)."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _parse(text: str, period: object) -> tuple[date, date, str]:
    """A period's first and last day (both included) and its canonical label.

    ``text`` is the stripped form of ``period`` (what error messages show).
    """
    if match := _MONTH.match(text):
        first = date(int(match[1]), int(match[2]), 1)
        return first, _add_months(first, 1) - timedelta(days=1), text
    if match := _QUARTER.match(text):
        first = date(int(match[1]), 3 * int(match[2]) - 2, 1)
        return first, _add_months(first, 3) - timedelta(days=1), text.upper()
    if match := _RANGE.match(text):
        first, last = date.fromisoformat(match[1]), date.fromisoformat(match[2])
        return first, last, f"{match[1]}..{match[2]}"
    raise ValueError(f"period {period!r}: expected YYYY-MM, YYYY-Qn or YYYY-MM-DD..YYYY-MM-DD")


def _bounds(
    first: date, last: date, tz: tzinfo, period: object
) -> tuple[pd.Timestamp, pd.Timestamp]:
    if last < first:
        raise ValueError(f"period {period!r} ends before it starts")
    return local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz)


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
    else:
        first, last, _ = _parse(period.strip(), period)
    return _bounds(first, last, tz, period)


def resolve_period(period: str | None, tz: tzinfo, now: datetime | None = None) -> ReportPeriod:
    """Turn the flow's ``period`` parameter into a :class:`ReportPeriod` (pure).

    Args:
        period: ``2026-10`` (a month), ``2026-Q3`` (a quarter), ``2026-10-01..2026-10-15``
            (dates, both included), ``last-month``, ``last-quarter``, or None (the
            previous full month).
        tz: the client's timezone: "previous" and day boundaries are read in it.
        now: the current time (aware); default now.

    Raises:
        ValueError: the period is not one of those forms, or ends before it starts.
    """
    text = (period or "last-month").strip()
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    if text == "last-month":
        text = f"{_add_months(today, -1):%Y-%m}"
    elif text == "last-quarter":
        first = _add_months(today, -((today.month - 1) % 3) - 3)
        text = f"{first.year}-Q{(first.month - 1) // 3 + 1}"
    first, last, label = _parse(text, text)
    start, end = _bounds(first, last, tz, text)
    return ReportPeriod(label=label, start=start.to_pydatetime(), end=end.to_pydatetime())


def local_days(
    start: datetime, end: datetime, tz: tzinfo
) -> tuple[list[date], npt.NDArray[np.int64]]:
    """Local days touching ``[start, end)`` and their boundaries (ns, one more than days)."""
    first = pd.Timestamp(start).tz_convert(tz).date()
    last = (pd.Timestamp(end) - pd.Timedelta(1, "ns")).tz_convert(tz).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    bounds = [local_midnight(d, tz).value for d in days]
    bounds.append(local_midnight(last + timedelta(days=1), tz).value)
    return days, np.asarray(bounds, dtype=np.int64)
