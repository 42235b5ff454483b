"""Serve every deployment of the inventory from this process: the embedded mode.

``python -m deployments.serve`` is caretaker on one machine without a work pool or a
worker: it registers the same deployments ``prefect.yaml`` describes (built from the same
:class:`~deployments.generate.DeploymentSpec` values: names, parameters, tags, the
client's schedule in its own time zone) and runs their flow runs itself, each in a
subprocess, until it is stopped.

Start and stop:

* On start every served deployment is (re)created **unpaused** (``paused=False``), so a
  restart resumes the schedules the last stop paused. A deployment that ``prefect deploy``
  had bound to the ``caretaker-process`` work pool is taken over: its work pool is
  cleared (with a warning), otherwise a worker of that pool would also pick up its runs.
* On stop (Ctrl-C or SIGTERM, e.g. ``systemctl stop``) Prefect's runner **pauses** every
  served deployment: no scheduled run piles up while nothing can execute it. That is what
  a local mode wants; the schedules come back when serve starts again. The runner also
  cancels the flow runs it is executing (one awaiting approval included): stop it between
  maintenance runs, and rerun a cut-short change with the same ``change_ref``.
* Moving to a worker: ``prefect deploy --all`` binds each deployment to the work pool,
  adds the pull step and unpauses it. (Prefect 3.9 has no ``prefect deployment resume``;
  ``prefect deployment schedule resume`` toggles a schedule, not the deployment's pause.
  A deployment left paused is resumed in the UI, or with the client's
  ``resume_deployment``: see docs/deployments.md.)

Without ``PREFECT_API_URL`` it starts (or reuses) the local Prefect server of
:mod:`deployments.server`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings import settings, telemetry_off
from deployments.generate import DeploymentSpec, deployment_specs
from inventory import load_inventory

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

logger = logging.getLogger("caretaker.serve")


def flow_from_entrypoint(entrypoint: str) -> Flow[..., Any]:
    """Import the flow an entrypoint names (``flows/server_maintenance.py:server_maintenance``).

    It is imported as a module of the installed package, not loaded as a script, so the
    served deployment can name it by module path and run from any working directory.

    Raises:
        TypeError: the entrypoint does not name a Prefect flow.
    """
    from prefect import Flow

    path, _, attribute = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    candidate = getattr(module, attribute)
    if not isinstance(candidate, Flow):
        raise TypeError(f"{entrypoint} is not a Prefect flow")
    return candidate


def to_runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """The served form of one deployment."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    schedule = DeploymentScheduleCreate(
        # `cron=`/`timezone=` shortcuts of to_deployment cannot say day_or, and the slug
        # must match prefect.yaml's: the server refuses a slug-less update of a deployment
        # whose schedules have slugs, and with it the schedule keeps its id.
        schedule=CronSchedule(cron=spec.cron, timezone=spec.timezone, day_or=spec.day_or),
        active=True,
        slug=spec.schedule_slug,
    )
    deployment = flow_from_entrypoint(spec.entrypoint).to_deployment(
        name=spec.name,
        parameters=dict(spec.parameters),
        description=spec.description,
        tags=list(spec.tags),
        schedules=[schedule],
        concurrency_limit=(
            None
            if spec.concurrency_limit is None
            else ConcurrencyLimitConfig(
                limit=spec.concurrency_limit,
                collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW,
            )
        ),
        # serve() paused these when it last stopped; starting again must resume them.
        paused=False,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # to_deployment returns a coroutine only when called from async code; this is sync.
    if not isinstance(deployment, RunnerDeployment):
        raise TypeError(f"to_deployment returned {type(deployment).__name__}")
    return deployment


def release_from_work_pool(specs: Sequence[DeploymentSpec]) -> list[str]:
    """Clear the work pool of deployments about to be served; return their names.

    ``to_deployment`` never unsets a work pool, so a deployment ``prefect deploy`` created
    would keep its pool and a worker could pick up the runs this process is meant to run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    released = []
    with get_client(sync_client=True) as client:
        for spec in specs:
            try:
                existing = client.read_deployment_by_name(spec.full_name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                logger.warning(
                    "%s was bound to work pool %r; it is served from this process now",
                    spec.full_name,
                    existing.work_pool_name,
                )
                client.update_deployment(existing.id, DeploymentUpdate(work_pool_name=None))
                released.append(spec.full_name)
    return released


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.serve``: serve until stopped; returns the exit status."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description="Serve every caretaker deployment of the inventory from this process.",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="folder of client files (default: CARETAKER_INVENTORY_DIR, else clients/)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many flow runs at once"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if not os.environ.get("PREFECT_API_URL"):
        from deployments.server import ensure_server

        # Set before Prefect is imported: its settings are read once, at import.
        os.environ["PREFECT_API_URL"] = f"{ensure_server()}/api"
    logger.info("Prefect API: %s", os.environ["PREFECT_API_URL"])

    from prefect import serve

    inventory_dir: Path = args.inventory or settings().inventory_dir
    # The flow runs are subprocesses that read the inventory folder from the environment.
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory_dir.resolve())
    specs = deployment_specs(load_inventory(inventory_dir))
    if not specs:
        print(f"no client files in {inventory_dir}: nothing to serve", file=sys.stderr)
        return 2
    deployments = [to_runner_deployment(spec) for spec in specs]
    release_from_work_pool(specs)
    # Returns after Ctrl-C or SIGTERM, once the runner has paused every deployment.
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
