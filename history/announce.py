"""Announced maintenance windows: what makes time *planned* in the reports.

A window is planned maintenance when the client was told about it before it began
(docs/reports.md, "Planned time"). The pre-change notice of a maintenance run records its
window itself (:meth:`tasks.records.ChangeRecorder.record_announcement`); provider-side
work (a host's hardware move, a network change) is announced by command::

    python -m history announce --client acme [--server acme-web-1 ...] \\
        --start "2026-10-14 02:00" --end "2026-10-14 06:00" --by bob --reason "EBS move"

:func:`check_announcement` is the rule (pure, tested as a table); :func:`record_announcement`
writes what it allowed. Times without a zone are the client's local time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo

from pydantic import BaseModel, ConfigDict, Field

from core.errors import AnnouncementRefused
from history.store import HistoryStore
from history.windows import StoredWindow
from inventory import ClientInventory

__all__ = [
    "MAX_ANNOUNCED_WINDOW",
    "Announcement",
    "check_announcement",
    "parse_local_time",
    "record_announcement",
]

#: The longest window one announcement may cover (a typo in a date, not a maintenance).
MAX_ANNOUNCED_WINDOW = timedelta(days=7)
#: Clock skew tolerated between the machine and an ``announced_at`` given as "now".
_SKEW = timedelta(minutes=1)


class Announcement(BaseModel):
    """A maintenance window the client was told about, as it will be recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: str = Field(description="Client slug.")
    servers: tuple[str, ...] = Field(
        default=(), description="The servers it covers; empty: the whole client."
    )
    start: datetime = Field(description="Start of the window (aware).")
    end: datetime = Field(description="End of the window (aware), after start.")
    announced_at: datetime = Field(description="When the client was told (aware), before start.")
    by: str = Field(min_length=1, max_length=128, description="Who announced it.")
    reason: str = Field(min_length=1, description="Why: what the maintenance is.")


def parse_local_time(text: str, tz: tzinfo, what: str) -> datetime:
    """An ISO 8601 time; without a zone it is read in ``tz`` (the client's clock).

    Raises:
        AnnouncementRefused: not a time.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AnnouncementRefused(
            [f"{what} {text!r} is not a time (ISO 8601: 2026-10-14 02:00 or 2026-10-14T01:00Z)"]
        ) from None
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def check_announcement(
    inventory: ClientInventory,
    servers: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    by: str,
    reason: str,
    announced_at: datetime,
    now: datetime,
) -> Announcement:
    """The announcement if it is one, else every reason it is not (pure).

    The rule: the servers are the client's (none: the whole client); the window ends
    after it starts and lasts at most :data:`MAX_ANNOUNCED_WINDOW`; ``by`` and ``reason``
    are given; the announcement was made before the window began (``announced_at <
    start``: told after the start, the client was not warned, and the time stays
    unplanned) and not in the future (``announced_at <= now``: an announcement is a fact,
    not a plan to make one).

    Raises:
        AnnouncementRefused: with one line per broken rule.
    """
    problems: list[str] = []
    known = [s.name for s in inventory.servers]
    unknown = [s for s in servers if s not in known]
    if unknown:
        problems.append(
            f"{', '.join(unknown)}: not a server of {inventory.slug} (its servers:"
            f" {', '.join(known)})"
        )
    for what, value in (("start", start), ("end", end), ("announced at", announced_at)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise AnnouncementRefused([f"{what} {value.isoformat()} has no time zone"])
    if end <= start:
        problems.append(
            f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    elif end - start > MAX_ANNOUNCED_WINDOW:
        problems.append(
            f"the window lasts {end - start}, more than {MAX_ANNOUNCED_WINDOW.days} days:"
            " announce each part of a longer maintenance on its own"
        )
    if not by.strip():
        problems.append("--by: who announced it is required")
    if not reason.strip():
        problems.append("--reason: what the maintenance is is required")
    if announced_at > now + _SKEW:
        problems.append(
            f"announced at {announced_at.isoformat()}, which is in the future: record an"
            " announcement once it is made"
        )
    elif announced_at >= start:
        problems.append(
            f"announced at {announced_at.isoformat()}, not before the window began"
            f" ({start.isoformat()}): an announcement after the start does not make the time"
            " planned (give --announced-at if the client was told earlier)"
        )
    if problems:
        raise AnnouncementRefused(problems)
    return Announcement(
        client=inventory.slug,
        servers=tuple(dict.fromkeys(servers)),
        start=start.astimezone(UTC),
        end=end.astimezone(UTC),
        announced_at=announced_at.astimezone(UTC),
        by=by.strip(),
        reason=reason.strip(),
    )


def record_announcement(store: HistoryStore, announcement: Announcement) -> list[StoredWindow]:
    """Record an announced window (``planned``), one row per server or one for the client.

    Recording the same window again returns the stored rows (the first announcement stands).
    """
    servers: Sequence[str | None] = announcement.servers or (None,)
    return [
        store.record_window(
            announcement.client,
            announcement.start,
            announcement.end,
            "planned",
            server=server,
            announced_at=announcement.announced_at,
            announced_by=announcement.by,
            reason=announcement.reason,
        )
        for server in servers
    ]
