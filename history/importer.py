"""The import of check history from another monitoring tool (its command,
``python -m history import FILE --client SLUG``, is in :mod:`history.cli`).

:func:`import_file` validates a whole file first (any bad row rejects it, with line
numbers, and nothing is written), then writes it in one transaction: a Parquet file of
servers new to the store takes the vectorised path (:func:`bulk_import_parquet`:
:mod:`history.parquet`, then :func:`bulk_import_intervals`), anything else is folded in
check by check (:func:`history.ingest.ingest`).
"""

from __future__ import annotations

import logging
import struct
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core.errors import HistoryExists, ImportRejected
from history.checkfiles import PARQUET_SUFFIXES, load_samples
from history.fold import DEFAULT_MAX_GAP
from history.ingest import IngestResult, ingest, lock_server
from history.parquet import parquet_to_intervals
from history.rollups import add_rollups, rollup_seconds, windows_by_server
from history.schema import PACKED_FIELDS, PACKED_FORMAT, STATE_CODES, check_intervals
from history.store import HistoryStore

log = logging.getLogger(__name__)

__all__ = ["bulk_import_intervals", "bulk_import_parquet", "import_file"]


def import_file(
    store: HistoryStore, client: str, path: Path | str, *, max_gap: timedelta = DEFAULT_MAX_GAP
) -> IngestResult:
    """Validate a whole file, then ingest it in one transaction (all or nothing).

    A Parquet file whose servers have no history in the store yet (bringing a fleet over
    from another tool) takes the vectorised path, :func:`bulk_import_parquet`: same
    validation, same intervals and rollups, millions of checks a second. Otherwise (CSV, or
    a server that already has intervals) every check is folded in by :func:`ingest`.

    Raises:
        ImportRejected: the file has problems; the store is unchanged.
    """
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        intervals = parquet_to_intervals(path, max_gap)
        if len(intervals) == 0:
            raise ImportRejected(path, ["the file has no rows"])
        try:
            written = bulk_import_intervals(store, client, intervals)
        except HistoryExists as exc:
            log.info("%s: %s; folding the file in check by check", path, exc)
        else:
            return IngestResult(samples=int(intervals["checks"].sum()), intervals_written=written)
    return ingest(store, client, load_samples(path), max_gap=max_gap)


_PACKED_SIZE = struct.calcsize(PACKED_FORMAT)


def _packed_rows(intervals: Any) -> bytes:
    """Every row's ``packed`` value (:data:`history.schema.PACKED_FIELDS`), concatenated."""
    import numpy as np
    import pandas as pd

    def micros(column: Any) -> Any:
        return column.to_numpy(dtype="datetime64[us]").view(np.int64)

    state = intervals["state"].map(STATE_CODES)
    if state.isna().any():
        raise ValueError(f"states other than {sorted(STATE_CODES)}")
    numbers = np.column_stack(
        [
            micros(pd.to_datetime(intervals["start"], utc=True)),
            micros(pd.to_datetime(intervals["end"], utc=True)),
            intervals["checks"].to_numpy(dtype=np.int64),
            intervals["failures"].to_numpy(dtype=np.int64),
            state.to_numpy(dtype=np.int64),
        ]
    )
    assert numbers.shape[1] == len(PACKED_FIELDS)
    return numbers.astype(PACKED_FORMAT[0] + "i8").tobytes()


def bulk_import_intervals(store: HistoryStore, client: str, intervals: Any) -> int:
    """Insert compressed intervals (a fresh history) and their daily rollups, one transaction.

    For servers with no interval in the store yet (an import of another tool's history):
    a server that already has intervals is refused (use :func:`import_file`, which folds
    checks into its open interval), and nothing is written.

    Returns:
        Interval rows written.

    Raises:
        HistoryExists: a server in ``intervals`` already has intervals for ``client``.
    """
    import numpy as np

    t = check_intervals
    servers = sorted(str(s) for s in intervals["server"].unique())
    packed = _packed_rows(intervals)
    names = intervals["server"].astype(str).tolist()
    states = intervals["state"].astype(str).tolist()
    starts = intervals["start"].dt.to_pydatetime().tolist()
    ends = intervals["end"].dt.to_pydatetime().tolist()
    on_sqlite = store.dialect == "sqlite"

    def stamps(column: str, values: list[datetime]) -> list[Any]:
        # SQLite stores epoch microseconds (UtcDateTime); PostgreSQL takes the datetimes.
        if not on_sqlite:
            return values
        return intervals[column].to_numpy(dtype="datetime64[us]").view(np.int64).tolist()

    # Plain tuples to the driver's executemany: SQLAlchemy's per-row parameter processing
    # was most of the time (263M: 28 s -> see docs/reports.md).
    rows = list(
        zip(
            [client] * len(names),
            names,
            states,
            stamps("start", starts),
            stamps("end", ends),
            intervals["checks"].astype("int64").tolist(),
            intervals["failures"].astype("int64").tolist(),
            intervals["first_error"].tolist(),
            [packed[i : i + _PACKED_SIZE] for i in range(0, len(packed), _PACKED_SIZE)],
            strict=True,
        )
    )
    mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"
    # Constants only: the values go as parameters.
    marks = ", ".join([mark] * 9)
    insert = f'INSERT INTO check_intervals (client, server, state, start, "end", checks, failures, first_error, packed) VALUES ({marks})'  # noqa: E501, S608
    with store.engine.begin() as conn:
        for server in servers:
            lock_server(conn, client, server)
        taken = conn.execute(
            sa.select(t.c.server).where(t.c.client == client, t.c.server.in_(servers)).limit(1)
        ).first()
        if taken is not None:
            raise HistoryExists(f"{taken.server} already has intervals; use import_file")
        for i in range(0, len(rows), 50_000):
            conn.exec_driver_sql(insert, rows[i : i + 50_000])
        segments = [
            (server, state, start, end)
            for server, state, start, end in zip(names, states, starts, ends, strict=True)
            if end > start
        ]
        if segments:
            lo = min(s[2] for s in segments)
            hi = max(s[3] for s in segments)
            windows = windows_by_server(conn, client, servers, lo, hi)
            add_rollups(conn, client, rollup_seconds(segments, windows))
    return len(rows)


def bulk_import_parquet(
    store: HistoryStore, client: str, path: Path | str, *, max_gap: timedelta = DEFAULT_MAX_GAP
) -> int:
    """The vectorised import: validate and compress the file, then insert (all or nothing).

    Raises:
        ImportRejected: the file has problems; the store is unchanged.
        HistoryExists: a server of the file already has intervals (see
            :func:`bulk_import_intervals`); the store is unchanged.
    """
    return bulk_import_intervals(store, client, parquet_to_intervals(path, max_gap))
