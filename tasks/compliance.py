"""A security audit's rows, and storing them in the history store (``history/compliance.py``).

An audit (the ``security-audit`` flow, and the maintenance procedure's audit after
production) ends with one :class:`ServerAudit` per server (status, findings, warnings:
:func:`audit_rows`, pure). :func:`stored_audits` turns them, with the suite's report and
the facts read, into the store's :class:`history.compliance.StoredAudit` (pure): each
finding keyed by the check it broke, so that reports can tell a finding that stayed open
from one that was closed and another that opened; the security updates pending on the
server (package and version), so that reports can date the oldest one.
:func:`store_audit_results` is the thin task that writes them (an upsert: safe to retry).
Nothing but these is stored: no raw command output, no log line; what is stored is
redacted by the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from history.compliance import AuditFinding, PendingUpdate, StoredAudit
from history.store import open_store
from tasks.facts.script import HostFacts
from tasks.verify.suite import VerificationReport

__all__ = [
    "UNREACHABLE_KEY",
    "ServerAudit",
    "audit_rows",
    "pending_security",
    "store_audit_results",
    "stored_audits",
]

#: The key of the finding "the server could not be audited".
UNREACHABLE_KEY = "unreachable"


class ServerAudit(BaseModel):
    """One server's audit result (a row of the ``security-audit`` flow's artifact and summary)."""

    server: str
    status: Literal["passed", "findings", "unreachable"]
    findings: list[str] = Field(default_factory=list, description="What breaks the policy.")
    warnings: list[str] = Field(default_factory=list, description="What could not be checked.")


def audit_rows(
    order: list[str], report: VerificationReport | None, unreachable: dict[str, str]
) -> list[ServerAudit]:
    """One row per server in ``order`` (pure): the suite's failures and warnings, or why
    the server could not be read."""
    rows: list[ServerAudit] = []
    for name in order:
        if name in unreachable:
            rows.append(
                ServerAudit(server=name, status="unreachable", findings=[unreachable[name]])
            )
            continue
        assert report is not None
        result = report.per_server[name]
        rows.append(
            ServerAudit(
                server=name,
                status="passed" if result.passed else "findings",
                findings=list(result.failures),
                warnings=list(result.warnings),
            )
        )
    return rows


def pending_security(facts: HostFacts) -> list[PendingUpdate] | None:
    """The security updates pending on a host (pure): apt's simulation when it was read
    (the exact plan), else the upgradable list (apt, else dnf); None when neither was."""
    if facts.apt_simulation is not None:
        changes = [(c.name, c.to_version) for c in facts.apt_simulation.security_installs]
    elif facts.updates is not None:
        changes = [(u.name, u.candidate) for u in facts.updates if u.security]
    else:
        return None
    return [PendingUpdate(package=name, version=version) for name, version in sorted(changes)]


def stored_audits(
    client: str,
    flow_run_id: str,
    audited_at: datetime,
    rows: Sequence[ServerAudit],
    report: VerificationReport | None,
    facts: Mapping[str, HostFacts],
) -> list[StoredAudit]:
    """The store's rows of one audit run (pure).

    A finding is keyed by the name of the expectation it broke (the suite's
    ``failed_checks``), ``unreachable`` when the server could not be read, else by its
    own text (a finding from elsewhere, worded the same way each time).

    Args:
        client: client slug.
        flow_run_id: the audit's flow run.
        audited_at: when the audit started.
        rows: one per server audited.
        report: the suite's report (None when no server could be read).
        facts: the facts read, by server.
    """
    out: list[StoredAudit] = []
    for row in rows:
        verified = report.per_server.get(row.server) if report else None
        keys = {text: key for key, text in (verified.failed_checks if verified else {}).items()}
        findings = [
            AuditFinding(
                key=UNREACHABLE_KEY if row.status == "unreachable" else keys.get(text, text),
                text=text,
            )
            for text in row.findings
        ]
        read = facts.get(row.server)
        pending = pending_security(read) if read is not None else None
        out.append(
            StoredAudit.model_validate(
                {
                    "client": client,
                    "server": row.server,
                    "flow_run_id": flow_run_id,
                    "audited_at": audited_at,
                    "status": row.status,
                    "findings": findings,
                    "warnings": list(row.warnings),
                    "pending_security": pending,
                }
            )
        )
    return out


@task(name="store-audit-results", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def store_audit_results(audits: list[StoredAudit]) -> int:
    """Write an audit run's results to the history store (an upsert: safe to retry).

    Args:
        audits: the rows (:func:`stored_audits`).

    Returns:
        How many rows were written.
    """
    with open_store() as store:
        store.save_audits(audits)
    return len(audits)
