"""Benchmark data: 1-minute health checks of a fleet, as Parquet, with realistic outages.

Two data sets go to ``<settings().cache>/bench-data/`` (never into the repository):

* ``checks-200x90.parquet``: 200 servers x 90 days x 1-minute checks (25.9M rows);
* ``checks-500x365.parquet``: 500 servers x 365 days (262.8M rows).

Columns: ``server`` (dictionary string), ``ts`` (timestamp[ms, UTC]), ``ok`` (bool),
``latency_ms`` (float32). One row group per server, rows in time order; one server is
generated and written at a time, so memory stays bounded (~50 MB for a year).

Each server (seeded, reproducible) has: on average 2 outages a month of 2 to 120 minutes,
a one-check blip every 2 days, and a monitoring silence (rows missing) of 10 to 60
minutes about once a month. A weekly maintenance window (Sunday 02:00-03:00 UTC) is
written beside the data as ``windows.parquet``; outages are more likely inside it.

    .venv/bin/python benchmarks/report_data.py [--small] [--only 26m|263m]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import settings

T0 = np.datetime64("2026-01-01T00:00:00", "ms")
SETS = {"26m": (200, 90), "263m": (500, 365), "small": (20, 30)}
SCHEMA = pa.schema(
    [
        ("server", pa.dictionary(pa.int32(), pa.string())),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("ok", pa.bool_()),
        ("latency_ms", pa.float32()),
    ]
)


def data_dir() -> Path:
    path = settings().cache / "bench-data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def path_for(name: str) -> Path:
    servers, days = SETS[name]
    return data_dir() / f"checks-{servers}x{days}.parquet"


def one_server(rng: np.random.Generator, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minute offsets, ok flags and latencies of one server."""
    n = days * 1440
    ok = np.ones(n, dtype=bool)
    months = days / 30
    for _ in range(rng.poisson(2 * months)):
        start = int(rng.integers(0, n))
        ok[start : start + int(rng.integers(2, 121))] = False
    weeks = np.arange(3 * 1440 + 120, n, 7 * 1440)  # Sundays 02:00 (2026-01-04 is a Sunday)
    for w in weeks[rng.random(len(weeks)) < 0.3]:
        ok[w + int(rng.integers(0, 40)) : w + int(rng.integers(40, 90))] = False
    blips = rng.integers(0, n, size=rng.poisson(days / 2))
    ok[blips] = False
    keep = np.ones(n, dtype=bool)
    for _ in range(rng.poisson(months)):
        start = int(rng.integers(0, n))
        keep[start : start + int(rng.integers(10, 61))] = False
    minutes = np.flatnonzero(keep)
    latency = rng.gamma(2.0, 20.0, size=len(minutes)).astype(np.float32)
    return minutes, ok[keep], latency


def generate(name: str, seed: int = 42) -> Path:
    servers, days = SETS[name]
    path = path_for(name)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(seed)
    rows = 0
    started = time.perf_counter()
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        for i in range(servers):
            minutes, ok, latency = one_server(rng, days)
            ts = T0 + minutes.astype("timedelta64[m]").astype("timedelta64[ms]")
            names = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(ok), dtype=np.int32)), pa.array([f"srv{i:04d}"])
            )
            table = pa.table(
                [names, pa.array(ts, pa.timestamp("ms", tz="UTC")), ok, latency], schema=SCHEMA
            )
            writer.write_table(table, row_group_size=len(ok))
            rows += len(ok)
    tmp.replace(path)
    write_windows(days)
    took = time.perf_counter() - started
    size = path.stat().st_size / 2**20
    print(
        f"{name}: {rows:,} rows, {servers} servers x {days} days -> {path} "
        f"({size:,.0f} MiB) in {took:.1f} s"
    )
    return path


def write_windows(days: int) -> Path:
    """The weekly client-wide window, Sunday 02:00-03:00 UTC."""
    path = data_dir() / "windows.parquet"
    starts = T0 + (np.arange(3 * 1440 + 120, 366 * 1440, 7 * 1440)).astype("timedelta64[m]")
    table = pa.table(
        {
            "server": pa.array([None] * len(starts), pa.string()),
            "start": pa.array(starts.astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            "end": pa.array(
                (starts + np.timedelta64(60, "m")).astype("datetime64[ms]"),
                pa.timestamp("ms", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20 servers x 30 days only")
    parser.add_argument("--only", choices=["26m", "263m"], help="one of the two sets")
    args = parser.parse_args()
    names = ["small"] if args.small else [args.only] if args.only else ["26m", "263m"]
    for name in names:
        generate(name)


if __name__ == "__main__":
    main()
