"""``caretaker-prune``: remove the deployments of clients whose inventory file is gone.

    caretaker-prune --dry-run      # what would be removed
    caretaker-prune                # remove them from the Prefect server

``prefect deploy --all`` creates and updates deployments but never deletes one, so when
``clients/<slug>.yaml`` goes, that client's deployments (``server-maintenance/<slug>``,
its reports and its audit, with their schedules) would keep running against a client
that is gone. This command reads the deployments tagged ``caretaker`` and
``client:<slug>`` from the server (``PREFECT_API_URL``) and deletes those whose slug has
no client file in the inventory folder (``--inventory``, default the settings'); Prefect
deletes their scheduled runs with them. Deployments without a ``client:`` tag
(``health-check/all``) and deployments not tagged ``caretaker`` are never touched. An
inventory folder with no client at all is refused: a wrong path must not remove every
client. Exit status: 0 done, 1 the API did not answer, 2 a bad or empty inventory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from core.errors import InventoryError
from core.settings import settings, telemetry_off
from inventory import load_inventory

__all__ = ["CARETAKER_TAG", "Deployed", "caretaker_deployments", "main", "stale"]

CARETAKER_TAG = "caretaker"
_CLIENT_TAG = "client:"


class Deployed(NamedTuple):
    """A deployment on the server, as far as pruning cares."""

    id: Any
    name: str  # flow/deployment
    tags: tuple[str, ...]


def stale(deployed: Iterable[Deployed], slugs: Collection[str]) -> list[Deployed]:
    """The caretaker deployments of clients not in ``slugs`` (pure).

    A deployment counts only when tagged ``caretaker`` and with a ``client:<slug>`` tag;
    one naming several clients is stale only when none of them is left.
    """
    found = []
    for d in deployed:
        clients = [t.removeprefix(_CLIENT_TAG) for t in d.tags if t.startswith(_CLIENT_TAG)]
        if CARETAKER_TAG in d.tags and clients and not any(c in slugs for c in clients):
            found.append(d)
    return sorted(found, key=lambda d: d.name)


def caretaker_deployments() -> list[Deployed]:
    """Every deployment tagged ``caretaker`` on the server, with its flow's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterTags,
        FlowFilter,
        FlowFilterId,
    )

    deployed: list[Deployed] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_deployments(
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[CARETAKER_TAG])),
                limit=200,
                offset=offset,
            )
            ids = list({d.flow_id for d in page})
            flows = (
                {
                    f.id: f.name
                    for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=ids)))
                }
                if ids
                else {}
            )
            for d in page:
                flow = flows.get(d.flow_id, str(d.flow_id))
                deployed.append(Deployed(d.id, f"{flow}/{d.name}", tuple(d.tags)))
            if len(page) < 200:
                return deployed
            offset += 200


def _delete(deployments: Sequence[Deployed]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in deployments:
            try:
                client.delete_deployment(d.id)
            except ObjectNotFound:
                pass  # removed meanwhile: what was wanted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="caretaker-prune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="say what, remove nothing")
    parser.add_argument(
        "--inventory", type=Path, default=None, help="client files (default: the settings')"
    )
    args = parser.parse_args(argv)
    folder: Path = args.inventory or settings().inventory_dir
    try:
        slugs = set(load_inventory(folder))
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not slugs:
        print(f"error: no client file in {folder}: not removing every client", file=sys.stderr)
        return 2
    from deployments.approve import against_api

    def command() -> int:
        gone = stale(caretaker_deployments(), slugs)
        verb = "would remove" if args.dry_run else "removing"
        for d in gone:
            clients = ", ".join(t for t in d.tags if t.startswith(_CLIENT_TAG))
            print(f"{verb} {d.name} ({clients})")
        if not args.dry_run:
            _delete(gone)
        if not gone:
            print(f"every caretaker deployment has its client in {folder}")
        return 0

    return against_api(command, unreachable=1)


if __name__ == "__main__":
    sys.exit(main())
