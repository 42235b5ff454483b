"""Maintenance-window and cron maths: pure functions the inventory models call.

A window is a daily (or weekly, with a weekday) slot that starts at a local clock time
in the client's time zone and lasts an elapsed duration, so it may cross midnight. On a
DST change day a start time that does not exist is moved forward by the gap, and an
ambiguous one takes its first occurrence (what :func:`datetime.combine` with a
``zoneinfo`` zone gives). Cron expressions are the plain 5-field kind Prefect's
``CronSchedule`` reads.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta, tzinfo

#: Weekday names in :meth:`date.weekday` order.
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: Weekday names as cron numbers (Sunday is 0).
CRON_DOW = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}

_MONTH_NAMES = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DOW_NAMES = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DOW_NAMES),
)

#: What a cron expression may be, for error messages.
CRON_ALLOWED = (
    "5 fields 'minute hour day-of-month month day-of-week', each '*', a number, a range a-b,"
    " a list a,b and an optional step /n; month and day names (jan, mon) allowed"
)


def require_aware(value: datetime, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a timezone-aware datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def applies_on(day: date, weekday: str | None) -> bool:
    """Whether a window restricted to ``weekday`` (None: every day) has a slot on ``day``."""
    return weekday is None or WEEKDAYS[day.weekday()] == weekday


def slot_on(day: date, start: time, duration: timedelta, tz: tzinfo) -> tuple[datetime, datetime]:
    """The slot starting at local ``start`` on local date ``day``, aware, in ``tz``."""
    begin = datetime.combine(day, start, tzinfo=tz).astimezone(UTC)
    # Elapsed-time arithmetic in UTC: adding to a zoned datetime would be wall-clock arithmetic.
    return begin.astimezone(tz), (begin + duration).astimezone(tz)


def windows_between(
    start: datetime,
    end: datetime,
    *,
    at: time,
    duration: timedelta,
    weekday: str | None,
    tz: tzinfo,
) -> list[tuple[datetime, datetime]]:
    """Slots overlapping ``[start, end)``, in order, as aware datetimes in ``tz``.

    Args:
        start: aware start of the span.
        end: aware end of the span (exclusive).
        at: the window's local start time.
        duration: the window's length (elapsed time).
        weekday: the only weekday with a slot (``"mon"``..``"sun"``), or None for every day.
        tz: the client's time zone.
    """
    require_aware(start, "start")
    require_aware(end, "end")
    slots = []
    day = start.astimezone(tz).date() - timedelta(days=2)
    last = end.astimezone(tz).date()
    while day <= last:
        if applies_on(day, weekday):
            slot_start, slot_end = slot_on(day, at, duration, tz)
            if slot_end > start and slot_start < end:
                slots.append((slot_start, slot_end))
        day += timedelta(days=1)
    return slots


def in_window(
    when: datetime, *, at: time, duration: timedelta, weekday: str | None, tz: tzinfo
) -> bool:
    """Whether the aware datetime ``when`` is inside a slot (start inclusive, end exclusive)."""
    slots = windows_between(
        when, when + timedelta(microseconds=1), at=at, duration=duration, weekday=weekday, tz=tz
    )
    return any(s <= when < e for s, e in slots)


def next_window_start(
    after: datetime, *, at: time, duration: timedelta, weekday: str | None, tz: tzinfo
) -> datetime:
    """The first slot start strictly after the aware datetime ``after``, in ``tz``."""
    require_aware(after, "after")
    day = after.astimezone(tz).date()
    for offset in range(9):
        candidate = day + timedelta(days=offset)
        if applies_on(candidate, weekday):
            slot_start, _ = slot_on(candidate, at, duration, tz)
            if slot_start > after:
                return slot_start
    raise AssertionError("unreachable: a weekday recurs within 8 days")  # pragma: no cover


def cron_for(cadence: str, cron: str | None, at: time, weekday: str | None) -> tuple[str, bool]:
    """The cron string for Prefect's ``CronSchedule`` and its ``day_or`` flag.

    Args:
        cadence: ``quarterly`` (Jan/Apr/Jul/Oct), ``monthly``, ``weekly`` or ``cron``.
        cron: the expression, used (and required) with cadence ``cron``.
        at: the window's local start time (the run's minute and hour).
        weekday: the window's weekday, or None.

    Returns:
        ``(cron, day_or)``; ``day_or`` is False when day-of-month and day-of-week must
        both match ("the first Saturday": days 1-7 AND Saturday).
    """
    if cadence == "cron":
        assert cron is not None  # guaranteed by validation
        return cron, True
    minute, hour = at.minute, at.hour
    if cadence == "weekly":
        return f"{minute} {hour} * * {CRON_DOW[weekday] if weekday else 1}", True
    months = "1,4,7,10" if cadence == "quarterly" else "*"
    if weekday:
        return f"{minute} {hour} 1-7 {months} {CRON_DOW[weekday]}", False
    return f"{minute} {hour} 1 {months} *", True


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a plain 5-field cron expression, or None if it is one."""
    fields = expression.split()
    if len(fields) != 5:
        return f"has {len(fields)} fields, expected 5"
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):

        def number(
            token: str, low: int = low, high: int = high, names: dict[str, int] = names
        ) -> int | None:
            if token.lower() in names:
                return names[token.lower()]
            if token.isdigit() and low <= int(token) <= high:
                return int(token)
            return None

        for part in text.split(","):
            base, slash, step = part.partition("/")
            if slash and (not step.isdigit() or int(step) == 0):
                return f"{name} field {text!r}: step {step!r} is not a positive number"
            if base == "*":
                continue
            first, dash, last = base.partition("-")
            start = number(first)
            end = number(last) if dash else start
            if start is None or end is None:
                return f"{name} field {text!r}: {part!r} is not in {low}..{high}"
            if start > end:
                return f"{name} field {text!r}: range {base!r} runs backwards"
    return None


def add_months(day: date, months: int) -> date:
    """``day`` plus ``months`` calendar months, the day clamped to the month's last."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def review_problem(
    agreed_on: date | None, reviewed_on: date | None, every_months: int, today: date
) -> str | None:
    """Why a maintenance schedule's review is late, or None when it is within its period.

    The schedule is due for review ``every_months`` after its last review (or, never
    reviewed, after it was agreed). A schedule with neither date recorded is late too:
    nobody can tell when it was agreed or weighed.
    """
    last = reviewed_on or agreed_on
    if last is None:
        return "the maintenance schedule has no agreed_on or reviewed_on date recorded"
    due = add_months(last, every_months)
    if today <= due:
        return None
    what = "last reviewed on" if reviewed_on else "agreed on"
    never = "" if reviewed_on else " and never reviewed"
    return (
        f"the maintenance schedule was {what} {last.isoformat()}{never}: its review was due by"
        f" {due.isoformat()} (every {every_months} months), {(today - due).days} days ago"
    )
