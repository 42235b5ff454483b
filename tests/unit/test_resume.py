"""Reruns continue the change, and production gets only staging's package set: the tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from history.change import (
    Approval,
    ChangeRecord,
    ChangeWindow,
    Outcome,
    PackageChange,
    Rollback,
    SnapshotRecord,
    Verification,
)
from tasks.approval import digest_of, production_canonical
from tasks.facts import PackageChange as Planned
from tasks.packages import HostPlan, MaintenancePlan
from tasks.resume import (
    SAME_PACKAGE_SET,
    ApprovalCarry,
    PackageSetDecision,
    continue_record,
    done_unrecorded,
    package_set_rule,
    patched_hosts,
    plan_left_of,
    remaining_plan,
    resume_point,
    resume_record,
)

NOW = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def record(**fields: Any) -> ChangeRecord:
    base: dict[str, Any] = {
        "client": "acme",
        "change_ref": "CHG-1",
        "flow_run_id": "run-2",
        "requester": "user: ops",
        "window": ChangeWindow(start=NOW, end=NOW + timedelta(hours=4), inside=True),
        "started": NOW,
    }
    return ChangeRecord(**{**base, **fields})


def verified(server: str, passed: bool = True, phase: str = "production") -> Verification:
    return Verification(
        server=server, phase=phase, passed=passed, failures=() if passed else ("port 9 closed",)
    )  # type: ignore[arg-type]


def changed(server: str, name: str, old: str | None, new: str | None) -> PackageChange:
    return PackageChange(server=server, name=name, from_version=old, to_version=new)


def host(server: str, *changes: tuple[str, str | None, str], role: str = "production") -> HostPlan:
    return HostPlan(
        server=server,
        role=role,  # type: ignore[arg-type]
        address="10.0.0.1",
        reachable=True,
        changes=[
            Planned(name=n, from_version=f, to_version=t, suites=[], arch=None, security=False)
            for n, f, t in changes
        ],
    )


def plan(*hosts: HostPlan) -> MaintenancePlan:
    return MaintenancePlan(
        client="acme", change_ref="CHG-1", dry_run=False, policy="all", hosts=list(hosts)
    )


AGENT = ("agent", "1.0", "1.1")
LIBSEC = ("libsec", "1.0", "1.0+sec1")
APPROVED = plan(host("h02", AGENT), host("h03", AGENT), host("h04", AGENT, LIBSEC))
APPROVED_CANON = production_canonical(APPROVED)
DIGEST = digest_of(APPROVED_CANON)


def answer(
    who: str, decision: str = "approve", digest: str = DIGEST, counted: bool = True
) -> Approval:
    return Approval(
        approver=who,
        decision=decision,  # type: ignore[arg-type]
        at=NOW,
        counted=counted,
        plan_digest=digest,
        not_counted_reason=None if counted else "not proven: forged",
    )


# --- which production hosts a rerun skips ---------------------------------------------------


@pytest.mark.parametrize(
    ("verifications", "rollbacks", "skipped"),
    [
        pytest.param([], [], (), id="first-run-skips-nothing"),
        pytest.param([verified("h02"), verified("h03")], [], ("h02", "h03"), id="batch-1-done"),
        pytest.param(
            [verified("h02"), verified("h03", passed=False)], [], ("h02",), id="failed-not-skipped"
        ),
        pytest.param(
            [verified("h02", passed=False), verified("h02")], [], ("h02",), id="last-one-counts"
        ),
        pytest.param(
            [verified("h02"), verified("h02", passed=False)], [], (), id="failed-after-passing"
        ),
        pytest.param(
            [verified("h02")],
            [Rollback(server="h02", restored_ok=True, verified_ok=True)],
            (),
            id="restored-host-is-planned-again",
        ),
        pytest.param(
            [verified("h02", phase="staging")], [], (), id="a-staging-pass-is-not-production"
        ),
    ],
)
def test_a_rerun_skips_only_hosts_patched_and_verified_in_this_change(
    verifications: list[Verification], rollbacks: list[Rollback], skipped: tuple[str, ...]
) -> None:
    done = record(verifications=verifications, rollbacks=rollbacks)
    assert patched_hosts(done, ["h02", "h03", "h04"]) == skipped


def test_what_is_left_of_the_plan_leaves_out_the_skipped_production_hosts_only() -> None:
    staging = host("h01", AGENT, role="staging")
    whole = plan(staging, host("h02", AGENT), host("h04", AGENT))
    assert remaining_plan(whole, ()) is whole
    assert [h.server for h in remaining_plan(whole, ("h02", "h01")).hosts] == ["h01", "h04"]


# --- is what is left a part of the approved plan? -------------------------------------------


@pytest.mark.parametrize(
    ("now", "outside"),
    [
        pytest.param(APPROVED, [], id="the-same-plan"),
        pytest.param(plan(host("h04", AGENT, LIBSEC)), [], id="hosts-done-drop-out"),
        pytest.param(plan(host("h04", LIBSEC)), [], id="mid-patch-remainder"),
        pytest.param(plan(host("h04")), [], id="mid-patch-all-done"),
        pytest.param(
            plan(host("h04", ("agent", "1.0", "1.2"))),
            ["h04: agent 1.0 → 1.2"],
            id="a-newer-version-since",
        ),
        pytest.param(
            plan(host("h04", ("agent", "0.9", "1.1"))),
            ["h04: agent 0.9 → 1.1"],
            id="the-host-changed-under-us",
        ),
        pytest.param(plan(host("h05", AGENT)), ["h05: not in the approved plan"], id="a-new-host"),
        pytest.param(plan(host("h05")), [], id="a-new-host-with-nothing-to-do"),
        pytest.param(
            plan(host("h02", ("curl", None, "8.0"))), ["h02: curl (new) → 8.0"], id="a-new-package"
        ),
    ],
)
def test_what_is_left_must_be_part_of_the_approved_plan(
    now: MaintenancePlan, outside: list[str]
) -> None:
    assert plan_left_of(APPROVED_CANON, production_canonical(now)) == outside


def test_a_new_removal_is_outside_the_approved_plan() -> None:
    removing = production_canonical(plan(host("h02")))
    removing[0]["removals"] = ["telnetd"]
    assert plan_left_of(APPROVED_CANON, removing) == ["h02: remove telnetd"]


@pytest.mark.parametrize(
    ("recorded", "now", "named"),
    [
        pytest.param([], APPROVED, {}, id="nothing-done-yet"),
        pytest.param([], plan(host("h04", LIBSEC)), {"h04": ["agent 1.0 → 1.1"]}, id="mid-patch"),
        pytest.param(
            [], plan(host("h04")), {"h04": ["agent 1.0 → 1.1", "libsec 1.0 → 1.0+sec1"]},
            id="patched-before-it-could-record",
        ),
        pytest.param(
            [changed("h04", "agent", "1.0", "1.1")], plan(host("h04", LIBSEC)), {},
            id="recorded-already",
        ),
        pytest.param([], plan(host("h09")), {}, id="a-host-never-approved"),
    ],
)  # fmt: skip
def test_approved_changes_apt_no_longer_plans_and_the_record_lacks_are_named(
    recorded: list[PackageChange], now: MaintenancePlan, named: dict[str, list[str]]
) -> None:
    done = record(package_changes=recorded, approval_plan=APPROVED_CANON)
    assert done_unrecorded(done, production_canonical(now)) == named


# --- does the recorded approval still stand? --------------------------------------------------

BATCH_1_DONE = [verified("h02"), verified("h03")]
LEFT = production_canonical(plan(host("h04", AGENT, LIBSEC)))
TAMPERED = production_canonical(plan(host("h02", AGENT), host("h03", AGENT), host("h04", AGENT)))


@pytest.mark.parametrize(
    ("approvals", "approval_plan", "left", "required", "carry", "why"),
    [
        pytest.param([], [], LEFT, 1, ApprovalCarry.ASK, "", id="first-run-asks"),
        pytest.param(
            [answer("alice")], APPROVED_CANON, LEFT, 1, ApprovalCarry.CARRIED_OVER,
            "no new approval asked", id="same-plan-carried-over",
        ),
        pytest.param(
            [answer("alice"), answer("bob")], APPROVED_CANON, LEFT, 2,
            ApprovalCarry.CARRIED_OVER, "by alice, bob", id="quorum-of-two-carried-over",
        ),
        pytest.param(
            [answer("alice")], APPROVED_CANON,
            production_canonical(plan(host("h04", ("agent", "1.0", "1.2")))), 1,
            ApprovalCarry.NEEDED, "the production plan changed since", id="newer-version-asks",
        ),
        pytest.param(
            [answer("alice")], APPROVED_CANON, LEFT, 2, ApprovalCarry.NEEDED,
            "only 1 of 2 approval(s)", id="quorum-raised-since-asks",
        ),
        pytest.param(
            [answer("alice", counted=False)], APPROVED_CANON, LEFT, 1, ApprovalCarry.ASK, "",
            id="an-uncounted-answer-is-no-approval",
        ),
        pytest.param(
            [answer("alice"), answer("bob", "reject")], APPROVED_CANON, LEFT, 1,
            ApprovalCarry.NEEDED, "bob rejected plan", id="a-rejection-stands",
        ),
        pytest.param(
            [answer("alice")], TAMPERED, LEFT, 1, ApprovalCarry.NEEDED,
            "no plan with the digest the counted approvals signed", id="stored-plan-not-signed",
        ),
        pytest.param(
            [answer("alice")], [], LEFT, 1, ApprovalCarry.NEEDED,
            "no plan with the digest", id="record-without-plan",
        ),
        pytest.param(
            [answer("alice", digest="sha256:other")], APPROVED_CANON, LEFT, 1,
            ApprovalCarry.NEEDED, "no plan with the digest", id="approved-another-plan",
        ),
    ],
)  # fmt: skip
def test_a_rerun_asks_again_unless_the_approved_plan_still_holds(
    approvals: list[Approval],
    approval_plan: list[dict[str, Any]],
    left: list[dict[str, Any]],
    required: int,
    carry: ApprovalCarry,
    why: str,
) -> None:
    done = record(verifications=BATCH_1_DONE, approvals=approvals, approval_plan=approval_plan)
    point = resume_point(done, ["h02", "h03", "h04"], left, required)
    assert point.skip == ("h02", "h03")
    assert point.approval is carry
    assert why in point.detail
    if carry is ApprovalCarry.NEEDED:
        assert point.detail.endswith("a new approval is needed")


# --- the same package set ---------------------------------------------------------------------

STAGING_GOT = [changed("h01", "agent", "1.0", "1.1"), changed("h01", "libsec", "1.0", "1.0+sec1")]


@pytest.mark.parametrize(
    ("staging_changes", "staging_passed", "production", "decision", "text"),
    [
        pytest.param(
            STAGING_GOT, True, plan(host("h02", AGENT, LIBSEC)), PackageSetDecision.SAME,
            "every production package version", id="same-versions",
        ),
        pytest.param(
            STAGING_GOT, True, plan(host("h02", ("agent", "1.0", "1.2"))),
            PackageSetDecision.REFUSED, "h02: agent 1.0 → 1.2 (staging was verified with 1.1)",
            id="another-version-refused",
        ),
        pytest.param(
            STAGING_GOT, True, plan(host("h02", AGENT, ("postgresql", "15.1", "15.2"))),
            PackageSetDecision.PRODUCTION_ONLY, "h02: postgresql 15.1 → 15.2",
            id="production-only-package-named",
        ),
        pytest.param(
            [*STAGING_GOT, changed("h01", "agent", "1.1", "1.2")], True,
            plan(host("h02", AGENT)), PackageSetDecision.REFUSED,
            "staging was verified with 1.2", id="staging-moved-on-since",
        ),
        pytest.param(
            STAGING_GOT, False, plan(host("h02", AGENT)), PackageSetDecision.PRODUCTION_ONLY,
            "h02: agent 1.0 → 1.1", id="a-failed-staging-proves-nothing",
        ),
        pytest.param(
            [], True, plan(host("h02", AGENT)), PackageSetDecision.PRODUCTION_ONLY,
            "not proven on staging", id="staging-already-current-named",
        ),
        pytest.param(
            STAGING_GOT, True, plan(host("h01", ("agent", "1.0", "9"), role="staging")),
            PackageSetDecision.SAME, "", id="staging-hosts-are-not-checked",
        ),
    ],
)  # fmt: skip
def test_production_gets_only_versions_staging_was_patched_to_and_verified_with(
    staging_changes: list[PackageChange],
    staging_passed: bool,
    production: MaintenancePlan,
    decision: PackageSetDecision,
    text: str,
) -> None:
    done = record(
        package_changes=staging_changes,
        verifications=[verified("h01", staging_passed, phase="staging")],
    )
    rule = package_set_rule(production, done, ["h01"])
    assert rule.decision is decision
    assert text in rule.detail
    assert rule.allowed is (decision is not PackageSetDecision.REFUSED)
    if decision is PackageSetDecision.REFUSED:
        assert rule.detail.startswith(f"refused: {SAME_PACKAGE_SET}")
    if decision is PackageSetDecision.PRODUCTION_ONLY:
        assert rule.untested and all(line in rule.detail for line in rule.untested)


# --- the rerun's record continues the change's ------------------------------------------------


def test_a_rerun_continues_the_record_of_its_change_and_says_which_run_it_continues() -> None:
    dead = record(
        flow_run_id="run-1",
        requester="deployment d1 (schedule or API)",
        snapshots=[
            SnapshotRecord(server="h02", provider="sandbox", ids=("s1",), state="completed")
        ],
        package_changes=[changed("h02", "agent", "1.0", "1.1")],
        verifications=[verified("h02")],
        approvals=[answer("alice")],
        approval_plan=APPROVED_CANON,
        phase_seconds={"staging": 12.0},
        started=NOW - timedelta(hours=1),
    )
    rerun = record(flow_run_id="run-2", requester="user: ops")
    continue_record(rerun, dead, NOW)
    assert rerun.flow_run_id == "run-2" and rerun.requester == "user: ops"
    assert rerun.started == dead.started and rerun.outcome is None
    for name in ("snapshots", "package_changes", "verifications", "approvals", "approval_plan"):
        assert getattr(rerun, name) == getattr(dead, name), name
    (gate,) = rerun.gates
    assert (gate.gate, gate.decision) == ("resume", "continued")
    assert (
        gate.detail
        == "continues the change record of flow run run-1, which never ended (its worker died)"
    )
    rerun.verifications.append(verified("h03"))
    assert len(dead.verifications) == 1  # the lists are the rerun's own


def test_a_rerun_of_a_halted_change_says_how_it_ended() -> None:
    halted = record(flow_run_id="run-1", outcome=Outcome.HALTED, outcome_detail="window closed")
    rerun = record()
    continue_record(rerun, halted, NOW)
    assert rerun.gates[-1].detail.endswith("which ended halted: window closed")


def test_a_record_of_another_change_is_never_continued() -> None:
    with pytest.raises(ValueError, match="cannot continue"):
        continue_record(record(), record(change_ref="CHG-2", flow_run_id="run-1"), NOW)


def test_a_run_executed_again_after_its_wait_takes_its_own_record_up_as_it_was() -> None:
    before = record(
        requester="deployment d1 (schedule or API)",
        window=ChangeWindow(start=NOW - DAY, end=NOW - DAY + timedelta(hours=4), inside=True),
        snapshots=[
            SnapshotRecord(server="h01", provider="sandbox", ids=("s1",), state="completed")
        ],
        package_changes=[changed("h01", "agent", "1.0", "1.1")],
        verifications=[verified("h01", phase="staging")],
        approvals=[answer("mallory")],
        approval_plan=APPROVED_CANON,
        started=NOW - DAY,
    )
    # Executed again a day later: its new record would have another window and start.
    again = record(requester="user: someone else")
    resume_record(again, before, NOW)
    for name in ("window", "requester", "started", "snapshots", "package_changes",
                 "verifications", "approvals", "approval_plan"):  # fmt: skip
        assert getattr(again, name) == getattr(before, name), name
    (gate,) = again.gates
    assert (gate.gate, gate.decision) == ("resume", "resumed")
    again.approvals.append(answer("alice"))
    assert len(before.approvals) == 1  # the lists are the new execution's own


@pytest.mark.parametrize(
    "other", [{"flow_run_id": "run-1"}, {"change_ref": "CHG-2"}, {"client": "globex"}]
)
def test_only_the_same_flow_run_takes_its_record_up(other: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot resume"):
        resume_record(record(), record(**other), NOW)
