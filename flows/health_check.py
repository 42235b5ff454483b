"""The ``health-check`` flow: every server's checks, into the history store, every 5 minutes.

Orchestration only. For one client or all of them, all servers in parallel,
in batches (one ``check_servers`` task per batch of 25 servers of a client or more on a big
round, threads inside, 64 servers at once in all, never more than the estate-wide SSH session limit
``caretaker-ssh-sessions``, whose slots each batch holds while it works: tasks/limits.py):

    per server: one SSH command (reachability, the inventory's systemd units, load,
    memory and disks: tasks.checks.build_health_script) + the inventory's tcp / http
    checks from here (each bounded by its timeout)
      ─► one sample per server ─► history.ingest.ingest (state intervals + daily rollups)
         and history.ingest.record_metrics (the metrics table)
      ─► a Prefect event per confirmed state change (caretaker.server.down / .up)
      ─► a table artifact per client (state, error, latency, load, memory, fullest disk)

A server is up when every one of its checks passed (a check that cannot tell counts as
failed: never healthy by default). Checks that crash are not a server outage: that
server gets no sample (a long silence becomes ``unknown`` in the store) and the run ends
Failed naming it. See docs/health-check.md.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from core.logs import redact_logs
from core.settings import settings
from history.fold import CheckSample
from history.ingest import StateChange, ingest
from history.metrics import MetricSample, record_metrics
from history.store import open_store
from inventory import ClientInventory, load_client_by_slug, load_inventory
from tasks.approval import end_expired_waits
from tasks.checks import (
    HEALTH_CONCURRENCY,
    METRIC_FACTS,
    CheckResult,
    ServerCheck,
    batch_threads,
    check_servers,
    health_batches,
    round_batch_size,
    summarize_checks,
)
from tasks.limits import ssh_session_limit
from tasks.sessions import FleetSessions, open_sessions

__all__ = [
    "EVENT_DOWN",
    "EVENT_UP",
    "METRIC_FACTS",
    "HealthCheckSummary",
    "ServerHealth",
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
    crashed: list[str] = Field(description="client/server whose checks crashed.")
    phase_s: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per phase: checks (with metrics), store, events, artifacts.",
    )

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


def _with_metrics(health: ServerHealth, check: ServerCheck) -> ServerHealth:
    facts = check.metrics
    if facts is None:
        return health.model_copy(update={"metrics_error": check.metrics_error})
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


@contextmanager
def _phase(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 3)


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
        failures), or Failed when a server's checks crashed (the others are recorded).
    """
    redact_logs()  # every log line of the run is masked from here on (core/logs.py)
    logger = get_run_logger()
    # A maintenance run waiting suspended has no process to keep its approval deadline:
    # every round ends the waits past theirs (tasks/approval.py); its failure is logged.
    expired = end_expired_waits(return_state=True)
    if not expired.is_completed():
        logger.warning("expired approval waits not ended: %s", expired.message)
    inventories = _inventories(client)
    checked_at = datetime.now(UTC)
    health: dict[tuple[str, str], ServerHealth] = {}
    crashed: list[str] = []
    timings: dict[str, float] = {}
    with ExitStack() as stack, _phase(timings, "checks"):
        sessions: dict[str, FleetSessions] = {
            inv.slug: stack.enter_context(open_sessions(inv, inv.servers)) for inv in inventories
        }
        servers = [(inv.slug, s) for inv in inventories for s in inv.servers]
        # Threads of the whole round: never more than the estate-wide SSH session limit.
        session_limit = ssh_session_limit()
        concurrency = min(HEALTH_CONCURRENCY, session_limit or HEALTH_CONCURRENCY)
        batches = health_batches(
            [len(inv.servers) for inv in inventories], round_batch_size(len(servers), concurrency)
        )
        threads = batch_threads([len(batch) for batch in batches], concurrency)
        # The batches share their threads (core/lanes.py): none idles while another has
        # servers left (batches never mix clients, so their shares of threads are uneven).
        round_key = uuid.uuid4().hex
        numbers: Counter[str] = Counter()
        futures: list[tuple[range, PrefectFuture[list[ServerCheck]]]] = []
        for batch, workers in zip(batches, threads, strict=True):
            slug = servers[batch[0]][0]
            numbers[slug] += 1
            hosts = [(s, sessions[slug].host(s)) for _, s in (servers[i] for i in batch)]
            # quote: Prefect would walk every server model of the batch looking for futures
            # (twice per batch, on this thread, before the batch starts; measured ~2.5 % of
            # the flow process's CPU at 1,000 servers): there are none.
            label = f"{slug}-{numbers[slug]}"
            futures.append((batch, check_servers.submit(label, quote(hosts), workers, round_key)))
        for batch, future in futures:
            future.wait()
            state = future.state
            checks: list[ServerCheck] = (
                state.result()
                if state.is_completed()
                else [
                    ServerCheck(server=servers[i][1].name, crashed=str(state.message or state.name))
                    for i in batch
                ]
            )
            for i, check in zip(batch, checks, strict=True):
                slug, server = servers[i]
                if check.results is None:
                    crashed.append(f"{slug}/{server.name}")
                    logger.error(
                        "%s/%s: health checks crashed: %s", slug, server.name, check.crashed
                    )
                    continue
                health[(slug, server.name)] = _with_metrics(
                    _health(slug, server.name, check.results), check
                )

    changes: list[StateChange] = []
    with _phase(timings, "store"), open_store() as store:
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
    with _phase(timings, "events"):
        for change in changes:
            emit_state_change(change)
            logger.warning(
                "%s/%s is %s since %s",
                change.client,
                change.server,
                change.state,
                change.since.isoformat(),
            )

    with _phase(timings, "artifacts"):
        for inv in inventories:
            rows = [
                h.model_dump(exclude={"client"})
                for (slug, _), h in health.items()
                if slug == inv.slug
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
        phase_s=timings,
    )
    logger.info(
        "%d server(s) checked, %d down, %d state change(s); %s",
        len(summary.servers),
        len(summary.down),
        len(changes),
        ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items()),
    )
    if crashed:
        return Failed(message=f"health checks crashed for {', '.join(crashed)}", data=summary)
    return Completed(message=f"{len(summary.down)} server(s) down", data=summary)
