"""Patch compliance per server: the report's compliance section and compliance.csv.

Pure: frames in, a frame out (STYLE item 10). The frames come from the history store
(:mod:`history.compliance`, read by :mod:`reports.inputs`) through the builders here
(:func:`audit_frames`, :func:`verifications_frame`); the change records give the restore
tests. Every column and rule is explained in ``docs/reports.md`` (Compliance).

- **Pending security updates at the end of the period**: what the server's last audit
  before the period's end found pending (NA when no audit could read it).
- **Age of the oldest**: for each update pending then (package and version), the first
  audit of the unbroken run of audits that found it pending (an audit that could not
  read the updates does not break the run; one that read them without it does). The
  oldest is the earliest; its age is counted to the last audit, in days.
- **Last patched**: the newest passed verification of the server before the period's
  end, in a change that did not roll it back (staging or production).
- **Findings**: the findings of the last audit are open at the period's end; a finding
  is *closed* in the period when an audit in the period no longer has it (keyed by the
  check it broke) while the server's previous audit had it, and it is not open again at
  the end; *opened* when it is open at the end and an audit in the period found it that
  the previous one had not. An audit that could not reach the server closes nothing: it
  only adds ``unreachable``.
- **Restore tests**: the change records' restore tests of the server in the period, the
  slowest RTO and whether every one passed within the inventory's RTO target
  (``restore_test.timeout``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from history.change import ChangeRecord
from history.compliance import StoredAudit, StoredVerification

__all__ = [
    "AUDIT_COLUMNS",
    "COMPLIANCE_COLUMNS",
    "FINDING_COLUMNS",
    "PENDING_COLUMNS",
    "VERIFICATION_COLUMNS",
    "AuditFrames",
    "ComplianceInputs",
    "audit_frames",
    "compliance_table",
    "empty_compliance_inputs",
    "verifications_frame",
]

#: compliance.csv: one row per server of the client.
COMPLIANCE_COLUMNS: tuple[str, ...] = (
    "server",
    "last_audit_at",
    "audit_status",
    "audits_in_period",
    "pending_security",
    "oldest_pending",
    "oldest_pending_since",
    "oldest_pending_days",
    "last_patched",
    "verifications_passed",
    "verifications_failed",
    "findings_open",
    "findings_opened",
    "findings_closed",
    "open_findings",
    "closed_findings",
    "restore_tests",
    "restore_tests_failed",
    "max_rto_s",
    "rto_target_s",
    "rto_met",
)

#: One row per server per audit run.
AUDIT_COLUMNS: tuple[str, ...] = ("server", "flow_run_id", "audited_at", "status", "pending_known")
#: One row per finding of an audit run.
FINDING_COLUMNS: tuple[str, ...] = ("server", "flow_run_id", "key", "text")
#: One row per security update pending in an audit run.
PENDING_COLUMNS: tuple[str, ...] = ("server", "flow_run_id", "package", "version")
#: One row per server verification of a change.
VERIFICATION_COLUMNS: tuple[str, ...] = (
    "server",
    "change_ref",
    "phase",
    "passed",
    "rolled_back",
    "at",
)

_DAY_S = 86400.0


@dataclass(frozen=True)
class AuditFrames:
    """The stored audits as three long frames, joined by server and flow run.

    Attributes:
        audits: one row per server per audit run (:data:`AUDIT_COLUMNS`).
        findings: one row per finding (:data:`FINDING_COLUMNS`).
        pending: one row per pending security update (:data:`PENDING_COLUMNS`).
    """

    audits: pd.DataFrame
    findings: pd.DataFrame
    pending: pd.DataFrame


@dataclass(frozen=True)
class ComplianceInputs:
    """What the compliance section reads besides the servers and the change records.

    Attributes:
        audits: every stored audit of the client before the period's end.
        verifications: the client's verifications that ended before the period's end.
        rto_target_s: the inventory's RTO target (``restore_test.timeout``), seconds.
    """

    audits: AuditFrames
    verifications: pd.DataFrame
    rto_target_s: float | None = None


def _frame(
    rows: list[tuple[Any, ...]], columns: tuple[str, ...], times: Sequence[str] = ()
) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    for column in times:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def audit_frames(audits: Sequence[StoredAudit]) -> AuditFrames:
    """The store's audit results as frames (pure)."""
    return AuditFrames(
        _frame(
            [
                (a.server, a.flow_run_id, a.audited_at, a.status, a.pending_security is not None)
                for a in audits
            ],
            AUDIT_COLUMNS,
            ("audited_at",),
        ),
        _frame(
            [(a.server, a.flow_run_id, f.key, f.text) for a in audits for f in a.findings],
            FINDING_COLUMNS,
        ),
        _frame(
            [
                (a.server, a.flow_run_id, p.package, p.version)
                for a in audits
                for p in a.pending_security or ()
            ],
            PENDING_COLUMNS,
        ),
    )


def verifications_frame(verifications: Sequence[StoredVerification]) -> pd.DataFrame:
    """The store's verification results as a frame (pure); unfinished ones left out."""
    rows = [
        (v.server, v.change_ref, v.phase, v.passed, v.rolled_back, v.at)
        for v in verifications
        if v.at is not None
    ]
    return _frame(rows, VERIFICATION_COLUMNS, ("at",))


def empty_compliance_inputs(rto_target_s: float | None = None) -> ComplianceInputs:
    """No audits and no verifications (a report made without the store's compliance data)."""
    return ComplianceInputs(audit_frames(()), verifications_frame(()), rto_target_s)


def _audit_chain(
    audits: pd.DataFrame, findings: pd.DataFrame, pending: pd.DataFrame
) -> list[dict[str, Any]]:
    """One server's audits, oldest first: time, status, findings {key: text}, pending set
    (None: unknown)."""
    texts: dict[str, dict[str, str]] = {}
    for run, key, text in zip(
        findings["flow_run_id"], findings["key"], findings["text"], strict=True
    ):
        texts.setdefault(run, {})[key] = text
    updates: dict[str, set[tuple[str, str]]] = {}
    for run, package, version in zip(
        pending["flow_run_id"], pending["package"], pending["version"], strict=True
    ):
        updates.setdefault(run, set()).add((package, version))
    ordered = audits.sort_values(["audited_at", "flow_run_id"], kind="stable")
    return [
        {
            "at": at,
            "status": status,
            "findings": texts.get(run, {}),
            "pending": updates.get(run, set()) if known else None,
        }
        for run, at, status, known in zip(
            ordered["flow_run_id"],
            ordered["audited_at"],
            ordered["status"],
            ordered["pending_known"],
            strict=True,
        )
    ]


def _pending_since(chain: list[dict[str, Any]], update: tuple[str, str]) -> pd.Timestamp:
    """The first audit of the unbroken run of audits (ending with the last) that found
    ``update`` pending."""
    since = chain[-1]["at"]
    for audit in reversed(chain[:-1]):
        if audit["pending"] is None:
            continue  # could not read the updates: neither proof it was, nor it was not
        if update not in audit["pending"]:
            break
        since = audit["at"]
    return since


def _findings_moves(
    chain: list[dict[str, Any]], start: pd.Timestamp
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Findings open after the last audit, opened and closed by the audits in the period."""
    state: dict[str, str] = {}
    opened: dict[str, str] = {}
    closed: dict[str, str] = {}
    for audit in chain:
        if audit["status"] == "unreachable":
            after = {**state, **audit["findings"]}  # nothing known closed
        else:
            after = dict(audit["findings"])
        if audit["at"] >= start:
            for key, text in after.items():
                if key not in state:
                    opened[key] = text
                    closed.pop(key, None)
            for key, text in state.items():
                if key not in after:
                    closed[key] = text
                    opened.pop(key, None)
        state = after
    return state, opened, closed


def compliance_table(
    servers: Sequence[str],
    inputs: ComplianceInputs,
    change_records: Sequence[ChangeRecord],
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    """Per server: pending security updates at the period's end and the age of the
    oldest, last patched, audit findings open, opened and closed, restore tests and RTO
    against the target (:data:`COMPLIANCE_COLUMNS`; the rules in the module docstring).

    Args:
        servers: the client's servers, in report order.
        inputs: the client's audits (:func:`audit_frames`: those before the period date
            pending updates and findings), verifications (:func:`verifications_frame`)
            and RTO target.
        change_records: the maintenance runs that started in the period (restore tests).
        start: the period's start (aware).
        end: the period's end, exclusive (aware).
    """
    audits, verifications = inputs.audits, inputs.verifications
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    audit_rows = audits.audits.loc[audits.audits["audited_at"] < t1]
    by_server = {str(s): f for s, f in audit_rows.groupby("server", sort=False)}
    checked = verifications.loc[verifications["at"] < t1]
    target = math.nan if inputs.rto_target_s is None else float(inputs.rto_target_s)
    rows: list[dict[str, Any]] = []
    for server in servers:
        row: dict[str, Any] = {"server": server, "rto_target_s": target}
        own = by_server.get(server)
        chain = (
            _audit_chain(
                own,
                audits.findings.loc[audits.findings["server"] == server],
                audits.pending.loc[audits.pending["server"] == server],
            )
            if own is not None
            else []
        )
        if chain:
            last = chain[-1]
            row["last_audit_at"] = last["at"]
            row["audit_status"] = last["status"]
            row["audits_in_period"] = sum(1 for a in chain if a["at"] >= t0)
            if last["pending"] is not None:
                row["pending_security"] = len(last["pending"])
                if last["pending"]:
                    since, update = min((_pending_since(chain, u), u) for u in last["pending"])
                    row["oldest_pending"] = f"{update[0]} {update[1]}"
                    row["oldest_pending_since"] = since
                    row["oldest_pending_days"] = (last["at"] - since).total_seconds() / _DAY_S
            state, opened, closed = _findings_moves(chain, t0)
            row["findings_open"] = len(state)
            row["findings_opened"] = len(opened)
            row["findings_closed"] = len(closed)
            row["open_findings"] = "; ".join(state.values())
            row["closed_findings"] = "; ".join(closed.values())
        else:
            row["audits_in_period"] = 0
        mine = checked.loc[checked["server"] == server]
        patched = mine.loc[mine["passed"].astype(bool) & ~mine["rolled_back"].astype(bool)]
        row["last_patched"] = patched["at"].max() if len(patched) else pd.NaT
        in_period = mine.loc[mine["at"] >= t0]
        row["verifications_passed"] = int(in_period["passed"].astype(bool).sum())
        row["verifications_failed"] = int((~in_period["passed"].astype(bool)).sum())
        tests = [
            r.restore_test
            for r in change_records
            if r.restore_test is not None
            and r.restore_test.server == server
            and t0 <= pd.Timestamp(r.started) < t1
        ]
        row["restore_tests"] = len(tests)
        row["restore_tests_failed"] = sum(1 for t in tests if not t.ok)
        rtos = [t.rto_s for t in tests if t.rto_s is not None]
        row["max_rto_s"] = max(rtos) if rtos else math.nan
        if tests and not math.isnan(target):
            row["rto_met"] = all(t.ok and t.rto_s is not None and t.rto_s <= target for t in tests)
        rows.append(row)
    frame = pd.DataFrame(rows).reindex(columns=list(COMPLIANCE_COLUMNS))
    for column in ("last_audit_at", "oldest_pending_since", "last_patched"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in (
        "audits_in_period",
        "pending_security",
        "findings_open",
        "findings_opened",
        "findings_closed",
        "verifications_passed",
        "verifications_failed",
        "restore_tests",
        "restore_tests_failed",
    ):
        frame[column] = frame[column].astype("Int64")
    for column in ("oldest_pending_days", "max_rto_s", "rto_target_s"):
        frame[column] = frame[column].astype("float64")
    frame["rto_met"] = frame["rto_met"].astype("boolean")
    for column in ("audit_status", "oldest_pending", "open_findings", "closed_findings"):
        frame[column] = frame[column].astype("object")
    return frame
