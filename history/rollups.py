"""Daily rollups in the history store: seconds per state (and inside maintenance) per
server per UTC day (``daily_rollups``).

:func:`rollup_seconds` is the pure computation; :func:`add_rollups` adds seconds to the
table as the timeline advances (ingest and import), counting the overlap with the
maintenance windows recorded so far (:func:`windows_by_server`);
:func:`rebuild_rollups` recomputes a client's rollups when a window was recorded later.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from history.fold import State
from history.intervals import read_intervals
from history.schema import daily_rollups, maintenance_windows
from history.store import HistoryStore

__all__ = [
    "DailyRollup",
    "add_rollups",
    "read_rollups",
    "rebuild_rollups",
    "rollup_seconds",
    "windows_by_server",
]


@dataclass(frozen=True)
class DailyRollup:
    """Seconds per state of one server on one UTC day (a ``daily_rollups`` row)."""

    client: str
    server: str
    day: date
    up_s: float
    down_s: float
    unknown_s: float
    maintenance_s: float


def _merge(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _days(start: datetime, end: datetime) -> Iterator[tuple[date, datetime, datetime]]:
    """``[start, end)`` cut at UTC midnights: (day, piece start, piece end)."""
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), UTC)
        piece_end = min(end, midnight)
        yield start.date(), start, piece_end
        start = piece_end


def rollup_seconds(
    segments: Iterable[tuple[str, State, datetime, datetime]],
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> dict[tuple[str, date], dict[str, float]]:
    """Seconds per state (and inside maintenance) per server per UTC day (pure).

    Args:
        segments: ``(server, state, start, end)`` pieces of the timeline, not overlapping
            for one server.
        windows: maintenance windows per server (client-wide windows included in each
            server's list); overlapping windows count once.

    Returns:
        ``{(server, day): {"up_s", "down_s", "unknown_s", "maintenance_s"}}``.
    """
    merged = {server: _merge(spans) for server, spans in (windows or {}).items()}
    out: dict[tuple[str, date], dict[str, float]] = defaultdict(
        lambda: {"up_s": 0.0, "down_s": 0.0, "unknown_s": 0.0, "maintenance_s": 0.0}
    )
    for server, state, start, end in segments:
        for day, lo, hi in _days(start, end):
            bucket = out[(server, day)]
            bucket[f"{state}_s"] += (hi - lo).total_seconds()
            for w0, w1 in merged.get(server, ()):
                overlap = (min(hi, w1) - max(lo, w0)).total_seconds()
                if overlap > 0:
                    bucket["maintenance_s"] += overlap
    return dict(out)


def windows_by_server(
    conn: Connection, client: str, servers: Iterable[str], start: datetime, end: datetime
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each server's maintenance windows overlapping ``[start, end)``, client-wide ones included.

    A ``planned`` window counts from its announcement (``announced_at``), as in the reports
    (docs/reports.md, "Planned time").
    """
    t = maintenance_windows
    rows = conn.execute(
        sa.select(t.c.server, t.c.start, t.c.end, t.c.kind, t.c.announced_at).where(
            t.c.client == client, t.c.start < end, t.c.end > start
        )
    ).all()
    out: dict[str, list[tuple[datetime, datetime]]] = {s: [] for s in servers}
    for row in rows:
        told = row.announced_at if row.kind == "planned" and row.announced_at else row.start
        begins = max(row.start, told)
        if begins >= row.end:
            continue
        for server, spans in out.items():
            if row.server is None or row.server == server:
                spans.append((begins, row.end))
    return out


def add_rollups(
    conn: Connection, client: str, seconds: Mapping[tuple[str, date], Mapping[str, float]]
) -> None:
    """Add seconds per state per server per day to ``daily_rollups`` (upsert, summing)."""
    if not seconds:
        return
    t = daily_rollups
    insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
    stmt = insert.on_conflict_do_update(
        index_elements=[t.c.client, t.c.server, t.c.day],
        set_={
            name: t.c[name] + insert.excluded[name]
            for name in ("up_s", "down_s", "unknown_s", "maintenance_s")
        },
    )
    conn.execute(
        stmt,
        [
            {"client": client, "server": server, "day": day, **values}
            for (server, day), values in sorted(seconds.items())
        ],
    )


def read_rollups(store: HistoryStore, client: str, server: str | None = None) -> list[DailyRollup]:
    """A client's daily rollups, by server then day."""
    t = daily_rollups
    query = sa.select(t).where(t.c.client == client)
    if server is not None:
        query = query.where(t.c.server == server)
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query.order_by(t.c.server, t.c.day)).all()
    return [
        DailyRollup(
            client=r.client,
            server=r.server,
            day=r.day,
            up_s=r.up_s,
            down_s=r.down_s,
            unknown_s=r.unknown_s,
            maintenance_s=r.maintenance_s,
        )
        for r in rows
    ]


def rebuild_rollups(store: HistoryStore, client: str) -> int:
    """Recompute a client's daily rollups from its intervals and maintenance windows.

    Ingest counts maintenance time against the windows recorded *at ingest time*; a
    window recorded later (a run's window is written when the run ends) is picked up
    by rebuilding. One transaction.

    Returns:
        The number of rollup rows written.
    """
    intervals = read_intervals(store, client)
    segments = [(i.server, i.state, i.start, i.end) for i in intervals if i.end > i.start]
    with store.engine.begin() as conn:
        conn.execute(daily_rollups.delete().where(daily_rollups.c.client == client))
        if not segments:
            return 0
        lo = min(s[2] for s in segments)
        hi = max(s[3] for s in segments)
        windows = windows_by_server(conn, client, {s[0] for s in segments}, lo, hi)
        seconds = rollup_seconds(segments, windows)
        add_rollups(conn, client, seconds)
    return len(seconds)
