"""Figures: what the schedule-slot rule hid, and how fast the demo month is made.

On the demo's generated history (``sandbox/history_month.py``, seeded, 90 days ending at
``--end``) of every example client, for the 30 days up to ``--end`` (what the demo reports):

* the **slot rule** (reports before issue 12): every day's schedule slot
  (``inventory.windows_between``) counted as planned maintenance, plus the announced windows;
* the **announced rule** (now): only the announced windows, from their announcement.

It prints, per client and in total, the maintenance seconds and the unplanned downtime
under each rule, and the share of the (announced-rule) unplanned downtime the slot rule
hid. Then the time to generate the 90 days and to announce and import them into a fresh
SQLite store through ``python -m history`` (in process), as the demo does.

    .venv/bin/python benchmarks/planned_time.py [--end 2026-12-05T01:00:00+00:00] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from history.cli import main as history
from history.parquet import parquet_to_intervals
from history.windows import StoredWindow
from inventory import load_inventory
from reports.compute import compute_report
from reports.inputs import servers_frame, windows_frame, with_time
from reports.periods import period_bounds
from sandbox.history_month import CHECK_EVERY, generate_history, showcase_period, write_checks

REPO = Path(__file__).resolve().parents[1]


def announced_windows(made: object, slug: str) -> list[StoredWindow]:
    return [
        StoredWindow(0, slug, None, a.start, a.end, "planned", None, a.announced_at, a.announced_at)
        for a in made.announced  # type: ignore[attr-defined]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--end", default="2026-12-05T01:00:00+00:00", help="end of the history")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    end = datetime.fromisoformat(args.end).astimezone(UTC)
    os.environ["CARETAKER_INVENTORY_DIR"] = str(REPO / "clients")  # what announce checks
    clients = load_inventory(REPO / "clients")
    totals = {"slot_m": 0.0, "ann_m": 0.0, "slot_u": 0.0, "ann_u": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for slug, inv in clients.items():
            made = generate_history(inv, end, seed=args.seed)
            path = write_checks(made, tmp)
            intervals = with_time(parquet_to_intervals(path, 3 * CHECK_EVERY))
            period = showcase_period(end, inv.tz)
            start, stop = period_bounds(period, inv.tz)
            announced = windows_frame(announced_windows(made, slug))
            slots = pd.DataFrame(
                [(None, a, b, "declared") for a, b in inv.windows_between(start, stop)],
                columns=["server", "start", "end", "kind"],
            )
            for column in ("start", "end"):
                slots[column] = pd.to_datetime(slots[column], utc=True)
            slot_rule = pd.concat([announced, slots], ignore_index=True)
            servers = servers_frame(inv)
            figures = {}
            for name, windows in (("slot", slot_rule), ("ann", announced)):
                total = compute_report(intervals, windows, servers, start, stop, inv.tz).total
                figures[name] = total.iloc[0]
            for key in ("slot", "ann"):
                totals[f"{key}_m"] += float(figures[key]["maintenance_s"])
                totals[f"{key}_u"] += float(figures[key]["unplanned_down_s"])
            hidden = 1 - figures["slot"]["unplanned_down_s"] / figures["ann"]["unplanned_down_s"]
            print(
                f"{slug} {period}: maintenance {figures['slot']['maintenance_s']:,.0f} s"
                f" (slot rule) vs {figures['ann']['maintenance_s']:,.0f} s (announced);"
                f" unplanned down {figures['slot']['unplanned_down_s']:,.0f} s vs"
                f" {figures['ann']['unplanned_down_s']:,.0f} s: the slot rule hid {hidden:.1%};"
                f" SLA met {figures['slot']['sla_met']} vs {figures['ann']['sla_met']}"
            )
        hidden = 1 - totals["slot_u"] / totals["ann_u"]
        print(
            f"all clients: maintenance {totals['slot_m']:,.0f} s vs {totals['ann_m']:,.0f} s;"
            f" unplanned down {totals['slot_u']:,.0f} s vs {totals['ann_u']:,.0f} s:"
            f" the slot rule hid {hidden:.1%} of the unplanned downtime"
        )

        started = time.perf_counter()
        made_all = {
            slug: generate_history(inv, end, seed=args.seed) for slug, inv in clients.items()
        }
        paths = {slug: write_checks(made, tmp) for slug, made in made_all.items()}
        generated = time.perf_counter() - started
        store = f"sqlite:///{tmp}/caretaker.db"
        started = time.perf_counter()
        quiet = contextlib.redirect_stdout(io.StringIO())  # the commands' own lines
        with quiet:
            for slug, made in made_all.items():
                for a in made.announced:
                    times = ["--start", a.start.isoformat(), "--end", a.end.isoformat()]
                    told = ["--announced-at", a.announced_at.isoformat()]
                    where = ["--store", store, "--client", slug]
                    history(["announce", *where, *times, "--by", "bench", "--reason", "x", *told])
                history(["import", str(paths[slug]), "--client", slug, "--store", store])
        imported = time.perf_counter() - started
        checks = sum(len(m.checks) for m in made_all.values())
        print(
            f"demo month: {checks:,} checks of {len(clients)} clients generated and written in"
            f" {generated:.2f} s, announced and imported in {imported:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
