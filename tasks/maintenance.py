"""The maintenance procedure's steps: each one submits tasks, reads their states, records.

:class:`Maintenance` is one run of the server-maintenance flow's change procedure. Each
public method is one phase the flow calls in order (``flows/server_maintenance.py`` reads
as the policy); a phase fans tasks out over the servers, waits for them, maps their
results into the change record (:mod:`tasks.records`), saves it through the recorder,
and stops the run with :class:`~core.errors.MaintenanceStopped` when the policy says so.
The decisions themselves are pure and tested apart: :mod:`tasks.rollout` (batches,
failure budget, window gate, rollback choice, restore-test rotation) and
:mod:`tasks.approval` (the tally and the one ask-loop).

The hosts come from :func:`tasks.sessions.open_sessions`, so the procedure runs on SSH
sessions in production and on scripted hosts in unit tests.

A rerun of a change continues it (:mod:`tasks.resume`): the record it continues says
which production hosts are already patched and verified (skipped: no second snapshot,
no second patch) and whether its counted approvals were for the digest of the plan as
it stands now (then none is asked again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from core.errors import MaintenanceStopped, RemoteError
from core.settings import settings
from history.change import Finding, GateDecision, Outcome, PlanSummary, Verification
from inventory import ClientInventory, Server, check_block_references
from tasks.approval import (
    ApprovalTally,
    Question,
    ask_restore,
    open_wait,
    plan_digest,
    production_canonical,
    production_plan_text,
    publish_request,
    read_input,
    staging_summary,
    suspends,
    used_pause_keys,
    wait_for_approval,
)
from tasks.checks import run_health_checks
from tasks.compliance import audit_rows, store_audit_results, stored_audits
from tasks.facts import HostFacts
from tasks.facts.collect import AUDIT_FACTS, PLAN_FACTS, collect_facts
from tasks.hygiene.software import PlanFacts, SoftwarePlan, collect_plan_facts
from tasks.hygiene.steps import HygieneSteps, summary_update
from tasks.notify import notice_approval_requested, notice_before_change, notify
from tasks.packages import (
    HostPlan,
    MaintenancePlan,
    PackageDiff,
    apply_updates,
    plan_host,
    unreachable_host,
)
from tasks.preflight import preflight_problems, read_block_names
from tasks.reboot import reboot_host, reboot_needed
from tasks.records import (
    ChangeRecorder,
    RolloutProgress,
    change_window,
    completed_outcome,
    failed_verifications,
    not_restored,
    plan_summary,
    publish_plan,
    recorded_package_changes,
    recorded_reboot,
    recorded_restore_test,
    recorded_snapshot,
    recorded_verification,
    restored,
    run_url,
)
from tasks.resume import (
    ApprovalCarry,
    PackageSet,
    ResumePoint,
    done_unrecorded,
    package_set_rule,
    patched_hosts,
    remaining_plan,
    resume_point,
)
from tasks.rollout import (
    RestoreAnswer,
    RollbackAction,
    WindowGate,
    batch_gate,
    batches,
    budget_halt_detail,
    budget_spent,
    expected_batch_time,
    outside_window_detail,
    restore_halt_detail,
    restore_test_candidate,
    rollback_choice,
    staging_rule,
    window_gate,
    window_halt_detail,
)
from tasks.sessions import FleetSessions
from tasks.snapshots import (
    SnapshotRecord,
    apply_snapshot_retention,
    create_snapshot,
    probe_snapshot_provider,
    restore_from_snapshot,
    run_restore_test,
    wait_for_snapshot,
)
from tasks.snapshots.tasks import RETAKEN
from tasks.verify import validate_host_facts, verification_settings

__all__ = ["Maintenance", "plan_fleet", "plan_server"]

Phase = Literal["staging", "production"]


def states(futures: dict[str, PrefectFuture[Any]]) -> dict[str, State[Any]]:
    """Wait for every future; map server name -> final state."""
    for future in futures.values():
        future.wait()
    return {name: future.state for name, future in futures.items()}


def error_of(state: State[Any]) -> str:
    """Why a task run did not complete, in a line."""
    exc = state.result(raise_on_failure=False)
    return str(exc) if isinstance(exc, BaseException) else (state.message or state.name or "")


def plan_server(inventory: ClientInventory, server: Server, facts: HostFacts) -> HostPlan:
    """The plan for one server from its facts and the client's patch policy (pure)."""
    return plan_host(
        server=server.name,
        role=server.role,
        address=server.address,
        facts=facts,
        policy=inventory.patch.policy,
        hold=list(inventory.patch.hold),
        reboot_policy=inventory.patch.reboot,
    )


def plan_fleet(
    inventory: ClientInventory, servers: Sequence[Server], sessions: FleetSessions, change_ref: str
) -> MaintenancePlan:
    """The dry run: facts from every host in parallel, and the plan per host (unreachable
    hosts are in the plan as not planned; any other error is raised)."""
    log = get_run_logger()
    software = inventory.hygiene.software
    facts = states(
        {s.name: collect_plan_facts.submit(sessions.host(s), PLAN_FACTS, software) for s in servers}
    )
    hosts = []
    removals: dict[str, SoftwarePlan] = {}
    for server in servers:
        state = facts[server.name]
        if state.is_completed():
            read: PlanFacts = state.result()
            hosts.append(plan_server(inventory, server, read.facts))
            removals[server.name] = read.software
            continue
        error = state.result(raise_on_failure=False)
        if not isinstance(error, RemoteError):
            raise error if isinstance(error, BaseException) else RuntimeError(str(error))
        log.warning("%s: not planned: %s", server.name, error)
        hosts.append(
            unreachable_host(
                server=server.name, role=server.role, address=server.address, error=str(error)
            )
        )
    reachable = [s for s in servers if all(h.reachable for h in hosts if h.server == s.name)]
    window = change_window(inventory, datetime.now(UTC), None)
    hygiene = HygieneSteps(inventory, reachable, sessions).plan(
        (window.start, window.end), removals
    )
    return MaintenancePlan(
        client=inventory.slug,
        change_ref=change_ref,
        dry_run=True,
        policy=inventory.patch.policy,
        hosts=hosts,
        **summary_update(hygiene, as_lists=True),
    )


class RolloutWait(BaseModel):
    """Where the rollout was when the run asked the restore question (on_failure ``ask``),
    kept as the run input ``rollout`` so that the run, suspended and run again once
    answered, goes on with that batch's rollbacks instead of patching it again."""

    model_config = ConfigDict(frozen=True)

    batch: int = Field(ge=1, description="The batch, counted from 1.")
    failures: dict[str, str] = Field(description="Its failed servers and why.")
    failed_before: int = Field(ge=0, description="Servers failed in the batches before it.")
    rollbacks_before: int = Field(ge=0, description="Rollbacks the record held before it.")
    diffs: dict[str, PackageDiff | None] = Field(
        description="What patching did on each failed server (None: unknown)."
    )


class Maintenance:
    """One run of the procedure: the inventory, the hosts, the record being written."""

    def __init__(
        self,
        inventory: ClientInventory,
        servers: Sequence[Server],
        sessions: FleetSessions,
        recorder: ChangeRecorder,
        window_override: str | None,
    ) -> None:
        self.inv = inventory
        self.servers = list(servers)
        self.sessions = sessions
        self.recorder = recorder
        self.record = recorder.record
        self.window_override = window_override
        self.log = get_run_logger()
        # What is left of the change: the plan without the production hosts patched and
        # verified earlier in this change (tasks.resume.remaining_plan).
        self.plan: MaintenancePlan | None = None
        self.resume: ResumePoint | None = None
        self.plans: dict[str, HostPlan] = {}
        self.snapshots: dict[str, SnapshotRecord] = {}
        # What patching did per host; None: it failed and what changed is unknown.
        self.diffs: dict[str, PackageDiff | None] = {}
        self.verify_settings = verification_settings(inventory.patch.reboot)
        self.restored_settings = verification_settings(inventory.patch.reboot, after_restore=True)
        self.hygiene_steps = HygieneSteps(inventory, servers, sessions)

    @property
    def staging(self) -> list[Server]:
        """The staging servers in scope."""
        return [s for s in self.servers if s.role == "staging"]

    @property
    def production(self) -> list[Server]:
        """The production servers in scope."""
        return [s for s in self.servers if s.role == "production"]

    def _fan_out(
        self, servers: Sequence[Server], submit: Callable[[Server], PrefectFuture[Any]]
    ) -> dict[str, State[Any]]:
        return states({s.name: submit(s) for s in servers})

    # ----- 1. preflight ---------------------------------------------------------
    def preflight(self) -> None:
        """Every host answers and is fit, every snapshot provider answers, every host is
        planned; the plan is published. Nothing is changed.

        A run executed again after the restore question leaves out the production servers
        of that batch and the batches before it: this run dealt with them already (a
        failed one may not even answer), and they are not planned again."""
        with self.recorder.phase("preflight"):
            self.staging_gate()
            check_block_references(self.inv, None, read_block_names())
            kept = self.kept("rollout")
            dealt = (
                {s.name for b in batches(self.inv, self.production)[: kept["batch"]] for s in b}
                if kept
                else set()
            )
            servers = [s for s in self.servers if s.name not in dealt]
            software = self.inv.hygiene.software
            facts_states = self._fan_out(
                servers,
                lambda s: collect_plan_facts.submit(self.sessions.host(s), PLAN_FACTS, software),
            )
            unreachable = {
                n: error_of(st) for n, st in facts_states.items() if not st.is_completed()
            }
            if unreachable:
                lines = "; ".join(f"{n}: {e}" for n, e in unreachable.items())
                raise MaintenanceStopped(
                    Outcome.FAILED, f"preflight failed, nothing changed: {lines}"
                )
            read: dict[str, PlanFacts] = {n: st.result() for n, st in facts_states.items()}
            facts = {n: r.facts for n, r in read.items()}
            problems = preflight_problems(facts)
            probes = self._fan_out(
                servers,
                lambda s: probe_snapshot_provider.submit(s, self.inv.slug, self.inv.snapshots),
            )
            problems += [
                f"{n}: snapshot provider does not answer: {error_of(st)}"
                for n, st in probes.items()
                if not st.is_completed()
            ]
            if problems:
                raise MaintenanceStopped(Outcome.FAILED, "preflight: " + "; ".join(problems))
            for server in servers:
                self.plans[server.name] = plan_server(self.inv, server, facts[server.name])
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
            scope = self.record.plan.scope if self.record.plan else "all"
            self.record.plan = plan_summary(self.inv, self.servers, plan, scope)
            hygiene = self.hygiene_steps.plan(
                (self.record.window.start, self.record.window.end),
                {n: r.software for n, r in read.items()},
            )
            self.record.plan = self.record.plan.model_copy(update=summary_update(hygiene))
            plan = plan.model_copy(update=summary_update(hygiene, as_lists=True))
            publish_plan(plan)
            self.resume_from(plan)

    def resume_from(self, plan: MaintenancePlan) -> None:
        """Where this run picks the change up: the production hosts it skips (patched and
        verified earlier in this change) and whether its recorded approvals still stand.
        A first run of the change skips nothing and asks for approval."""
        production = [s.name for s in self.production]
        self.plan = remaining_plan(plan, patched_hosts(self.record, production))
        self.resume = resume_point(
            self.record,
            production,
            production_canonical(self.plan),
            self.inv.client.approvals_required,
        )
        if self.resume.skip:
            self.gate(
                "resume",
                "skipped",
                f"{', '.join(self.resume.skip)}: patched and verified earlier in this change;"
                " not snapshotted or patched again",
            )
        for server, lines in done_unrecorded(self.record, production_canonical(self.plan)).items():
            self.gate(
                "resume",
                "mid-patch",
                f"{server}: approved, no longer in apt's plan and not in the record (changed by"
                f" an earlier run of this change that died): {', '.join(lines)}; planned"
                " again from its facts and verified in its batch",
            )

    def staging_gate(self) -> None:
        """Production only with every staging server in the same run, or the inventory's
        recorded no-staging risk; otherwise the run is refused before anything is touched."""
        rule = staging_rule(self.inv, self.servers)
        if self.record.plan is not None:  # the servers in scope, before anything is planned
            self.record.plan = self.record.plan.model_copy(
                update={
                    "staging": tuple(s.name for s in self.staging),
                    "production": tuple(s.name for s in self.production),
                }
            )
        self.gate("staging", rule.decision.value, rule.detail)
        if not rule.allowed:
            raise MaintenanceStopped(Outcome.REFUSED, rule.detail)

    def gate(
        self,
        gate: Literal["staging", "window", "snapshot", "package-set", "resume"],
        decision: str,
        detail: str,
        batch: int | None = None,
        by: str | None = None,
    ) -> None:
        """Record one gate decision and save the record."""
        self.record.gates.append(
            GateDecision(
                gate=gate,
                batch=batch,
                decision=decision,
                at=datetime.now(UTC),
                by=by,
                detail=detail,
            )
        )
        self.recorder.save()

    def announce(self) -> None:
        """Tell the client's stakeholders what will change and when (before any change),
        and record the window as announced from now on, when a notice was sent or at least
        attempted (a client with no notice configured was not told: nothing is planned)."""
        subject, body = notice_before_change(
            self.inv.client.name,
            self.record.change_ref,
            self.record.window,
            self.record.plan or PlanSummary(policy=self.inv.patch.policy),
            tz=self.inv.tz,
        )
        at = datetime.now(UTC)
        self.record.notification_failures += notify(self.inv.client.notify, subject, body)
        if self.inv.client.notify:
            self.recorder.record_announcement(subject, at)

    # ----- what a suspended run keeps for when it is run again -------------------------
    def keep(self, key: str, value: dict[str, Any]) -> None:
        """Keep ``value`` as this run's input ``key`` when the run can be suspended (a
        deployment's run): run again from the start once answered, it reads it back."""
        if suspends():
            publish_request(key, value, self.record.flow_run_id)

    def kept(self, key: str) -> Any:
        """What this run kept under ``key`` before it was suspended (None on a first run)."""
        return read_input(key, self.record.flow_run_id) if self.recorder.resumed else None

    def staging_done(self) -> None:
        """Run again after its wait: staging was snapshotted, patched and verified earlier
        in this run (the record has it), and the change announced: none of it is done
        again. The snapshots taken are read back (restore test, retention)."""
        kept = self.kept("snapshots") or {}
        self.snapshots = {name: SnapshotRecord.model_validate(v) for name, v in kept.items()}
        self.log.info("run again after its wait: staging, snapshots and notice done before")

    # ----- 2. snapshots ---------------------------------------------------------
    def snapshot_all(self) -> None:
        """A completed snapshot (or a recorded accepted risk) of every staging server, or
        stop. Production servers are snapshotted right before their batch (:meth:`roll_out`),
        not before staging and the approval wait."""
        with self.recorder.phase("snapshots"):
            failures = self.take_snapshots(self.staging)
        if failures:
            lines = "; ".join(f"{n}: {e}" for n, e in failures.items())
            raise MaintenanceStopped(
                Outcome.FAILED, f"snapshots failed, nothing was changed: {lines}"
            )

    def take_snapshots(self, servers: Sequence[Server], batch: int | None = None) -> dict[str, str]:
        """Take (or reuse while younger than ``snapshots.max_age``) each server's snapshot
        and wait until it is completed; record them; return the failures by name."""
        policy = self.inv.snapshots
        created = self._fan_out(
            servers,
            lambda s: create_snapshot.submit(s, self.inv.slug, self.record.change_ref, policy),
        )
        failures = {n: error_of(st) for n, st in created.items() if not st.is_completed()}
        waiting = {
            s.name: wait_for_snapshot.submit(s, created[s.name].result(), policy)
            for s in servers
            if s.name not in failures
        }
        for name, state in states(waiting).items():
            if not state.is_completed():
                failures[name] = error_of(state)
                continue
            # "reused" and "re-taken" are known where the snapshot was found, not awaited.
            first = created[name].result()
            done = state.result().model_copy(update={"reused": first.reused})
            if first.detail.startswith(RETAKEN):
                done = done.model_copy(update={"detail": first.detail})
            self.snapshots[name] = done
            if batch is not None:
                decision = (
                    "reused"
                    if first.reused
                    else "retaken"
                    if first.detail.startswith(RETAKEN)
                    else "taken"
                )
                ids = ", ".join(done.ids) or "none (accepted risk)"
                detail = "; ".join(x for x in (f"{name}: {ids}", done.detail) if x)
                self.gate("snapshot", decision, detail, batch=batch)
        entries = {e.server: e for e in self.record.snapshots}
        for server in servers:
            entries[server.name] = recorded_snapshot(
                server, self.snapshots.get(server.name), failures.get(server.name)
            )
        self.record.snapshots = list(entries.values())
        self.recorder.save()
        self.keep("snapshots", {n: r.model_dump(mode="json") for n, r in self.snapshots.items()})
        return failures

    # ----- 3-4. patch and verify ------------------------------------------------
    def patch_staging(self) -> None:
        """Patch and verify staging; any failure stops the run before approval."""
        with self.recorder.phase("staging"):
            failures = self.patch_and_verify(self.staging, "staging")
        if failures:
            raise MaintenanceStopped(
                Outcome.STAGING_FAILED,
                "; ".join(f"{n}: {w}" for n, w in failures.items())
                + " — no approval asked, production untouched",
            )

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
                failures[server.name] = f"patching failed: {error_of(state)}"
                diff = getattr(state.result(raise_on_failure=False), "diff", None)
                if diff is not None:
                    diffs[server.name] = diff
            self.diffs[server.name] = diffs.get(server.name)
        for name, diff in diffs.items():
            self.record.package_changes += recorded_package_changes(self.plans[name], diff)
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
            self.record.reboots.append(
                recorded_reboot(server.name, state.result(raise_on_failure=False))
            )
            if not state.is_completed():
                failures[server.name] = f"reboot: {error_of(state)}"
        survivors = [s for s in servers if s.name not in failures]
        verified, stressed = self.hygiene_steps.stress(self.verify(survivors, phase), phase)
        self.record.hygiene_findings += stressed
        for name, verification in verified.items():
            self.record.verifications.append(verification)
            if not verification.passed:
                failures[name] = "verification failed: " + "; ".join(verification.failures)
        self.record.verifications += failed_verifications(self.record, phase, failures)
        self.recorder.save()
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
        expectations = [e.name for e in report.expectations]
        out: dict[str, Verification] = {}
        for server in servers:
            ran, per = checks[server.name], report.per_server.get(server.name)
            out[server.name] = recorded_verification(
                server.name,
                phase,
                checks=ran.result() if ran.is_completed() else error_of(ran),
                facts_error=None if server.name in collected else error_of(facts[server.name]),
                suite_failures=per.failures if per is not None else [],
                expectations=expectations,
                at=datetime.now(UTC),
                suite_warnings=per.warnings if per is not None else [],
            )
        performance = self.hygiene_steps.performance(servers)
        return {n: v.model_copy(update={"performance": performance.get(n)}) for n, v in out.items()}

    # ----- 5. approval ----------------------------------------------------------
    def approve(self) -> None:
        """The plan keeps to staging's package set (else refused); then wait for enough
        listed approvers, or stop (rejected, or timed out). A rerun whose recorded counted
        approvals were for this plan's digest is not asked again."""
        assert self.plan is not None, "preflight plans before approval"
        assert self.resume is not None, "preflight decides where the run resumes"
        package_set = self.package_set_gate(self.plan)
        if self.resume.approval == ApprovalCarry.CARRIED_OVER:
            self.gate("resume", self.resume.approval.value, self.resume.detail)
            return
        with self.recorder.phase("approval"):
            self._approve(self.plan, package_set)

    def package_set_gate(self, plan: MaintenancePlan) -> PackageSet:
        """Production only to versions staging was patched to and verified with in this
        change (:func:`tasks.resume.package_set_rule`); refused before approval otherwise."""
        rule = package_set_rule(plan, self.record, [s.name for s in self.staging])
        self.gate("package-set", rule.decision.value, rule.detail)
        if not rule.allowed:
            raise MaintenanceStopped(Outcome.REFUSED, rule.detail)
        return rule

    def _approve(self, plan: MaintenancePlan, package_set: PackageSet) -> None:
        assert self.resume is not None, "preflight decides where the run resumes"
        timeout = self.inv.schedule.approval_timeout
        approvers = [a.name for a in self.inv.client.approvers]
        question = self.question(plan)
        # The wait (its deadline, its rounds) outlives a suspension: run again once
        # answered, the run continues the wait it began for this plan.
        wait, new = open_wait(
            question.key,
            question.digest,
            timeout=timeout,
            recorded=len(self.record.approvals),
            flow_run_id=self.record.flow_run_id,
            now=datetime.now(UTC),
        )
        if new and self.resume.approval == ApprovalCarry.NEEDED:
            self.gate("resume", self.resume.approval.value, self.resume.detail)
        if new:
            subject, body = notice_approval_requested(
                self.inv.client.name,
                self.record.change_ref,
                self.record.plan or PlanSummary(policy=self.inv.patch.policy),
                [v for v in self.record.verifications if v.phase == "staging"],
                approvers,
                run_url(self.record.flow_run_id),
                approvals_required=self.inv.client.approvals_required,
                deadline=wait.deadline,
                tz=self.inv.tz,
                plan_digest=question.digest,
                flow_run_id=self.record.flow_run_id,
                keyless=[n for n, key in question.approvers.items() if key is None],
            )
            self.record.notification_failures += notify(self.inv.client.notify, subject, body)
            self.record.approval_plan = list(question.production)
            self.recorder.save()
        # A continued change keeps its earlier answers; this wait's are after them.
        earlier = list(self.record.approvals[: wait.answers_before])
        recorded = list(self.record.approvals[wait.answers_before :])

        def record(tally: ApprovalTally) -> None:
            self.record.approvals = earlier + list(tally.answers)
            self.recorder.save()
            last = tally.answers[-1]
            if not last.counted:
                self.log.warning("answer not counted: %s", last.not_counted_reason)

        tally = wait_for_approval(
            question,
            client_name=self.inv.client.name,
            required=self.inv.client.approvals_required,
            deadline=wait.deadline,
            staging_text=staging_summary(self.record.verifications),
            production_text=production_plan_text(plan)
            + (
                "\n\nNot proven on staging (no staging server got these packages in this"
                " change):\n" + "\n".join(f"- {line}" for line in package_set.untested)
                if package_set.untested
                else ""
            )
            + self.hygiene_steps.approval_text(self.production),
            tz=self.inv.tz,
            on_answer=record,
            poll_s=settings().approval_poll_s,
            resumed=not new,
            first_round=wait.first_round,
            recorded=recorded,
            answered=used_pause_keys(),
        )
        if tally is None:
            raise MaintenanceStopped(Outcome.APPROVAL_TIMEOUT, f"no approval within {timeout}")
        if tally.verdict == "rejected":
            who = next(a for a in tally.counted if a.decision == "reject")
            raise MaintenanceStopped(Outcome.REJECTED, f"rejected by {who.approver}: {who.comment}")

    def question(self, plan: MaintenancePlan, server: str | None = None) -> Question:
        """What the approvers are asked about: this change, this plan's digest, their keys."""
        return Question(
            client=self.inv.slug,
            change_ref=self.record.change_ref,
            digest=plan_digest(plan),
            approvers=self.inv.client.approver_keys,
            flow_run_id=self.record.flow_run_id,
            server=server,
            production=tuple(production_canonical(plan)),
        )

    # ----- 6. production ----------------------------------------------------------
    def window_gate(self) -> None:
        """Production only inside the window, or outside it on a recorded override.

        A run suspended at the restore question went through this gate before: run again
        once answered, it finishes that batch's rollbacks first (each later batch still
        has its own gate)."""
        if self.kept("rollout"):
            return
        now = datetime.now(UTC)
        gate = window_gate(self.inv, now, self.window_override)
        if gate == WindowGate.OVERRIDE:
            self.log.warning(
                "outside the window: going ahead on override: %s", self.window_override
            )
            self.gate(
                "window",
                gate.value,
                f"outside the maintenance window; override: {self.window_override}",
                by=self.record.requester,
            )
        elif gate == WindowGate.CLOSED:
            detail = outside_window_detail(self.inv, now)
            self.gate("window", gate.value, detail)
            raise MaintenanceStopped(Outcome.HALTED, detail)
        else:
            self.gate("window", gate.value, "inside the maintenance window")

    def roll_out(self) -> None:
        """Production in batches; failed servers rolled back; halt when the budget is spent."""
        with self.recorder.phase("production"):
            self._roll_out()

    def _roll_out(self) -> None:
        tolerated = self.inv.rollout.failures_tolerated
        on_failure = self.inv.rollout.on_failure
        failed_total = 0
        planned = batches(self.inv, self.production)
        skip = set(self.resume.skip if self.resume is not None else ())
        progress = RolloutProgress(self.inv.slug, self.record.change_ref, len(self.production))
        # A run suspended at the restore question goes on with the batch it was in.
        kept = self.kept("rollout")
        waited = RolloutWait.model_validate(kept) if kept else None
        # What the window must leave for a batch is measured: staging (snapshot, patch,
        # verify), then every batch finished so far.
        measured = [
            self.record.phase_seconds.get("snapshots", 0.0)
            + self.record.phase_seconds.get("staging", 0.0)
        ]
        for index, whole in enumerate(planned, start=1):
            started = time.monotonic()
            handled: set[str] = set()
            if waited is not None and index < waited.batch:
                progress.advance(len(whole), f"batch {index}/{len(planned)} done before the wait")
                continue
            if waited is not None and index == waited.batch:
                # Patched and verified before the run was suspended: only its failed
                # servers' rollbacks are left (the ones decided before are in the record).
                failures, failed_total = dict(waited.failures), waited.failed_before
                self.diffs.update(waited.diffs)
                done = self.record.rollbacks[waited.rollbacks_before :]
                handled = {r.server for r in done}
                broken = [r.server for r in done if r.snapshot_ids and not r.verified_ok]
            else:
                # Hosts patched and verified earlier in this change are not touched again.
                batch = tuple(s for s in whole if s.name not in skip)
                if not batch:
                    progress.advance(len(whole), f"batch {index}/{len(planned)} done earlier")
                    continue
                expected = expected_batch_time(measured)
                gate = batch_gate(self.inv, datetime.now(UTC), self.window_override, expected)
                by = self.record.requester if gate.gate == WindowGate.OVERRIDE else None
                self.gate("window", gate.gate.value, gate.detail, batch=index, by=by)
                if not gate.allowed:
                    raise MaintenanceStopped(
                        Outcome.HALTED, window_halt_detail(gate, index - 1, planned)
                    )
                names = ", ".join(s.name for s in batch)
                self.log.info("batch %d/%d: %s", index, len(planned), names)
                snapshot_failures = self.take_snapshots(batch, batch=index)
                if snapshot_failures:
                    lines = "; ".join(f"{n}: {e}" for n, e in snapshot_failures.items())
                    untouched = ", ".join(s.name for b in planned[index - 1 :] for s in b)
                    raise MaintenanceStopped(
                        Outcome.HALTED,
                        f"snapshots before batch {index}/{len(planned)} failed: {lines}; "
                        f"untouched: {untouched}",
                    )
                failures = self.patch_and_verify(batch, "production")
                broken = []
                if failures and on_failure == "ask":  # the question may suspend the run
                    self.keep(
                        "rollout",
                        RolloutWait(
                            batch=index,
                            failures=failures,
                            failed_before=failed_total,
                            rollbacks_before=len(self.record.rollbacks),
                            diffs={n: self.diffs.get(n) for n in failures},
                        ).model_dump(mode="json"),
                    )
            for name, why in failures.items():
                if name in handled:
                    continue
                self.log.error("%s failed: %s", name, why)
                if not self.roll_back(next(s for s in whole if s.name == name), why):
                    broken.append(name)
            failed_total += len(failures)
            measured.append(time.monotonic() - started)
            progress.advance(
                len(whole),
                f"batch {index}/{len(planned)} done"
                + (f", failed: {', '.join(failures)}" if failures else ""),
            )
            if broken:
                raise MaintenanceStopped(
                    Outcome.RESTORE_FAILED, restore_halt_detail(broken, index, planned)
                )
            if budget_spent(failed_total, tolerated, on_failure):
                raise MaintenanceStopped(
                    Outcome.HALTED, budget_halt_detail(failed_total, tolerated, index, planned)
                )

    def ask_restore(self, server: Server, why: str) -> RestoreAnswer:
        """Ask a listed approver whether to restore a failed server (the run waits,
        suspended when it is a deployment's run). Run again once answered, the question
        is the one asked then (its digest), with the deadline it had."""
        assert self.plan is not None, "preflight plans before the rollout"
        question = self.question(self.plan, server.name)
        asked = self.kept(f"{question.key}-request")
        if asked:  # the question this run asked before it was suspended
            question = replace(
                question,
                digest=str(asked["plan_digest"]),
                production=tuple(asked["production_plan"]),
            )
        wait, new = open_wait(
            question.key,
            question.digest,
            timeout=self.inv.schedule.approval_timeout,
            recorded=0,
            flow_run_id=self.record.flow_run_id,
            now=datetime.now(UTC),
        )
        return ask_restore(
            question,
            why=why,
            timeout=self.inv.schedule.approval_timeout,
            on_ignored=lambda name, reason: self.log.warning(
                "answer by %s not counted: %s; asking again", name, reason
            ),
            poll_s=settings().approval_poll_s,
            deadline=wait.deadline,
            resumed=not new,
            answered=used_pause_keys(),
        )

    def roll_back(self, server: Server, why: str) -> bool:
        """Restore a failed production server, ask first, or leave it, as the policy says.

        A server on which nothing changed (its package diff is empty) is not restored.

        Returns:
            False when a restore was tried and failed or did not verify (the rollout
            must stop); True otherwise.
        """
        snapshot = self.snapshots.get(server.name)
        on_failure = self.inv.rollout.on_failure
        state = snapshot.state if snapshot is not None else None
        diff = self.diffs.get(server.name)
        changed = diff is None or bool(diff.changes)  # unknown counts as changed
        choice = rollback_choice(on_failure, state, changed=changed)
        if choice.action == RollbackAction.ASK:
            answer = self.ask_restore(server, why)
            choice = rollback_choice(on_failure, state, answer, changed=changed)
        if choice.action == RollbackAction.LEAVE or snapshot is None:
            self.record.rollbacks.append(not_restored(server.name, choice.reason, why))
            self.recorder.save()
            return True
        result = restore_from_snapshot(server, snapshot, self.inv.snapshots, return_state=True)
        failures: Sequence[str] | None = None
        if result.is_completed():
            self.sessions.host(server).close()
            failures = self.verify([server], "production", after_restore=True)[server.name].failures
        rollback = restored(
            server.name,
            snapshot,
            why,
            restore_error=None if result.is_completed() else error_of(result),
            verify_failures=failures,
        )
        self.record.rollbacks.append(rollback)
        self.recorder.save()
        return rollback.restored_ok and rollback.verified_ok

    def complete(self) -> None:
        """Production is done: the outcome is decided (what follows is for the record)."""
        self.record.outcome, self.record.outcome_detail = completed_outcome(self.record)

    # ----- 7. hygiene (after the rollout) ---------------------------------------------
    def hygiene(self) -> None:
        """The planned removals and service disables on the servers the change left
        verified; the malware scan and the log review on every server (for the record)."""
        with self.recorder.phase("hygiene"):
            previous = self.recorder.store.change_records(self.inv.slug)
            self.record.hygiene_findings += self.hygiene_steps.carry_out(
                self.record, previous, settings().dpkg_lock_timeout_s
            )
            self.recorder.save()

    # ----- 8. security audit (for the record) --------------------------------------
    def security_audit(self) -> None:
        """Read every server of the run as the ``security-audit`` flow does (no refresh:
        the plan just did) and record what the suite fails as security findings. Findings
        never change the outcome: they are for the record, the notice and the follow-up.
        Each server's result is stored as every audit's is (the report's compliance
        section); a failed write is logged by its task and changes nothing here."""
        with self.recorder.phase("security-audit"):
            audited_at = datetime.now(UTC)
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
            unreachable = {
                name: f"not audited: {error_of(state)}"
                for name, state in facts.items()
                if report is None or name not in collected
            }
            rows = audit_rows([s.name for s in self.servers], report, unreachable)
            self.record.security_findings += [
                Finding(server=row.server, summary=text) for row in rows for text in row.findings
            ]
            self.recorder.save()
            store_audit_results(
                stored_audits(
                    self.inv.slug, self.record.flow_run_id, audited_at, rows, report, collected
                ),
                return_state=True,
            )

    # ----- 8-9. restore test and retention ------------------------------------
    def restore_test(self) -> None:
        """Restore one fresh snapshot to an isolated copy and time it (servers take turns)."""
        with self.recorder.phase("restore-test"):
            if not self.inv.restore_test.enabled:
                return
            server = restore_test_candidate(
                self.servers,
                {name: s.state for name, s in self.snapshots.items()},
                self.recorder.previous_runs(),
            )
            if server is None:
                return
            bound = self.inv.restore_test.timeout.total_seconds()
            state = run_restore_test(
                server, self.snapshots[server.name], self.inv.snapshots, bound, return_state=True
            )
            self.record.restore_test = recorded_restore_test(
                server.name, state.result() if state.is_completed() else error_of(state), bound
            )

    def retention(self) -> None:
        """Keep each server's newest snapshots, never this run's."""
        with self.recorder.phase("retention"):
            protect = {i for r in self.snapshots.values() for i in r.ids}
            for server in self.servers:
                if server.name in self.snapshots:
                    apply_snapshot_retention.submit(
                        server, self.inv.slug, self.inv.snapshots, protect
                    ).wait()
