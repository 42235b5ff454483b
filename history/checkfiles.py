"""Files of health checks from another monitoring tool (CSV or Parquet), read row by row.

The columns are ``server, ts, ok`` and optionally ``latency_ms`` (:data:`REQUIRED_COLUMNS`,
:data:`OPTIONAL_COLUMNS`). :func:`validate_rows` checks every row and collects every
problem with its line (CSV) or row (Parquet) number; :func:`load_samples` reads a whole
file and refuses it (:class:`core.errors.ImportRejected`) if any row is bad. The
vectorised reader of large Parquet files is :mod:`history.parquet`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from core.errors import ImportRejected
from history.fold import CheckSample

__all__ = [
    "MAX_SERVER_CHARS",
    "OPTIONAL_COLUMNS",
    "PARQUET_SUFFIXES",
    "REQUIRED_COLUMNS",
    "load_samples",
    "missing_columns",
    "validate_rows",
]


#: Columns an import file must have, and the optional one.
REQUIRED_COLUMNS = ("server", "ts", "ok")
OPTIONAL_COLUMNS = ("latency_ms",)


#: The longest server name an import accepts (the bound of the ``server`` column).
MAX_SERVER_CHARS = 255
#: The words an ``ok`` cell may hold.
_TRUE = frozenset({"true", "t", "1", "yes", "y", "up", "ok"})
_FALSE = frozenset({"false", "f", "0", "no", "n", "down", "fail", "failed"})


#: File suffixes read as Parquet.
PARQUET_SUFFIXES = (".parquet", ".pq")


def _parse_ts(value: object) -> datetime | str:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str) and value.strip():
        try:
            ts = datetime.fromisoformat(value.strip())
        except ValueError:
            return f"ts {value!r} is not an ISO 8601 timestamp"
    else:
        return f"ts {value!r} is missing or not a timestamp"
    if ts.tzinfo is None or ts.utcoffset() is None:
        return f"ts {value!s} has no time zone (add Z or +HH:MM)"
    return ts


def _parse_ok(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return f"ok {value!r} is not a boolean (true/false, 1/0, yes/no, up/down)"


def _parse_latency(value: object) -> float | str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return f"latency_ms {value!r} is not a number"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"latency_ms {value!r} is not a number"
    if not math.isfinite(number) or number < 0:
        return f"latency_ms {value!r} must be a finite number >= 0"
    return number


def validate_rows(
    rows: Iterable[tuple[int, Mapping[str, object]]], unit: str = "line"
) -> tuple[list[CheckSample], list[str]]:
    """Turn raw rows into samples, collecting every problem (pure).

    Args:
        rows: ``(number, {column: value})`` with the number shown in problems.
        unit: ``line`` (CSV: file line numbers) or ``row`` (Parquet: 1-based rows).

    Returns:
        ``(samples, problems)``: the file is good only when ``problems`` is empty.
    """
    samples: list[CheckSample] = []
    problems: list[str] = []
    for number, raw in rows:
        errors: list[str] = []
        server = raw.get("server")
        if not isinstance(server, str) or not server.strip():
            errors.append(f"server {server!r} is empty")
        elif len(server.strip()) > MAX_SERVER_CHARS:
            errors.append(f"server name is longer than {MAX_SERVER_CHARS} characters")
        ts = _parse_ts(raw.get("ts"))
        ok = _parse_ok(raw.get("ok"))
        latency = _parse_latency(raw.get("latency_ms"))
        errors.extend(v for v in (ts, ok, latency) if isinstance(v, str))
        if errors:
            problems.append(f"{unit} {number}: " + "; ".join(errors))
            continue
        assert isinstance(server, str) and isinstance(ts, datetime) and isinstance(ok, bool)
        assert latency is None or isinstance(latency, float)
        samples.append(CheckSample(server.strip(), ts, ok, latency_ms=latency))
    return samples, problems


def missing_columns(columns: Iterable[str], where: str) -> list[str]:
    """A problem naming the required columns ``columns`` lacks, at ``where``; or none."""
    have = {c.strip() for c in columns if c}
    gone = [c for c in REQUIRED_COLUMNS if c not in have]
    return [f"{where}: missing column(s) {', '.join(gone)}"] if gone else []


def _csv_rows(path: Path) -> tuple[list[tuple[int, Mapping[str, object]]], list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        problems = missing_columns(reader.fieldnames or [], "line 1")
        if problems:
            return [], problems
        rows: list[tuple[int, Mapping[str, object]]] = []
        for raw in reader:
            # line_num is the line the record ended on (a quoted field may span lines).
            if None in raw:
                problems.append(f"line {reader.line_num}: more fields than the header")
                continue
            rows.append((reader.line_num, {k.strip(): v for k, v in raw.items()}))
    return rows, problems


def _parquet_rows(path: Path) -> tuple[list[tuple[int, Mapping[str, object]]], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        return [], [f"not a readable Parquet file: {exc}"]
    problems = missing_columns(table.column_names, "schema")
    if problems:
        return [], problems
    names = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.column_names]
    columns = {name: table.column(name).to_pylist() for name in names}
    rows: list[tuple[int, Mapping[str, object]]] = [
        (index + 1, {name: columns[name][index] for name in names})
        for index in range(table.num_rows)
    ]
    return rows, []


def load_samples(path: Path | str) -> list[CheckSample]:
    """Read and validate an import file (``.csv`` or ``.parquet``) completely.

    Raises:
        ImportRejected: any bad row, a missing column, an empty or unreadable file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, problems = _csv_rows(path)
        unit = "line"
    elif suffix in PARQUET_SUFFIXES:
        rows, problems = _parquet_rows(path)
        unit = "row"
    else:
        raise ImportRejected(path, [f"unknown file type {suffix!r} (use .csv or .parquet)"])
    samples, bad = validate_rows(rows, unit)
    problems += bad
    if not problems and not samples:
        problems.append("the file has no rows")
    if problems:
        raise ImportRejected(path, problems)
    return samples
