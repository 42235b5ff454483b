"""The full server-maintenance procedure, end to end on sandbox hosts and a real Prefect API.

Each test runs the flow in the test's thread while an "approver" thread answers the
approval form through the Prefect API, exactly as a script or the UI would. The world
(estate, client files, the approver thread) is tests/integration/maintenance_world.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from history.store import open_store
from sandbox import faults
from sandbox.estate import Estate
from sandbox.repo import PackageSpec
from tests.conftest import ssh
from tests.integration.maintenance_world import (
    APPROVE,
    Approver,
    agent,
    run,
    stored_records,
    write_client,
)

pytestmark = pytest.mark.integration


def test_the_happy_path_patches_every_host_after_snapshot_staging_and_approval(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "happy")
    # h05's sshd lets passwords in: a security finding for the record, not a failure.
    weak, hardened = "PasswordAuthentication yes", "PasswordAuthentication no"
    ssh(estate, "h05", f"sed -i 's/^{hardened}$/{weak}/' /etc/ssh/sshd_config")
    try:
        state, record, _approver = run("happy", [APPROVE], change_ref="CHG-100")
    finally:
        ssh(estate, "h05", f"sed -i 's/^{weak}$/{hardened}/' /etc/ssh/sshd_config")
    assert state.is_completed(), state.message
    assert [(f.server, f.summary) for f in record.security_findings] == [
        ("h05", "sshd allows PasswordAuthentication yes")
    ]
    assert "security-audit" in record.phase_seconds
    assert record.outcome.value == "completed"
    assert {agent(estate, h.name) for h in estate.spec.hosts} == {"1.1"}
    snapshots = {s.server: s for s in record.snapshots}
    assert set(snapshots) == {h.name for h in estate.spec.hosts}
    assert all(s.state == "completed" and s.ids for s in snapshots.values())
    for snap in snapshots.values():
        assert (estate.dir / "snapshots" / snap.ids[0]).is_dir()
    assert {(c.server, c.name, c.from_version, c.to_version) for c in record.package_changes} == {
        (h.name, "caretaker-agent", "1.0", "1.1") for h in estate.spec.hosts
    }
    assert [a.approver for a in record.counted_approvals] == ["alice"]
    assert {v.server for v in record.verifications if v.passed} == {
        h.name for h in estate.spec.hosts
    }
    assert record.restore_test is not None and record.restore_test.ok
    assert record.restore_test.rto_s and record.restore_test.rto_s > 0
    (stored,) = stored_records("happy")
    assert stored.change_ref == "CHG-100" and stored.outcome == record.outcome
    # Every verification is also a row of its own (the compliance report's last patched).
    with open_store() as store:
        rows = store.verifications("happy", change_ref="CHG-100")
        audits = store.audits("happy", flow_run_id=record.flow_run_id)
    # The procedure's audit after production is stored as every audit is.
    assert {a.server for a in audits} == {h.name for h in estate.spec.hosts}
    assert {(a.server, f.key) for a in audits for f in a.findings} == {
        ("h05", "ssh_no_password_login")
    }
    assert all(a.pending_security == () for a in audits)  # patched: nothing pending
    assert sorted((v.server, v.phase, v.passed, v.at) for v in rows) == sorted(
        (v.server, v.phase, v.passed, v.at) for v in record.verifications
    )
    assert {(v.flow_run_id, v.rolled_back) for v in rows} == {(record.flow_run_id, False)}
    # The pre-change notice recorded the run's window as announced, for each planned
    # server, before anything changed: the reports' planned time (docs/reports.md).
    with open_store() as store:
        announced = store.windows("happy", record.window.start, record.window.end, "planned")
    assert sorted(w.server or "" for w in announced) == sorted(h.name for h in estate.spec.hosts)
    assert {(w.change_ref, w.announced_by) for w in announced} == {
        ("CHG-100", f"notice:{record.flow_run_id}")
    }
    told = {w.announced_at for w in announced}
    assert len(told) == 1 and record.started <= min(told) < min(v.at for v in rows)
    notices = world["inbox"].wait_for(3)
    subjects = [n["subject"] for n in notices]
    assert len(subjects) == 3 and all("CHG-100" in s for s in subjects), subjects
    assert "approv" in subjects[1].lower()
    assert "completed" in (subjects[2] + notices[2]["body"]).lower()


def test_no_server_is_patched_when_a_snapshot_fails(estate: Estate, world: dict[str, Any]) -> None:
    write_client(world["dir"], estate, "snapfail")
    path = world["dir"] / "snapfail.yaml"
    # h04's snapshot provider points at an estate that does not exist: its snapshot fails.
    text = path.read_text().replace(
        "address: 10.213.68.14, provider: {type: sandbox, estate: test-maint}",
        "address: 10.213.68.14, provider: {type: sandbox, estate: nosuch}",
    )
    assert "estate: nosuch" in text
    path.write_text(text)
    state, record, approver = run("snapfail", [APPROVE])
    assert state.is_failed()
    assert record.outcome.value == "failed" and "snapshot" in record.outcome_detail
    assert approver.paused_seen == 0
    assert {agent(estate, h.name) for h in estate.spec.hosts} == {"1.0"}
    # The provider is probed in preflight: the run stops before any snapshot or change.
    assert "h04" in record.outcome_detail and "provider" in record.outcome_detail
    assert record.package_changes == [] and record.snapshots == []


def test_no_server_is_patched_when_its_snapshot_cannot_be_taken(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "snapcopy")
    snapshots, aside = estate.dir / "snapshots", estate.dir / "snapshots.aside"
    if snapshots.exists():
        snapshots.rename(aside)
    snapshots.write_text("a file where the snapshot folder should be: every copy fails")
    try:
        state, record, approver = run("snapcopy", [APPROVE])
    finally:
        snapshots.unlink()
        if aside.exists():
            aside.rename(snapshots)
    assert state.is_failed()
    assert record.outcome.value == "failed" and "snapshots failed" in record.outcome_detail
    assert approver.paused_seen == 0
    assert [s.state for s in record.snapshots] == ["failed"]  # staging's; production's wait
    assert record.package_changes == []
    assert {agent(estate, h.name) for h in estate.spec.hosts} == {"1.0"}


def test_a_rejection_leaves_production_untouched_and_is_recorded(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "reject")
    answer = {"decision": "reject", "approver": "bob", "comment": "not this week", "ticket": ""}
    state, record, _ = run("reject", [answer])
    assert state.is_cancelled()
    assert record.outcome.value == "rejected" and "bob" in record.outcome_detail
    assert agent(estate, "h01") == "1.1"  # staging was patched
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.0"}
    assert stored_records("reject")[0].outcome.value == "rejected"


def test_an_unlisted_approver_is_not_counted_and_the_run_waits_again(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "quorum", quorum=2)
    answers = [
        {"decision": "approve", "approver": "mallory", "comment": "", "ticket": ""},
        APPROVE,
        {"decision": "approve", "approver": "alice", "comment": "again", "ticket": ""},
        {"decision": "approve", "approver": "bob", "comment": "", "ticket": "CAB-2"},
    ]
    state, record, approver = run("quorum", answers)
    assert state.is_completed(), state.message
    assert approver.paused_seen == 4
    assert [(a.approver, a.counted) for a in record.approvals] == [
        ("mallory", False),
        ("alice", True),
        ("alice", False),
        ("bob", True),
    ]
    assert "not a listed approver" in (record.approvals[0].not_counted_reason or "")


@pytest.mark.fault
def test_a_staging_failure_asks_no_approval_and_leaves_production_untouched(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "stagefail")
    faults.publish_broken(estate, "caretaker-agent", "1.2")
    state, record, approver = run("stagefail", [APPROVE])
    assert state.is_failed()
    assert record.outcome.value == "staging-failed"
    assert approver.paused_seen == 0, "approval was asked after a staging failure"
    assert record.approvals == []
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.0"}


@pytest.mark.fault
def test_a_failed_production_host_on_which_nothing_changed_halts_the_rollout_unrestored(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "prodfail")
    faults.hold_dpkg_lock(estate, "h03")
    try:
        state, record, _ = run("prodfail", [APPROVE])
    finally:
        faults.release_dpkg_lock(estate, "h03")
    assert state.is_failed()
    assert record.outcome.value == "halted"
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and not rollback.changed and not rollback.restored_ok
    assert agent(estate, "h02") == "1.1"  # same batch, patched
    assert agent(estate, "h03") == "1.0"  # the held lock changed nothing: not restored
    assert {agent(estate, "h04"), agent(estate, "h05")} == {"1.0"}  # next batch never started
    assert "untouched: h04, h05" in record.outcome_detail


@pytest.mark.fault
def test_a_reboot_that_never_returns_is_bounded_and_recorded(
    estate: Estate, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only staging reboots here (it never returns: nothing else does), so the bound can be
    # short: 5 s (the settings' floor), not the 8 s a reboot that returns needs under load.
    monkeypatch.setenv("CARETAKER_REBOOT_TIMEOUT_S", "5")
    write_client(world["dir"], estate, "noboot")
    estate.publish(
        PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True)
    )
    faults.no_boot(estate, "h01")
    started = time.monotonic()
    try:
        _state, record, _ = run("noboot", [APPROVE])
    finally:
        faults.no_boot(estate, "h01", on=False)
        estate._wait_ssh([estate.host("h01")], 30)  # its supervisor boots it again
    assert time.monotonic() - started < 120
    assert record.outcome.value == "staging-failed"
    (reboot,) = record.reboots
    assert reboot.server == "h01" and reboot.new_boot_id is None
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.0"}


def test_an_approval_timeout_leaves_production_untouched_and_a_rerun_takes_no_second_snapshot(
    estate: Estate, world: dict[str, Any]
) -> None:
    # Nobody answers: the approval times out, production untouched. The rerun of the same
    # change (answered this time) then continues it.
    write_client(world["dir"], estate, "rerun", approval_timeout="3s")
    first_state, first, _ = run("rerun", [], change_ref="CHG-RERUN")
    assert first_state.is_failed()
    assert first.outcome.value == "approval-timeout"
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.0"}
    write_client(world["dir"], estate, "rerun", approval_timeout="2m")
    state, record, _ = run("rerun", [APPROVE], change_ref="CHG-RERUN")
    assert state.is_completed(), state.message
    # staging's snapshot is reused; production's are taken right before their batch
    assert [(s.server, s.ids) for s in first.snapshots] == [
        (s.server, s.ids) for s in record.snapshots if s.server == "h01"
    ]
    assert all("reused" in s.detail for s in record.snapshots if s.server == "h01")
    # staging was patched by the first run: the rerun changed nothing there, and the
    # change's one record (continued by the rerun) keeps what the first run did
    h01 = [c for c in first.package_changes if c.server == "h01"]
    assert h01 and [c for c in record.package_changes if c.server == "h01"] == h01
    assert [r.flow_run_id for r in stored_records("rerun")] == [record.flow_run_id]
    assert len(list((estate.dir / "snapshots").glob("*"))) >= 5


@pytest.mark.fault
def test_a_second_run_for_the_same_client_is_refused_while_the_first_waits(
    estate: Estate, world: dict[str, Any]
) -> None:
    from core.errors import MaintenanceInProgress
    from flows.server_maintenance import server_maintenance

    write_client(world["dir"], estate, "twice", approval_timeout="40s")
    results: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: results.update(first=server_maintenance(client="twice", return_state=True)),
        daemon=True,
    )
    first.start()
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [
                r for r in client.read_flow_runs() if (r.parameters or {}).get("client") == "twice"
            ]
            if any(r.state and r.state.is_paused() for r in runs):
                break
            time.sleep(0.3)
    second = server_maintenance(client="twice", return_state=True)
    assert second.is_failed()
    assert isinstance(second.result(raise_on_failure=False), MaintenanceInProgress)
    approver = Approver("twice", [APPROVE])
    approver.start()
    first.join(120)
    approver.stop.set()
    assert results["first"].is_completed(), results["first"].message


def test_outside_the_window_production_waits_unless_overridden(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "window", in_window=False)
    state, record, _ = run("window", [APPROVE])
    assert (
        record.outcome.value == "halted"
        and "outside the maintenance window" in record.outcome_detail
    )
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.0"}
    assert record.window.inside is False

    state, record, _ = run("window", [APPROVE], window_override="CAB-9 emergency fix")
    assert state.is_completed(), state.message
    assert record.window.override == "CAB-9 emergency fix"
    assert {agent(estate, f"h0{i}") for i in range(2, 6)} == {"1.1"}
