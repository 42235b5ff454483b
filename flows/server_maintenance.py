"""The ``server-maintenance`` flow: one client, one change.

Orchestration only: which tasks run, in what order and with what concurrency.
This version produces the exact plan (``dry_run=true``): it connects to every
selected host in parallel with verified host keys, collects facts and apt's own
simulation of the upgrade, and reports per host the packages that would change,
whether a reboot is expected, and which hosts could not be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import ConfigError, RemoteError
from blocks.inventory import load_client_by_slug, select_servers
from blocks.settings import settings
from tasks.checks import collect_facts
from tasks.packages import MaintenancePlan, plan_host, unreachable_host
from tasks.records import publish_plan
from tasks.sessions import open_sessions


def default_change_ref(client: str, now: datetime | None = None) -> str:
    """A change reference for runs started without one: ``CHG-<client>-<UTC time>``."""
    now = now or datetime.now(UTC)
    return f"CHG-{client}-{now:%Y%m%d-%H%M}"


@flow(
    name="server-maintenance",
    # Prefect types TaskRunner invariantly; a thread pool runner is what it expects at run time.
    task_runner=ThreadPoolTaskRunner(max_workers=32),  # type: ignore[arg-type]
    validate_parameters=True,
)
def server_maintenance(
    client: str,
    dry_run: bool = True,
    change_ref: str | None = None,
    scope: str = "all",
) -> MaintenancePlan:
    """Plan (and, from issue 3 on, carry out) the maintenance of one client's servers.

    Args:
        client: the client's slug, the name of its file in the inventory (``clients/<slug>.yaml``).
        dry_run: only plan: change nothing on any host (apt's package lists are refreshed).
        change_ref: the change ticket this run belongs to; generated when empty.
        scope: ``all``, ``staging``, ``production``, or a comma-separated list of server names.

    Returns:
        The plan: per host the package changes (from, to), the expected reboot, or why
        the host could not be planned.
    """
    logger = get_run_logger()
    inventory = load_client_by_slug(settings().inventory_dir, client)
    servers = select_servers(inventory, scope)
    if not dry_run:
        raise ConfigError(
            "this version of server-maintenance plans only: run it with dry_run=true "
            "(snapshot, patching, approval and rollout are the next step, issue 3)"
        )
    change_ref = change_ref or default_change_ref(client)
    logger.info("planning %s for %d server(s) of %s", change_ref, len(servers), client)

    with open_sessions(inventory, servers) as sessions:
        futures = {s.name: collect_facts.submit(sessions.host(s)) for s in servers}
        hosts = []
        for server in servers:
            state = futures[server.name].wait() or futures[server.name].state
            if state.is_completed():
                hosts.append(
                    plan_host(
                        server=server.name,
                        role=server.role,
                        address=server.address,
                        facts=futures[server.name].result(),
                        policy=inventory.patch.policy,
                        hold=list(inventory.patch.hold),
                        reboot_policy=inventory.patch.reboot,
                    )
                )
                continue
            error = state.result(raise_on_failure=False)
            if not isinstance(error, RemoteError):
                raise error if isinstance(error, BaseException) else RuntimeError(str(error))
            logger.warning("%s: not planned: %s", server.name, error)
            hosts.append(
                unreachable_host(
                    server=server.name, role=server.role, address=server.address, error=str(error)
                )
            )

    plan = MaintenancePlan(
        client=client,
        change_ref=change_ref,
        dry_run=dry_run,
        policy=inventory.patch.policy,
        hosts=hosts,
    )
    publish_plan(plan)
    logger.info(
        "plan ready: %d package change(s) on %d host(s), %d host(s) not planned",
        plan.change_count,
        len(plan.hosts),
        len(plan.unreachable),
    )
    return plan
