"""``python -m history``: the history store's command.

- ``import FILE --client SLUG [--interval S]``: bring check history over from another
  monitoring tool (:func:`history.importer.import_file`);
- ``repack``: fill ``check_intervals.packed`` in rows written by another tool;
- ``announce --client SLUG [--server NAME ...] --start T --end T --by WHO --reason WHY
  [--announced-at T]``: record a maintenance window announced to the client, which the
  reports count as planned time (:mod:`history.announce`).

Every subcommand takes ``--store URL`` (default: the configured history store). A refused
input prints what is wrong and exits 1; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.errors import AnnouncementRefused, ImportRejected, InventoryError
from core.settings import settings
from history.announce import check_announcement, parse_local_time, record_announcement
from history.fold import DEFAULT_CHECK_INTERVAL
from history.importer import import_file
from history.migrations import repack
from history.store import open_store
from inventory import load_client_by_slug

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m history", description="The history store: import, repack, announce."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import", help="import a CSV or Parquet file (server, ts, ok[, latency_ms])"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--client", required=True, help="client slug the history belongs to")
    imp.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_CHECK_INTERVAL.total_seconds(),
        help="seconds between checks in the file; a silence over 3x is unknown (default 300)",
    )
    rep = sub.add_parser(
        "repack", help="fill check_intervals.packed in rows written by another tool"
    )
    ann = sub.add_parser(
        "announce",
        help="record a maintenance window announced to the client (planned time in reports)",
        description=(
            "Record a maintenance window the client was told about before it began; reports"
            " count it as planned maintenance from the announcement on. Times are ISO 8601;"
            " without a zone they are the client's local time."
        ),
    )
    ann.add_argument("--client", required=True, help="client slug")
    ann.add_argument(
        "--server",
        action="append",
        default=[],
        help="a server it covers (repeat for more); none: the whole client",
    )
    ann.add_argument("--start", required=True, help="window start, e.g. '2026-10-14 02:00'")
    ann.add_argument("--end", required=True, help="window end, after the start")
    ann.add_argument("--by", required=True, help="who announced it")
    ann.add_argument("--reason", required=True, help="what the maintenance is")
    ann.add_argument(
        "--announced-at",
        default=None,
        help="when the client was told, if earlier than now (must be before the start)",
    )
    for command in (imp, rep, ann):
        command.add_argument("--store", default=None, help="history store URL (default: settings)")
    return parser


def _announce(args: argparse.Namespace) -> int:
    inventory = load_client_by_slug(settings().inventory_dir, args.client)
    tz = inventory.tz
    now = datetime.now(UTC)
    announcement = check_announcement(
        inventory,
        args.server,
        parse_local_time(args.start, tz, "--start"),
        parse_local_time(args.end, tz, "--end"),
        by=args.by,
        reason=args.reason,
        announced_at=(
            now
            if args.announced_at is None
            else parse_local_time(args.announced_at, tz, "--announced-at")
        ),
        now=now,
    )
    with open_store(args.store) as store:
        rows = record_announcement(store, announcement)
    covers = ", ".join(announcement.servers) or "all servers"
    first = rows[0]
    print(
        f"announced: {announcement.client} ({covers}) {first.start.astimezone(tz):%Y-%m-%d %H:%M}"
        f" to {first.end.astimezone(tz):%Y-%m-%d %H:%M} {tz}, by {first.announced_by},"
        f" told {first.announced_at:%Y-%m-%d %H:%M} UTC: {first.reason}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m history``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "repack":
            with open_store(args.store) as store, store.engine.begin() as conn:
                print(f"packed {repack(conn)} interval row(s)")
            return 0
        if args.command == "announce":
            return _announce(args)
        with open_store(args.store) as store:
            result = import_file(
                store, args.client, args.file, max_gap=3 * timedelta(seconds=args.interval)
            )
    except (ImportRejected, AnnouncementRefused, InventoryError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"imported {result.samples} check(s) for {args.client}: "
        f"{result.intervals_written} interval row(s) written"
    )
    return 0
