"""Compliance evidence in the history store: security-audit results and verification results.

Two tables (schema version 7, ``docs/store.md``):

- ``audit_results``: one row per server per ``security-audit`` run: its status, its
  findings (each with a stable ``key``, so that a finding can be followed from audit to
  audit), its warnings, and the security updates pending on it then (package and
  version; None when they could not be read). The age of a pending security update is
  derived from these rows (the first audit in which that package and version was
  pending), so the store keeps the list and not only a count.
- ``verification_results``: one row per server verification of a maintenance run (staging
  and production), derived from the change record (:class:`history.change.ChangeRecord`)
  each time it is saved (:meth:`history.records.ChangeRecords.save_change_record`, in the
  same transaction). Reports take "last patched" from them: the newest passed
  verification of a server that was not rolled back in that change.

What is stored passes the same redaction as the change record (:func:`core.redact.redact_json`):
a finding or warning quoting a credential is masked. :class:`ComplianceRecords` is the part
of :class:`history.store.HistoryStore` that saves and reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from core.redact import redact_json
from history.change import ChangeRecord, UtcDatetime
from history.engine import StoreBase
from history.schema import audit_results, require_aware, utc_now, verification_results

__all__ = [
    "AuditFinding",
    "ComplianceRecords",
    "PendingUpdate",
    "StoredAudit",
    "StoredVerification",
    "verification_rows",
    "write_verifications",
]

AuditStatus = Literal["passed", "findings", "unreachable"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditFinding(_Frozen):
    """One finding of an audit: what breaks the policy on one server."""

    key: str = Field(
        min_length=1,
        description=(
            "Stable identity across audits: the check's name (``pending_security_max``,"
            " ``no_unexpected_ports``, ``unreachable``), else the finding's text."
        ),
    )
    text: str = Field(min_length=1, description="The finding as the audit worded it.")


class PendingUpdate(_Frozen):
    """A security update pending on a server when it was audited."""

    package: str = Field(min_length=1, description="Package name.")
    version: str = Field(min_length=1, description="The version that would be installed.")


class StoredAudit(_Frozen):
    """One server's result in one ``security-audit`` run, as stored."""

    client: str = Field(min_length=1, max_length=64)
    server: str = Field(min_length=1, max_length=255)
    flow_run_id: str = Field(min_length=1, max_length=64, description="The audit's flow run.")
    audited_at: UtcDatetime = Field(description="When the audit run started (UTC).")
    status: AuditStatus
    findings: tuple[AuditFinding, ...] = ()
    warnings: tuple[str, ...] = Field(default=(), description="What could not be checked.")
    pending_security: tuple[PendingUpdate, ...] | None = Field(
        default=None,
        description="Security updates pending then; None when they could not be read.",
    )


class StoredVerification(_Frozen):
    """One server's verification in one maintenance run, as stored."""

    client: str
    change_ref: str
    flow_run_id: str = Field(description="The run whose change record holds it.")
    seq: int = Field(ge=0, description="Its place in the record's verifications.")
    server: str
    phase: Literal["staging", "production"]
    passed: bool
    rolled_back: bool = Field(description="The server was rolled back in that change.")
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    at: UtcDatetime | None = Field(default=None, description="When it ended (None: not run).")


def verification_rows(record: ChangeRecord) -> list[StoredVerification]:
    """The verification rows of a change record (pure), redacted like the record."""
    rolled_back = {r.server for r in record.rollbacks}
    return [
        StoredVerification.model_validate(
            redact_json(
                {
                    "client": record.client,
                    "change_ref": record.change_ref,
                    "flow_run_id": record.flow_run_id,
                    "seq": seq,
                    "server": v.server,
                    "phase": v.phase,
                    "passed": v.passed,
                    "rolled_back": v.server in rolled_back,
                    "failures": list(v.failures),
                    "warnings": list(v.warnings),
                    "at": v.at.isoformat() if v.at else None,
                }
            )
        )
        for seq, v in enumerate(record.verifications)
    ]


def write_verifications(conn: Connection, record: ChangeRecord) -> None:
    """Replace the change's verification rows by the record's, in the caller's transaction.

    Keyed by client and change ref, so a rerun that continues the change (its record holds
    the first run's verifications too) leaves one set of rows, under its run.
    """
    t = verification_results
    conn.execute(t.delete().where(t.c.client == record.client, t.c.change_ref == record.change_ref))
    rows = [v.model_dump() for v in verification_rows(record)]
    if rows:
        conn.execute(t.insert(), rows)


class ComplianceRecords(StoreBase):
    """Audit and verification results' operations (a part of
    :class:`history.store.HistoryStore`)."""

    def save_audits(self, audits: Sequence[StoredAudit]) -> None:
        """Insert or replace audit results (keyed by flow run and server), redacted.

        A retried task writes the same rows again rather than adding duplicates.
        """
        if not audits:
            return
        rows = []
        for audit in audits:
            body = redact_json(audit.model_dump(mode="json"))
            rows.append(
                {
                    "client": audit.client,
                    "server": audit.server,
                    "flow_run_id": audit.flow_run_id,
                    "audited_at": audit.audited_at,
                    "status": audit.status,
                    "findings": body["findings"],
                    "warnings": body["warnings"],
                    "pending_security": body["pending_security"],
                    "recorded_at": utc_now(),
                }
            )
        statement = self._insert(audit_results)
        statement = statement.on_conflict_do_update(
            index_elements=["flow_run_id", "server"],
            set_={
                k: statement.excluded[k]
                for k in ("audited_at", "status", "findings", "warnings", "pending_security")
            },
        )
        with self._write() as conn:
            conn.execute(statement, rows)

    def audits(
        self,
        client: str,
        *,
        until: datetime | None = None,
        flow_run_id: str | None = None,
    ) -> list[StoredAudit]:
        """A client's stored audit results, oldest first (then by server).

        Args:
            client: client slug.
            until: only audits that started before this time (aware).
            flow_run_id: only the results of this audit run.
        """
        t = audit_results
        query = sa.select(t).where(t.c.client == client)
        if until is not None:
            query = query.where(t.c.audited_at < require_aware(until, "until"))
        if flow_run_id is not None:
            query = query.where(t.c.flow_run_id == flow_run_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(t.c.audited_at, t.c.server, t.c.id)).all()
        return [_audit(row) for row in rows]

    def save_verifications(self, record: ChangeRecord) -> None:
        """Store the record's verification results (what :meth:`save_change_record` does
        with each save of a record that has any)."""
        with self._write() as conn:
            write_verifications(conn, record)

    def verifications(
        self,
        client: str,
        *,
        until: datetime | None = None,
        change_ref: str | None = None,
    ) -> list[StoredVerification]:
        """A client's stored verification results, by time (unfinished ones last).

        Args:
            client: client slug.
            until: only verifications that ended before this time (aware).
            change_ref: only this change's.
        """
        t = verification_results
        query = sa.select(*(c for c in t.c if c.name != "id")).where(t.c.client == client)
        if until is not None:
            query = query.where(t.c.at < require_aware(until, "until"))
        if change_ref is not None:
            query = query.where(t.c.change_ref == change_ref)
        order = (t.c.at.is_(None), t.c.at, t.c.change_ref, t.c.seq)
        with self._read() as conn:
            rows = conn.execute(query.order_by(*order)).all()
        return [StoredVerification.model_validate(row._asdict()) for row in rows]


def _audit(row: sa.Row[Any]) -> StoredAudit:
    return StoredAudit(
        client=row.client,
        server=row.server,
        flow_run_id=row.flow_run_id,
        audited_at=row.audited_at,
        status=row.status,
        findings=tuple(AuditFinding.model_validate(f) for f in row.findings or ()),
        warnings=tuple(row.warnings or ()),
        pending_security=None
        if row.pending_security is None
        else tuple(PendingUpdate.model_validate(p) for p in row.pending_security),
    )
