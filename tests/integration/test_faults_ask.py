"""The fault matrix (docs/faults.md): ``on_failure: ask`` and a production host that never
comes back from its reboot, on sandbox hosts and a real Prefect API.

Under ``rollout: {on_failure: ask}`` a failed production host (caretaker-agent 1.1's
postinst fails on it only) pauses the run with the restore question (``RestoreForm``): a
listed approver's signed ``restore`` restores it from its snapshot and verifies it; an
unsigned or forged answer does not count and the question is asked again; a signed
``leave``, or no answer before the deadline, leaves it as it is. Each test accounts for
every production host: on the host (``dpkg-query`` over SSH), in the change record
(``production_results``) and in the end notice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from sandbox import faults
from sandbox.estate import Estate
from sandbox.repo import PackageSpec
from tests.conftest import ssh
from tests.integration.maintenance_world import APPROVE, agent, run, stored_records, write_client

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PRODUCTION = ("h02", "h03", "h04", "h05")
# A marker on one host that makes caretaker-agent 1.1's postinst fail there only.
BROKEN = "/etc/caretaker-fault-broken-postinst"
AGENT_1_1 = PackageSpec(
    name="caretaker-agent",
    version="1.1",
    postinst_script=(
        f"if [ -e {BROKEN} ]; then echo 'caretaker-agent: postinst failed (fault)' >&2; exit 1; fi"
    ),
)
ASK = "rollout: {batch_size: 2, failures_tolerated: 0, on_failure: ask}"
RESTORE = {"decision": "restore", "approver": "alice", "comment": "roll it back"}
LEAVE = {"decision": "leave", "approver": "bob", "comment": "I will look at it"}


def ask_client(world: dict[str, Any], estate: Estate, slug: str, **options: Any) -> None:
    write_client(world["dir"], estate, slug, **options)
    path = world["dir"] / f"{slug}.yaml"
    text = path.read_text()
    old = "rollout: {batch_size: 2, failures_tolerated: 0, on_failure: restore}"
    assert old in text
    path.write_text(text.replace(old, ASK))


@pytest.fixture()
def broken_h03(estate: Estate, world: dict[str, Any]) -> Any:
    """caretaker-agent 1.1 whose postinst fails on h03 only."""
    estate.publish(AGENT_1_1)
    ssh(estate, "h03", f"touch {BROKEN}")
    yield
    ssh(estate, "h03", f"rm -f {BROKEN}")


def dpkg_status(estate: Estate, host: str) -> str:
    """caretaker-agent as dpkg has it on ``host``: '<status> <version>', e.g. 'ii  1.0'."""
    return ssh(
        estate, host, "dpkg-query -W -f '${db:Status-Abbrev} ${Version}' caretaker-agent"
    ).stdout


def results(record: Any) -> dict[str, str]:
    return {server: str(result) for server, result in record.production_results.items()}


def end_notice(world: dict[str, Any], change_ref: str) -> str:
    """Subject and body of the change's end notice."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ends = [
            n
            for n in world["inbox"].received
            if change_ref in n["subject"] and "ended" in n.get("body", "")
        ]
        if ends:
            return f"{ends[-1]['subject']}\n{ends[-1]['body']}"
        time.sleep(0.2)
    raise AssertionError(f"no end notice for {change_ref}: {world['inbox'].received}")


def test_on_failure_ask_a_signed_restore_restores_and_verifies_the_host(
    estate: Estate, world: dict[str, Any], broken_h03: None
) -> None:
    ask_client(world, estate, "askyes")
    state, record, approver = run("askyes", [APPROVE, RESTORE], change_ref="CHG-ASK-YES")

    # Two questions: the approval, then "restore h03?", answered by a listed approver.
    assert approver.paused_seen == 2 and not approver.answers
    assert dpkg_status(estate, "h03") == "ii  1.0"
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and rollback.changed
    assert rollback.restored_ok and rollback.verified_ok, rollback
    assert "postinst" in rollback.detail or "dpkg" in rollback.detail, rollback.detail
    # One failure, none tolerated: the rollout stops after batch 1.
    assert state.is_failed()
    assert record.outcome.value == "halted" and "untouched: h04, h05" in record.outcome_detail
    expected = {"h02": "patched", "h03": "restored", "h04": "untouched", "h05": "untouched"}
    assert results(record) == expected
    assert {h: agent(estate, h) for h in PRODUCTION} == {
        "h02": "1.1",
        "h03": "1.0",
        "h04": "1.0",
        "h05": "1.0",
    }
    (stored,) = stored_records("askyes")
    assert results(stored) == expected and stored.outcome == record.outcome
    notice = end_notice(world, "CHG-ASK-YES")
    assert "restored: h03" in notice and "untouched: h04, h05" in notice, notice


def test_on_failure_ask_unsigned_or_forged_answers_do_not_count_and_a_signed_leave_leaves_it(
    estate: Estate, world: dict[str, Any], broken_h03: None
) -> None:
    ask_client(world, estate, "askno")
    unsigned = {**RESTORE, "signature": "restore it, trust me"}
    forged = {**RESTORE, "signer": "mallory"}  # alice's name, another key
    state, record, approver = run(
        "askno", [APPROVE, unsigned, forged, LEAVE], change_ref="CHG-ASK-NO"
    )

    # The approval, then the restore question three times: neither bad proof counted.
    assert approver.paused_seen == 4 and not approver.answers
    assert dpkg_status(estate, "h03").startswith("iF")  # left as it is: 1.1 half-configured
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and rollback.changed and not rollback.restored_ok
    assert "bob chose to leave it" in rollback.detail, rollback.detail
    assert "alice" not in rollback.detail, rollback.detail
    assert state.is_failed()
    expected = {"h02": "patched", "h03": "failed", "h04": "untouched", "h05": "untouched"}
    assert results(record) == expected
    assert {agent(estate, h) for h in ("h04", "h05")} == {"1.0"}
    (stored,) = stored_records("askno")
    assert results(stored) == expected
    notice = end_notice(world, "CHG-ASK-NO")
    assert "failed: h03" in notice and "untouched: h04, h05" in notice, notice


def test_on_failure_ask_without_an_answer_leaves_the_host_at_the_deadline(
    estate: Estate, world: dict[str, Any], broken_h03: None
) -> None:
    # The restore question waits as long as the approval may: here 3 s (the approval
    # itself is answered at once: within a second, as test_maintenance's 3 s timeout).
    ask_client(world, estate, "asknone", approval_timeout="3s")
    started = time.monotonic()
    state, record, approver = run("asknone", [APPROVE], change_ref="CHG-ASK-NONE")

    assert approver.paused_seen == 1  # the approval only; the restore question unanswered
    assert time.monotonic() - started < 90
    assert dpkg_status(estate, "h03").startswith("iF")
    (rollback,) = record.rollbacks
    assert not rollback.restored_ok
    assert "no decision within 0:00:03" in rollback.detail, rollback.detail
    assert state.is_failed()
    expected = {"h02": "patched", "h03": "failed", "h04": "untouched", "h05": "untouched"}
    assert results(record) == expected
    assert "failed: h03" in end_notice(world, "CHG-ASK-NONE")


def test_a_production_host_never_back_from_its_reboot_is_restored_and_the_rollout_halts(
    estate: Estate, world: dict[str, Any]
) -> None:
    # on_failure: restore (the template's): h03's reboot never returns, the wait is
    # bounded (CARETAKER_REBOOT_TIMEOUT_S), the restore boots it from its snapshot.
    write_client(world["dir"], estate, "noboot")
    estate.publish(
        PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True)
    )
    faults.no_boot(estate, "h03")
    try:
        state, record, _ = run("noboot", [APPROVE], change_ref="CHG-NOBOOT")
    finally:
        faults.no_boot(estate, "h03", on=False)
        estate._wait_ssh([estate.host("h03")], 30)  # its supervisor boots it again
    assert state.is_failed()
    h03_reboots = [r for r in record.reboots if r.server == "h03"]
    assert h03_reboots and h03_reboots[-1].new_boot_id is None
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and rollback.restored_ok and rollback.verified_ok, rollback
    assert record.outcome.value == "halted" and "untouched: h04, h05" in record.outcome_detail
    expected = {"h02": "patched", "h03": "restored", "h04": "untouched", "h05": "untouched"}
    assert results(record) == expected
    libsec = "dpkg-query -W -f '${Version}' caretaker-libsec"
    assert {h: ssh(estate, h, libsec).stdout for h in PRODUCTION} == {
        "h02": "1.0+sec1",
        "h03": "1.0",
        "h04": "1.0",
        "h05": "1.0",
    }
    notice = end_notice(world, "CHG-NOBOOT")
    assert "restored: h03" in notice and "untouched: h04, h05" in notice, notice
