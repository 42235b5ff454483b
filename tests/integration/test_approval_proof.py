"""Only a proven approval of exactly this change counts: signed answers on a real Prefect API.

The flow runs on sandbox hosts; the approver thread answers the form through the Prefect
API, signing with real ed25519 keys made by ssh-keygen. Each test sends proofs that must
not count (another key, a signature made for another change or plan, one person under two
names, a form without a decision) and ends the wait with a proven rejection, so it asserts
that production was not touched and that the change record says how each answer was
proven, or why it did not count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from inventory.types import ssh_key_fingerprint
from sandbox.estate import Estate
from tests.integration.maintenance_world import (
    agent,
    fresh_world,
    private_key,
    public_key,
    run,
    write_client,
)

pytestmark = pytest.mark.integration

REJECT = {"decision": "reject", "approver": "bob", "comment": "not this one", "ticket": ""}
PRODUCTION = [f"h0{i}" for i in range(2, 6)]


def fingerprint(name: str) -> str:
    return ssh_key_fingerprint(public_key(name))


def answers_of(record: Any) -> list[tuple[str, bool, str | None]]:
    return [(a.approver, a.counted, a.not_counted_reason) for a in record.approvals]


def assert_production_untouched(estate: Estate, record: Any) -> None:
    assert {agent(estate, h) for h in PRODUCTION} == {"1.0"}
    assert not [c for c in record.package_changes if c.server in PRODUCTION]


# A forged answer, garbage, and answers signed for another change, plan or decision: one
# run gets them all, one after the other (each is refused and the run waits again), then
# a proven rejection. The two tests below read that one run (the staging phase before the
# approval is the run's cost): forged and garbage answers are its first two, the replayed
# ones the next three.
FORGED = [
    {"decision": "approve", "approver": "alice", "signer": "mallory"},
    {"decision": "approve", "approver": "alice", "signature": "alice, honest"},
]
REPLAYED = [
    {"decision": "approve", "approver": "alice", "signed_change": "CHG-OLD"},
    {"decision": "approve", "approver": "alice", "signed_plan": "sha256:" + "0" * 64},
    {"decision": "approve", "approver": "alice", "signed_decision": "reject"},
]


@pytest.fixture(scope="module")
def unproven(
    estate: Estate, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The run answered FORGED, REPLAYED, then REJECT: its state, record, approver, and
    the production hosts' versions right after it."""
    folder = tmp_path_factory.mktemp("unproven")
    with pytest.MonkeyPatch.context() as env, fresh_world(estate, folder, env) as world:
        write_client(world["dir"], estate, "unproven")
        state, record, approver = run("unproven", [*FORGED, *REPLAYED, REJECT], change_ref="CHG-U")
        yield {
            "state": state,
            "record": record,
            "approver": approver,
            "versions": {h: agent(estate, h) for h in PRODUCTION},
        }


def assert_untouched_after(unproven: dict[str, Any]) -> None:
    assert set(unproven["versions"].values()) == {"1.0"}
    assert not [c for c in unproven["record"].package_changes if c.server in PRODUCTION]


@pytest.mark.fault
def test_a_forged_approval_by_a_listed_name_is_not_counted_and_production_is_untouched(
    unproven: dict[str, Any],
) -> None:
    state, record, approver = unproven["state"], unproven["record"], unproven["approver"]
    assert state.is_cancelled() and record.outcome.value == "rejected"
    assert_untouched_after(unproven)
    assert approver.paused_seen == len(FORGED) + len(REPLAYED) + 1  # it waited again each time
    (first, second), rejection = record.approvals[:2], record.approvals[-1]
    assert not first.counted and not second.counted
    assert first.not_counted_reason.startswith(
        f"signed with another key ({fingerprint('mallory')}), not alice's ({fingerprint('alice')})"
    )
    assert "not an OpenSSH signature" in second.not_counted_reason
    assert first.proof.startswith("not proven: ") and second.proof.startswith("not proven: ")
    assert rejection.counted and rejection.proof == f"ssh-signature {fingerprint('bob')}"
    assert {a.plan_digest for a in (first, second, rejection)} == {rejection.plan_digest}
    assert rejection.plan_digest.startswith("sha256:")


@pytest.mark.fault
def test_an_approval_replayed_from_another_change_or_plan_is_not_counted(
    unproven: dict[str, Any],
) -> None:
    record = unproven["record"]
    assert record.outcome.value == "rejected"
    assert_untouched_after(unproven)
    replayed = record.approvals[len(FORGED) :]
    assert [(a.approver, a.counted) for a in replayed] == [
        ("alice", False),
        ("alice", False),
        ("alice", False),
        ("bob", True),
    ]
    for answer in replayed[:3]:
        assert "not over this answer's message" in answer.not_counted_reason


@pytest.mark.fault
def test_one_person_cannot_make_a_quorum_of_two_by_answering_under_two_names(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "twonames", quorum=2)
    alice = {"decision": "approve", "approver": "alice", "comment": "", "ticket": "CAB-7"}
    as_bob = {"decision": "approve", "approver": "bob", "signer": "alice"}
    alice_again = {"decision": "approve", "approver": "alice"}
    _state, record, _ = run("twonames", [alice, as_bob, alice_again, REJECT], change_ref="CHG-2N")

    assert record.outcome.value == "rejected", record.outcome_detail
    assert_production_untouched(estate, record)
    assert [(n, c) for n, c, _ in answers_of(record)] == [
        ("alice", True),
        ("bob", False),
        ("alice", False),
        ("bob", True),
    ]
    assert "signed with another key" in record.approvals[1].not_counted_reason
    assert "already answered" in record.approvals[2].not_counted_reason
    assert record.approvals[0].proof == f"ssh-signature {fingerprint('alice')}"
    assert record.approvals[0].ticket == "CAB-7"


def test_a_form_without_a_decision_is_refused_by_the_server_and_the_script_signs_an_answer(
    estate: Estate, world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from deployments.approve import main as approve_main
    from flows.server_maintenance import server_maintenance

    write_client(world["dir"], estate, "nodecision")
    results: dict[str, Any] = {}
    flow = threading.Thread(
        target=lambda: results.update(
            state=server_maintenance(client="nodecision", change_ref="CHG-ND", return_state=True)
        ),
        daemon=True,
    )
    flow.start()
    paused = None
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while paused is None and time.monotonic() < deadline:
            for found in client.read_flow_runs():
                if (found.parameters or {}).get("client") == "nodecision" and (
                    found.state and found.state.is_paused()
                ):
                    paused = found
            time.sleep(0.3)
        assert paused is not None, "the run never paused for approval"
        # What a click on Submit sends when Decision was left empty (no default any more).
        with pytest.raises(RuntimeError, match="decision"):
            resume_flow_run(paused.id, run_input={"approver": "alice", "signature": "x"})
        with pytest.raises(RuntimeError, match="signature"):
            resume_flow_run(paused.id, run_input={"approver": "alice", "decision": "approve"})
        still = client.read_flow_run(paused.id)
        assert still.state is not None and still.state.is_paused()

    # The script answers it: it lists the run, reads the request, signs with bob's key.
    assert approve_main(["list"]) == 0
    assert str(paused.id) in capsys.readouterr().out
    bob = ["--approver", "bob", "--key", str(private_key("bob"))]
    assert approve_main([str(paused.id), *bob, "--restore"]) == 1  # not this question's answer
    assert "approve or reject" in capsys.readouterr().err
    assert approve_main([str(paused.id), *bob, "--reject", "--comment", "not now"]) == 0
    flow.join(120)
    record = results["state"].result(raise_on_failure=False)
    assert record.outcome.value == "rejected"
    (answer,) = record.approvals  # the refused forms never arrived
    assert (answer.approver, answer.counted, answer.comment) == ("bob", True, "not now")
    assert answer.proof == f"ssh-signature {fingerprint('bob')}"
    assert_production_untouched(estate, record)
