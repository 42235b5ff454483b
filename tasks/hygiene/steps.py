"""The hygiene steps of one maintenance run: planned in preflight, carried out in the change.

:class:`HygieneSteps` is what :class:`tasks.maintenance.Maintenance` (and the dry run)
asks at each phase; each method fans the tasks of :mod:`tasks.hygiene` out over the
servers and maps their results with the pure functions below:

- preflight (:meth:`HygieneSteps.plan`): the removals (apt's simulation) and the services
  to disable, the scan, the stress test, the rollout order (least critical first) and the
  providers' scheduled events inside the window, as lines of the plan and of the approval
  text;
- verification (:meth:`HygieneSteps.performance`, :meth:`HygieneSteps.stress`): the load,
  memory, disk and top processes of every verified server; the stress test of staging
  (and of production where the inventory allows it), whose failure fails the
  verification;
- after the rollout (:meth:`HygieneSteps.carry_out`): on the servers the change left
  patched and verified, the planned removals and service disables (only those the plan
  showed); on every server, the malware scan and the log review since the last
  maintenance; findings into the change record's ``hygiene_findings``.

Every step is bounded in time by its command (``tasks.hygiene.base.bounded``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from prefect.futures import PrefectFuture
from prefect.states import State

from history.change import ChangeRecord, Finding, Performance, Verification
from inventory import ClientInventory, Server
from inventory.hygiene import Hygiene
from tasks.hygiene.base import finding
from tasks.hygiene.logreview import log_findings, review_logs, review_since
from tasks.hygiene.malware import malware_findings, scan_for_malware
from tasks.hygiene.processes import performance_task
from tasks.hygiene.services import (
    ServiceSurvey,
    disable_services,
    service_findings,
    services_to_disable,
    survey_services,
)
from tasks.hygiene.software import SoftwarePlan, plan_removals, remove_packages
from tasks.hygiene.stress import StressReport, stress_test
from tasks.providers import ProviderEvent, event_findings, events_in, scheduled_events
from tasks.rollout import batches
from tasks.sessions import FleetSessions


def _states(futures: Mapping[str, PrefectFuture[Any]]) -> dict[str, State[Any]]:
    for future in futures.values():
        future.wait()
    return {name: future.state for name, future in futures.items()}


def _error(state: State[Any]) -> str:
    exc = state.result(raise_on_failure=False)
    return str(exc) if isinstance(exc, BaseException) else (state.message or state.name or "")


@dataclass
class HygienePlan:
    """What the hygiene steps will do in this change, as the plan and approvers see it."""

    removals: dict[str, SoftwarePlan] = field(default_factory=dict)
    disable: dict[str, list[str]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def plan_lines(
    inventory: ClientInventory,
    servers: Sequence[Server],
    removals: Mapping[str, SoftwarePlan],
    disable: Mapping[str, list[str]],
) -> list[str]:
    """The hygiene steps of the plan, one line each (pure)."""
    policy = inventory.hygiene
    lines = [
        f"{name}: {plan.line()}" for name, plan in removals.items() if plan.removals or plan.error
    ]
    lines += [f"{name}: disable {', '.join(units)}" for name, units in disable.items() if units]
    if policy.malware.enabled:
        lines.append(
            f"malware scan of {', '.join(policy.malware.paths)} on every server (idle priority,"
            f" at most {int(policy.malware.max_time.total_seconds())} s)"
        )
    stressed = stress_targets(policy, servers)
    if stressed:
        s = policy.stress
        workers = ", ".join(
            f"{n} {w}" for n, w in (("cpu", s.cpu), ("vm", s.vm), ("io", s.io)) if w
        )
        lines.append(
            f"stress test of {', '.join(x.name for x in stressed)} after patching:"
            f" {s.seconds} s ({workers}; memory {s.vm_percent}%)"
        )
    lines.append("log review since the last maintenance on every server")
    return lines


def stress_targets(policy: Hygiene, servers: Sequence[Server]) -> list[Server]:
    """The servers stress-tested (pure): staging, and production only when allowed."""
    if not policy.stress.enabled:
        return []
    return [s for s in servers if s.role == "staging" or policy.stress.allow_production]


def order_line(inventory: ClientInventory, production: Sequence[Server]) -> str:
    """``Rollout order (least critical first): a (low), b | c (high)`` (pure)."""
    planned = batches(inventory, production)
    text = " | ".join(", ".join(f"{s.name} ({s.criticality})" for s in b) for b in planned)
    return f"Rollout order (least critical first; | between batches): {text}"


def with_stress(verification: Verification, report: StressReport) -> Verification:
    """The verification with the stress test's verdict in it (pure)."""
    update: dict[str, Any] = {"expectations": (*verification.expectations, "stress test")}
    if report.failures:
        update["passed"] = False
        update["failures"] = (*verification.failures, *report.failures)
    return verification.model_copy(update=update)


def verified_servers(record: ChangeRecord, servers: Sequence[Server]) -> list[Server]:
    """The servers this change left patched and verified (pure): the last verification of
    each in its phase passed and it was not rolled back."""
    rolled_back = {r.server for r in record.rollbacks}
    last: dict[str, bool] = {}
    for v in record.verifications:
        last[v.server] = v.passed
    return [s for s in servers if last.get(s.name) and s.name not in rolled_back]


class HygieneSteps:
    """The hygiene steps of one run: its inventory, servers and sessions."""

    def __init__(
        self, inventory: ClientInventory, servers: Sequence[Server], sessions: FleetSessions
    ) -> None:
        self.inv = inventory
        self.servers = list(servers)
        self.sessions = sessions
        self.planned = HygienePlan()

    def plan(
        self, window: tuple[datetime, datetime], removals: Mapping[str, SoftwarePlan]
    ) -> HygienePlan:
        """Survey every server's services (read-only) and the providers; what the change
        will do. ``removals``: each server's removal plan, read with its facts
        (:func:`tasks.hygiene.software.collect_plan_facts`); a server without one (its
        facts not read: a rerun's production servers already dealt with) is surveyed
        here."""
        software = self.inv.hygiene.software
        missing = [s for s in self.servers if s.name not in removals]
        surveys = _states(
            {s.name: plan_removals.submit(self.sessions.host(s), software) for s in missing}
        )
        surveyed = _states(
            {
                s.name: survey_services.submit(self.sessions.host(s))
                for s in self.servers
                if s.allowed_services
            }
        )
        plan = HygienePlan()
        for server in self.servers:
            given = removals.get(server.name)
            if given is None:
                state = surveys[server.name]
                given = (
                    state.result() if state.is_completed() else SoftwarePlan(error=_error(state))
                )
            plan.removals[server.name] = given
            survey = surveyed.get(server.name)
            if survey is not None and survey.is_completed():
                result: ServiceSurvey = survey.result()
                units = services_to_disable(
                    result,
                    server.allowed_services,
                    self.inv.hygiene.services.disable_unused,
                    server.port,
                )
                if units:
                    plan.disable[server.name] = units
        plan.lines = plan_lines(self.inv, self.servers, plan.removals, plan.disable)
        production = [s for s in self.servers if s.role == "production"]
        if production:
            plan.order = [s.name for b in batches(self.inv, production) for s in b]
        events = self.provider_events(window)
        plan.warnings = [f"provider maintenance in the window: {e.line()}" for e in events]
        plan.findings = event_findings(events, "in the maintenance window")
        self.planned = plan
        return plan

    def provider_events(self, window: tuple[datetime, datetime]) -> list[ProviderEvent]:
        """The providers' scheduled events inside ``window`` (none without aws servers)."""
        if not any(s.provider.type == "aws" for s in self.servers):
            return []
        state = scheduled_events.submit(self.servers, self.inv.slug)
        state.wait()
        if not state.state.is_completed():
            self.planned.findings.append(
                finding("provider-event", None, f"providers not asked: {_error(state.state)}")
            )
            return []
        return events_in(state.state.result(), *window)

    def approval_text(self, production: Sequence[Server]) -> str:
        """What approvers see besides the package plan: order, hygiene, warnings (pure)."""
        parts = []
        if production:
            parts.append(order_line(self.inv, production))
        if self.planned.lines:
            parts.append(
                "Hygiene in this change:\n" + "\n".join(f"- {x}" for x in self.planned.lines)
            )
        if self.planned.warnings:
            parts.append(
                "WARNING, weigh before approving:\n"
                + "\n".join(f"- {x}" for x in self.planned.warnings)
            )
        return "".join(f"\n\n{p}" for p in parts)

    def performance(self, servers: Sequence[Server]) -> dict[str, Performance]:
        """Load, memory, disk and top processes of each server now (unread ones left out)."""
        read = _states({s.name: performance_task.submit(self.sessions.host(s)) for s in servers})
        return {n: st.result() for n, st in read.items() if st.is_completed()}

    def stress(
        self, verified: Mapping[str, Verification], phase: str
    ) -> tuple[dict[str, Verification], list[Finding]]:
        """Stress the servers that passed verification where the inventory says so; the
        verifications with the verdict in them, and the figures as info findings."""
        policy = self.inv.hygiene
        targets = [
            s
            for s in stress_targets(policy, self.servers)
            if s.role == phase and s.name in verified and verified[s.name].passed
        ]
        ran = _states(
            {s.name: stress_test.submit(s, self.sessions.host(s), policy.stress) for s in targets}
        )
        out = dict(verified)
        findings: list[Finding] = []
        for name, state in ran.items():
            report: StressReport = (
                state.result()
                if state.is_completed()
                else StressReport.model_validate(
                    {
                        "server": name,
                        "run": {"exit_code": None, "successful": False},
                        "failures": [f"stress test did not run: {_error(state)}"],
                    }
                )
            )
            out[name] = with_stress(verified[name], report)
            if report.held:
                findings.append(
                    finding("stress", name, f"stress test held: {report.run.line()}", "info")
                )
        return out, findings

    def carry_out(
        self, record: ChangeRecord, previous: Sequence[ChangeRecord], lock_timeout_s: int
    ) -> list[Finding]:
        """After the rollout: the planned removals and disables on the servers the change
        left verified, the malware scan and the log review on every server."""
        targets = verified_servers(record, self.servers)
        findings = list(self.planned.findings)
        removed = _states(
            {
                s.name: remove_packages.submit(
                    self.sessions.host(s), self.planned.removals[s.name].names, lock_timeout_s
                )
                for s in targets
                if s.name in self.planned.removals and self.planned.removals[s.name].removals
            }
        )
        for name, state in removed.items():
            if state.is_completed():
                plan = self.planned.removals[name]
                findings.append(
                    finding(
                        "software",
                        name,
                        f"removed: {', '.join(state.result())}",
                        "info",
                        "reversible from the pre-change snapshot; " + plan.line(),
                    )
                )
            else:
                findings.append(finding("software", name, f"not removed: {_error(state)}"))
        disabled = _states(
            {
                s.name: disable_services.submit(self.sessions.host(s), self.planned.disable[s.name])
                for s in targets
                if self.planned.disable.get(s.name)
            }
        )
        for name, state in disabled.items():
            findings.append(
                finding("services", name, f"disabled: {', '.join(state.result())}", "info")
                if state.is_completed()
                else finding("services", name, f"not disabled: {_error(state)}")
            )
        findings += self.review(record, previous)
        return findings

    def review(
        self, record: ChangeRecord | None, previous: Sequence[ChangeRecord]
    ) -> list[Finding]:
        """The read-only checks (also the audit's): services, malware scan, log review
        since the last maintenance other than ``record``'s."""
        policy = self.inv.hygiene
        now = datetime.now(UTC)
        since = review_since(
            previous, now, policy.log_review.lookback, record.change_ref if record else ""
        )
        scans = (
            _states(
                {
                    s.name: scan_for_malware.submit(self.sessions.host(s), policy.malware)
                    for s in self.servers
                }
            )
            if policy.malware.enabled
            else {}
        )
        logs = _states(
            {s.name: review_logs.submit(self.sessions.host(s), since) for s in self.servers}
        )
        findings = self.services()
        for server in self.servers:
            scan = scans.get(server.name)
            if scan is not None:
                findings += (
                    malware_findings(server.name, scan.result(), policy.malware)
                    if scan.is_completed()
                    else [finding("malware", server.name, f"not scanned: {_error(scan)}")]
                )
            log = logs[server.name]
            findings += (
                log_findings(server.name, log.result(), policy.log_review)
                if log.is_completed()
                else [finding("logs", server.name, f"logs not reviewed: {_error(log)}")]
            )
        return findings

    def services(self) -> list[Finding]:
        """Enabled and listening services outside each server's policy (read-only)."""
        surveyed = _states(
            {
                s.name: survey_services.submit(self.sessions.host(s))
                for s in self.servers
                if s.allowed_services
            }
        )
        findings: list[Finding] = []
        for server in self.servers:
            state = surveyed.get(server.name)
            if state is None:
                continue
            findings += (
                service_findings(server.name, state.result(), server.allowed_services)
                if state.is_completed()
                else [finding("services", server.name, f"not checked: {_error(state)}")]
            )
        return findings


def summary_update(plan: HygienePlan, as_lists: bool = False) -> dict[str, Any]:
    """The ``PlanSummary`` (tuples) or ``MaintenancePlan`` (``as_lists``) fields (pure)."""
    kind: Any = list if as_lists else tuple
    return {"hygiene": kind(plan.lines), "warnings": kind(plan.warnings), "order": kind(plan.order)}


def schedule_findings(inventory: ClientInventory, today: date) -> list[Finding]:
    """The client's schedule review (pure): late is a warning; never recorded, info."""
    schedule = inventory.schedule
    problem = schedule.review_problem(today)
    if problem is None:
        return []
    recorded = schedule.agreed_on is not None or schedule.reviewed_on is not None
    return [finding("schedule", None, problem, "warning" if recorded else "info")]


def report_notes(
    inventory: ClientInventory, today: date, events: Sequence[ProviderEvent] | str
) -> list[str]:
    """The monthly report's lines on the schedule review and the providers' scheduled
    maintenance (``events``: the upcoming events, or why they could not be read) (pure)."""
    notes = [f"Schedule review: {f.summary}." for f in schedule_findings(inventory, today)]
    if isinstance(events, str):
        notes.append(f"Providers' scheduled maintenance could not be read: {events}")
    else:
        notes += [f"Provider maintenance scheduled: {e.line()}" for e in events]
    return notes


def monthly_notes(inventory: ClientInventory, now: datetime) -> list[str]:
    """The report's notes on the schedule review and the providers' upcoming scheduled
    maintenance (EC2 events from ``now`` on; none asked without aws servers)."""
    events: list[ProviderEvent] | str = []
    if any(s.provider.type == "aws" for s in inventory.servers):
        state = scheduled_events(inventory.servers, inventory.slug, return_state=True)
        if state.is_completed():
            events = [e for e in state.result() if (e.not_after or e.not_before or now) >= now]
        else:
            events = _error(state)
    return report_notes(inventory, now.astimezone(inventory.tz).date(), events)
