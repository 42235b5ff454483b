"""Generate ``prefect.yaml`` from the client inventory: deployments as code.

One ``server-maintenance/<client>`` deployment per ``clients/<slug>.yaml``: the flow's
entrypoint, ``parameters: {client: <slug>}`` (every other parameter keeps the flow's
default), the ``caretaker-process`` work pool, the tags ``caretaker`` and ``client:<slug>``,
and the client's schedule: the cron expression of its cadence at the start of its
maintenance window, read in the client's IANA time zone (``day_or`` as the inventory
computes it, so "the first Saturday of the quarter" means days 1-7 AND Saturday).

Each client also gets two ``maintenance-report`` deployments, in its own time zone:
``maintenance-report/<slug>-monthly`` (06:00 on the 1st of each month, parameters
``{client}``: the flow reports the previous full month) and
``maintenance-report/<slug>-quarterly`` (06:30 on the 1st of January, April, July and
October, ``{client, period: last-quarter}``), and one ``security-audit/<slug>`` (05:00 on
the 15th of each month, between maintenance runs, ``{client}``). ``health-check/all``
runs every 5 minutes.

The same :class:`DeploymentSpec` values feed ``prefect.yaml`` (worker mode) and
``deployments.serve`` (the embedded serve mode), so the two modes cannot drift apart.

Usage (from the repository root)::

    python -m deployments.generate            # write prefect.yaml
    python -m deployments.generate --check    # exit 1 (with a diff) if prefect.yaml is stale

Reading the inventory is offline: this module never talks to Prefect or imports a flow.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from core.errors import InventoryError
from core.settings import REPO_ROOT, settings, telemetry_off
from inventory import ClientInventory, format_duration, load_inventory

__all__ = [
    "BUILD_STEPS",
    "HEARTBEAT_FREQUENCY_S",
    "MAINTENANCE_ENTRYPOINT",
    "MAINTENANCE_FLOW",
    "PREFECT_YAML",
    "PULL_STEPS",
    "REPORT_ENTRYPOINT",
    "REPORT_FLOW",
    "SCHEDULE_SLUG",
    "SHARED_STORE_ENV",
    "WORK_POOL",
    "WORK_POOL_TYPE",
    "DeploymentSpec",
    "audit_spec",
    "deployment_specs",
    "main",
    "maintenance_spec",
    "prefect_yaml",
    "render",
    "report_specs",
]

#: The generated file, at the repository root where ``prefect deploy`` looks for it.
PREFECT_YAML = REPO_ROOT / "prefect.yaml"

#: The work pool every generated deployment targets, and its type.
WORK_POOL = "caretaker-process"
WORK_POOL_TYPE = "process"

MAINTENANCE_FLOW = "server-maintenance"
MAINTENANCE_ENTRYPOINT = "flows/server_maintenance.py:server_maintenance"
REPORT_FLOW = "maintenance-report"
REPORT_ENTRYPOINT = "flows/maintenance_report.py:maintenance_report"
AUDIT_FLOW = "security-audit"
AUDIT_ENTRYPOINT = "flows/security_audit.py:security_audit"

#: Seconds between the heartbeats of a maintenance run (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
#: in the deployment's job variables; Prefect's floor is 30). A run whose heartbeats stop
#: is marked Crashed by the zombie-run automation (``deployments/automations.py``), which
#: releases its client's run lock to the next run.
HEARTBEAT_FREQUENCY_S = 60

#: The slug of a maintenance deployment's one schedule: with a slug, a redeploy updates
#: that schedule in place instead of replacing it (its id, and so its history, survive).
#: Health-check and report schedules have their own slugs (``DeploymentSpec.schedule_slug``).
SCHEDULE_SLUG = "maintenance-window"

#: The job variable that tells a run the history store must be the fleet's (worker mode):
#: with it, a run refuses a per-machine SQLite store (core.settings.CaretakerSettings.store_url).
SHARED_STORE_ENV = {"CARETAKER_HISTORY_STORE_SHARED": "true"}

# Where workers find the code: a git clone, per flow run, of the commit `prefect deploy`
# ran at, from the repository every machine can reach (the MSP's git server;
# `CARETAKER_GIT_REPOSITORY` at deploy time, else the deploying checkout's `origin`).
# Nothing of the deploying machine (no absolute path) is stored: each worker's run clones
# into its own temporary folder, and Prefect changes into the clone before importing the
# flow, so the flow, caretaker's packages and clients/ come from the deployed commit.
# The build steps fail `prefect deploy` when there is no repository to name.
BUILD_STEPS: list[dict[str, Any]] = [
    {
        "prefect.deployments.steps.run_shell_script": {
            "id": "caretaker-repository",
            "script": (
                'url="${CARETAKER_GIT_REPOSITORY:-$(git remote get-url origin)}" && echo "$url"'
            ),
            "shell": True,
            "stream_output": False,
        }
    },
    {
        "prefect.deployments.steps.run_shell_script": {
            "id": "caretaker-commit",
            "script": "git rev-parse HEAD",
            "stream_output": False,
        }
    },
]
PULL_STEPS: list[dict[str, Any]] = [
    {
        "prefect.deployments.steps.git_clone": {
            "repository": "{{ caretaker-repository.stdout }}",
            "commit_sha": "{{ caretaker-commit.stdout }}",
        }
    }
]

_HEADER = """\
# Generated by `python -m deployments.generate` from the client inventory: do not edit.
# Change clients/<slug>.yaml (or deployments/generate.py), then regenerate; CI runs
# `python -m deployments.generate --check`. Workers clone the repository at the deployed
# commit (CARETAKER_GIT_REPOSITORY, else origin); deploy from the repository root with
#   python -m deployments.fleet pool --store-url postgresql+psycopg://...   # once
#   prefect deploy --all
# See docs/deployments.md ("Several machines").
"""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, independent of how it is registered (prefect.yaml or serve).

    Attributes:
        flow_name: the flow's name (``server-maintenance``).
        entrypoint: ``path/to/file.py:function`` relative to the repository root.
        name: the deployment's name (the client's slug for per-client flows).
        parameters: parameters every run gets; the rest keep the flow's defaults.
        description: shown in the Prefect UI.
        tags: tags of the deployment (and so of its runs).
        cron: 5-field cron expression, read in ``timezone``.
        timezone: IANA time zone of the schedule (the client's).
        day_or: cron's day-of-month/day-of-week combination: OR (True) or AND (False).
        schedule_slug: the schedule's stable slug (what it is for, e.g. ``monthly-report``).
        env: environment of the flow run's process (the work pool's ``env`` job variable).
        concurrency_limit: at most this many runs of the deployment at once; a run
            beyond it is cancelled, not queued (collision strategy ``CANCEL_NEW``).
    """

    flow_name: str
    entrypoint: str
    name: str
    parameters: Mapping[str, Any]
    description: str
    tags: tuple[str, ...]
    cron: str
    timezone: str
    day_or: bool
    schedule_slug: str = SCHEDULE_SLUG
    env: Mapping[str, str] = field(default_factory=dict)
    concurrency_limit: int | None = None

    @property
    def full_name(self) -> str:
        """``<flow>/<deployment>``, the name users type (``server-maintenance/acme``)."""
        return f"{self.flow_name}/{self.name}"


def maintenance_spec(inventory: ClientInventory) -> DeploymentSpec:
    """The ``server-maintenance/<slug>`` deployment of one client."""
    schedule = inventory.schedule
    cron, day_or = schedule.cron_expression()
    window = schedule.window
    when = f"cron {cron}" if schedule.cadence == "cron" else schedule.cadence
    if window.weekday and schedule.cadence != "cron":
        when += f", first {window.weekday}"
    return DeploymentSpec(
        flow_name=MAINTENANCE_FLOW,
        entrypoint=MAINTENANCE_ENTRYPOINT,
        name=inventory.slug,
        parameters={"client": inventory.slug},
        description=(
            f"Server maintenance for {inventory.client.name} ({when}; window"
            f" {window.start:%H:%M} {inventory.client.timezone},"
            f" {format_duration(window.duration)})."
        ),
        tags=("caretaker", f"client:{inventory.slug}"),
        cron=cron,
        timezone=inventory.client.timezone,
        day_or=day_or,
        env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_FREQUENCY_S)},
    )


def health_check_spec() -> DeploymentSpec:
    """``health-check/all``: every client's servers, every 5 minutes.

    One run at a time: a run scheduled while the last one still checks is cancelled
    (``CANCEL_NEW``), so slow rounds cannot pile up on the estate.
    """
    return DeploymentSpec(
        flow_name="health-check",
        entrypoint="flows/health_check.py:health_check",
        name="all",
        parameters={},
        description="Health checks of every client's servers (state intervals in the store).",
        tags=("caretaker", "health"),
        cron="*/5 * * * *",
        timezone="UTC",
        day_or=True,
        schedule_slug="every-5-minutes",
        concurrency_limit=1,
    )


def report_specs(inventory: ClientInventory) -> list[DeploymentSpec]:
    """``maintenance-report/<slug>-monthly`` and ``-quarterly``, in the client's time zone.

    The monthly one passes no period (the flow reports the previous full month); the
    quarterly one passes ``last-quarter``. They run early on the 1st, once the period is over.
    """
    name = inventory.client.name
    monthly = DeploymentSpec(
        flow_name=REPORT_FLOW,
        entrypoint=REPORT_ENTRYPOINT,
        name=f"{inventory.slug}-monthly",
        parameters={"client": inventory.slug},
        description=f"Monthly uptime and maintenance report for {name} (the previous month).",
        tags=("caretaker", "report", f"client:{inventory.slug}"),
        cron="0 6 1 * *",
        timezone=inventory.client.timezone,
        day_or=True,
        schedule_slug="monthly-report",
    )
    quarterly = replace(
        monthly,
        name=f"{inventory.slug}-quarterly",
        parameters={"client": inventory.slug, "period": "last-quarter"},
        description=f"Quarterly uptime and maintenance report for {name} (the previous quarter).",
        cron="30 6 1 1,4,7,10 *",
        schedule_slug="quarterly-report",
    )
    return [monthly, quarterly]


def audit_spec(inventory: ClientInventory) -> DeploymentSpec:
    """``security-audit/<slug>``: monthly, on the 15th at 05:00 in the client's time zone."""
    return DeploymentSpec(
        flow_name=AUDIT_FLOW,
        entrypoint=AUDIT_ENTRYPOINT,
        name=inventory.slug,
        parameters={"client": inventory.slug},
        description=(
            f"Security audit of {inventory.client.name}'s servers (read-only): pending security"
            " updates, unexpected ports, sshd, firewall."
        ),
        tags=("caretaker", "security", f"client:{inventory.slug}"),
        cron="0 5 15 * *",
        timezone=inventory.client.timezone,
        day_or=True,
        schedule_slug="monthly-security-audit",
    )


def deployment_specs(inventories: Mapping[str, ClientInventory]) -> list[DeploymentSpec]:
    """Every deployment of the inventory, in a stable order (flow, then client slug)."""
    slugs = sorted(inventories)
    return (
        [maintenance_spec(inventories[slug]) for slug in slugs]
        + [health_check_spec()]
        + [spec for slug in slugs for spec in report_specs(inventories[slug])]
        + [audit_spec(inventories[slug]) for slug in slugs]
    )


def _yaml_entry(spec: DeploymentSpec) -> dict[str, Any]:
    """One item of prefect.yaml's ``deployments``.

    No deployment concurrency limit on maintenance: Prefect releases it while a run is
    paused for approval, so one run per client is the flow's run lock
    (docs/maintenance.md). ``health-check/all`` has one (``CANCEL_NEW``).
    """
    work_pool: dict[str, Any] = {
        "name": WORK_POOL,
        "job_variables": {"env": {**spec.env, **SHARED_STORE_ENV}},
    }
    entry: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "entrypoint": spec.entrypoint,
        "parameters": dict(spec.parameters),
        # The server refuses runs whose parameters do not fit the flow's parameter schema.
        "enforce_parameter_schema": True,
        "tags": list(spec.tags),
    }
    if spec.concurrency_limit is not None:
        entry["concurrency_limit"] = {
            "limit": spec.concurrency_limit,
            "collision_strategy": "CANCEL_NEW",
        }
    return entry | {
        "work_pool": work_pool,
        "schedules": [
            {
                "cron": spec.cron,
                "timezone": spec.timezone,
                "day_or": spec.day_or,
                "active": True,
                "slug": spec.schedule_slug,
            }
        ],
    }


def prefect_yaml(specs: Sequence[DeploymentSpec]) -> dict[str, Any]:
    """The ``prefect.yaml`` document (a mapping) for ``specs``."""
    return {
        "name": "caretaker",
        "prefect-version": "3.9",
        "build": BUILD_STEPS,
        "push": None,
        "pull": PULL_STEPS,
        "deployments": [_yaml_entry(spec) for spec in specs],
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML with lists indented under their key (as prefect.yaml is usually written)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render(inventory_dir: Path) -> str:
    """The text of ``prefect.yaml`` for the client files in ``inventory_dir``.

    Raises:
        InventoryError: a client file is invalid.
    """
    document = prefect_yaml(deployment_specs(load_inventory(inventory_dir)))
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return _HEADER + "\n" + body


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.generate [--check]``; returns the exit status."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="python -m deployments.generate",
        description="Write prefect.yaml (the deployments of every client) from the inventory.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and show the difference if prefect.yaml is stale",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="folder of client files (default: CARETAKER_INVENTORY_DIR, else clients/)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=PREFECT_YAML, help="default: <repo>/prefect.yaml"
    )
    args = parser.parse_args(argv)
    inventory_dir: Path = args.inventory or settings().inventory_dir
    output: Path = args.output

    try:
        text = render(inventory_dir)
    except InventoryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2

    current = output.read_text(encoding="utf-8") if output.exists() else ""
    if args.check:
        if current == text:
            print(f"{output} is up to date")
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{output} (committed)",
                tofile=f"{output} (generated from {inventory_dir})",
            )
        )
        print(f"{output} is stale: run `python -m deployments.generate`", file=sys.stderr)
        return 1

    if current != text:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    else:
        print(f"{output} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
