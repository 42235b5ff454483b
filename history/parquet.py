"""Large Parquet files of health checks read by row group and folded into intervals,
vectorised (millions of checks a second).

:func:`parquet_to_intervals` validates like :func:`history.checkfiles.validate_rows` (any
bad row refuses the file, with its row number) and folds with
:func:`history.fold.fold_checks`; a row group whose statistics show a single server is
read without its ``server`` column. Used by the import (:mod:`history.importer`) and the
report benchmark.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.errors import ImportRejected
from history.checkfiles import MAX_SERVER_CHARS, missing_columns
from history.fold import DEFAULT_MAX_GAP, fold_checks, intervals_frame

__all__ = ["parquet_to_intervals"]


#: Nanoseconds per unit of an Arrow timestamp.
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _one_server(meta: Any, column: int) -> str | None:
    """The server of a row group whose statistics say every row has the same valid name.

    None (read the column) when the statistics are missing, show a null or several names,
    or the name would be rejected or trimmed by the row-wise validation.
    """
    stats = meta.column(column).statistics
    if stats is None or not stats.has_min_max or not stats.has_null_count or stats.null_count:
        return None
    name = stats.min
    if not isinstance(name, str) or name != stats.max:
        return None
    if not name or name != name.strip() or len(name) > MAX_SERVER_CHARS:
        return None
    return name


def _arrow_checks(
    table: Any, first_row: int, validate_latency: bool = True, server: str | None = None
) -> tuple[Any, Any, Any, int, list[str]]:
    """Validate one Arrow batch vectorised.

    ``server``: every row is this (valid) server and the table has no ``server`` column.

    Returns ``((names, name index per row or None), ts as int64, ok, ns per ts unit,
    problems with row numbers)``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    problems: list[str] = []
    ts = table.column("ts")
    ok = table.column("ok")
    if not pa.types.is_timestamp(ts.type) or ts.type.tz is None:
        problems.append(f"schema: ts must be a timezone-aware timestamp, not {ts.type}")
    if not pa.types.is_boolean(ok.type):
        problems.append(f"schema: ok must be boolean, not {ok.type}")
    if problems:
        return None, None, None, 1, problems
    bad = None
    if server is None:
        encoded = table.column("server").combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = encoded.cast(pa.string()).dictionary_encode()
        # Server names are checked once per distinct name, not once per row.
        names_ok = pc.and_(
            pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(encoded.dictionary)), 0),
            pc.less_equal(pc.utf8_length(encoded.dictionary), MAX_SERVER_CHARS),
        ).fill_null(False)
        bad_name = np.r_[~names_ok.to_numpy(zero_copy_only=False), True]
        indices = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
        bad = bad_name[indices] if bad_name[:-1].any() or encoded.null_count else None
    if ts.null_count or ok.null_count:
        nulls = pc.or_(pc.is_null(ts), pc.is_null(ok)).to_numpy(zero_copy_only=False)
        bad = nulls if bad is None else bad | nulls
    bad_rows = np.flatnonzero(bad) if bad is not None else np.empty(0, np.int64)
    if validate_latency and "latency_ms" in table.column_names:
        latency = table.column("latency_ms").cast(pa.float64())
        wrong = pc.or_kleene(pc.less(latency, 0), pc.is_nan(latency)).fill_null(False)
        bad_rows = np.union1d(bad_rows, np.flatnonzero(wrong.to_numpy(zero_copy_only=False)))
    problems.extend(
        f"row {first_row + int(i) + 1}: missing or invalid server, ts, ok or latency_ms"
        for i in bad_rows
    )
    if problems:
        return None, None, None, 1, problems
    if server is None:
        # Codes are local to the batch; the caller maps them to the file's names.
        names = [str(n).strip() for n in encoded.dictionary.to_pylist()]
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        if len(set(names)) < len(names):
            # Entries equal once trimmed ("web1", "web1 ") are one server.
            unique, first = np.unique(np.asarray(names, dtype=object), return_inverse=True)
            names, indices = list(unique), first[indices]
        codes = (np.asarray(names, dtype=object), indices)
    else:
        codes = (np.asarray([server], dtype=object), None)
    # Timestamps stay in the file's unit (no conversion pass); ok becomes one byte a row.
    ts_int = ts.combine_chunks().view(pa.int64()).to_numpy()
    return codes, ts_int, _bools(ok.combine_chunks()), _UNIT_NS[ts.type.unit], []


def _bools(values: Any) -> Any:
    """A null-free Arrow boolean array as a numpy bool array: the bitmap unpacked at once
    (``to_numpy`` is ~10x slower)."""
    import numpy as np

    offset, n = values.offset, len(values)
    if n == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(values.buffers()[1], np.uint8)
    return np.unpackbits(bits, count=offset + n, bitorder="little")[offset:].view(bool)


def parquet_to_intervals(
    path: Path | str,
    max_gap: timedelta = DEFAULT_MAX_GAP,
    *,
    threads: int = 2,
    check_latency: bool = True,
) -> Any:
    """Read a Parquet import file by row group and fold it into intervals, vectorised.

    Only ``server``, ``ts``, ``ok`` (and ``latency_ms`` for validation, unless
    ``check_latency`` is False, as for a report that does not use it) are read, ``threads``
    units at a time:

    * a row group whose statistics show one server (min = max, no null; what a writer
      grouping rows by server gives) is read without its ``server`` column, and the row
      groups of one such server are folded together;
    * any other row group is read whole (names validated once per dictionary entry) and
      folded alone; a server found in several units is folded again from the rows of the
      row groups that hold it (so memory is bounded by those row groups).

    Timestamps stay int64 in the file's unit until the intervals are formed. Same
    semantics as :func:`extend_intervals` per check.

    Returns:
        A pandas frame with the columns of ``check_intervals``, by server then start (see
        :func:`history.fold.raw_checks_to_intervals`).

    Raises:
        ImportRejected: any bad row (1-based row numbers), a missing column, an unreadable
            or empty file.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise ImportRejected(path, [f"not a readable Parquet file: {exc}"]) from exc
    schema = pf.schema_arrow.names
    problems = missing_columns(schema, "schema")
    if problems:
        raise ImportRejected(path, problems)
    wanted = ("server", "ts", "ok", "latency_ms") if check_latency else ("server", "ts", "ok")
    columns = [c for c in wanted if c in schema]
    meta = pf.metadata
    groups = range(meta.num_row_groups)
    offsets = np.r_[0, np.cumsum([meta.row_group(i).num_rows for i in groups])]
    if "server" in pf.schema.names:
        server_column = pf.schema.names.index("server")
        single = [_one_server(meta.row_group(i), server_column) for i in groups]
    else:
        single = [None for _ in groups]
    # Units of work: all row groups of one server known from statistics, or one row group.
    by_server: dict[str, list[int]] = defaultdict(list)
    units: list[tuple[list[int], str | None]] = []
    for i, name in enumerate(single):
        if name is None:
            units.append(([i], None))
        elif name not in by_server:
            units.append((by_server[name], name))
        if name is not None:
            by_server[name].append(i)
    max_gap_ns = max_gap // timedelta(microseconds=1) * 1000
    local = threading.local()

    def fold(unit: tuple[list[int], str | None]) -> tuple[Any, Any, list[str]]:
        # Nothing shared between threads (a shared ParquetFile can deadlock): each thread
        # parses the footer once, each unit maps the file (no read copy) and unmaps it
        # after (mapped pages would otherwise count in the resident memory until the end).
        if not hasattr(local, "meta"):
            local.meta = pq.read_metadata(path)
        rgs, name = unit
        read = columns if name is None else [c for c in columns if c != "server"]
        pieces, bad, unit_ns = [], [], 1
        with pq.ParquetFile(path, memory_map=True, metadata=local.meta) as file:
            for i in rgs:
                table = file.read_row_group(i, columns=read, use_threads=False)
                checks = _arrow_checks(table, int(offsets[i]), check_latency, name)
                del table
                bad.extend(checks[4])
                pieces.append(checks[:3])
                unit_ns = checks[3]
        if bad:
            return None, None, bad
        if len(pieces) == 1:
            (names, code), ts, ok = pieces[0]
        else:
            names, code = pieces[0][0]
            ts = np.concatenate([p[1] for p in pieces])
            ok = np.concatenate([p[2] for p in pieces])
        del pieces
        parts = fold_checks(
            None if code is None else code.astype(np.int64), ts, ok, max_gap_ns // unit_ns
        )
        return names, _in_ns(parts, unit_ns, path, rgs), []

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        results = list(pool.map(fold, units))
    for _, _, bad in results:
        problems.extend(bad)
    if problems:
        raise ImportRejected(path, problems)
    if offsets[-1] == 0:
        raise ImportRejected(path, ["the file has no rows"])
    # Local codes -> one sorted list of names for the file.
    seen: dict[str, int] = defaultdict(int)
    for names, parts, _ in results:
        for n in np.unique(names[parts["code"]]):
            seen[str(n)] += 1
    split = {n for n, count in seen.items() if count > 1}
    if split:
        # A server in several units: drop its pieces and fold all its checks together.
        rgs = sorted(
            i
            for unit, (names, parts, _) in zip(units, results, strict=True)
            if split.intersection(names[parts["code"]].tolist())
            for i in unit[0]
        )
        results = [_without(names, parts, split) for names, parts, _ in results]
        results.append(_fold_servers(path, columns, rgs, split, max_gap_ns))
    all_names = np.asarray(sorted(seen), dtype=object)
    lookup = {n: k for k, n in enumerate(all_names)}
    codes, chunks = [], []
    for names, parts, *_ in results:
        local_to_global = np.asarray([lookup.get(str(n), -1) for n in names], dtype=np.int64)
        codes.append(local_to_global[parts["code"]])
        chunks.append(parts)
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    merged["code"] = np.concatenate(codes)
    order = np.lexsort((merged["start"], merged["code"]))
    return intervals_frame({k: v[order] for k, v in merged.items()}, all_names)


def _in_ns(parts: dict[str, Any], unit_ns: int, path: Path | str, rgs: list[int]) -> Any:
    """``start``/``end`` of :func:`history.fold.fold_checks` output scaled to ns."""
    import numpy as np

    if unit_ns != 1 and len(parts["start"]):
        limit = np.iinfo(np.int64).max // unit_ns
        if parts["start"].min() < -limit or parts["end"].max() > limit:
            raise ImportRejected(
                path, [f"row group(s) {rgs}: ts outside what nanoseconds can hold"]
            )
        parts["start"] = parts["start"] * unit_ns
        parts["end"] = parts["end"] * unit_ns
    return parts


def _without(names: Any, parts: dict[str, Any], servers: set[str]) -> tuple[Any, Any, list[str]]:
    """A unit's intervals without those of ``servers``."""
    import numpy as np

    keep = ~np.isin(names.astype(str), list(servers))[parts["code"]]
    return names, {k: v[keep] for k, v in parts.items()}, []


def _fold_servers(
    path: Path | str, columns: list[str], rgs: list[int], servers: set[str], max_gap_ns: int
) -> tuple[Any, Any, list[str]]:
    """All checks of ``servers`` (rows already validated) from row groups ``rgs``, folded."""
    import numpy as np
    import pyarrow.parquet as pq

    names = np.asarray(sorted(servers), dtype=object)
    lookup = {n: k for k, n in enumerate(names)}
    pf = pq.ParquetFile(path)
    code, ts, ok, unit_ns = [], [], [], 1
    for i in rgs:
        table = pf.read_row_group(i, columns=[c for c in columns if c != "latency_ms"])
        (local, rows), t, o, unit_ns, _ = _arrow_checks(table, 0, False)
        mine = np.asarray([lookup.get(n, -1) for n in local], dtype=np.int64)[rows]
        keep = mine >= 0
        code.append(mine[keep])
        ts.append(t[keep])
        ok.append(o[keep])
    parts = fold_checks(
        np.concatenate(code), np.concatenate(ts), np.concatenate(ok), max_gap_ns // unit_ns
    )
    return names, _in_ns(parts, unit_ns, path, rgs), []
