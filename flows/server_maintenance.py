"""The ``server-maintenance`` flow: one client, one change.

Orchestration only: the policy's phases, in order, one call each. Each phase's IO
is a method of :class:`tasks.maintenance.Maintenance`; its decisions are pure
functions beside their domain (:mod:`tasks.rollout`, :mod:`tasks.approval`); the
change record is mapped, saved and published by :mod:`tasks.records`.

With ``dry_run=true`` it only plans: facts and apt's own simulation from every
host, in parallel, and the exact plan per host. Otherwise it carries out the
policy's change procedure:

    preflight ─► snapshot every server ─► patch staging ─► verify staging
      ─► approval (a form; the run waits suspended) ─► window gate
      ─► production in rolling batches (verify each; restore failed hosts; halt
         when the failure budget is spent) ─► security audit (findings for the record)
      ─► restore test ─► snapshot retention
      ─► change record (history store + artifact) ─► notices

A deployment's run waits for the approval (and the restore question) *suspended*: its
process exits, its SSH sessions closed, its client's run lock kept; once answered, any
worker runs it again from the start, and it takes its own change record up where it
stopped: preflight reads the hosts again, staging is not snapshotted, patched or
announced again, the wait goes on with the answer (:mod:`tasks.approval`). A run that is
no deployment's (a direct call) cannot be suspended: it pauses in its process.

Production is only ever touched after (a) a completed snapshot of it or a recorded
risk acceptance, (b) a passed staging verification, (c) a recorded approval by
enough listed approvers and (d) inside the maintenance window or with an override.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from core.logs import redact_logs
from core.redact import redact
from core.settings import settings
from history.change import ChangeRecord, Outcome
from history.records import redacted_record
from inventory import ClientInventory, Server, load_client_by_slug, select_servers
from tasks.approval import used_pause_keys
from tasks.maintenance import Maintenance, plan_fleet
from tasks.packages import MaintenancePlan
from tasks.records import new_change_record, open_recorder, publish_plan, requester
from tasks.sessions import HostSource, open_sessions, ssh_hosts


def derive_change_ref(
    client: str,
    given: str | None,
    flow_run_id: str,
    expected_start: datetime | None = None,
    scheduled: bool = False,
) -> str:
    """The run's change reference, the same for every retry of the run (pure).

    A run Prefect retries (or a worker resumes) is the same flow run, with the same id and
    the same expected start, so it gets the same reference and continues the same change:
    its snapshots are found instead of taken again, its record is the same record.

    * A reference given as a parameter is used as it is.
    * A scheduled run (created by the deployment's schedule): ``CHG-<client>-<slot>``, the
      slot being its scheduled start in UTC (``%Y%m%d-%H%M``), readable in a calendar.
    * Any other run (UI, API, a direct call): ``CHG-<client>-run-<flow run id>``.

    Never the current time alone: a rerun would then be a new change.

    Args:
        client: the client's slug.
        given: the ``change_ref`` parameter, if any.
        flow_run_id: the flow run's id.
        expected_start: the run's scheduled (expected) start; aware.
        scheduled: whether the deployment's schedule created the run.

    Returns:
        The change reference.
    """
    if given:
        return given
    if scheduled and expected_start is not None:
        return f"CHG-{client}-{expected_start.astimezone(UTC):%Y%m%d-%H%M}"
    return f"CHG-{client}-run-{flow_run_id}"


def run_change_ref(client: str, given: str | None) -> str:
    """The run's change reference: the one given, else derived from this flow run."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None:
        return derive_change_ref(client, given, str(flow_run.get_id()))
    return derive_change_ref(
        client, given, str(run.id), run.expected_start_time, run.auto_scheduled
    )


@flow(
    name="server-maintenance",
    # Prefect types TaskRunner invariantly; a thread pool runner is what it expects at run time.
    task_runner=ThreadPoolTaskRunner(max_workers=32),  # type: ignore[arg-type]
    validate_parameters=True,
)
def server_maintenance(
    client: str,
    dry_run: bool = False,
    change_ref: str | None = None,
    scope: str = "all",
    window_override: str | None = None,
) -> Any:
    """Maintain one client's servers through the change procedure, or plan it (dry run).

    Args:
        client: the client's slug, the name of its file in the inventory (``clients/<slug>.yaml``).
        dry_run: only plan: change nothing on any host (apt's package lists are refreshed).
        change_ref: the change ticket this run belongs to; when empty, derived from the
            flow run (:func:`derive_change_ref`), so a retry of the run is the same change.
            Rerunning with the same reference reuses its snapshots and skips work already done.
        scope: ``all``, ``staging``, ``production``, or a comma-separated list of server names.
        window_override: a reason to patch production outside the maintenance window
            (recorded in the change record); without it production waits for the window.

    Returns:
        The plan (dry run), or the change record; a run whose outcome is not
        ``completed`` ends Failed (Cancelled when rejected) with the record as its data.
    """
    redact_logs()  # every log line of the run is masked from here on (core/logs.py)
    try:
        inventory = load_client_by_slug(settings().inventory_dir, client)
        servers = select_servers(inventory, scope)
        change_ref = run_change_ref(client, change_ref)
        if dry_run:
            return plan_only(inventory, servers, change_ref)
        return maintain(inventory, servers, change_ref, scope, window_override)
    except Exception as exc:  # ends Failed all the same, with a masked message
        get_run_logger().exception("server-maintenance for %s failed", client)
        return failed_state(exc)


def plan_only(
    inventory: ClientInventory,
    servers: Sequence[Server],
    change_ref: str,
    hosts: HostSource = ssh_hosts,
) -> MaintenancePlan:
    """The dry run: the plan of every host, published; nothing changed."""
    logger = get_run_logger()
    logger.info("planning %s for %d server(s) of %s", change_ref, len(servers), inventory.slug)
    with open_sessions(inventory, servers, hosts) as sessions:
        plan = plan_fleet(inventory, servers, sessions, change_ref)
    publish_plan(plan)
    logger.info(
        "plan ready: %d package change(s) on %d host(s), %d host(s) not planned",
        plan.change_count,
        len(plan.hosts),
        len(plan.unreachable),
    )
    return plan


def maintain(
    inventory: ClientInventory,
    servers: Sequence[Server],
    change_ref: str,
    scope: str,
    window_override: str | None,
    hosts: HostSource = ssh_hosts,
) -> State[Any]:
    """The change procedure, phase by phase; the record is kept whatever happens.

    The run holds the client's run lock for its whole length (approval wait included,
    suspended or not).
    A phase that stops the run (:class:`~core.errors.MaintenanceStopped`) sets the
    outcome; the record is then saved, published and announced all the same.
    """
    run_id = str(flow_run.get_id())
    now = datetime.now(UTC)
    record = new_change_record(
        inventory,
        servers,
        change_ref=change_ref,
        scope=scope,
        flow_run_id=run_id,
        requested_by=requester(run_id),
        now=now,
        window_override=window_override,
    )
    # A deployment's run waits for answers suspended (no process, no SSH session; the
    # lock kept) and is run again from here once answered: it takes its record up.
    resumed = bool(used_pause_keys())
    with (
        open_recorder(record, resumed=resumed) as recorder,
        open_sessions(inventory, servers, hosts) as sessions,
    ):
        run = Maintenance(inventory, servers, sessions, recorder, window_override)
        with recorder.outcome(inventory, get_run_logger()):
            run.preflight()  # hosts answer, providers answer, every host planned
            if recorder.resumed:
                run.staging_done()  # run again after its wait: not done twice
            else:
                run.announce()  # the pre-change notice
                run.snapshot_all()  # a completed snapshot or an accepted risk per server
                run.patch_staging()  # staging patched and verified, or stop before approval
            if run.production:
                run.approve()  # enough listed approvers, or rejected / timed out
                run.window_gate()  # inside the window, or an override reason
                run.roll_out()  # batches; failed servers rolled back; halt past the budget
            run.complete()  # the outcome is decided here; what follows is for the record
            run.hygiene()  # planned removals/disables; malware scan, log review
            run.security_audit()
            run.restore_test()
            run.retention()
    return final_state(record)


def final_state(record: ChangeRecord) -> State[Any]:
    """The run's Prefect state from the record's outcome, with the record as its data.

    The message and the record pass the redaction every text leaving the run passes
    (:func:`core.redact.redact`, :func:`history.records.redacted_record`).
    """
    shown = redacted_record(record)
    outcome = shown.outcome.value if shown.outcome else "failed"
    message = f"{outcome}: {shown.outcome_detail}"
    if record.outcome == Outcome.COMPLETED:
        return Completed(message=message, data=shown)
    if record.outcome == Outcome.REJECTED:
        return Cancelled(message=message, data=shown)
    return Failed(message=message, data=shown)


def failed_state(exc: Exception) -> State[Any]:
    """The state of a run that raised: Failed, its message masked, the exception as data.

    Prefect's own state for a raised exception would carry the exception's text in clear;
    this one is the same but for the masking. The exception stays the state's data, so
    ``state.result()`` raises it (a direct call of the flow raises it as before).
    """
    return Failed(message=redact(f"failed: {type(exc).__name__}: {exc}")[:1000], data=exc)
