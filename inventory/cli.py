"""The inventory's command line: ``python -m inventory {check,schema}``.

``check`` validates client files (or folders of them) offline and prints one line per
good file and every problem of every bad one; ``schema`` writes the JSON Schema that is
committed as ``docs/inventory.schema.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import InventoryError
from inventory.loader import load_client
from inventory.models import ClientInventory
from inventory.schema import schema_json


def _summary(inv: ClientInventory) -> str:
    cron, _ = inv.schedule.cron_expression()
    return (
        f"{inv.slug}: {len(inv.staging)} staging, {len(inv.production)} production;"
        f" {inv.schedule.cadence} ({cron} {inv.client.timezone})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inventory {schema,check}``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m inventory", description="caretaker client inventory tools"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the JSON Schema of a client file")
    schema.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    check = commands.add_parser("check", help="validate client files (or folders of them)")
    check.add_argument("paths", nargs="+", type=Path, help="clients/<slug>.yaml files or folders")
    args = parser.parse_args(argv)

    if args.command == "schema":
        if args.output:
            args.output.write_text(schema_json(), encoding="utf-8")
        else:
            sys.stdout.write(schema_json())
        return 0

    failed = 0
    files: list[Path] = []
    for given in args.paths:
        files.extend(sorted(given.glob("*.yaml")) if given.is_dir() else [given])
    for file in files:
        try:
            inventory = load_client(file)
        except InventoryError as exc:
            failed += 1
            print(f"FAIL {file}", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"ok   {file}  ({_summary(inventory)})")
            for warning in inventory.client.approval_warnings():
                print(f"  warning: {warning}")
    if not files:
        print("no client files given", file=sys.stderr)
        return 2
    return 1 if failed else 0
