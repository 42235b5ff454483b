"""The ``health-check`` flow: every server's checks, into the history store, every 5 minutes.

Orchestration only. For one client or all of them, all servers in parallel:

    run_health_checks (SSH reachability + the inventory's tcp / http / systemd checks,
    each bounded by its timeout)
      ─► collect_metrics (load, memory, disks) on the servers SSH reached
      ─► one sample per server ─► reports.ingest.ingest (state intervals + daily rollups)
         and reports.ingest.record_metrics (the metrics table)
      ─► a Prefect event per confirmed state change (caretaker.server.down / .up)
      ─► a table artifact per client (state, error, latency, load, memory, fullest disk)

A server is up when every one of its checks passed (a check that cannot tell counts as
failed: never healthy by default). A check task that crashes is not a server outage: that
server gets no sample (a long silence becomes ``unknown`` in the store) and the run ends
Failed naming it. See docs/health-check.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from blocks.inventory import ClientInventory, load_client_by_slug, load_inventory
from blocks.settings import settings
from reports.ingest import CheckSample, MetricSample, StateChange, ingest, record_metrics
from reports.store import open_store
from tasks.checks import (
    METRIC_FACTS,
    CheckResult,
    collect_metrics,
    run_health_checks,
    summarize_checks,
)
from tasks.facts import HostFacts
from tasks.sessions import FleetSessions, open_sessions

__all__ = [
    "EVENT_DOWN",
    "EVENT_UP",
    "METRIC_FACTS",
    "HealthCheckSummary",
    "ServerHealth",
    "collect_metrics",
    "emit_state_change",
    "health_check",
    "server_resource_id",
]

#: The facts read as performance metrics: one light SSH round trip, no apt.
#: Events emitted on confirmed state changes (see docs/health-check.md).
EVENT_DOWN = "caretaker.server.down"
EVENT_UP = "caretaker.server.up"


def server_resource_id(client: str, server: str) -> str:
    """The Prefect resource id of a server: ``caretaker.server.<client>.<server>``."""
    return f"caretaker.server.{client}.{server}"


class ServerHealth(BaseModel):
    """One server's result in one health-check run."""

    client: str = Field(description="Client slug.")
    server: str = Field(description="Server name.")
    ok: bool = Field(description="Every check passed.")
    error: str | None = Field(default=None, description="The failed checks, one per '; '.")
    latency_ms: float | None = Field(default=None, description="Service (else SSH) latency.")
    load1: float | None = Field(default=None, description="1-minute load average.")
    memory_used_pct: float | None = Field(default=None, description="Memory in use, %.")
    disk_used_pct: float | None = Field(default=None, description="Fullest filesystem, %.")
    metrics_error: str | None = Field(default=None, description="Why metrics are missing.")


class HealthCheckSummary(BaseModel):
    """What a health-check run saw and recorded."""

    checked_at: datetime = Field(description="The time every sample of the run carries.")
    servers: list[ServerHealth] = Field(description="One result per server checked.")
    changes: list[str] = Field(description="Confirmed state changes, as emitted.")
    crashed: list[str] = Field(description="client/server whose check task crashed.")

    @property
    def down(self) -> list[str]:
        """``client/server`` of every server that failed a check."""
        return [f"{s.client}/{s.server}" for s in self.servers if not s.ok]


def emit_state_change(change: StateChange) -> None:
    """Emit ``caretaker.server.down`` / ``.up`` with the server as the resource."""
    emit_event(
        event=EVENT_DOWN if change.state == "down" else EVENT_UP,
        resource={
            "prefect.resource.id": server_resource_id(change.client, change.server),
            "prefect.resource.name": f"{change.client}/{change.server}",
            "caretaker.client": change.client,
            "caretaker.server": change.server,
        },
        occurred=change.observed,
        payload={
            "state": change.state,
            "since": change.since.isoformat(),
            "checks": change.checks,
            "error": change.error,
        },
    )


def _latency(results: Sequence[CheckResult]) -> float | None:
    service = [r.latency_ms for r in results if r.kind != "ssh" and r.latency_ms is not None]
    ssh = [r.latency_ms for r in results if r.kind == "ssh" and r.latency_ms is not None]
    found = service or ssh
    return found[0] if found else None


def _health(client: str, server: str, results: Sequence[CheckResult]) -> ServerHealth:
    passed, failures = summarize_checks(results)
    return ServerHealth(
        client=client,
        server=server,
        ok=passed,
        error="; ".join(failures) or None,
        latency_ms=_latency(results),
    )


def _with_metrics(health: ServerHealth, state: State[Any]) -> ServerHealth:
    if not state.is_completed():
        return health.model_copy(update={"metrics_error": str(state.message or state.name)})
    facts: HostFacts = state.result()
    disks = [d.used_pct for d in facts.disks or []]
    return health.model_copy(
        update={
            "load1": facts.load.l1 if facts.load else None,
            "memory_used_pct": facts.memory.used_pct if facts.memory else None,
            "disk_used_pct": max(disks) if disks else None,
            "metrics_error": "; ".join(f"{k}: {v}" for k, v in facts.errors.items()) or None,
        }
    )


def _inventories(client: str | None) -> list[ClientInventory]:
    directory = settings().inventory_dir
    if client is not None:
        return [load_client_by_slug(directory, client)]
    return [inv for _, inv in sorted(load_inventory(directory).items())]


def _wait(futures: dict[tuple[str, str], PrefectFuture[Any]]) -> dict[tuple[str, str], State[Any]]:
    for future in futures.values():
        future.wait()
    return {key: future.state for key, future in futures.items()}


@flow(
    name="health-check",
    # Prefect types TaskRunner invariantly; a thread pool runner is what it expects at run time.
    task_runner=ThreadPoolTaskRunner(max_workers=64),  # type: ignore[arg-type]
    validate_parameters=True,
)
def health_check(client: str | None = None) -> State[Any]:
    """Check every server of one client (or all clients) and record the results.

    Args:
        client: a client's slug; None checks every client in the inventory.

    Returns:
        Completed with a :class:`HealthCheckSummary` (down servers are results, not
        failures), or Failed when a server's check task crashed (the others are recorded).
    """
    logger = get_run_logger()
    inventories = _inventories(client)
    checked_at = datetime.now(UTC)
    health: dict[tuple[str, str], ServerHealth] = {}
    crashed: list[str] = []
    with ExitStack() as stack:
        sessions: dict[str, FleetSessions] = {
            inv.slug: stack.enter_context(open_sessions(inv, inv.servers)) for inv in inventories
        }
        servers = {(inv.slug, s.name): (inv.slug, s) for inv in inventories for s in inv.servers}
        checks = _wait(
            {
                key: run_health_checks.submit(server, sessions[slug].host(server))
                for key, (slug, server) in servers.items()
            }
        )
        metrics: dict[tuple[str, str], PrefectFuture[Any]] = {}
        for key, state in checks.items():
            slug, server = servers[key]
            if not state.is_completed():
                crashed.append(f"{slug}/{server.name}")
                logger.error("%s/%s: health checks crashed: %s", slug, server.name, state.message)
                continue
            results: list[CheckResult] = state.result()
            health[key] = _health(slug, server.name, results)
            if any(r.kind == "ssh" and r.ok for r in results):
                metrics[key] = collect_metrics.submit(sessions[slug].host(server))
        for key, state in _wait(metrics).items():
            health[key] = _with_metrics(health[key], state)

    changes: list[StateChange] = []
    with open_store() as store:
        for inv in inventories:
            samples = [
                CheckSample(h.server, checked_at, h.ok, h.error, h.latency_ms)
                for (slug, _), h in health.items()
                if slug == inv.slug
            ]
            if samples:
                confirm_after = inv.monitoring.confirm_after
                changes += ingest(store, inv.slug, samples, confirm_after=confirm_after).changes
            record_metrics(
                store,
                inv.slug,
                [
                    MetricSample(h.server, checked_at, h.load1, h.memory_used_pct, h.disk_used_pct)
                    for (slug, _), h in health.items()
                    if slug == inv.slug
                ],
            )
    for change in changes:
        emit_state_change(change)
        logger.warning(
            "%s/%s is %s since %s",
            change.client,
            change.server,
            change.state,
            change.since.isoformat(),
        )

    for inv in inventories:
        rows = [
            h.model_dump(exclude={"client"}) for (slug, _), h in health.items() if slug == inv.slug
        ]
        if rows:
            create_table_artifact(
                key=f"health-{inv.slug}", table=rows, description=f"Health of {inv.slug}"
            )
    summary = HealthCheckSummary(
        checked_at=checked_at,
        servers=list(health.values()),
        changes=[f"{c.client}/{c.server} {c.state} since {c.since.isoformat()}" for c in changes],
        crashed=crashed,
    )
    logger.info(
        "%d server(s) checked, %d down, %d state change(s)",
        len(summary.servers),
        len(summary.down),
        len(changes),
    )
    if crashed:
        return Failed(message=f"health checks crashed for {', '.join(crashed)}", data=summary)
    return Completed(message=f"{len(summary.down)} server(s) down", data=summary)
