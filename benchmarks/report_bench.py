"""Benchmark: the report tables from the interval store and from raw Parquet checks.

Each measurement runs in a fresh child process; the figures are its wall time (inside
the child, around the measured step only) and its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child, which includes the
interpreter and imported libraries, ~150 MB for pandas + pyarrow).

Steps, per data set from ``benchmarks/report_data.py``:

* ``import``: ``history.importer.bulk_import_parquet`` into a fresh SQLite file in the cache
  (vectorised validation and compression, one transaction, rollups included);
* ``store``: ``read_intervals_frame`` + ``compute_report`` (all tables) from that store;
* ``raw``: ``parquet_to_intervals`` (only server/ts/ok read, by row group, 2 threads) +
  ``compute_report``;
* ``polars`` / ``duckdb``: the same raw -> intervals -> per-server uptime computation
  in each engine (in ``<cache>/bench-venv``, benchmark-only dependencies).

    .venv/bin/python benchmarks/report_bench.py [--set small|26m|263m ...] [--steps ...]
        [--max-mib MIB] [--timeout S] [--repeat N]

What a step needs is made when it is missing: the data set (``report_data.generate``,
about a minute for 26m, ten for 263m), the store (the ``import`` step, run first when
``store`` is asked for alone), and ``<cache>/bench-venv`` (``benchmarks/tool_venv.py``,
pinned polars and DuckDB); when that venv cannot be made, the two comparison steps are
skipped with a printed line.

``--max-mib`` / ``--timeout`` stop a step whose resident memory (sampled every 50 ms)
passes the bound or that runs longer; the figure is then where it was stopped. ``--repeat``
runs each step but ``import`` N times, each in a fresh process, and prints the median and
the range (this VM's timings drift by a third from one run to the next).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report_data import SETS, data_dir, path_for  # noqa: E402
from benchmarks.tool_venv import POLARS_DUCKDB, tool_venv  # noqa: E402
from core.settings import telemetry_off  # noqa: E402

MAX_GAP_MIN = 3  # 1-minute checks: a silence over 3 minutes is unknown

CHILD_PRELUDE = f"""
import json, resource, sys, time
from datetime import UTC, datetime, timedelta
sys.path.insert(0, {str(ROOT)!r})
"""

PANDAS_COMMON = """
import pandas as pd
from reports.compute import compute_report
from history.importer import bulk_import_parquet
from history.intervals import read_intervals_frame
from history.parquet import parquet_to_intervals
from history.store import open_store
DAYS = {days}
START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=DAYS)
windows = pd.read_parquet({windows!r})
windows = windows[(windows["start"] < pd.Timestamp(END))]
def report(intervals):
    # A single check before a silence (or the last one) is a zero-length interval: no time.
    intervals = intervals[intervals["end"] > intervals["start"]]
    names = sorted(intervals["server"].unique())
    servers = pd.DataFrame({{"server": names, "sla_target_pct": 99.9}})
    return compute_report(intervals, windows, servers, START, END, UTC)
"""

STEPS = {
    "import": """
store = open_store({db!r})
t = time.perf_counter()
rows = bulk_import_parquet(store, "bench", {path!r}, max_gap=timedelta(minutes={gap}))
took = time.perf_counter() - t
extra = f"{{rows:,}} interval rows"
""",
    "store": """
store = open_store({db!r})
t = time.perf_counter()
intervals = read_intervals_frame(store, "bench", START, END)
t_read = time.perf_counter() - t
tables = report(intervals)
took = time.perf_counter() - t
extra = f"read {{t_read:.2f}} s + compute {{took - t_read:.2f}} s; {{len(intervals):,}} intervals"
""",
    "raw": """
t = time.perf_counter()
intervals = parquet_to_intervals({path!r}, timedelta(minutes={gap}), check_latency=False)
t_read = time.perf_counter() - t
tables = report(intervals)
took = time.perf_counter() - t
extra = f"raw->intervals {{t_read:.2f}} s + tables {{took - t_read:.2f}} s"
""",
    "polars": """
import polars as pl
t = time.perf_counter()
gap = {gap} * 60_000_000
lf = pl.scan_parquet({path!r}).select(
    pl.col("server").cast(pl.String),
    pl.col("ts").dt.epoch("us").alias("t"),  # microseconds, like the DuckDB query
    "ok",
)
runs = (
    lf.with_columns(
        prev_t=pl.col("t").shift(1).over("server"),
        prev_ok=pl.col("ok").shift(1).over("server"),
    )
    .with_columns(gap=(pl.col("t") - pl.col("prev_t")) > gap)
    .with_columns(
        new=pl.col("prev_t").is_null() | pl.col("gap") | (pl.col("ok") != pl.col("prev_ok"))
    )
    .with_columns(run=pl.col("new").cum_sum().over("server"))
    .group_by("server", "run")
    .agg(ok=pl.col("ok").first(), start=pl.col("t").first(), last=pl.col("t").last(),
         checks=pl.len(), gap=pl.col("gap").first())
    .sort("server", "run")
    .with_columns(nxt=pl.col("start").shift(-1).over("server"),
                  nxt_gap=pl.col("gap").shift(-1).over("server"))
    .with_columns(end=pl.when(pl.col("nxt").is_not_null() & ~pl.col("nxt_gap").fill_null(True))
                  .then(pl.col("nxt")).otherwise(pl.col("last")))
    .with_columns(unknown=pl.when(pl.col("nxt_gap").fill_null(False))
                  .then(pl.col("nxt") - pl.col("last")).otherwise(0))
    .with_columns(confirmed=~pl.col("ok") & (pl.col("checks") >= 2))
    .group_by("server")
    .agg(down_ns=(pl.col("end") - pl.col("start")).filter(pl.col("confirmed")).sum(),
         observed_ns=(pl.col("end") - pl.col("start")).sum(),
         unknown_ns=pl.col("unknown").sum(),
         incidents=pl.col("confirmed").sum())
    .collect()
)
took = time.perf_counter() - t
extra = f"{{runs.height}} servers (per-server uptime only; no windows, no daily table)"
""",
    "duckdb": """
import duckdb
t = time.perf_counter()
con = duckdb.connect()
con.execute("SET threads=2")
gap = {gap} * 60_000_000
res = con.execute(f'''
WITH c AS (
  SELECT server::VARCHAR AS server, epoch_us(ts) AS t, ok FROM read_parquet('{path}')
), l AS (
  SELECT *, lag(t) OVER w AS prev_t, lag(ok) OVER w AS prev_ok
  FROM c WINDOW w AS (PARTITION BY server ORDER BY t)
), f AS (
  SELECT *, (t - prev_t) > {{gap}} AS gap,
         prev_t IS NULL OR (t - prev_t) > {{gap}} OR ok <> prev_ok AS new FROM l
), r AS (
  SELECT *, sum(new::INT) OVER (PARTITION BY server ORDER BY t ROWS UNBOUNDED PRECEDING) AS run
  FROM f
), g AS (
  SELECT server, run, first(ok ORDER BY t) AS ok, min(t) AS start, max(t) AS last,
         count(*) AS checks, first(gap ORDER BY t) AS gap FROM r GROUP BY server, run
), e AS (
  SELECT *, lead(start) OVER (PARTITION BY server ORDER BY run) AS nxt,
            lead(gap) OVER (PARTITION BY server ORDER BY run) AS nxt_gap FROM g
)
SELECT server,
  sum(CASE WHEN NOT ok AND checks >= 2 THEN (CASE WHEN nxt IS NOT NULL AND NOT nxt_gap
      THEN nxt ELSE last END) - start ELSE 0 END) AS down_us,
  sum(CASE WHEN nxt_gap THEN nxt - last ELSE 0 END) AS unknown_us,
  sum(CASE WHEN NOT ok AND checks >= 2 THEN 1 ELSE 0 END) AS incidents
FROM e GROUP BY server
''').fetchall()
took = time.perf_counter() - t
extra = f"{{len(res)}} servers (per-server uptime only; no windows, no daily table)"
""",
}

CHILD_EPILOGUE = """
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps({"seconds": took, "peak_mib": peak, "note": extra}))
"""


@functools.cache
def bench_python() -> str | None:
    """The python of ``<cache>/bench-venv`` (polars, DuckDB), made if missing; None if it
    cannot be made (tried once per run)."""
    bin_dir = tool_venv("bench-venv", POLARS_DUCKDB)
    return str(bin_dir / "python") if bin_dir is not None else None


def ensure_data(name: str) -> None:
    """Generate the data set ``name`` and the windows file when they are missing.

    In a child process: a step's peak memory is its child's ``ru_maxrss``, which starts
    from this process's peak (Linux keeps it across fork and exec), so this process must
    stay small."""
    if path_for(name).exists() and (data_dir() / "windows.parquet").exists():
        return
    print(f"generating the {name} data set (once, into {data_dir()})", flush=True)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from benchmarks.report_data import SETS, generate, path_for, write_windows\n"
        f"name = {name!r}\n"
        "generate(name) if not path_for(name).exists() else write_windows(SETS[name][1])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _rss_mib(pid: int) -> float:
    """Resident memory of a running process (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def _watched(
    argv: list[str], max_mib: float | None, timeout: float | None
) -> tuple[int, str, str, dict[str, object] | None]:
    """Run ``argv``; stop it when its resident memory passes ``max_mib`` or it runs longer
    than ``timeout`` seconds. Returns (exit code, stdout, stderr, the figure if stopped)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True, cwd=ROOT)
        peak, stopped = 0.0, None
        while child.poll() is None:
            peak = max(peak, _rss_mib(child.pid))
            took = time.monotonic() - started
            if max_mib is not None and peak > max_mib:
                stopped = f"stopped: resident memory over {max_mib:,.0f} MiB after {took:.1f} s"
            elif timeout is not None and took > timeout:
                stopped = f"stopped: still running after {timeout:.0f} s"
            if stopped:
                child.kill()
                child.wait()
                return -9, "", "", {"seconds": took, "peak_mib": peak, "note": stopped}
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return child.returncode, out.read(), err.read(), None


def run_step(
    step: str, name: str, max_mib: float | None = None, timeout: float | None = None
) -> dict[str, object]:
    _, days = SETS[name]
    path = str(path_for(name))
    db = f"sqlite:///{data_dir() / f'store-{name}.db'}"
    fields = {
        "path": path,
        "db": db,
        "gap": MAX_GAP_MIN,
        "days": days,
        "windows": str(data_dir() / "windows.parquet"),
    }
    body = STEPS[step].format(**fields)
    if step in ("polars", "duckdb"):
        code = CHILD_PRELUDE + body + CHILD_EPILOGUE
        bench = bench_python()
        if bench is None:
            nan = float("nan")
            note = "skipped: the polars/DuckDB venv could not be made (see above)"
            return {"seconds": nan, "peak_mib": nan, "note": note}
        python = bench
    else:
        code = CHILD_PRELUDE + PANDAS_COMMON.format(**fields) + body + CHILD_EPILOGUE
        python = str(ROOT / ".venv" / "bin" / "python")
    returncode, stdout, stderr, stopped = _watched([python, "-c", code], max_mib, timeout)
    if stopped is not None:
        return stopped
    if returncode != 0:
        return {
            "seconds": float("nan"),
            "peak_mib": float("nan"),
            "note": "FAILED: " + (stderr.strip().splitlines() or ["?"])[-1],
        }
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description="report benchmarks")
    parser.add_argument("--set", action="append", choices=list(SETS), dest="sets")
    parser.add_argument("--steps", default="import,store,raw,polars,duckdb")
    parser.add_argument(
        "--max-mib", type=float, help="stop a step whose resident memory passes this"
    )
    parser.add_argument("--timeout", type=float, help="stop a step running longer (seconds)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each step but import N times (a fresh process each): the median, the range",
    )
    args = parser.parse_args()
    telemetry_off()
    print(f"{'set':6} {'step':8} {'seconds':>8} {'peak MiB':>9}  note")
    for name in args.sets or ["26m"]:
        ensure_data(name)
        steps = args.steps.split(",")
        store = data_dir() / f"store-{name}.db"
        if "store" in steps and "import" not in steps and not store.exists():
            print(f"{name}: no store yet, the import step runs first", flush=True)
            steps.insert(0, "import")
        if "import" in steps:
            store.unlink(missing_ok=True)
        for step in steps:
            once = step == "import" or (step in ("polars", "duckdb") and bench_python() is None)
            runs = [
                run_step(step, name, args.max_mib, args.timeout)
                for _ in range(1 if once else max(1, args.repeat))
            ]
            r = repeated(runs)
            print(
                f"{name:6} {step:8} {r['seconds']:8.2f} {r['peak_mib']:9.0f}  {r['note']}",
                flush=True,
            )


def repeated(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure for several runs of a step: the median time (the run it came from gives
    the note), the largest peak, and the range of times."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: float(r["seconds"]))
    middle = dict(ordered[len(ordered) // 2])
    times = [float(r["seconds"]) for r in ordered]
    middle["peak_mib"] = max(float(r["peak_mib"]) for r in runs)
    middle["note"] = (
        f"median of {len(runs)} runs ({times[0]:.2f}-{times[-1]:.2f} s); {middle['note']}"
    )
    return middle


if __name__ == "__main__":
    main()
