"""The security-audit flow on real sandbox hosts (net 80): sshd, ports, pending security
updates, failed logins in the logs, the firewall it cannot see, its artifact and notice,
its results in the history store and in a maintenance report's compliance section."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

from flows.security_audit import SecurityAuditSummary
from sandbox.estate import Estate, numbered_hosts
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from sandbox.webhook import WebhookReceiver
from tests.conftest import artifacts_of, sandbox_unavailable, ssh

if TYPE_CHECKING:
    from prefect.states import State

pytestmark = pytest.mark.integration

SLUG = "testaudit"
CLIENT = """\
client:
  slug: {slug}
  name: Audit Co
  timezone: Europe/Paris
  contact: {{name: Ops, email: ops@test.example}}
  approvers: [{{name: alice, email: alice@test.example}}]
  notify: [test-audit-hook]
schedule: {{cadence: quarterly, window: {{start: "01:00", duration: 4h}}}}
defaults: {{ssh_block: test-audit-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""
FIREWALL_UNKNOWN = "firewall unknown (neither nft nor iptables is installed): not checked"


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    """Three fresh hosts (h01..h03 at 10.213.80.11-13)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    estate = Estate(numbered_hosts("test-audit", 80, 3))
    estate.up(fresh=True)
    try:
        yield estate
    finally:
        estate.down(purge=True)


@pytest.fixture(scope="module")
def audit_env(
    estate: Estate, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    directory = tmp_path_factory.mktemp("clients")
    ssh_identity(estate).save("test-audit-ssh", overwrite=True)
    servers = "\n".join(
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'}, "
        f"address: {h.address}, provider: {{type: sandbox}}, allowed_ports: [22]}}"
        for i, h in enumerate(estate.spec.hosts)
    )
    (directory / f"{SLUG}.yaml").write_text(CLIENT.format(slug=SLUG, servers=servers))
    mp = pytest.MonkeyPatch()
    mp.setenv("CARETAKER_INVENTORY_DIR", str(directory))
    mp.setenv("CARETAKER_HISTORY_STORE_URL", f"sqlite:///{directory / 'caretaker.db'}")
    yield
    mp.undo()


def audit_run(**parameters: Any) -> tuple[State[Any], SecurityAuditSummary]:
    """One security-audit run: its final state and its summary."""
    from flows.security_audit import security_audit

    state = security_audit(client=SLUG, return_state=True, **parameters)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, SecurityAuditSummary), summary
    return state, summary


def audit(**parameters: Any) -> tuple[str, SecurityAuditSummary]:
    """One security-audit run: its final state's name and its summary."""
    state, summary = audit_run(**parameters)
    return state.name, summary


def test_findings_are_named_per_server_published_and_notified(
    estate: Estate, audit_env: None, tmp_path: Path
) -> None:
    from tasks.notify import save_demo_webhook

    a01, a02, a03 = (h.name for h in estate.spec.hosts)
    # Two logins on a01 with a key it does not know: sshd logs them, the audit counts them.
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    address, known_hosts = estate.spec.hosts[0].address, estate.known_hosts_path
    for _ in range(2):
        options = ["IdentitiesOnly=yes", "BatchMode=yes", f"UserKnownHostsFile={known_hosts}"]
        subprocess.run(
            ["ssh", "-i", str(wrong), *(f"-o{o}" for o in options), f"root@{address}", "true"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    # a02 lets passwords in (sshd -T reads the file: no restart needed); a03 runs a second
    # sshd on a port the inventory does not allow.
    weak, hardened = "PasswordAuthentication yes", "PasswordAuthentication no"
    ssh(estate, a02, f"sed -i 's/^{hardened}$/{weak}/' /etc/ssh/sshd_config")
    ssh(estate, a03, "/usr/sbin/sshd -p 2222")
    try:
        with WebhookReceiver() as hook:
            save_demo_webhook(hook.url, name="test-audit-hook")
            run, summary = audit_run()
            (notice,) = hook.wait_for(1)
    finally:
        ssh(estate, a02, f"sed -i 's/^{weak}$/{hardened}/' /etc/ssh/sshd_config")
        ssh(estate, a03, "pkill -f 'sshd -p 2222' || true")

    assert run.name == "Failed"
    rows = {r.server: r for r in summary.servers}
    assert [r.status for r in summary.servers] == ["passed", "findings", "findings"]
    assert rows[a01].findings == []
    assert FIREWALL_UNKNOWN in rows[a01].warnings
    assert (
        "logs to review (/var/log/sshd.log): 0 error lines, 2 failed SSH logins"
        in rows[a01].warnings
    )
    assert rows[a02].findings == ["sshd allows PasswordAuthentication yes"]
    assert rows[a03].findings == ["unexpected listening ports: 2222"]
    assert "2 server(s) with findings" in notice["subject"]
    assert "sshd allows PasswordAuthentication yes" in notice["body"]
    assert a01 not in notice["body"]
    assert summary.notice_problems == []
    table = artifacts_of(run.state_details.flow_run_id)[f"security-audit-{SLUG}"]
    assert "PasswordAuthentication yes" in str(table.data)


def test_a_pending_security_update_is_a_finding_and_a_clean_host_passes(
    estate: Estate, audit_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.maintenance_report import maintenance_report
    from history.store import open_store

    a01 = estate.spec.hosts[0].name

    clean, summary = audit_run(servers=[a01])
    assert clean.name == "Completed"
    assert [(r.server, r.status) for r in summary.servers] == [(a01, "passed")]

    estate.publish(PackageSpec(name="caretaker-libsec", version="1.0+sec9", security=True))
    pending, summary = audit_run(servers=[a01])

    assert pending.name == "Failed"
    (row,) = summary.servers
    assert row.findings == ["1 pending security update"]

    # Both results are in the history store, found by their flow runs.
    with open_store() as store:
        (before,) = store.audits(SLUG, flow_run_id=str(clean.state_details.flow_run_id))
        (after,) = store.audits(SLUG, flow_run_id=str(pending.state_details.flow_run_id))
    assert (before.server, before.status, before.findings, before.pending_security) == (
        a01,
        "passed",
        (),
        (),
    )
    assert FIREWALL_UNKNOWN in before.warnings
    assert after.status == "findings"
    assert [(f.key, f.text) for f in after.findings] == [
        ("pending_security_max", "1 pending security update")
    ]
    assert [(p.package, p.version) for p in after.pending_security or ()] == [
        ("caretaker-libsec", "1.0+sec9")
    ]

    # A report over these days shows them in its compliance section and compliance.csv.
    monkeypatch.setattr("reports.render.CHROMIUM_NAMES", ("no-such-chromium-here",))
    today = datetime.now(ZoneInfo("Europe/Paris")).date()
    period = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    report = maintenance_report(
        client=SLUG, period=period, out_dir=str(tmp_path / "report"), return_state=True
    )
    assert report.is_completed(), report.message
    files = report.result().files
    with open(files["compliance.csv"], newline="", encoding="utf-8") as handle:
        rows = {r["server"]: r for r in csv.DictReader(handle)}
    assert list(rows) == [h.name for h in estate.spec.hosts]
    mine = rows[a01]
    assert (mine["pending_security"], mine["oldest_pending"]) == ("1", "caretaker-libsec 1.0+sec9")
    assert mine["oldest_pending_since"] == after.audited_at.isoformat()
    assert (mine["findings_open"], mine["findings_opened"], mine["findings_closed"]) == (
        "1",
        "1",
        "0",
    )
    assert mine["open_findings"] == "1 pending security update"
    assert int(mine["audits_in_period"]) >= 2
    html = Path(files["report.html"]).read_text(encoding="utf-8")
    section = html[html.index('id="compliance-title"') :]
    assert "caretaker-libsec 1.0+sec9" in section and "1 pending security update" in section


def test_an_unknown_server_name_is_refused(audit_env: None) -> None:
    from core.errors import ConfigError
    from flows.security_audit import security_audit

    with pytest.raises(ConfigError, match=r"no such server\(s\): nope \(known: \['h01'"):
        security_audit(client=SLUG, servers=["nope"])


def test_an_audit_whose_results_cannot_be_stored_fails_and_says_so(
    estate: Estate, audit_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.security_audit

    # Nothing listens on 127.0.0.1:9: the store cannot be opened. No retries, to be quick.
    monkeypatch.setenv("CARETAKER_HISTORY_STORE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/x")
    monkeypatch.setattr(
        flows.security_audit,
        "store_audit_results",
        flows.security_audit.store_audit_results.with_options(retries=0),
    )
    a01 = estate.spec.hosts[0].name

    state, summary = audit_run(servers=[a01])

    assert state.name == "Failed"
    assert summary.store_problem.startswith("results not stored in the history store:")
    assert "cannot be opened" in summary.store_problem
    assert summary.store_problem in (state.message or "")
    assert [r.server for r in summary.servers] == [a01]  # the audit itself still reported
