"""``caretaker-limits``: the estate's global concurrency limits on the Prefect server.

    caretaker-limits show                 # what the settings want, what the server has
    caretaker-limits apply [--dry-run]    # create the missing ones, set changed numbers

The limits (``tasks/limits.py``): ``caretaker-ssh-sessions`` (SSH sessions open at once
across every worker, ``CARETAKER_SSH_SESSIONS_LIMIT``) and one rate limit
``caretaker-aws-api-<region>`` per AWS region the inventory names
(``CARETAKER_AWS_API_CALLS_PER_S``). Run ``apply`` with the deployments (after
``prefect deploy --all``); a flow run creates a limit that is still missing from the
settings it runs with, and never changes one that exists. ``PREFECT_API_URL`` says which
server. Exit status: 0 done, 1 the API did not answer, 2 a bad inventory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.errors import InventoryError
from core.settings import settings, telemetry_off
from inventory import ClientInventory, load_inventory
from tasks.limits import LimitSpec, desired_limits, limit_actions, read_limits

__all__ = ["aws_regions", "describe", "main"]


def aws_regions(inventories: Mapping[str, ClientInventory]) -> list[str]:
    """The AWS regions of every server with an ``aws`` provider, sorted (pure)."""
    return sorted(
        {
            s.provider.region
            for inv in inventories.values()
            for s in inv.servers
            if s.provider.type == "aws"
        }
    )


def describe(spec: LimitSpec) -> str:
    """One limit, as a person reads it (pure)."""
    if spec.slot_decay_per_second:
        return f"rate {spec.slot_decay_per_second:g}/s (burst {spec.limit})"
    return f"{spec.limit} at once"


def _apply(specs: list[LimitSpec], dry_run: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )

    existing = read_limits(s.name for s in specs)
    with get_client(sync_client=True) as client:
        for action, spec in limit_actions(specs, existing):
            before = existing.get(spec.name)
            was = f" (was {describe(before)})" if before and action == "update" else ""
            print(f"{action:<6} {spec.name}: {describe(spec)}{was}")
            if dry_run or action == "keep":
                continue
            if action == "create":
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=spec.name,
                        limit=spec.limit,
                        slot_decay_per_second=spec.slot_decay_per_second,
                    )
                )
            else:
                client.update_global_concurrency_limit(
                    spec.name,
                    GlobalConcurrencyLimitUpdate(
                        limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second
                    ),
                )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="caretaker-limits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["show", "apply"])
    parser.add_argument("--dry-run", action="store_true", help="apply: say what, change nothing")
    parser.add_argument(
        "--inventory", type=Path, default=None, help="client files (default: the settings')"
    )
    args = parser.parse_args(argv)
    config = settings()
    try:
        regions = aws_regions(load_inventory(args.inventory or config.inventory_dir))
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = desired_limits(regions, config)
    from deployments.approve import against_api

    def command() -> int:
        if args.command == "apply":
            _apply(specs, args.dry_run)
            return 0
        existing = read_limits(s.name for s in specs)
        for spec in specs:
            have = existing.get(spec.name)
            print(
                f"{spec.name}: settings {describe(spec)}; server "
                + (describe(have) if have else "missing (created at first use)")
            )
        return 0

    return against_api(command, unreachable=1)


if __name__ == "__main__":
    sys.exit(main())
