"""The ``security-audit`` flow: one client's servers checked against the policy's security
clauses, read-only.

For each server (in parallel) it refreshes apt's package lists and reads, in one SSH round
trip, the facts of a maintenance plan plus sshd's effective settings and the inbound
firewall (``tasks/security.py``); then the verification suite (great-expectations,
``reports/expectations.py``) decides, per server: no pending security update, no listening
TCP port outside ``allowed_ports``, no failed systemd unit, sshd letting no password (and
no root by password) in, inbound traffic denied by default, disks, pending reboot, and
every fact read. A host that cannot be reached (a host-key mismatch included) is a finding.
The policy's hygiene clauses run read-only beside it (``tasks/hygiene/``): the malware scan,
enabled and listening services outside ``allowed_services``, and the journal since the last
maintenance (counts above the inventory's thresholds); and the client's maintenance schedule
is flagged when its review is overdue.

Each run publishes a table artifact (``security-audit-<client>``, one row per server),
stores each server's result in the history store (``tasks/compliance.py``: status, findings
keyed by check, warnings, pending security updates; the maintenance report's compliance
section reads them) and, when anything was found, notifies the client's notification
blocks and ends **Failed**, so a scheduled audit that finds something is red in the UI
and can drive automations. A result that could not be stored fails the run too.

Parameters: ``client`` (slug), ``servers`` (names; default all), ``refresh`` (default true),
``require_firewall_known`` (default false: a host without nft or iptables is a warning).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from core.errors import CaretakerError, ConfigError
from core.logs import redact_logs
from core.settings import settings
from history.change import ChangeRecord, Finding
from history.store import open_store
from inventory import load_client_by_slug
from tasks.compliance import ServerAudit, audit_rows, store_audit_results, stored_audits
from tasks.facts.collect import AUDIT_FACTS, collect_facts
from tasks.facts.script import HostFacts
from tasks.hygiene.steps import HygieneSteps, schedule_findings
from tasks.notify import notice_audit, notify
from tasks.records import run_url
from tasks.sessions import open_sessions
from tasks.verify.suite import HostVerificationSettings, validate_host_facts

__all__ = ["SecurityAuditSummary", "ServerAudit", "audit_rows", "security_audit"]


class SecurityAuditSummary(BaseModel):
    """What a ``security-audit`` run found (the run's result)."""

    client: str
    audited_at: datetime
    servers: list[ServerAudit]
    notice_problems: list[str] = Field(
        default_factory=list, description="Notification blocks that could not be used."
    )
    store_problem: str = Field(
        default="",
        description="Why the results could not be stored in the history store (then Failed).",
    )
    client_findings: list[str] = Field(
        default_factory=list, description="The client's own: a schedule review overdue."
    )
    client_warnings: list[str] = Field(
        default_factory=list, description="The client's own, to know: no review date recorded."
    )

    @property
    def with_findings(self) -> list[ServerAudit]:
        """Servers with findings or unreachable."""
        return [s for s in self.servers if s.status != "passed"]


def with_hygiene(rows: list[ServerAudit], findings: list[Finding]) -> list[ServerAudit]:
    """The rows with the hygiene checks' findings in them (pure): warnings and critical
    ones are findings (the server did not pass), info ones are warnings."""
    out = []
    for row in rows:
        mine = [f for f in findings if f.server == row.server]
        bad = [f"{f.kind}: {f.summary}" for f in mine if f.severity != "info"]
        info = [f"{f.kind}: {f.summary}" for f in mine if f.severity == "info"]
        status = "findings" if bad and row.status == "passed" else row.status
        out.append(
            row.model_copy(
                update={
                    "status": status,
                    "findings": [*row.findings, *bad],
                    "warnings": [*row.warnings, *info],
                }
            )
        )
    return out


def earlier_changes(client: str, logger: Any) -> list[ChangeRecord]:
    """The client's change records (where the log review starts); none when the store
    cannot be read (the review then reads its whole lookback, and says so in the log)."""
    try:
        with open_store() as store:
            return store.change_records(client)
    except CaretakerError as exc:
        logger.warning("log review from its lookback: no change records read: %s", exc)
        return []


@flow(
    name="security-audit",
    # Prefect types TaskRunner invariantly; a thread pool runner is what it expects at run time.
    task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
    validate_parameters=True,
)
def security_audit(
    client: str,
    servers: list[str] | None = None,
    refresh: bool = True,
    require_firewall_known: bool = False,
) -> State[Any]:
    """Audit one client's servers against the security policy (read-only), with the
    policy's hygiene clauses (malware scan, unused services, log review since the last
    maintenance) and the client's schedule review.

    Args:
        client: the client's slug.
        servers: only these servers (names); default every server of the client.
        refresh: refresh apt's package lists first (pending security updates current).
        require_firewall_known: a server without a readable firewall is a finding.

    Returns:
        Completed when every server passed, else Failed; either way with a
        :class:`SecurityAuditSummary`.
    """
    redact_logs()  # every log line of the run is masked from here on (core/logs.py)
    logger = get_run_logger()
    inventory = load_client_by_slug(settings().inventory_dir, client)
    known = [s.name for s in inventory.servers]
    unknown = sorted(set(servers or ()) - set(known))
    if unknown:
        raise ConfigError(f"{client}: no such server(s): {', '.join(unknown)} (known: {known})")
    chosen = [s for s in inventory.servers if servers is None or s.name in servers]
    audited_at = datetime.now(UTC)

    facts: dict[str, HostFacts] = {}
    unreachable: dict[str, str] = {}
    with open_sessions(inventory, chosen) as sessions:
        # The audit reads once more after a failure (a read is safe to repeat).
        collect = collect_facts.with_options(retries=1, retry_delay_seconds=5)
        futures = {s.name: collect.submit(sessions.host(s), AUDIT_FACTS, refresh) for s in chosen}
        for name, future in futures.items():
            future.wait()
            if future.state.is_completed():
                facts[name] = future.state.result()
            else:
                unreachable[name] = f"not audited: {future.state.message or future.state.name}"
        # The hygiene clauses, read-only, on every server that answered.
        answered = [s for s in chosen if s.name in facts]
        hygiene = HygieneSteps(inventory, answered, sessions).review(
            None, earlier_changes(client, logger)
        )

    report = (
        validate_host_facts(
            facts,
            {s.name: list(s.allowed_ports) for s in chosen if s.name in facts},
            HostVerificationSettings(require_firewall_known=require_firewall_known),
        )
        if facts
        else None
    )
    rows = with_hygiene(audit_rows([s.name for s in chosen], report, unreachable), hygiene)
    create_table_artifact(
        key=f"security-audit-{client}",
        table=[
            {
                "server": r.server,
                "status": r.status,
                "findings": "; ".join(r.findings),
                "warnings": "; ".join(r.warnings),
            }
            for r in rows
        ],
        description=f"Security audit of {inventory.client.name}",
    )
    summary = SecurityAuditSummary(client=client, audited_at=audited_at, servers=rows)
    for item in schedule_findings(inventory, audited_at.astimezone(inventory.tz).date()):
        kept = summary.client_warnings if item.severity == "info" else summary.client_findings
        kept.append(item.summary)
    stored = store_audit_results(
        stored_audits(client, str(flow_run.id), audited_at, rows, report, facts),
        return_state=True,
    )
    if not stored.is_completed():
        summary.store_problem = f"results not stored in the history store: {stored.message}"
        logger.error("%s", summary.store_problem)
    found = summary.with_findings
    if found or summary.client_findings:
        subject, body = notice_audit(
            inventory.client.name,
            {r.server: r.findings for r in found}
            | ({"schedule": summary.client_findings} if summary.client_findings else {}),
            audited_at=audited_at,
            tz=inventory.client.timezone,
            run_url=run_url(flow_run.id),
        )
        summary.notice_problems = notify(list(inventory.client.notify), subject, body)
    logger.info(
        "security audit of %s: %d server(s), %d with findings", client, len(rows), len(found)
    )
    if found or summary.store_problem or summary.client_findings:
        names = ", ".join(r.server for r in found)
        message = "; ".join(
            m
            for m in (
                f"findings on {names}" if found else "",
                "; ".join(summary.client_findings),
                summary.store_problem,
            )
            if m
        )
        return Failed(message=message, data=summary)
    return Completed(message=f"{len(rows)} server(s) passed", data=summary)
