"""Health checks into the history store: samples folded into state intervals and daily
rollups, in one transaction, with the confirmed state changes returned.

Every health check of a server is a :class:`history.fold.CheckSample`. The store does not
keep a row per check: consecutive samples of the same state are folded into one interval
(``check_intervals``, :func:`history.fold.extend_intervals`), and seconds per state per
UTC day are kept in ``daily_rollups`` (:mod:`history.rollups`). See docs/health-check.md.

:func:`ingest` is serialised per server (SQLite: the database write lock, ``BEGIN
IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock per client and server,
:func:`lock_server`), so two health-check runs writing at once lose nothing. It returns
the state changes that passed the confirmation rule, for the flow to publish as Prefect
events.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from history.fold import DEFAULT_MAX_GAP, CheckSample, Interval, State, extend_intervals
from history.intervals import interval_row, open_interval
from history.rollups import add_rollups, rollup_seconds, windows_by_server
from history.schema import check_intervals
from history.store import HistoryStore

__all__ = ["CONFIRM_AFTER", "IngestResult", "StateChange", "ingest", "lock_server"]


#: An outage is confirmed after this many consecutive failed checks (DESIGN.md §3).
CONFIRM_AFTER = 2


@dataclass(frozen=True)
class StateChange:
    """A server going down (confirmed) or coming back up.

    Attributes:
        client: client slug.
        server: server name.
        state: ``down`` or ``up``.
        since: when the change is dated: the first failure of the outage, or the first
            passing check after it.
        observed: the check that made the change known (the confirming failure for
            ``down``; equal to ``since`` for ``up``).
        checks: consecutive checks in the new state when the change was detected.
        error: the outage's first error (for ``down``), else None.
    """

    client: str
    server: str
    state: Literal["down", "up"]
    since: datetime
    observed: datetime
    checks: int
    error: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """What an :func:`ingest` did.

    Attributes:
        samples: samples applied.
        intervals_written: interval rows inserted or updated.
        changes: confirmed state changes, oldest first per server.
    """

    samples: int
    intervals_written: int
    changes: list[StateChange] = field(default_factory=list)


def _lock_key(client: str, server: str) -> int:
    digest = hashlib.blake2b(f"{client}/{server}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_server(conn: Connection, client: str, server: str) -> None:
    """Serialise writers of one server's intervals until the transaction ends."""
    # SQLite: the transaction began IMMEDIATE and already holds the database write lock.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(client, server))))


def _confirmed_down(interval: Interval | None, confirm_after: int) -> bool:
    return interval is not None and interval.state == "down" and interval.checks >= confirm_after


def ingest(
    store: HistoryStore,
    client: str,
    samples: Iterable[CheckSample],
    *,
    max_gap: timedelta = DEFAULT_MAX_GAP,
    confirm_after: int = CONFIRM_AFTER,
) -> IngestResult:
    """Fold samples into the store's intervals and daily rollups, in one transaction.

    Lock every server (in name order, so concurrent writers lock in the same order); for
    each, read its open interval and apply the samples in time order with
    :func:`extend_intervals`; then update the open rows and insert the new ones, and add
    the seconds the timeline advanced to ``daily_rollups`` (with their overlap with
    ``maintenance_windows`` recorded so far), each for every server at once (one
    statement with many rows: a 1000-server round took ~1 s one server at a time, 0.25 s
    so). Either everything is written or nothing.

    A server goes ``down`` when its down interval reaches ``confirm_after`` checks (dated
    from the first failure), and ``up`` at the first passing check after a confirmed
    outage; a shorter blip is stored as a short down interval but is no state change.

    Args:
        store: the history store.
        client: client slug.
        samples: the checks, in any order, for any of the client's servers.
        max_gap: the longest silence read as continuity; longer is ``unknown``.
        confirm_after: consecutive failures that confirm an outage (>= 1).

    Returns:
        How many samples and rows, and the confirmed state changes.
    """
    if confirm_after < 1:
        raise ValueError("confirm_after must be at least 1")
    by_server: dict[str, list[CheckSample]] = defaultdict(list)
    count = 0
    for sample in samples:
        by_server[sample.server].append(sample)
        count += 1
    changes: list[StateChange] = []
    written = 0
    t = check_intervals
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    segments: list[tuple[str, State, datetime, datetime]] = []
    servers = sorted(by_server)
    with store.engine.begin() as conn:
        for server in servers:
            lock_server(conn, client, server)
        for server in servers:
            current = open_interval(conn, client, server)
            before = current
            down = _confirmed_down(current, confirm_after)
            closed: list[Interval] = []
            for sample in sorted(by_server[server], key=lambda s: s.ts):
                done, current = extend_intervals(current, sample, max_gap)
                closed.extend(done)
                if current.state == "down" and current.checks >= confirm_after and not down:
                    down = True
                    changes.append(
                        StateChange(
                            client,
                            server,
                            "down",
                            current.start,
                            sample.ts,
                            current.checks,
                            current.first_error,
                        )
                    )
                elif current.state == "up" and down:
                    down = False
                    changes.append(
                        StateChange(client, server, "up", current.start, sample.ts, current.checks)
                    )
            assert current is not None  # at least one sample per server
            touched = [*closed, current]
            for interval in touched:
                if before is not None and interval.id == before.id:
                    updates.append({"_id": interval.id, **interval_row(client, interval)})
                    segments.append((server, interval.state, before.end, interval.end))
                else:
                    inserts.append(interval_row(client, interval))
                    segments.append((server, interval.state, interval.start, interval.end))
            written += len(touched)
        # Every server's rows in one statement each (executemany), not a few per server.
        if updates:
            conn.execute(t.update().where(t.c.id == sa.bindparam("_id")), updates)
        if inserts:
            conn.execute(t.insert(), inserts)
        segments = [s for s in segments if s[3] > s[2]]
        if segments:
            lo = min(s[2] for s in segments)
            hi = max(s[3] for s in segments)
            windows = windows_by_server(conn, client, sorted({s[0] for s in segments}), lo, hi)
            add_rollups(conn, client, rollup_seconds(segments, windows))
    return IngestResult(samples=count, intervals_written=written, changes=changes)
