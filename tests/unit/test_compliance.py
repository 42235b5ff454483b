"""The compliance table (reports/compliance.py) and the audit rows the flow stores
(tasks/compliance.py): hand-made audits, verifications and restore tests whose answers
can be worked out by hand."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from history.change import (
    ChangeRecord,
    ChangeWindow,
    RestoreTestResult,
    Rollback,
    Verification,
)
from history.compliance import (
    AuditFinding,
    PendingUpdate,
    StoredAudit,
    StoredVerification,
    verification_rows,
)
from reports.compliance import (
    COMPLIANCE_COLUMNS,
    ComplianceInputs,
    audit_frames,
    compliance_table,
    verifications_frame,
)
from tasks.compliance import pending_security, stored_audits
from tasks.facts.apt import AptSimulation, PackageChange
from tasks.facts.base import PackageUpdate
from tasks.facts.script import HostFacts
from tasks.verify.suite import ServerVerification, VerificationReport

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    """``n`` days after the period's start (negative: before it)."""
    return START + timedelta(days=n)


def audit(
    when: float,
    server: str = "web-1",
    findings: dict[str, str] | None = None,
    pending: list[str] | None = None,
    status: str | None = None,
) -> StoredAudit:
    """An audit ``when`` days into the period; ``pending`` as ``"package=version"``."""
    found = findings or {}
    return StoredAudit.model_validate(
        {
            "client": "acme",
            "server": server,
            "flow_run_id": f"audit-{when}",
            "audited_at": day(when),
            "status": status or ("findings" if found else "passed"),
            "findings": [AuditFinding(key=k, text=t) for k, t in found.items()],
            "pending_security": None
            if pending is None
            else [PendingUpdate(package=p.split("=")[0], version=p.split("=")[1]) for p in pending],
        }
    )


def table(
    audits: list[StoredAudit] = (),  # type: ignore[assignment]
    verifications: list[StoredVerification] = (),  # type: ignore[assignment]
    records: list[ChangeRecord] = (),  # type: ignore[assignment]
    target: float | None = 900.0,
    servers: tuple[str, ...] = ("web-1",),
) -> pd.DataFrame:
    inputs = ComplianceInputs(audit_frames(audits), verifications_frame(verifications), target)
    return compliance_table(list(servers), inputs, records, START, END).set_index("server")


def one(frame: pd.DataFrame, server: str = "web-1") -> dict[str, Any]:
    return frame.loc[server].to_dict()


# ------------------------------------------------------------------ pending updates


@dataclass
class PendingCase:
    name: str
    audits: list[StoredAudit]
    pending: Any
    oldest: Any = None
    days: float = math.nan
    since: datetime | None = None


PENDING_CASES = [
    PendingCase("no audit at all: unknown, not zero", [], pd.NA),
    PendingCase("the last audit could not read the updates", [audit(5, pending=None)], pd.NA),
    PendingCase("nothing pending", [audit(5, pending=[])], 0),
    PendingCase(
        "pending since an audit before the period",
        [
            audit(-40, pending=["libssl=1.1"]),
            audit(-10, pending=["libssl=1.1", "openssl=2"]),
            audit(5, pending=["libssl=1.1", "openssl=2"]),
        ],
        2,
        "libssl 1.1",
        45.0,
        day(-40),
    ),
    PendingCase(
        "an audit without it breaks the run: dated from its return",
        [
            audit(-40, pending=["libssl=1.1"]),
            audit(-20, pending=[]),
            audit(5, pending=["libssl=1.1"]),
        ],
        1,
        "libssl 1.1",
        0.0,
        day(5),
    ),
    PendingCase(
        "an audit that could not read the updates does not break the run",
        [
            audit(-40, pending=["libssl=1.1"]),
            audit(-20, pending=None, status="unreachable", findings={"unreachable": "x"}),
            audit(5, pending=["libssl=1.1"]),
        ],
        1,
        "libssl 1.1",
        45.0,
        day(-40),
    ),
    PendingCase(
        "a newer version of the same package is a new update",
        [audit(-40, pending=["libssl=1.1"]), audit(5, pending=["libssl=1.2"])],
        1,
        "libssl 1.2",
        0.0,
        day(5),
    ),
    PendingCase(
        "an audit after the period's end is not the end of the period",
        [audit(-3, pending=["libssl=1.1"]), audit(31, pending=[])],
        1,
        "libssl 1.1",
        0.0,
        day(-3),
    ),
]


@pytest.mark.parametrize("case", PENDING_CASES, ids=lambda c: c.name)
def test_pending_security_updates_at_the_end_and_the_age_of_the_oldest(case: PendingCase) -> None:
    row = one(table(case.audits))

    if case.pending is pd.NA:
        assert pd.isna(row["pending_security"])
    else:
        assert row["pending_security"] == case.pending
    assert (row["oldest_pending"] if isinstance(row["oldest_pending"], str) else None) == (
        case.oldest
    )
    if math.isnan(case.days):
        assert math.isnan(row["oldest_pending_days"])
        assert row["oldest_pending_since"] is pd.NaT
    else:
        assert row["oldest_pending_days"] == pytest.approx(case.days)
        assert row["oldest_pending_since"] == pd.Timestamp(case.since)


# ------------------------------------------------------------------------ findings

PORTS = {"no_unexpected_ports": "unexpected listening ports: 8080"}
SSH = {"ssh_no_password_login": "sshd allows PasswordAuthentication yes"}
DISK = {"disk_used_pct_max": "disk use 94.0% over 90% on /"}


@dataclass
class FindingsCase:
    name: str
    audits: list[StoredAudit]
    open: list[str]
    opened: int
    closed: list[str]
    in_period: int = field(default=1)


FINDINGS_CASES = [
    FindingsCase(
        "one closed, one kept, one new",
        [audit(-5, findings=PORTS | SSH), audit(10, findings=SSH | DISK)],
        [SSH["ssh_no_password_login"], DISK["disk_used_pct_max"]],
        1,
        [PORTS["no_unexpected_ports"]],
    ),
    FindingsCase(
        "the same check worded differently is the same finding",
        [
            audit(-5, findings={"pending_security_max": "3 pending security updates"}),
            audit(10, findings={"pending_security_max": "1 pending security update"}),
        ],
        ["1 pending security update"],
        0,
        [],
    ),
    FindingsCase(
        "a finding closed before the period is not closed in it",
        [audit(-20, findings=PORTS), audit(-5), audit(10)],
        [],
        0,
        [],
    ),
    FindingsCase(
        "an unreachable server closes nothing",
        [
            audit(-5, findings=PORTS),
            audit(10, findings={"unreachable": "not audited: timeout"}, status="unreachable"),
        ],
        [PORTS["no_unexpected_ports"], "not audited: timeout"],
        1,
        [],
    ),
    FindingsCase(
        "the next audit that reads the server closes what it no longer finds",
        [
            audit(-5, findings=PORTS),
            audit(10, findings={"unreachable": "not audited: timeout"}, status="unreachable"),
            audit(20),
        ],
        [],
        0,
        [PORTS["no_unexpected_ports"], "not audited: timeout"],
        2,
    ),
    FindingsCase(
        "opened and closed within the period: closed, not open",
        [audit(-5), audit(10, findings=DISK), audit(20)],
        [],
        0,
        [DISK["disk_used_pct_max"]],
        2,
    ),
    FindingsCase(
        "no audit in the period: the last one's findings are open, nothing moved",
        [audit(-5, findings=PORTS)],
        [PORTS["no_unexpected_ports"]],
        0,
        [],
        0,
    ),
]


@pytest.mark.parametrize("case", FINDINGS_CASES, ids=lambda c: c.name)
def test_findings_open_at_the_end_and_closed_in_the_period(case: FindingsCase) -> None:
    row = one(table(case.audits))

    assert row["findings_open"] == len(case.open)
    assert row["open_findings"] == "; ".join(case.open)
    assert row["findings_opened"] == case.opened
    assert row["findings_closed"] == len(case.closed)
    assert row["closed_findings"] == "; ".join(case.closed)
    assert row["audits_in_period"] == case.in_period


def test_each_server_is_judged_on_its_own_audits_only() -> None:
    audits = [
        audit(-5, server="web-1", findings=PORTS),
        audit(10, server="db-1", findings={}),  # db-1's clean audit closes nothing on web-1
    ]

    frame = table(audits, servers=("web-1", "db-1", "new-1"))

    assert list(frame.index) == ["web-1", "db-1", "new-1"]
    assert frame.loc["web-1", "findings_open"] == 1
    assert frame.loc["db-1", "findings_open"] == 0
    assert frame.loc["new-1", "audits_in_period"] == 0
    assert frame.loc["new-1", "audit_status"] is None or pd.isna(frame.loc["new-1", "audit_status"])


# ------------------------------------------------------------- patched and restores


def record(
    ref: str,
    started: datetime,
    verifications: list[Verification] = (),  # type: ignore[assignment]
    rolled_back: tuple[str, ...] = (),
    restore: RestoreTestResult | None = None,
) -> ChangeRecord:
    return ChangeRecord(
        client="acme",
        change_ref=ref,
        flow_run_id=f"run-{ref}",
        requester="schedule",
        window=ChangeWindow(start=started, end=started + timedelta(hours=4), inside=True),
        verifications=list(verifications),
        rollbacks=[Rollback(server=s, restored_ok=True, verified_ok=True) for s in rolled_back],
        restore_test=restore,
        started=started,
    )


def verified(server: str, when: datetime, passed: bool = True, phase: str = "production") -> Any:
    return Verification.model_validate(
        {
            "server": server,
            "phase": phase,
            "passed": passed,
            "failures": () if passed else ("reboot pending",),
            "at": when,
        }
    )


def test_last_patched_is_the_newest_passed_verification_not_rolled_back() -> None:
    records = [
        record("CHG-0", day(-60), [verified("web-1", day(-60)), verified("db-1", day(-60))]),
        record("CHG-1", day(3), [verified("web-1", day(3), phase="staging")]),
        record(
            "CHG-2",
            day(8),
            [verified("web-1", day(8)), verified("db-1", day(8), passed=False)],
            rolled_back=("web-1",),
        ),
        record("CHG-3", day(40), [verified("web-1", day(40))]),  # after the period
    ]
    rows = [v for r in records for v in verification_rows(r)]

    frame = table(verifications=rows, servers=("web-1", "db-1", "app-1"))

    assert frame.loc["web-1", "last_patched"] == pd.Timestamp(day(3))
    assert frame.loc["db-1", "last_patched"] == pd.Timestamp(day(-60))  # before the period
    assert frame.loc["app-1", "last_patched"] is pd.NaT
    assert (
        frame.loc["web-1", "verifications_passed"],
        frame.loc["web-1", "verifications_failed"],
    ) == (2, 0)
    assert (
        frame.loc["db-1", "verifications_passed"],
        frame.loc["db-1", "verifications_failed"],
    ) == (0, 1)


def restore(server: str, rto: float | None, ok: bool = True) -> RestoreTestResult:
    return RestoreTestResult(server=server, ok=ok, rto_s=rto, rto_bound_s=900)


@dataclass
class RestoreCase:
    name: str
    tests: list[RestoreTestResult]
    target: float | None
    count: int
    failed: int
    max_rto: float
    met: Any


RESTORE_CASES = [
    RestoreCase("no restore test: n/a", [], 60.0, 0, 0, math.nan, pd.NA),
    RestoreCase("within the target", [restore("web-1", 30.0)], 60.0, 1, 0, 30.0, True),
    RestoreCase("exactly the target", [restore("web-1", 60.0)], 60.0, 1, 0, 60.0, True),
    RestoreCase(
        "the slowest one over the target",
        [restore("web-1", 30.0), restore("web-1", 120.0)],
        60.0,
        2,
        0,
        120.0,
        False,
    ),
    RestoreCase("fast but failed", [restore("web-1", 5.0, ok=False)], 60.0, 1, 1, 5.0, False),
    RestoreCase("no RTO measured", [restore("web-1", None, ok=False)], 60.0, 1, 1, math.nan, False),
    RestoreCase("no target known", [restore("web-1", 30.0)], None, 1, 0, 30.0, pd.NA),
    RestoreCase("another server's test", [restore("db-1", 30.0)], 60.0, 0, 0, math.nan, pd.NA),
]


@pytest.mark.parametrize("case", RESTORE_CASES, ids=lambda c: c.name)
def test_restore_tests_and_their_rto_against_the_target(case: RestoreCase) -> None:
    records = [record(f"CHG-{i}", day(2 + i), restore=t) for i, t in enumerate(case.tests)]
    # A restore test of a run before the period does not count in it.
    records.append(record("CHG-old", day(-10), restore=restore("web-1", 9999.0)))

    row = one(table(records=records, target=case.target))

    assert row["restore_tests"] == case.count
    assert row["restore_tests_failed"] == case.failed
    if math.isnan(case.max_rto):
        assert math.isnan(row["max_rto_s"])
    else:
        assert row["max_rto_s"] == case.max_rto
    assert pd.isna(row["rto_met"]) if case.met is pd.NA else (row["rto_met"] == case.met)


def test_the_table_has_the_csv_columns_and_types_even_when_empty() -> None:
    frame = compliance_table(
        [], ComplianceInputs(audit_frames(()), verifications_frame(())), [], START, END
    )

    assert tuple(frame.columns) == COMPLIANCE_COLUMNS
    assert str(frame["pending_security"].dtype) == "Int64"
    assert str(frame["rto_met"].dtype) == "boolean"
    assert isinstance(frame["last_patched"].dtype, pd.DatetimeTZDtype)


# ------------------------------------------------------------ what the audit stores


@dataclass
class Row:
    server: str
    status: str
    findings: list[str]
    warnings: list[str] = field(default_factory=list)


def security_update(name: str, version: str) -> PackageChange:
    return PackageChange(
        name=name,
        from_version="0",
        to_version=version,
        suites=["bookworm-security"],
        arch="amd64",
        security=True,
    )


def upgradable(name: str, candidate: str, security: bool = True) -> PackageUpdate:
    suites = ["bookworm-security" if security else "bookworm"]
    return PackageUpdate(
        name=name, current="1", candidate=candidate, suites=suites, arch="amd64", security=security
    )


def test_pending_security_reads_the_simulation_then_the_upgradable_list() -> None:
    simulated = HostFacts(
        apt_simulation=AptSimulation(installs=[security_update("openssl", "3.1")]),
        apt_upgradable=[upgradable("zlib", "2")],
    )
    listed = HostFacts(apt_upgradable=[upgradable("zlib", "2"), upgradable("vim", "2", False)])

    assert pending_security(simulated) == [PendingUpdate(package="openssl", version="3.1")]
    assert pending_security(listed) == [PendingUpdate(package="zlib", version="2")]
    assert pending_security(HostFacts()) is None


def test_the_stored_audit_keys_findings_by_check_and_keeps_unreachable_apart() -> None:
    report = VerificationReport(
        passed=False,
        per_server={
            "a": ServerVerification(
                passed=False,
                failures=["unexpected listening ports: 2222"],
                failed_checks={"no_unexpected_ports": "unexpected listening ports: 2222"},
            )
        },
    )
    rows = [
        Row("a", "findings", ["unexpected listening ports: 2222", "malware: eicar in /tmp"], ["w"]),
        Row("b", "unreachable", ["not audited: password=hunter2 refused"]),
    ]
    facts = {"a": HostFacts(apt_simulation=AptSimulation(installs=[]))}

    a, b = stored_audits("acme", "run-9", day(1), rows, report, facts)

    assert [(f.key, f.text) for f in a.findings] == [
        ("no_unexpected_ports", "unexpected listening ports: 2222"),
        ("malware: eicar in /tmp", "malware: eicar in /tmp"),  # no check: its own text
    ]
    assert a.warnings == ("w",)
    assert a.pending_security == ()  # read, nothing pending
    assert (b.status, b.findings[0].key, b.pending_security) == ("unreachable", "unreachable", None)
    assert (a.flow_run_id, a.audited_at) == ("run-9", day(1))


# ------------------------------------------------------------ compliance.csv and html


def test_the_report_shows_the_section_and_writes_compliance_csv() -> None:
    from dataclasses import replace

    from reports.render import render_files
    from tests.unit.test_report_render import at, context

    audits = [
        audit(-5, server="web1", findings=PORTS, pending=["libssl=1.1"]),
        audit(
            1,
            server="web1",
            findings={"no_unexpected_ports": "unexpected <script> port: 8080"},
            pending=["libssl=1.1", "openssl=3"],
        ),
    ]
    base = context()
    inputs = ComplianceInputs(audit_frames(audits), verifications_frame(()), 900.0)
    frame = compliance_table(["web1", "web2"], inputs, [], at(0), at(48))
    files = render_files(replace(base, tables=replace(base.tables, compliance=frame)))

    csv = pd.read_csv(io.StringIO(files["compliance.csv"]))
    assert tuple(csv.columns) == COMPLIANCE_COLUMNS
    assert list(csv["server"]) == ["web1", "web2"]
    web1 = csv.iloc[0]
    assert (web1["pending_security"], web1["oldest_pending"]) == (2, "libssl 1.1")
    assert web1["oldest_pending_since"] == "2026-09-26T00:00:00+00:00"
    assert web1["oldest_pending_days"] == pytest.approx(6.0)
    assert (web1["findings_open"], web1["findings_closed"], web1["rto_target_s"]) == (1, 0, 900.0)
    assert pd.isna(csv.iloc[1]["pending_security"]) and csv.iloc[1]["audits_in_period"] == 0
    html = files["report.html"]
    section = html[html.index('id="compliance-title"') :]
    assert "1 of 2 server(s) audited" in section
    assert "unexpected &lt;script&gt; port: 8080" in section and "<script>" not in section
    assert "libssl 1.1" in section and "6.0\u00a0d" in section
    assert "never audited" in section and "unknown" in section
