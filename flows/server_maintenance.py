"""The ``server-maintenance`` flow: one client, one change.

Orchestration only: which tasks run, in what order, with what concurrency and
approval. Every step's IO lives in ``tasks/``; every decision that can be made
without IO is a pure function beside its task.

With ``dry_run=true`` it only plans: facts and apt's own simulation from every
host, in parallel, and the exact plan per host. Otherwise it carries out the
policy's change procedure:

    preflight ─► snapshot every server ─► patch staging ─► verify staging
      ─► approval (pause with a form) ─► window gate
      ─► production in rolling batches (verify each; restore failed hosts; halt
         when the failure budget is spent) ─► security audit (findings for the record)
      ─► restore test ─► snapshot retention
      ─► change record (history store + artifact) ─► notices

Production is only ever touched after (a) a completed snapshot of it or a recorded
risk acceptance, (b) a passed staging verification, (c) a recorded approval by
enough listed approvers and (d) inside the maintenance window or with an override.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, pause_flow_run
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from core.errors import MaintenanceStopped, RemoteError
from core.settings import settings
from history.change import (
    ChangeRecord,
    Finding,
    Outcome,
    PlanSummary,
    Reboot,
    Rollback,
    Verification,
)
from history.change import PackageChange as RecordedChange
from history.change import RestoreTestResult as RecordedRestoreTest
from history.store import HistoryStore, open_store
from inventory import ClientInventory, Server, load_client_by_slug, select_servers
from tasks.approval import (
    TIMEOUT_APPROVER,
    ApprovalDeadline,
    ApprovalForm,
    ApprovalTally,
    RestoreForm,
    approval_description,
    count_answer,
)
from tasks.checks import run_health_checks, summarize_checks
from tasks.facts import HostFacts
from tasks.facts.collect import AUDIT_FACTS, PLAN_FACTS, collect_facts
from tasks.notify import notice_approval_requested, notice_before_change, notice_end, notify
from tasks.packages import (
    HostPlan,
    MaintenancePlan,
    apply_updates,
    plan_host,
    unreachable_host,
)
from tasks.preflight import preflight_problems, read_block_names, run_is_finished
from tasks.reboot import reboot_host, reboot_needed
from tasks.records import (
    RolloutProgress,
    backout_plan,
    change_window,
    publish_change_record,
    publish_plan,
    recorded_snapshot,
    requester,
    run_url,
    test_plan,
)
from tasks.sessions import FleetSessions, open_sessions
from tasks.snapshots import (
    SnapshotRecord,
    apply_snapshot_retention,
    create_snapshot,
    probe_snapshot_provider,
    restore_from_snapshot,
    run_restore_test,
    wait_for_snapshot,
)
from tasks.verify import HostVerificationSettings, validate_host_facts

Phase = Literal["staging", "production"]


def default_change_ref(client: str, now: datetime | None = None) -> str:
    """A change reference for runs started without one: ``CHG-<client>-<UTC time>``."""
    now = now or datetime.now(UTC)
    return f"CHG-{client}-{now:%Y%m%d-%H%M}"


def _states(futures: dict[str, PrefectFuture[Any]]) -> dict[str, State[Any]]:
    """Wait for every future; map server name -> final state."""
    for future in futures.values():
        future.wait()
    return {name: future.state for name, future in futures.items()}


def _error(state: State[Any]) -> str:
    exc = state.result(raise_on_failure=False)
    return str(exc) if isinstance(exc, BaseException) else (state.message or state.name or "")


class Maintenance:
    """One run of the procedure: the inventory, the hosts, the record being written."""

    def __init__(
        self,
        inventory: ClientInventory,
        servers: Sequence[Server],
        sessions: FleetSessions,
        record: ChangeRecord,
        store: HistoryStore,
        window_override: str | None,
    ) -> None:
        self.inv = inventory
        self.servers = list(servers)
        self.sessions = sessions
        self.record = record
        self.store = store
        self.window_override = window_override
        self.log = get_run_logger()
        self.plans: dict[str, HostPlan] = {}
        self.snapshots: dict[str, SnapshotRecord] = {}
        self.verify_settings = HostVerificationSettings()
        self.restored_settings = HostVerificationSettings(
            max_pending_security=10_000, allow_pending_reboot=True
        )

    # ----- helpers --------------------------------------------------------------
    @property
    def staging(self) -> list[Server]:
        return [s for s in self.servers if s.role == "staging"]

    @property
    def production(self) -> list[Server]:
        return [s for s in self.servers if s.role == "production"]

    def save(self) -> None:
        self.store.save_change_record(self.record)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase into the change record (what the benchmark and reports read)."""
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.record.phase_seconds[name] = round(
                self.record.phase_seconds.get(name, 0.0) + elapsed, 3
            )

    def _fan_out(
        self, servers: Sequence[Server], submit: Callable[[Server], PrefectFuture[Any]]
    ) -> dict[str, State[Any]]:
        return _states({s.name: submit(s) for s in servers})

    # ----- 1. preflight ---------------------------------------------------------
    def preflight(self) -> MaintenancePlan:
        self.inv_blocks_exist()
        states = self._fan_out(
            self.servers, lambda s: collect_facts.submit(self.sessions.host(s), PLAN_FACTS)
        )
        unreachable = {n: _error(st) for n, st in states.items() if not st.is_completed()}
        if unreachable:
            lines = "; ".join(f"{n}: {e}" for n, e in unreachable.items())
            raise MaintenanceStopped(Outcome.FAILED, f"preflight failed, nothing changed: {lines}")
        facts: dict[str, HostFacts] = {n: st.result() for n, st in states.items()}
        problems = preflight_problems(facts)
        probes = self._fan_out(
            self.servers,
            lambda s: probe_snapshot_provider.submit(s, self.inv.slug, self.inv.snapshots),
        )
        problems += [
            f"{n}: snapshot provider does not answer: {_error(st)}"
            for n, st in probes.items()
            if not st.is_completed()
        ]
        if problems:
            raise MaintenanceStopped(Outcome.FAILED, "preflight: " + "; ".join(problems))
        for server in self.servers:
            self.plans[server.name] = plan_host(
                server=server.name,
                role=server.role,
                address=server.address,
                facts=facts[server.name],
                policy=self.inv.patch.policy,
                hold=list(self.inv.patch.hold),
                reboot_policy=self.inv.patch.reboot,
            )
        plan = MaintenancePlan(
            client=self.inv.slug,
            change_ref=self.record.change_ref,
            dry_run=False,
            policy=self.inv.patch.policy,
            hosts=list(self.plans.values()),
        )
        not_planned = [f"{h.server}: {h.error}" for h in plan.hosts if h.error]
        if not_planned:
            raise MaintenanceStopped(
                Outcome.FAILED, "preflight: cannot plan " + "; ".join(not_planned)
            )
        self.record.plan = PlanSummary(
            scope=self.record.plan.scope if self.record.plan else "all",
            policy=self.inv.patch.policy,
            staging=tuple(s.name for s in self.staging),
            production=tuple(s.name for s in self.production),
            package_changes=plan.change_count,
            reboots_expected=tuple(h.server for h in plan.hosts if h.reboot_expected),
        )
        publish_plan(plan)
        return plan

    def inv_blocks_exist(self) -> None:
        from inventory import check_block_references

        check_block_references(self.inv, None, read_block_names())

    # ----- 2. snapshots ---------------------------------------------------------
    def snapshot_all(self) -> None:
        policy = self.inv.snapshots
        created = self._fan_out(
            self.servers,
            lambda s: create_snapshot.submit(s, self.inv.slug, self.record.change_ref, policy),
        )
        failures = {n: _error(st) for n, st in created.items() if not st.is_completed()}
        waiting = {
            s.name: wait_for_snapshot.submit(s, created[s.name].result(), policy)
            for s in self.servers
            if s.name not in failures
        }
        for name, state in _states(waiting).items():
            if state.is_completed():
                # "reused" is known where the snapshot was found, not where it was awaited.
                reused = created[name].result().reused
                self.snapshots[name] = state.result().model_copy(update={"reused": reused})
            else:
                failures[name] = _error(state)
        self.record.snapshots = [
            recorded_snapshot(s, self.snapshots.get(s.name), failures.get(s.name))
            for s in self.servers
        ]
        self.save()
        if failures:
            lines = "; ".join(f"{n}: {e}" for n, e in failures.items())
            raise MaintenanceStopped(
                Outcome.FAILED, f"snapshots failed, nothing was changed: {lines}"
            )

    # ----- 3-4. patch and verify ------------------------------------------------
    def patch_and_verify(self, servers: Sequence[Server], phase: Phase) -> dict[str, str]:
        """Patch, reboot when needed, and verify ``servers``; return failures by name."""
        failures: dict[str, str] = {}
        applied = self._fan_out(
            servers,
            lambda s: apply_updates.submit(
                self.sessions.host(s),
                self.plans[s.name],
                lock_timeout_s=settings().dpkg_lock_timeout_s,
            ),
        )
        diffs = {}
        for server in servers:
            state = applied[server.name]
            if state.is_completed():
                diffs[server.name] = state.result()
            else:
                failures[server.name] = f"patching failed: {_error(state)}"
                diff = getattr(state.result(raise_on_failure=False), "diff", None)
                if diff is not None:
                    diffs[server.name] = diff
        for name, diff in diffs.items():
            security = {c.name for c in self.plans[name].changes if c.security}
            self.record.package_changes += [
                RecordedChange(
                    server=name,
                    name=c.name,
                    from_version=c.from_version,
                    to_version=c.to_version,
                    security=c.name in security,
                )
                for c in diff.changes
            ]
        to_reboot = [
            s
            for s in servers
            if s.name in diffs
            and s.name not in failures
            and reboot_needed(self.inv.patch.reboot, diffs[s.name])
        ]
        rebooted = self._fan_out(
            to_reboot,
            lambda s: reboot_host.submit(
                self.sessions.host(s), s.name, timeout_s=settings().reboot_timeout_s
            ),
        )
        for server in to_reboot:
            state = rebooted[server.name]
            if state.is_completed():
                result = state.result()
                self.record.reboots.append(
                    Reboot(
                        server=server.name,
                        old_boot_id=result.old_boot_id,
                        new_boot_id=result.new_boot_id,
                        seconds=result.seconds,
                    )
                )
            else:
                error = state.result(raise_on_failure=False)
                self.record.reboots.append(
                    Reboot(server=server.name, old_boot_id=getattr(error, "old_boot_id", "?"))
                )
                failures[server.name] = f"reboot: {_error(state)}"
        survivors = [s for s in servers if s.name not in failures]
        for name, verification in self.verify(survivors, phase).items():
            self.record.verifications.append(verification)
            if not verification.passed:
                failures[name] = "verification failed: " + "; ".join(verification.failures)
        for name, why in failures.items():
            if not any(v.server == name and v.phase == phase for v in self.record.verifications):
                self.record.verifications.append(
                    Verification(server=name, phase=phase, passed=False, failures=(why,))
                )
        self.save()
        return failures

    def verify(
        self, servers: Sequence[Server], phase: Phase, after_restore: bool = False
    ) -> dict[str, Verification]:
        """Health checks and the expectation suite on ``servers``.

        After a restore the host is back at its pre-change versions, so its pending
        updates and a pending reboot are expected there, not failures.
        """
        if not servers:
            return {}
        checks = self._fan_out(
            servers, lambda s: run_health_checks.submit(s, self.sessions.host(s))
        )
        facts = self._fan_out(
            servers,
            lambda s: collect_facts.submit(self.sessions.host(s), PLAN_FACTS, refresh=False),
        )
        collected = {n: st.result() for n, st in facts.items() if st.is_completed()}
        report = validate_host_facts(
            collected,
            {s.name: list(s.allowed_ports) for s in servers},
            self.restored_settings if after_restore else self.verify_settings,
        )
        out: dict[str, Verification] = {}
        for server in servers:
            failures: list[str] = []
            names: list[str] = []
            if checks[server.name].is_completed():
                results = checks[server.name].result()
                names = [f"{r.kind}:{r.target}" for r in results]
                _, check_failures = summarize_checks(results)
                failures += check_failures
            else:
                failures.append(f"health checks did not run: {_error(checks[server.name])}")
            if server.name not in collected:
                failures.append(f"facts not collected: {_error(facts[server.name])}")
            per = report.per_server.get(server.name)
            if per is not None:
                failures += per.failures
            out[server.name] = Verification(
                server=server.name,
                phase=phase,
                checks=tuple(names),
                expectations=tuple(e.name for e in report.expectations),
                passed=not failures,
                failures=tuple(failures),
                at=datetime.now(UTC),
            )
        return out

    # ----- 5. approval ----------------------------------------------------------
    def approve(self, plan: MaintenancePlan) -> None:
        timeout = self.inv.schedule.approval_timeout
        deadline = datetime.now(UTC) + timeout
        approvers = [a.name for a in self.inv.client.approvers]
        tally = ApprovalTally(required=self.inv.client.approvals_required)
        ui = run_url(self.record.flow_run_id)
        subject, body = notice_approval_requested(
            self.inv.client.name,
            self.record.change_ref,
            self.record.plan or PlanSummary(policy=self.inv.patch.policy),
            [v for v in self.record.verifications if v.phase == "staging"],
            approvers,
            ui,
            approvals_required=tally.required,
            deadline=deadline,
            tz=self.inv.tz,
        )
        self.record.notification_failures += notify(self.inv.client.notify, subject, body)
        staging_text = (
            "\n".join(
                f"- {v.server}: {'passed' if v.passed else 'FAILED'}"
                for v in self.record.verifications
                if v.phase == "staging"
            )
            or "- no staging server in scope"
        )
        production_text = (
            "\n".join(
                f"- {h.server}: "
                + (
                    ", ".join(f"{c.name} {c.from_version} → {c.to_version}" for c in h.changes)
                    or "no change"
                )
                for h in plan.hosts
                if h.role == "production"
            )
            or "- no production server in scope"
        )
        round_ = 0
        while tally.verdict == "pending":
            remaining = int((deadline - datetime.now(UTC)).total_seconds())
            if remaining <= 0:
                raise MaintenanceStopped(Outcome.APPROVAL_TIMEOUT, f"no approval within {timeout}")
            round_ += 1
            form = ApprovalForm.with_initial_data(
                description=approval_description(
                    client=self.inv.client.name,
                    change_ref=self.record.change_ref,
                    staging_summary=staging_text,
                    production_plan=production_text,
                    tally=tally,
                    approvers=approvers,
                    deadline=deadline.astimezone(self.inv.tz),
                ),
                decision="approve",
            )
            # Prefect's own pause timeout is only a backstop; the deadline is kept by
            # ApprovalDeadline, so that a timeout is recorded rather than failing the run.
            with ApprovalDeadline(self.record.flow_run_id, remaining):
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=remaining + 300,
                    poll_interval=settings().approval_poll_s,
                    key=f"approval-{round_}",
                )
            if answer.approver == TIMEOUT_APPROVER and datetime.now(UTC) >= deadline:
                raise MaintenanceStopped(Outcome.APPROVAL_TIMEOUT, f"no approval within {timeout}")
            tally = count_answer(tally, answer, approvers, datetime.now(UTC))
            self.record.approvals = list(tally.answers)
            self.save()
            last = tally.answers[-1]
            if not last.counted:
                self.log.warning("answer not counted: %s", last.not_counted_reason)
        if tally.verdict == "rejected":
            who = next(a for a in tally.counted if a.decision == "reject")
            raise MaintenanceStopped(Outcome.REJECTED, f"rejected by {who.approver}: {who.comment}")

    # ----- 6. production ----------------------------------------------------------
    def window_gate(self) -> None:
        now = datetime.now(UTC)
        if self.inv.in_window(now):
            return
        if self.window_override:
            self.log.warning(
                "outside the window: going ahead on override: %s", self.window_override
            )
            return
        nxt = self.inv.next_window_start(now)
        raise MaintenanceStopped(
            Outcome.HALTED,
            f"outside the maintenance window: production not touched; next window starts "
            f"{nxt:%Y-%m-%d %H:%M %Z} (or rerun with window_override='<reason>')",
        )

    def roll_out(self) -> None:
        budget = self.inv.rollout.failures_tolerated
        failed_total = 0
        batches = self.inv.rollout.batches(self.production)
        progress = RolloutProgress(self.inv.slug, self.record.change_ref, len(self.production))
        for index, batch in enumerate(batches, start=1):
            self.log.info("batch %d/%d: %s", index, len(batches), ", ".join(s.name for s in batch))
            failures = self.patch_and_verify(batch, "production")
            for name, why in failures.items():
                self.log.error("%s failed: %s", name, why)
                self.roll_back(next(s for s in batch if s.name == name), why)
            failed_total += len(failures)
            progress.advance(
                len(batch),
                f"batch {index}/{len(batches)} done"
                + (f", failed: {', '.join(failures)}" if failures else ""),
            )
            if failed_total > budget:
                left = [s.name for b in batches[index:] for s in b]
                raise MaintenanceStopped(
                    Outcome.HALTED,
                    f"{failed_total} production server(s) failed (tolerated: {budget}); "
                    f"rollout halted after batch {index}/{len(batches)}"
                    + (f"; untouched: {', '.join(left)}" if left else ""),
                )

    def ask_restore(self, server: Server, why: str) -> tuple[bool, str]:
        """Pause and ask a listed approver whether to restore a failed server."""
        approvers = [a.name for a in self.inv.client.approvers]
        timeout = self.inv.schedule.approval_timeout
        deadline = datetime.now(UTC) + timeout
        asked = 0
        while (remaining := int((deadline - datetime.now(UTC)).total_seconds())) > 0:
            asked += 1
            form = RestoreForm.with_initial_data(
                description=(
                    f"## {server.name} failed during {self.record.change_ref}\n\n{why}\n\n"
                    f"Restore it from its pre-change snapshot? Listed approvers: "
                    f"{', '.join(approvers)}."
                ),
                restore=True,
            )
            with ApprovalDeadline(self.record.flow_run_id, remaining, form="restore"):
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=remaining + 300,
                    poll_interval=settings().approval_poll_s,
                    key=f"restore-{server.name}-{asked}",
                )
            if answer.approver == TIMEOUT_APPROVER and datetime.now(UTC) >= deadline:
                break
            if answer.approver in approvers:
                verb = "restore" if answer.restore else "leave it"
                return answer.restore, f"{answer.approver} chose to {verb}: {answer.comment}"
            self.log.warning("%s is not a listed approver; asking again", answer.approver)
        return False, f"no decision within {timeout}"

    def roll_back(self, server: Server, why: str) -> None:
        snapshot = self.snapshots.get(server.name)
        on_failure = self.inv.rollout.on_failure
        decision = ""
        if on_failure == "ask" and snapshot is not None and snapshot.state == "completed":
            restore, decision = self.ask_restore(server, why)
            on_failure = "restore" if restore else "halt"
        if on_failure != "restore" or snapshot is None or snapshot.state != "completed":
            reason = (
                decision or f"on_failure is {on_failure}"
                if snapshot is not None
                else "no snapshot (accepted risk)"
            )
            self.record.rollbacks.append(
                Rollback(
                    server=server.name,
                    restored_ok=False,
                    verified_ok=False,
                    detail=f"not restored ({reason}); failure: {why}",
                )
            )
            self.save()
            return
        state = restore_from_snapshot(server, snapshot, self.inv.snapshots, return_state=True)
        restored = state.is_completed()
        verified = False
        detail = f"failure: {why}"
        if restored:
            self.sessions.host(server).close()
            verification = self.verify([server], "production", after_restore=True)[server.name]
            verified = verification.passed
            if not verified:
                detail += "; after restore: " + "; ".join(verification.failures)
        else:
            detail += f"; restore failed: {_error(state)}"
        self.record.rollbacks.append(
            Rollback(
                server=server.name,
                snapshot_ids=tuple(snapshot.ids),
                restored_ok=restored,
                verified_ok=verified,
                detail=detail,
            )
        )
        self.save()

    # ----- 7. security audit (for the record) --------------------------------------
    def security_audit(self) -> None:
        """Read every server of the run as the ``security-audit`` flow does (no refresh:
        the plan just did) and record what the suite fails as security findings. Findings
        never change the outcome: they are for the record, the notice and the follow-up."""
        facts = self._fan_out(
            self.servers,
            lambda s: collect_facts.with_options(retries=1, retry_delay_seconds=5).submit(
                self.sessions.host(s), AUDIT_FACTS, refresh=False
            ),
        )
        collected = {n: st.result() for n, st in facts.items() if st.is_completed()}
        report = (
            validate_host_facts(
                collected,
                {s.name: list(s.allowed_ports) for s in self.servers if s.name in collected},
                self.verify_settings,
            )
            if collected
            else None
        )
        for server in self.servers:
            if server.name not in collected:
                summary = f"not audited: {_error(facts[server.name])}"
                self.record.security_findings.append(Finding(server=server.name, summary=summary))
                continue
            assert report is not None
            for failure in report.per_server[server.name].failures:
                self.record.security_findings.append(Finding(server=server.name, summary=failure))
        self.save()

    # ----- 8-9. restore test and retention ------------------------------------
    def restore_test(self) -> None:
        if not self.inv.restore_test.enabled:
            return
        candidates = [
            s
            for s in self.servers
            if s.name in self.snapshots and self.snapshots[s.name].state == "completed"
        ]
        if not candidates:
            return
        previous = len(self.store.change_records(self.inv.slug))
        server = candidates[previous % len(candidates)]
        bound = self.inv.restore_test.timeout.total_seconds()
        state = run_restore_test(
            server, self.snapshots[server.name], self.inv.snapshots, bound, return_state=True
        )
        if state.is_completed():
            result = state.result()
            self.record.restore_test = RecordedRestoreTest(
                server=server.name,
                snapshot_id=",".join(result.snapshot_ids) or None,
                ok=result.ok,
                rto_s=result.rto_s,
                rto_bound_s=bound,
                detail=result.detail,
            )
        else:
            self.record.restore_test = RecordedRestoreTest(
                server=server.name, ok=False, rto_bound_s=bound, detail=_error(state)
            )

    def retention(self) -> None:
        protect = {i for r in self.snapshots.values() for i in r.ids}
        for server in self.servers:
            if server.name in self.snapshots:
                apply_snapshot_retention.submit(
                    server, self.inv.slug, self.inv.snapshots, protect
                ).wait()


def _final_state(record: ChangeRecord) -> State[Any]:
    message = f"{record.outcome.value if record.outcome else 'failed'}: {record.outcome_detail}"
    if record.outcome == Outcome.COMPLETED:
        return Completed(message=message, data=record)
    if record.outcome == Outcome.REJECTED:
        return Cancelled(message=message, data=record)
    return Failed(message=message, data=record)


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
        change_ref: the change ticket this run belongs to; generated when empty. Rerunning
            with the same reference reuses its snapshots and skips work already done.
        scope: ``all``, ``staging``, ``production``, or a comma-separated list of server names.
        window_override: a reason to patch production outside the maintenance window
            (recorded in the change record); without it production waits for the window.

    Returns:
        The plan (dry run), or the change record; a run whose outcome is not
        ``completed`` ends Failed (Cancelled when rejected) with the record as its data.
    """
    inventory = load_client_by_slug(settings().inventory_dir, client)
    servers = select_servers(inventory, scope)
    change_ref = change_ref or default_change_ref(client)
    if dry_run:
        return _plan_only(inventory, servers, change_ref)
    return _maintain(inventory, servers, change_ref, scope, window_override)


def _plan_only(
    inventory: ClientInventory, servers: Sequence[Server], change_ref: str
) -> MaintenancePlan:
    logger = get_run_logger()
    logger.info("planning %s for %d server(s) of %s", change_ref, len(servers), inventory.slug)
    with open_sessions(inventory, servers) as sessions:
        states = _states(
            {s.name: collect_facts.submit(sessions.host(s), PLAN_FACTS) for s in servers}
        )
    hosts = []
    for server in servers:
        state = states[server.name]
        if state.is_completed():
            hosts.append(
                plan_host(
                    server=server.name,
                    role=server.role,
                    address=server.address,
                    facts=state.result(),
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
        client=inventory.slug,
        change_ref=change_ref,
        dry_run=True,
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


def _maintain(
    inventory: ClientInventory,
    servers: Sequence[Server],
    change_ref: str,
    scope: str,
    window_override: str | None,
) -> State[Any]:
    logger = get_run_logger()
    run_id = str(flow_run.get_id())
    now = datetime.now(UTC)
    record = ChangeRecord(
        client=inventory.slug,
        change_ref=change_ref,
        flow_run_id=run_id,
        requester=requester(run_id),
        window=change_window(inventory, now, window_override),
        plan=PlanSummary(scope=scope, policy=inventory.patch.policy),
        backout_plan=backout_plan(inventory, servers),
        test_plan=test_plan(inventory, servers),
        approvals_required=inventory.client.approvals_required,
        started=now,
    )
    store = open_store()
    # A row lock in the history store: unlike a deployment concurrency limit, it holds
    # while the run is paused for approval.
    store.acquire_run_lock(inventory.slug, run_id, change_ref, is_stale=run_is_finished)
    try:
        with open_sessions(inventory, servers) as sessions:
            run = Maintenance(inventory, servers, sessions, record, store, window_override)
            try:
                with run.phase("preflight"):
                    plan = run.preflight()
                subject, body = notice_before_change(
                    inventory.client.name,
                    change_ref,
                    record.window,
                    record.plan or PlanSummary(policy=inventory.patch.policy),
                    tz=inventory.tz,
                )
                record.notification_failures += notify(inventory.client.notify, subject, body)
                with run.phase("snapshots"):
                    run.snapshot_all()
                with run.phase("staging"):
                    staging_failures = run.patch_and_verify(run.staging, "staging")
                if staging_failures:
                    raise MaintenanceStopped(
                        Outcome.STAGING_FAILED,
                        "; ".join(f"{n}: {w}" for n, w in staging_failures.items())
                        + " — no approval asked, production untouched",
                    )
                if run.production:
                    with run.phase("approval"):
                        run.approve(plan)
                    run.window_gate()
                    with run.phase("production"):
                        run.roll_out()
                record.outcome = (
                    Outcome.COMPLETED_WITH_ROLLBACKS if record.rollbacks else Outcome.COMPLETED
                )
                record.outcome_detail = (
                    f"{len(record.package_changes)} package change(s) on "
                    f"{len({c.server for c in record.package_changes})} server(s)"
                )
                with run.phase("security-audit"):
                    run.security_audit()
                with run.phase("restore-test"):
                    run.restore_test()
                with run.phase("retention"):
                    run.retention()
            except MaintenanceStopped as stop:
                record.outcome, record.outcome_detail = Outcome(stop.outcome), stop.detail
                logger.error("%s", stop)
            except Exception as exc:  # recorded, then re-raised below as the run's failure
                record.outcome = Outcome.FAILED
                record.outcome_detail = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                record.ended = datetime.now(UTC)
                store.save_change_record(record)
                publish_change_record(record)
                subject, body = notice_end(
                    record, client_name=inventory.client.name, tz=inventory.tz
                )
                record.notification_failures += notify(inventory.client.notify, subject, body)
                store.save_change_record(record)
    finally:
        store.release_run_lock(inventory.slug, run_id)
        store.close()
    return _final_state(record)
