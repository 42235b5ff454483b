"""The security audit's pure parts: its rows and its notice."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.security_audit import audit_rows
from tasks.facts.collect import AUDIT_FACTS
from tasks.notify import notice_audit
from tasks.verify.suite import ServerVerification, VerificationReport


def test_rows_follow_the_inventory_order_and_an_unreachable_server_is_a_finding() -> None:
    report = VerificationReport(
        passed=False,
        per_server={
            "web2": ServerVerification(passed=False, failures=["sshd allows X"], warnings=["w"]),
            "web1": ServerVerification(passed=True, warnings=["firewall unknown"]),
        },
    )

    rows = audit_rows(["web1", "db1", "web2"], report, {"db1": "not audited: host key mismatch"})

    assert [(r.server, r.status, r.findings, r.warnings) for r in rows] == [
        ("web1", "passed", [], ["firewall unknown"]),
        ("db1", "unreachable", ["not audited: host key mismatch"], []),
        ("web2", "findings", ["sshd allows X"], ["w"]),
    ]
    assert audit_rows(["db1"], None, {"db1": "down"})[0].status == "unreachable"


def test_the_notice_lists_each_server_with_findings_in_the_client_zone() -> None:
    subject, body = notice_audit(
        "Acme",
        {"web2": ["sshd allows PasswordAuthentication yes", "1 pending security update"]},
        audited_at=datetime(2026, 11, 28, 22, 0, tzinfo=UTC),
        tz="Europe/Paris",
        run_url="http://ui/runs/flow-run/1",
    )

    assert subject == "[caretaker] Acme: security audit, 1 server(s) with findings"
    assert body.splitlines() == [
        "The security audit of Acme at 2026-11-28 23:00 CET found:",
        "",
        "web2:",
        "  - sshd allows PasswordAuthentication yes",
        "  - 1 pending security update",
        "",
        "Run: http://ui/runs/flow-run/1",
    ]


def test_the_audit_reads_the_plan_facts_plus_sshd_and_the_firewall() -> None:
    assert AUDIT_FACTS[-3:] == ("sshd", "firewall", "log_review")
    assert {"apt_simulation", "listening_ports", "failed_services"} <= set(AUDIT_FACTS)
