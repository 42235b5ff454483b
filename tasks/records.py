"""The change record as the maintenance procedure writes it: its parts, its saves, its artifacts.

- The record's header (:func:`new_change_record`): window, backout plan, test plan, requester.
- Result-to-record mapping, pure: task results (a package diff, a reboot, a snapshot, a
  restore test, health checks and the suite) become the record's parts
  (:mod:`history.change`). The task-level models (``tasks.packages.PackageVersionChange``,
  ``tasks.tasks.snapshots.base.SnapshotRecord`` and ``RestoreTestResult``) say what a provider
  or a host did; the record's models say what the change-management evidence keeps.
  They differ in fields, so each is mapped in exactly one function here.
- :class:`ChangeRecorder`: the one place the record is saved to the history store (under
  the client's run lock), timed by phase, and finished (artifact and end notice).
- Artifacts: the plan, the change record, the rollout's progress. The markdown itself is
  :mod:`tasks.record_markdown`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.settings import PREFECT_UI_URL

import tasks.snapshots.base
from core.artifacts import artifact_key
from core.errors import MaintenanceStopped
from history import change
from history.change import ChangeRecord, ChangeWindow, HostResult, Outcome, PlanSummary
from history.store import HistoryStore, open_store
from inventory import ClientInventory, Server
from tasks.checks import CheckResult, summarize_checks
from tasks.notify import notice_end, notify
from tasks.packages import HostPlan, MaintenancePlan, PackageDiff
from tasks.preflight import holder_takeover
from tasks.reboot import RebootResult
from tasks.record_markdown import plan_markdown, plan_rows, render_markdown
from tasks.resume import continue_record, resume_record
from tasks.rollout import NOTHING_CHANGED


def publish_plan(plan: MaintenancePlan) -> None:
    """Show the plan in the Prefect UI as a table artifact and a markdown artifact, the
    flow run's own (no task run of its own: two API calls need no state machine).

    Args:
        plan: the plan to publish.
    """
    key = artifact_key("plan", plan.client)
    create_table_artifact(
        key=key,
        table=plan_rows(plan),
        description=f"Package plan for {plan.client}, change {plan.change_ref}",
    )
    create_markdown_artifact(
        key=key + "-summary",
        markdown=plan_markdown(plan),
        description=f"Maintenance plan for {plan.client}, change {plan.change_ref}",
    )


def run_url(flow_run_id: str) -> str:
    """The Prefect UI page of a flow run (the API URL's UI when no UI URL is set)."""
    base = PREFECT_UI_URL.value() or ""
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else f"flow run {flow_run_id}"


def change_window(inventory: ClientInventory, now: datetime, override: str | None) -> ChangeWindow:
    """The window this run belongs to: the one it is in, else the next one (pure).

    Args:
        inventory: the client.
        now: when the run started (aware).
        override: the reason given for running outside the window, if any.
    """
    inside = inventory.in_window(now)
    if inside:
        slots = inventory.windows_between(now - timedelta(days=2), now + timedelta(seconds=1))
        start, end = next((a, b) for a, b in slots if a <= now < b)
    else:
        start = inventory.next_window_start(now)
        end = start + inventory.schedule.window.duration
    return ChangeWindow(start=start, end=end, inside=inside, override=None if inside else override)


def backout_plan(inventory: ClientInventory, servers: Sequence[Server]) -> str:
    """How this change is undone, per server (pure)."""
    on_failure = inventory.rollout.on_failure
    after = (
        "restored from its snapshot automatically"
        if on_failure == "restore"
        else f"left for an operator (on_failure: {on_failure})"
    )
    lines = [
        "Every server is snapshotted before any change; a production server that fails "
        f"verification is {after} and verified again. By hand: see docs/rollback.md.",
        "",
    ]
    for server in servers:
        provider = server.provider
        if provider.type == "none":
            how = (
                f"no snapshot (accepted risk: {provider.reason}); "
                "downgrade with apt-get install <package>=<from version>"
            )
        elif provider.type == "aws":
            how = f"restore the EBS snapshot set tagged caretaker:change-ref in {provider.region}"
        elif provider.type == "rackspace":
            how = (
                f"rebuild server {provider.server_id} from its caretaker image ({provider.region})"
            )
        else:
            how = "restore the sandbox disk snapshot (python -m sandbox)"
        lines.append(f"- {server.name}: {how}")
    return "\n".join(lines)


def test_plan(inventory: ClientInventory, servers: Sequence[Server]) -> str:
    """How the change is verified (pure)."""
    staging = [s.name for s in servers if s.role == "staging"]
    lines = [
        f"1. Staging ({', '.join(staging) or 'none'}) is patched first and verified: health "
        "checks (tcp, http, ssh, systemd) and the expectation suite over its facts (no failed "
        "units, disk under the threshold, no pending reboot or security update, only allowed "
        "ports listening). A failure stops the run before approval.",
        f"2. Production is patched in batches of {inventory.rollout.batch_size}, each batch "
        "verified the same way before the next starts.",
    ]
    if inventory.restore_test.enabled:
        lines.append(
            "3. One fresh snapshot is restored to an isolated copy and checked (restore test, "
            f"bound {inventory.restore_test.timeout})."
        )
    return "\n".join(lines)


def new_change_record(
    inventory: ClientInventory,
    servers: Sequence[Server],
    *,
    change_ref: str,
    scope: str,
    flow_run_id: str,
    requested_by: str,
    now: datetime,
    window_override: str | None,
) -> ChangeRecord:
    """The record of a run as it starts: who, which window, the backout and test plans (pure)."""
    return ChangeRecord(
        client=inventory.slug,
        change_ref=change_ref,
        flow_run_id=flow_run_id,
        requester=requested_by,
        window=change_window(inventory, now, window_override),
        plan=PlanSummary(scope=scope, policy=inventory.patch.policy),
        backout_plan=backout_plan(inventory, servers),
        test_plan=test_plan(inventory, servers),
        approvals_required=inventory.client.approvals_required,
        started=now,
    )


def plan_summary(
    inventory: ClientInventory, servers: Sequence[Server], plan: MaintenancePlan, scope: str
) -> PlanSummary:
    """The record's summary of the production plan (pure)."""
    return PlanSummary(
        scope=scope,
        policy=inventory.patch.policy,
        staging=tuple(s.name for s in servers if s.role == "staging"),
        production=tuple(s.name for s in servers if s.role == "production"),
        package_changes=plan.change_count,
        reboots_expected=tuple(h.server for h in plan.hosts if h.reboot_expected),
    )


# --------------------------------------------------------------------------- task results -> parts


def recorded_snapshot(
    server: Server, snapshot: tasks.snapshots.base.SnapshotRecord | None, error: str | None
) -> change.SnapshotRecord:
    """The change record's entry for one server's snapshot (pure)."""
    provider = server.provider.type
    if snapshot is None:
        return change.SnapshotRecord(
            server=server.name, provider=provider, state="failed", detail=error or "no snapshot"
        )
    if snapshot.state == "accepted-risk":
        return change.SnapshotRecord(
            server=server.name,
            provider=provider,
            state="skipped",
            accepted_risk=snapshot.detail or "provider none",
        )
    state: Literal["completed", "pending", "failed"] = (
        "completed"
        if snapshot.state == "completed"
        else "pending"
        if snapshot.state == "pending"
        else "failed"
    )
    copies = ", ".join(f"{a} -> {b}" for a, b in snapshot.encrypted_copies.items())
    detail = "; ".join(
        x
        for x in (
            snapshot.detail,
            "reused from an earlier run" if snapshot.reused else "",
            f"encrypted copies: {copies}" if copies else "",
        )
        if x
    )
    return change.SnapshotRecord(
        server=server.name,
        provider=provider,
        ids=tuple(snapshot.ids),
        encrypted=snapshot.encrypted,
        state=state,
        detail=detail,
    )


def recorded_package_changes(plan: HostPlan, diff: PackageDiff) -> list[change.PackageChange]:
    """The packages a host's diff shows changed, marked security when the plan said so (pure)."""
    security = {c.name for c in plan.changes if c.security}
    return [
        change.PackageChange(
            server=plan.server,
            name=c.name,
            from_version=c.from_version,
            to_version=c.to_version,
            security=c.name in security,
        )
        for c in diff.changes
    ]


def recorded_reboot(server: str, result: RebootResult | BaseException | None) -> change.Reboot:
    """A reboot that came back, or one that did not (its old boot id when the error has it)."""
    if isinstance(result, RebootResult):
        return change.Reboot(
            server=server,
            old_boot_id=result.old_boot_id,
            new_boot_id=result.new_boot_id,
            seconds=result.seconds,
        )
    return change.Reboot(server=server, old_boot_id=getattr(result, "old_boot_id", "?"))


def recorded_verification(
    server: str,
    phase: Literal["staging", "production"],
    *,
    checks: Sequence[CheckResult] | str,
    facts_error: str | None,
    suite_failures: Sequence[str],
    expectations: Sequence[str],
    at: datetime,
    suite_warnings: Sequence[str] = (),
) -> change.Verification:
    """One server's verification: its health checks and the suite over its facts (pure).

    Args:
        server: the server.
        phase: staging or production.
        checks: the health checks' results, or why they did not run.
        facts_error: why the facts could not be read; None when they were.
        suite_failures: what the expectation suite found on the server.
        expectations: the suite's expectation names.
        at: when the verification ended.
        suite_warnings: what the suite reported but did not fail (a pending reboot
            under ``reboot: never``).
    """
    failures: list[str] = []
    names: list[str] = []
    if isinstance(checks, str):
        failures.append(f"health checks did not run: {checks}")
    else:
        names = [f"{r.kind}:{r.target}" for r in checks]
        failures += summarize_checks(checks)[1]
    if facts_error is not None:
        failures.append(f"facts not collected: {facts_error}")
    failures += suite_failures
    return change.Verification(
        server=server,
        phase=phase,
        checks=tuple(names),
        expectations=tuple(expectations),
        passed=not failures,
        failures=tuple(failures),
        warnings=tuple(suite_warnings),
        at=at,
    )


def failed_verifications(
    record: ChangeRecord, phase: Literal["staging", "production"], failures: Mapping[str, str]
) -> list[change.Verification]:
    """A failed verification for each failed server the phase did not verify (pure).

    A server whose patching or reboot failed is not verified; the record still shows it
    failed its phase, with why.
    """
    return [
        change.Verification(server=name, phase=phase, passed=False, failures=(why,))
        for name, why in failures.items()
        if not any(v.server == name and v.phase == phase for v in record.verifications)
    ]


def not_restored(server: str, reason: str, why: str) -> change.Rollback:
    """A failed server left as it is (pure); ``nothing changed`` marks it unchanged."""
    return change.Rollback(
        server=server,
        restored_ok=False,
        verified_ok=False,
        changed=reason != NOTHING_CHANGED,
        detail=f"not restored ({reason}); failure: {why}",
    )


def restored(
    server: str,
    snapshot: tasks.snapshots.base.SnapshotRecord,
    why: str,
    *,
    restore_error: str | None,
    verify_failures: Sequence[str] | None,
) -> change.Rollback:
    """A failed server restored from its snapshot and verified again, or not (pure).

    Args:
        server: the server.
        snapshot: the snapshot it was restored from.
        why: why it was rolled back.
        restore_error: why the restore failed; None when it succeeded.
        verify_failures: what its verification after the restore found; None when it
            was not verified (the restore failed).
    """
    detail = f"failure: {why}"
    if restore_error is not None:
        detail += f"; restore failed: {restore_error}"
    elif verify_failures:
        detail += "; after restore: " + "; ".join(verify_failures)
    return change.Rollback(
        server=server,
        snapshot_ids=tuple(snapshot.ids),
        restored_ok=restore_error is None,
        verified_ok=restore_error is None and not verify_failures,
        detail=detail,
    )


def recorded_restore_test(
    server: str, result: tasks.snapshots.base.RestoreTestResult | str, bound_s: float
) -> change.RestoreTestResult:
    """The record's restore test from the provider's result, or from why it did not run (pure)."""
    if isinstance(result, str):
        return change.RestoreTestResult(server=server, ok=False, rto_bound_s=bound_s, detail=result)
    return change.RestoreTestResult(
        server=server,
        snapshot_id=",".join(result.snapshot_ids) or None,
        ok=result.ok,
        rto_s=result.rto_s,
        rto_bound_s=bound_s,
        detail=result.detail,
    )


def completed_outcome(record: ChangeRecord) -> tuple[Outcome, str]:
    """The outcome of a run that got through production, and its detail (pure).

    Never "completed-with-rollbacks" when a restore failed or did not verify: that is
    ``restore-failed``, whatever else went well; a failed server that was left as it is
    (nothing had changed on it, or the policy said so) makes it
    ``completed-with-failures``.
    """
    servers = len({c.server for c in record.package_changes})
    detail = f"{len(record.package_changes)} package change(s) on {servers} server(s)"
    broken = [r.server for r in record.rollbacks if r.snapshot_ids and not r.verified_ok]
    if broken:
        return Outcome.RESTORE_FAILED, f"{detail}; restore failed on {', '.join(broken)}"
    left = [r.server for r in record.rollbacks if not r.snapshot_ids]
    if left:
        return Outcome.COMPLETED_WITH_FAILURES, f"{detail}; failed, not restored: {', '.join(left)}"
    outcome = Outcome.COMPLETED_WITH_ROLLBACKS if record.rollbacks else Outcome.COMPLETED
    return outcome, detail


def production_results(record: ChangeRecord) -> dict[str, HostResult]:
    """Where each production server in scope ended up, from the record's parts (pure).

    restored: failed and restored and verified; failed: left as it is, or its restore
    failed or did not verify; unchanged: failed before anything changed on it (not
    restored); patched: verified in production; untouched: never started.
    """
    names = record.plan.production if record.plan else ()
    results: dict[str, HostResult] = {}
    for name in names:
        rollback = next((r for r in reversed(record.rollbacks) if r.server == name), None)
        verified = [v for v in record.verifications if v.server == name and v.phase == "production"]
        if rollback is not None:
            if rollback.restored_ok and rollback.verified_ok:
                results[name] = HostResult.RESTORED
            elif not rollback.changed:
                results[name] = HostResult.UNCHANGED
            else:
                results[name] = HostResult.FAILED
        elif verified:
            results[name] = HostResult.PATCHED if verified[-1].passed else HostResult.FAILED
        else:
            results[name] = HostResult.UNTOUCHED
    return results


# --------------------------------------------------------------------------- saving


class ChangeRecorder:
    """The change record of one run and the one place it is saved to the history store."""

    def __init__(self, record: ChangeRecord, store: HistoryStore, *, resumed: bool = False) -> None:
        self.record = record
        self.store = store
        # This run was suspended at a question and is run again: its record is the one it
        # wrote before (staging done, announced), taken up where it stopped.
        self.resumed = resumed

    def save(self) -> None:
        """Upsert the record as it is now (the store validates it as a whole)."""
        self.store.save_change_record(self.record)

    def record_announcement(self, subject: str, at: datetime) -> None:
        """Record the run's window as announced to the client at ``at``: planned time in
        reports from then on (docs/reports.md), for each server the plan will change.

        The pre-change notice's part (:meth:`tasks.maintenance.Maintenance.announce`): called
        once the notice was sent or attempted, before anything changes. A rerun of the
        change finds its windows already there and keeps their first announcement.
        """
        record, plan = self.record, self.record.plan
        for server in [*plan.staging, *plan.production] if plan else []:
            self.store.record_window(
                record.client,
                record.window.start,
                record.window.end,
                "planned",
                record.change_ref,
                server,
                announced_at=at,
                announced_by=f"notice:{record.flow_run_id}",
                reason=subject,
            )

    def previous_runs(self) -> int:
        """How many change records the client has in the store (this run's, once saved)."""
        return len(self.store.change_records(self.record.client))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase into the record (what the benchmark and reports read)."""
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.record.phase_seconds[name] = round(
                self.record.phase_seconds.get(name, 0.0) + elapsed, 3
            )

    @contextmanager
    def outcome(
        self, inventory: ClientInventory, log: logging.Logger | logging.LoggerAdapter[Any]
    ) -> Iterator[None]:
        """Record how the run ends, then save, publish and announce the record.

        A :class:`MaintenanceStopped` is the procedure's own decision: its outcome is
        recorded and the block ends normally. Any other error is recorded as ``failed``
        and raised again. A run suspended at a question (Prefect's ``Pause``) has not
        ended: the record is saved as it is, nothing is published or announced.
        """
        record = self.record
        suspended = False
        try:
            yield
        except Pause:  # waiting, suspended: the run goes on later, on any worker
            suspended = True
            raise
        except MaintenanceStopped as stop:
            record.outcome, record.outcome_detail = Outcome(stop.outcome), stop.detail
            log.error("%s", stop)
        except Exception as exc:  # recorded, then re-raised as the run's failure
            record.outcome = Outcome.FAILED
            record.outcome_detail = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if suspended:
                self.save()
            else:
                record.ended = datetime.now(UTC)
                record.production_results = production_results(record)
                self.save()
                publish_change_record(record)
                subject, body = notice_end(
                    record, client_name=inventory.client.name, tz=inventory.tz
                )
                record.notification_failures += notify(inventory.client.notify, subject, body)
                self.save()


@contextmanager
def open_recorder(
    record: ChangeRecord, store: HistoryStore | None = None, *, resumed: bool = False
) -> Iterator[ChangeRecorder]:
    """Hold the client's run lock in the history store while the run records its change.

    A row lock in the store: unlike a deployment concurrency limit, it holds while the
    run is paused for approval. Released, and the store closed, when the block ends.
    When the store already has a record of this change ref by another flow run (a rerun
    after a crash, a halt or a closed window), ``record`` continues it
    (:func:`tasks.resume.continue_record`) and takes its row over.

    A run suspended at a question keeps the lock (nobody holds a process meanwhile; the
    lock's holder is Suspended, not finished, so it is never taken over); run again
    once answered (``resumed``), it takes its own record up where it stopped
    (:func:`tasks.resume.resume_record`) and the recorder says so (``resumed``).

    Args:
        record: the run's record (client, flow run and change ref name the lock).
        store: the history store; the configured one when None.
        resumed: this flow run was suspended at a question and is run again.
    """
    store = store or open_store()
    client, run_id = record.client, record.flow_run_id
    store.acquire_run_lock(client, run_id, record.change_ref, holder_check=holder_takeover)
    suspended = False
    try:
        # A rerun of the change (same change ref, another flow run) continues its record:
        # one change, one record. Read under the lock, so no other run is writing it.
        previous = store.change_record(client, record.change_ref)
        if previous is not None and previous.flow_run_id != run_id:
            continue_record(record, previous, datetime.now(UTC))
            store.continue_change_record(record, previous.flow_run_id)
        if previous is None or previous.flow_run_id != run_id or previous.outcome is not None:
            resumed = False  # nothing of this run's own to take up
        elif resumed:
            resume_record(record, previous, datetime.now(UTC))
        yield ChangeRecorder(record, store, resumed=resumed)
    except Pause:
        suspended = True
        raise
    finally:
        if not suspended:  # a suspended run keeps its lock until it is run again and ends
            store.release_run_lock(client, run_id)
        store.close()


# --------------------------------------------------------------------------- artifacts


@task(name="describe-requester", cache_policy=NO_CACHE)
def requester(flow_run_id: str) -> str:
    """Who asked for this run: the user or automation that created it, or its deployment."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    if run.created_by and run.created_by.display_value:
        return f"{(run.created_by.type or 'user').lower()}: {run.created_by.display_value}"
    if run.deployment_id:
        return f"deployment {run.deployment_id} (schedule or API)"
    return "direct call (API or Python)"


@task(name="publish-change-record", cache_policy=NO_CACHE)
def publish_change_record(record: ChangeRecord) -> None:
    """Show the change record in the Prefect UI as a markdown artifact."""
    create_markdown_artifact(
        key=artifact_key("change", record.client, record.change_ref),
        markdown=render_markdown(record),
        description=f"Change record {record.change_ref} for {record.client}",
    )


class RolloutProgress:
    """A Prefect progress artifact showing how far the production rollout is."""

    def __init__(self, client: str, change_ref: str, servers: int) -> None:
        self.servers = max(servers, 1)
        self.done = 0
        # The sync call returns the id (the stub also admits the async form).
        self.id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0,
            key=artifact_key("rollout", client),
            description=f"Production rollout of {change_ref}: 0/{servers} servers",
        )

    def advance(self, count: int, note: str) -> None:
        """Mark ``count`` more servers as done (patched, restored or failed)."""
        self.done += count
        update_progress_artifact(  # type: ignore[call-overload,unused-ignore]
            self.id,
            progress=round(100.0 * self.done / self.servers, 1),
            description=f"{self.done}/{self.servers} servers: {note}",
        )
