"""Approval without Prefect: the tally, the restore answer, the texts, and the one ask-loop.

The tally is a table of answer sequences: who counts (listed approvers, once each, the
name stripped but case-sensitive), what a rejection does, what a quorum of two needs,
and what an operator might try (an unlisted name, answering twice, the timeout's name).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast
from uuid import uuid4

import pytest
from prefect.input import RunInput

from history.change import Verification
from tasks.approval import (
    TIMEOUT_APPROVER,
    ApprovalForm,
    ApprovalTally,
    RestoreForm,
    approval_description,
    ask,
    ask_restore,
    count_answer,
    production_plan_text,
    restore_answer,
    restore_question,
    staging_summary,
    wait_for_approval,
)
from tasks.packages import HostPlan, MaintenancePlan
from tasks.rollout import RestoreAnswer

FormT = TypeVar("FormT", bound=RunInput)
LISTED = ["alice", "bob", "carol"]
AT = datetime(2026, 1, 10, 3, 0, tzinfo=UTC)


def tally_of(required: int, *answers: tuple[str, str]) -> ApprovalTally:
    tally = ApprovalTally(required=required)
    for name, decision in answers:
        form = ApprovalForm(approver=name, decision=decision)
        tally = count_answer(tally, form, LISTED, AT)
    return tally


@pytest.mark.parametrize(
    ("required", "answers", "verdict", "counted"),
    [
        (1, [("alice", "approve")], "approved", ["alice"]),
        (1, [("mallory", "approve")], "pending", []),  # unlisted: recorded, not counted
        (1, [("mallory", "reject")], "pending", []),  # an unlisted rejection changes nothing
        (1, [("alice", "reject")], "rejected", ["alice"]),
        (1, [("Alice", "approve")], "pending", []),  # names are case-sensitive
        (1, [("  alice  ", "approve")], "approved", ["alice"]),  # but stripped
        (1, [("   ", "approve")], "pending", []),  # a blank name is nobody
        (1, [(TIMEOUT_APPROVER, "reject")], "pending", []),  # the watchdog's name is unlisted
        (2, [("alice", "approve")], "pending", ["alice"]),
        (2, [("alice", "approve"), ("alice", "approve")], "pending", ["alice"]),  # once each
        (2, [("alice", "approve"), (" alice", "approve")], "pending", ["alice"]),
        (2, [("alice", "approve"), ("bob", "approve")], "approved", ["alice", "bob"]),
        (2, [("alice", "approve"), ("bob", "reject")], "rejected", ["alice", "bob"]),
        (2, [("alice", "approve"), ("alice", "reject")], "pending", ["alice"]),  # no change of mind
        (2, [("mallory", "approve"), ("alice", "approve")], "pending", ["alice"]),
        (3, [("alice", "approve"), ("bob", "approve"), ("carol", "approve")], "approved", LISTED),
    ],
)
def test_only_listed_approvers_count_each_once_and_a_counted_rejection_ends_the_wait(
    required: int, answers: list[tuple[str, str]], verdict: str, counted: list[str]
) -> None:
    tally = tally_of(required, *answers)
    assert tally.verdict == verdict
    assert [a.approver for a in tally.counted] == counted
    assert len(tally.answers) == len(answers)  # every answer is recorded, counted or not
    for answer in tally.answers:
        assert answer.counted == (answer.not_counted_reason is None)


def test_an_answer_that_does_not_count_says_why() -> None:
    tally = tally_of(2, ("mallory", "approve"), ("alice", "approve"), ("alice", "approve"))
    reasons = [a.not_counted_reason for a in tally.answers]
    assert reasons[0] == "'mallory' is not a listed approver (listed: alice, bob, carol)"
    assert reasons[1] is None
    assert reasons[2] == "alice already answered; each approver counts once"


@pytest.mark.parametrize(
    ("approver", "restore", "expected"),
    [
        ("alice", True, RestoreAnswer(True, "alice chose to restore: why")),
        ("bob", False, RestoreAnswer(False, "bob chose to leave it: why")),
        ("mallory", True, None),  # unlisted: asked again
        (" alice", True, None),  # today's semantics: the restore form's name is not stripped
        ("Alice", True, None),
        (TIMEOUT_APPROVER, False, None),
    ],
)
def test_only_a_listed_approver_decides_a_restore(
    approver: str, restore: bool, expected: RestoreAnswer | None
) -> None:
    form = RestoreForm(approver=approver, restore=restore, comment="why")
    assert restore_answer(form, LISTED) == expected


# --- texts ---------------------------------------------------------------------------------


def test_the_approval_text_shows_staging_the_plan_and_answers_that_did_not_count() -> None:
    staging = [
        Verification(server="stg-1", phase="staging", passed=True),
        Verification(server="stg-2", phase="staging", passed=False, failures=("tcp:80",)),
        Verification(server="web-1", phase="production", passed=True),
    ]
    plan = MaintenancePlan(
        client="acme",
        change_ref="CHG-1",
        dry_run=False,
        policy="all",
        hosts=[
            HostPlan(server="stg-1", role="staging", address="10.0.0.1", reachable=True),
            HostPlan(server="web-1", role="production", address="10.0.0.2", reachable=True),
        ],
    )
    text = approval_description(
        client="ACME",
        change_ref="CHG-1",
        staging_summary=staging_summary(staging),
        production_plan=production_plan_text(plan),
        tally=tally_of(2, ("mallory", "approve"), ("alice", "approve")),
        approvers=LISTED,
        deadline=AT,
    )
    assert "## Approve production maintenance for ACME — CHG-1" in text
    assert "Approvals needed: 2 (received 1)." in text
    assert "- stg-1: passed\n- stg-2: FAILED\n" in text
    assert "web-1: passed" not in text
    assert "- web-1: no change" in text
    assert "- mallory: 'mallory' is not a listed approver" in text
    assert staging_summary([]) == "- no staging server in scope"


def test_the_restore_question_names_the_server_the_failure_and_the_approvers() -> None:
    text = restore_question("web-1", "CHG-1", "verification failed: tcp:80", LISTED)
    assert text.startswith("## web-1 failed during CHG-1\n\nverification failed: tcp:80\n\n")
    assert text.endswith("Listed approvers: alice, bob, carol.")


# --- the ask-loop, with a scripted pause and clock ----------------------------------------


class Script:
    """A scripted pause: each call advances the clock and returns the next answer."""

    def __init__(self, answers: list[tuple[float, RunInput]], start: datetime = AT) -> None:
        self.answers: Iterator[tuple[float, RunInput]] = iter(answers)
        self.clock = start
        self.keys: list[str] = []
        self.timeouts: list[int] = []

    def now(self) -> datetime:
        return self.clock

    def __call__(self, form: type[FormT], timeout_s: int, poll_s: int, key: str) -> FormT:
        self.keys.append(key)
        self.timeouts.append(timeout_s)
        waited, answer = next(self.answers)
        self.clock += timedelta(seconds=waited)
        return cast(FormT, answer)


def run_ask(script: Script, deadline_s: float, settle: list[RunInput]) -> bool:
    def take(answer: RunInput) -> bool:
        settle.append(answer)
        return getattr(answer, "approver", "") == "alice"

    return ask(
        lambda: ApprovalForm.with_initial_data(decision="approve"),
        take,
        flow_run_id=str(uuid4()),
        deadline=AT + timedelta(seconds=deadline_s),
        key="approval",
        form_name="approval",
        poll_s=1,
        pause=script,
        now=script.now,
    )


def form(name: str) -> ApprovalForm:
    return ApprovalForm(approver=name, decision="approve")


@pytest.mark.parametrize(
    ("answers", "settled", "keys", "seen"),
    [
        ([(10, form("alice"))], True, ["approval-1"], ["alice"]),
        ([(10, form("mallory")), (10, form("alice"))], True, ["approval-1", "approval-2"], 2),
        # the watchdog's answer at the deadline is the timeout, never an answer
        ([(3600, form(TIMEOUT_APPROVER))], False, ["approval-1"], []),
        # the watchdog's name before the deadline is someone typing it: an unlisted answer
        ([(10, form(TIMEOUT_APPROVER)), (10, form("alice"))], True, 2, [TIMEOUT_APPROVER, "alice"]),
        # answers that never settle it, until the time is up
        ([(1800, form("mallory")), (1800, form("bob"))], False, 2, ["mallory", "bob"]),
    ],
)
def test_the_ask_loop_waits_for_a_settling_answer_until_the_deadline(
    answers: list[tuple[float, RunInput]],
    settled: bool,
    keys: list[str] | int,
    seen: list[str] | int,
) -> None:
    script = Script(answers)
    received: list[RunInput] = []
    assert run_ask(script, 3600, received) is settled
    if isinstance(keys, int):
        assert script.keys == [f"approval-{i}" for i in range(1, keys + 1)]
    else:
        assert script.keys == keys
    names = [getattr(a, "approver", "") for a in received]
    assert (len(names) if isinstance(seen, int) else names) == seen
    # Prefect's own timeout is a backstop beyond the deadline, never shorter
    assert script.timeouts[0] == 3600 + 300


def test_the_ask_loop_does_not_pause_after_the_deadline() -> None:
    script = Script([])
    assert run_ask(script, 0, []) is False
    assert script.keys == []


# --- the approval wait and the restore question, end to end through the loop ------------------


def approve_run(script: Script, required: int) -> tuple[ApprovalTally | None, list[int]]:
    seen: list[int] = []
    tally = wait_for_approval(
        client_name="ACME",
        change_ref="CHG-1",
        flow_run_id=str(uuid4()),
        approvers=LISTED,
        required=required,
        deadline=AT + timedelta(hours=24),
        staging_text="- stg-1: passed",
        production_text="- web-1: no change",
        tz=UTC,
        on_answer=lambda t: seen.append(len(t.answers)),
        poll_s=1,
        pause=script,
        now=script.now,
    )
    return tally, seen


def answer(name: str, decision: str = "approve", after_s: float = 60) -> tuple[float, RunInput]:
    return after_s, ApprovalForm(approver=name, decision=decision)


@pytest.mark.parametrize(
    ("required", "answers", "verdict", "rounds"),
    [
        (1, [answer("alice")], "approved", 1),
        (1, [answer("mallory"), answer("alice", "reject")], "rejected", 2),
        (2, [answer("alice"), answer("alice"), answer("bob")], "approved", 3),
        (2, [answer("alice"), answer("bob", "reject")], "rejected", 2),
        (2, [answer("alice"), answer(TIMEOUT_APPROVER, "reject", after_s=86400)], None, 2),
        (1, [answer("mallory", after_s=86400)], None, 1),  # the last answer came too late
    ],
)
def test_the_approval_wait_ends_approved_rejected_or_at_the_deadline(
    required: int, answers: list[tuple[float, RunInput]], verdict: str | None, rounds: int
) -> None:
    script = Script(answers)
    tally, seen = approve_run(script, required)
    assert (tally.verdict if tally else None) == verdict
    assert script.keys == [f"approval-{i}" for i in range(1, rounds + 1)]
    # every answer but the watchdog's at the deadline is recorded as it arrives
    assert seen == list(range(1, len(seen) + 1))


@pytest.mark.parametrize(
    ("answers", "expected", "ignored"),
    [
        ([(5, RestoreForm(approver="alice", restore=True, comment="go"))],
         RestoreAnswer(True, "alice chose to restore: go"), []),
        ([(5, RestoreForm(approver="mallory", restore=True)),
          (5, RestoreForm(approver="bob", restore=False, comment="mine"))],
         RestoreAnswer(False, "bob chose to leave it: mine"), ["mallory"]),
        ([(86400, RestoreForm(approver=TIMEOUT_APPROVER, restore=False))],
         RestoreAnswer(False, "no decision within 1 day, 0:00:00"), []),
    ],
)  # fmt: skip
def test_the_restore_question_is_answered_by_a_listed_approver_or_left_at_the_deadline(
    answers: list[tuple[float, RunInput]], expected: RestoreAnswer, ignored: list[str]
) -> None:
    script = Script(answers)
    names: list[str] = []
    got = ask_restore(
        server="web-1",
        change_ref="CHG-1",
        why="verification failed",
        approvers=LISTED,
        flow_run_id=str(uuid4()),
        timeout=timedelta(days=1),
        on_ignored=names.append,
        poll_s=1,
        pause=script,
        now=script.now,
    )
    assert got == expected
    assert names == ignored
    assert script.keys[0] == "restore-web-1-1"
