"""Maintenance windows in the history store: time that reports count as planned.

A window is ``planned`` (announced to the client: ``announced_at``, by whom and why) or
``run`` (when a run actually worked); for one server or the whole client. Reports count a
planned window only from when it was announced (docs/reports.md, "Planned time").
:class:`MaintenanceWindows` is the part of :class:`history.store.HistoryStore` that
records and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from history.engine import StoreBase
from history.schema import maintenance_windows, require_aware, utc_now

__all__ = ["MaintenanceWindows", "StoredWindow", "WindowKind"]


WindowKind = Literal["planned", "run"]


@dataclass(frozen=True)
class StoredWindow:
    """A maintenance window as stored: time that reports count as planned maintenance.

    Attributes:
        id: row id.
        client: client slug.
        server: the server, or None when the window covers the whole client.
        start: start (UTC).
        end: end (UTC).
        kind: ``planned`` (announced to the client) or ``run`` (when a run actually worked).
        change_ref: the change the window belongs to, if any.
        recorded_at: when the row was written (UTC).
        announced_at: when the client was told (UTC; ``planned`` windows), else None.
        announced_by: who announced it (a person, or the pre-change notice's run).
        reason: why (the notice's subject, or the reason given to the command).
    """

    id: int
    client: str
    server: str | None
    start: datetime
    end: datetime
    kind: WindowKind
    change_ref: str | None
    recorded_at: datetime
    announced_at: datetime | None = None
    announced_by: str | None = None
    reason: str | None = None


class MaintenanceWindows(StoreBase):
    """Maintenance windows' operations (a part of :class:`history.store.HistoryStore`)."""

    def record_window(
        self,
        client: str,
        start: datetime,
        end: datetime,
        kind: WindowKind = "planned",
        change_ref: str | None = None,
        server: str | None = None,
        *,
        announced_at: datetime | None = None,
        announced_by: str | None = None,
        reason: str | None = None,
    ) -> StoredWindow:
        """Record a maintenance window (reports count it as planned maintenance time).

        Recording the same window again (same client, server, kind, change ref, start and
        end) returns the stored one instead of adding a duplicate, so a retried task does
        not double the maintenance time.

        Args:
            client: client slug.
            start: start (aware).
            end: end (aware), after ``start``.
            kind: ``planned`` (announced to the client) or ``run`` (when a run worked).
            change_ref: the change it belongs to, if any.
            server: the server, or None for the whole client.
            announced_at: when the client was told (aware); a ``planned`` window without
                one counts as announced now. Not for ``run`` windows.
            announced_by: who announced it.
            reason: why.

        Returns:
            The stored window.
        """
        start = require_aware(start, "start")
        end = require_aware(end, "end")
        if end <= start:
            raise ValueError(f"window end {end.isoformat()} is not after start {start.isoformat()}")
        if kind not in ("planned", "run"):
            raise ValueError(f"window kind {kind!r} is not 'planned' or 'run'")
        if kind == "run" and announced_at is not None:
            raise ValueError("a run window is not announced: announced_at is for planned ones")
        now = utc_now()
        if kind == "planned":
            announced_at = now if announced_at is None else require_aware(announced_at)
        t = maintenance_windows
        same = sa.select(t).where(
            t.c.client == client,
            t.c.server.is_(None) if server is None else t.c.server == server,
            t.c.kind == kind,
            t.c.change_ref.is_(None) if change_ref is None else t.c.change_ref == change_ref,
            t.c.start == start,
            t.c.end == end,
        )
        with self._write() as conn:
            row = conn.execute(same).first()
            if row is None:
                conn.execute(
                    t.insert().values(
                        client=client,
                        server=server,
                        start=start,
                        end=end,
                        kind=kind,
                        change_ref=change_ref,
                        recorded_at=now,
                        announced_at=announced_at,
                        announced_by=announced_by,
                        reason=reason,
                    )
                )
                row = conn.execute(same).one()
        return _window(row)

    def windows(
        self,
        client: str,
        start: datetime,
        end: datetime,
        kind: WindowKind | None = None,
    ) -> list[StoredWindow]:
        """A client's maintenance windows that overlap ``[start, end)``.

        Args:
            client: client slug.
            start: start of the period (aware).
            end: end of the period (aware).
            kind: only this kind; default both.

        Returns:
            The windows, by start time (whole-client and per-server windows alike).
        """
        t = maintenance_windows
        query = sa.select(t).where(
            t.c.client == client,
            t.c.start < require_aware(end, "end"),
            t.c.end > require_aware(start, "start"),
        )
        if kind is not None:
            query = query.where(t.c.kind == kind)
        with self._read() as conn:
            rows = conn.execute(query.order_by(t.c.start, t.c.id)).all()
        return [_window(row) for row in rows]


def _window(row: sa.Row[Any]) -> StoredWindow:
    return StoredWindow(
        id=row.id,
        client=row.client,
        server=row.server,
        start=row.start,
        end=row.end,
        kind=row.kind,
        change_ref=row.change_ref,
        recorded_at=row.recorded_at,
        announced_at=row.announced_at,
        announced_by=row.announced_by,
        reason=row.reason,
    )
