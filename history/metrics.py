"""Performance metrics in the history store: load, memory and disk per server (``metrics``,
schema version 3).

:func:`record_metrics` writes a batch of :class:`MetricSample` (a retried write replaces,
never doubles); :func:`read_metrics` reads samples back, and :func:`read_daily_metrics`
has the database summarise them per server per UTC day.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from history.schema import metrics, require_aware
from history.store import HistoryStore

__all__ = ["DailyMetrics", "MetricSample", "read_daily_metrics", "read_metrics", "record_metrics"]


@dataclass(frozen=True)
class MetricSample:
    """Performance metrics of one server at one time (a ``metrics`` row).

    Attributes:
        server: server name (unique within the client).
        ts: when they were measured (timezone-aware; stored in UTC).
        load1: 1-minute load average, or None.
        memory_used_pct: memory in use, %, or None.
        disk_used_pct: the fullest filesystem, % used, or None.
    """

    server: str
    ts: datetime
    load1: float | None = None
    memory_used_pct: float | None = None
    disk_used_pct: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", require_aware(self.ts, "metric time"))
        for name in ("load1", "memory_used_pct", "disk_used_pct"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                # NaN means "not measured" (pandas); an infinity is a broken probe.
                object.__setattr__(self, name, None if math.isnan(value) else value)
                if math.isinf(value):
                    raise ValueError(f"{self.server}: {name} is {value}")

    @property
    def empty(self) -> bool:
        """No metric at all (the server could not be measured)."""
        return self.load1 is None and self.memory_used_pct is None and self.disk_used_pct is None


@dataclass(frozen=True)
class DailyMetrics:
    """One server's metrics summarised over one UTC day.

    Attributes:
        client: client slug.
        server: server name.
        day: the UTC day.
        samples: metric rows that day.
        load1_avg: mean 1-minute load over the samples that have it (None: none has).
        load1_max: highest 1-minute load.
        memory_used_pct_max: highest memory use, %.
        disk_used_pct_max: highest disk use (fullest filesystem), %.
    """

    client: str
    server: str
    day: date
    samples: int
    load1_avg: float | None
    load1_max: float | None
    memory_used_pct_max: float | None
    disk_used_pct_max: float | None


def record_metrics(store: HistoryStore, client: str, samples: Iterable[MetricSample]) -> int:
    """Write a batch of metric samples of a client's servers, in one transaction.

    A sample without any metric (the server could not be measured) is not stored. A
    sample for a server and time already stored replaces it (a retried task writes
    the same samples again without doubling them).

    Args:
        store: the history store.
        client: client slug.
        samples: the samples, any servers of the client, any order.

    Returns:
        Rows written.
    """
    rows = [
        {
            "client": client,
            "server": sample.server,
            "ts": sample.ts,
            "load1": sample.load1,
            "memory_used_pct": sample.memory_used_pct,
            "disk_used_pct": sample.disk_used_pct,
        }
        for sample in samples
        if not sample.empty
    ]
    if not rows:
        return 0
    t = metrics
    with store.engine.begin() as conn:
        insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
        statement = insert.on_conflict_do_update(
            index_elements=[t.c.client, t.c.server, t.c.ts],
            set_={
                name: insert.excluded[name]
                for name in ("load1", "memory_used_pct", "disk_used_pct")
            },
        )
        for i in range(0, len(rows), 10_000):
            conn.execute(statement, rows[i : i + 10_000])
    return len(rows)


def _metrics_where(
    client: str, server: str | None, start: datetime | None, end: datetime | None
) -> list[sa.ColumnElement[bool]]:
    t = metrics
    where = [t.c.client == client]
    if server is not None:
        where.append(t.c.server == server)
    if start is not None:
        where.append(t.c.ts >= require_aware(start, "start"))
    if end is not None:
        where.append(t.c.ts < require_aware(end, "end"))
    return where


def read_metrics(
    store: HistoryStore,
    client: str,
    start: datetime | None = None,
    end: datetime | None = None,
    server: str | None = None,
) -> list[MetricSample]:
    """A client's metric samples in ``[start, end)``, by server then time.

    Args:
        store: the history store.
        client: client slug.
        start: only samples at or after this time (aware).
        end: only samples before this time (aware).
        server: only this server.
    """
    t = metrics
    query = (
        sa.select(t).where(*_metrics_where(client, server, start, end)).order_by(t.c.server, t.c.ts)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query).all()
    return [MetricSample(r.server, r.ts, r.load1, r.memory_used_pct, r.disk_used_pct) for r in rows]


_US_PER_DAY = 86_400_000_000


def read_daily_metrics(
    store: HistoryStore,
    client: str,
    start: datetime | None = None,
    end: datetime | None = None,
    server: str | None = None,
) -> list[DailyMetrics]:
    """Per server per UTC day: mean and highest load, highest memory and disk use.

    Computed by the database (one row per server and day comes back, however many
    samples there are). Samples in ``[start, end)``; a day cut by ``start`` or ``end``
    summarises only its samples inside. Days without samples are absent.

    Args:
        store: the history store.
        client: client slug.
        start: only samples at or after this time (aware).
        end: only samples before this time (aware).
        server: only this server.

    Returns:
        The summaries, by server then day.
    """
    t = metrics
    if store.dialect == "sqlite":
        # Epoch microseconds (schema version 4): the UTC day is a floor division.
        # SQLite's integer division truncates: floor by hand before 1970.
        us = sa.type_coerce(t.c.ts, sa.BigInteger)
        day: Any = sa.case((us >= 0, us // _US_PER_DAY), else_=(us + 1) // _US_PER_DAY - 1)
    else:
        day = sa.cast(sa.func.timezone("UTC", t.c.ts), sa.Date)
    day = day.label("day")
    query = (
        sa.select(
            t.c.server,
            day,
            sa.func.count().label("samples"),
            sa.func.avg(t.c.load1).label("load1_avg"),
            sa.func.max(t.c.load1).label("load1_max"),
            sa.func.max(t.c.memory_used_pct).label("memory_used_pct_max"),
            sa.func.max(t.c.disk_used_pct).label("disk_used_pct_max"),
        )
        .where(*_metrics_where(client, server, start, end))
        .group_by(t.c.server, day)
        .order_by(t.c.server, day)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query).all()
    epoch = date(1970, 1, 1)
    return [
        DailyMetrics(
            client=client,
            server=r.server,
            day=r.day if isinstance(r.day, date) else epoch + timedelta(days=int(r.day)),
            samples=int(r.samples),
            load1_avg=None if r.load1_avg is None else float(r.load1_avg),
            load1_max=r.load1_max,
            memory_used_pct_max=r.memory_used_pct_max,
            disk_used_pct_max=r.disk_used_pct_max,
        )
        for r in rows
    ]
