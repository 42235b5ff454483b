"""State intervals in the history store (``check_intervals``): rows written and read.

:func:`interval_row` is an :class:`history.fold.Interval` as a row (with its ``packed``
value, :data:`history.schema.PACKED_FIELDS`); :func:`open_interval` and
:func:`read_intervals` read rows back as intervals; :func:`read_intervals_frame` reads a
client's whole timeline as a pandas frame from the packed column in one query, the
report's input. Writing is done by :func:`history.ingest.ingest` (check by check) and
:func:`history.importer.bulk_import_intervals` (a whole history).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.errors import ConfigError
from history.fold import Interval
from history.schema import (
    PACKED_FIELDS,
    PACKED_FORMAT,
    STATE_CODES,
    check_intervals,
    pack_interval,
    require_aware,
    to_epoch_us,
)
from history.store import HistoryStore

__all__ = ["interval_row", "open_interval", "read_intervals", "read_intervals_frame"]


def _row_interval(row: sa.Row[Any]) -> Interval:
    return Interval(
        server=row.server,
        state=row.state,
        start=row.start,
        end=row.end,
        checks=row.checks,
        failures=row.failures,
        first_error=row.first_error,
        id=row.id,
    )


def interval_row(client: str, interval: Interval) -> dict[str, Any]:
    """An interval as a ``check_intervals`` row of ``client``, with its ``packed`` value."""
    return {
        "client": client,
        "server": interval.server,
        "state": interval.state,
        "start": interval.start,
        "end": interval.end,
        "checks": interval.checks,
        "failures": interval.failures,
        "first_error": interval.first_error,
        "packed": pack_interval(
            interval.state, interval.start, interval.end, interval.checks, interval.failures
        ),
    }


def open_interval(conn: Connection, client: str, server: str) -> Interval | None:
    """A server's latest interval (the one checks extend), or None."""
    t = check_intervals
    row = conn.execute(
        sa.select(t)
        .where(t.c.client == client, t.c.server == server)
        .order_by(t.c.start.desc(), t.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _row_interval(row)


def read_intervals(
    store: HistoryStore,
    client: str,
    server: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Interval]:
    """A client's intervals overlapping ``[start, end]``, by server then start.

    Args:
        store: the history store.
        client: client slug.
        server: only this server.
        start: only intervals ending at or after this time (aware).
        end: only intervals starting at or before this time (aware).
    """
    t = check_intervals
    query = sa.select(t).where(t.c.client == client)
    if server is not None:
        query = query.where(t.c.server == server)
    if start is not None:
        query = query.where(t.c.end >= require_aware(start, "start"))
    if end is not None:
        query = query.where(t.c.start <= require_aware(end, "end"))
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query.order_by(t.c.server, t.c.start, t.c.id)).all()
    return [_row_interval(row) for row in rows]


def read_intervals_frame(
    store: HistoryStore, client: str, start: datetime | None = None, end: datetime | None = None
) -> Any:
    """A client's intervals overlapping ``[start, end]`` as a pandas frame, by server
    (code-point order), start and end: the report's input.

    Columns: ``server``, ``state`` (categorical of str), ``start``, ``end``
    (``datetime64[us, UTC]``), ``checks``, ``failures`` (int64), ``first_error`` (object,
    None when no check failed).

    One query, answered on SQLite from the index ``ix_check_intervals_timeline`` alone: it
    holds each row's ``packed`` numbers, and the database concatenates them into one byte
    string per server (``group_concat`` / ``string_agg``), which numpy reads as it is; the
    errors come as one JSON array per server. The aggregates of one group see the rows in
    the same order, so they line up; the rows are then put in order with numpy.

    Raises:
        ConfigError: rows without ``packed`` (written by another tool); the message says
            how to fill them.
    """
    import json

    import numpy as np
    import pandas as pd

    t = check_intervals
    on_sqlite = store.dialect == "sqlite"
    # Constants are written into the SQL: a bound one is copied for every row.
    blobs: Any
    if on_sqlite:
        blobs = sa.cast(sa.func.group_concat(t.c.packed, sa.literal_column("''")), sa.LargeBinary)
        errors = sa.func.json_group_array
    else:
        blobs = sa.func.string_agg(t.c.packed, sa.literal_column("''::bytea"))
        errors = sa.func.json_agg
    where = [t.c.client == client]
    if start is not None:
        where.append(t.c.end >= require_aware(start, "start"))
    if end is not None:
        # "+ 0" keeps SQLite on the timeline index (no range on start): grouping by server
        # then needs no sort, and the read never leaves the index.
        hi = require_aware(end, "end")
        where.append(
            sa.type_coerce(t.c.start, sa.BigInteger) + sa.literal_column("0") <= to_epoch_us(hi)
            if on_sqlite
            else t.c.start <= hi
        )
    query = (
        sa.select(
            t.c.server, sa.func.count(), sa.func.count(t.c.packed), blobs, errors(t.c.first_error)
        )
        .where(*where)
        .group_by(t.c.server)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            groups = sorted(tuple(row) for row in conn.execute(query))
    unpacked = [g[0] for g in groups if g[1] != g[2]]
    if unpacked:
        raise ConfigError(
            f"history store: check_intervals rows of {client}/{unpacked[0]}"
            f"{f' and {len(unpacked) - 1} more server(s)' if len(unpacked) > 1 else ''}"
            " have no packed value (written by another tool); fill them with"
            " `python -m history repack`"
        )
    names = np.array([g[0] for g in groups], dtype=object)
    counts = np.array([g[1] for g in groups], dtype=np.int64)
    n = int(counts.sum())
    numbers = np.frombuffer(
        b"".join(bytes(g[3]) for g in groups), dtype=PACKED_FORMAT[0] + "i8"
    ).reshape(n, len(PACKED_FIELDS))
    starts, ends, checks, failures, states = (
        numbers[:, k].astype(np.int64) for k in range(len(PACKED_FIELDS))
    )
    first_error = np.empty(n, dtype=object)
    if on_sqlite:  # one JSON text per server: parse them as one array
        first_error[:] = json.loads("[" + ",".join(g[4][1:-1] for g in groups) + "]")
    else:  # psycopg has parsed json_agg already
        first_error[:] = [e for g in groups for e in g[4]]
    code = np.repeat(np.arange(len(groups)), counts)
    # Rows by server, start, end: usually already so (the index order); sort when not.
    if n > 1:
        later = (starts[1:] > starts[:-1]) | ((starts[1:] == starts[:-1]) & (ends[1:] >= ends[:-1]))
        if not bool(((code[1:] != code[:-1]) | later).all()):
            order = np.lexsort((ends, starts, code))
            code, starts, ends, checks, failures, states = (
                a[order] for a in (code, starts, ends, checks, failures, states)
            )
            first_error = first_error[order]
    # Categoricals: a code per row and the names once (no string per row to make, filter
    # or compare).
    return pd.DataFrame(
        {
            "server": pd.Categorical.from_codes(code, categories=names),
            "state": pd.Categorical.from_codes(
                states, categories=sorted(STATE_CODES, key=lambda k: STATE_CODES[k])
            ),
            "start": pd.to_datetime(starts, unit="us", utc=True),
            "end": pd.to_datetime(ends, unit="us", utc=True),
            "checks": checks,
            "failures": failures,
            "first_error": pd.Series(first_error, dtype=object),
        }
    )
