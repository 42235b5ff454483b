"""Approval of a production change: the form approvers fill in, and how answers count.

The flow pauses with :class:`ApprovalForm` (the Prefect UI renders it as a form; the
API accepts the same fields as ``run_input``). Only approvers listed for the client
count, each once; a rejection by a listed approver ends the wait; the change goes
ahead when ``approvals_required`` distinct listed approvers said yes. Everything else
(an unlisted name, a second answer from the same person) is recorded, not counted,
and the run waits again. The counting is pure and tested without Prefect.

The same pause serves the restore question (on_failure ``ask``): :func:`ask` is the one
wait loop for both, bounded by a deadline that :class:`ApprovalDeadline` keeps; the
texts shown above the forms (:func:`approval_description`, :func:`restore_question`)
and :func:`restore_answer` are pure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal, Protocol, TypeVar
from uuid import UUID

from prefect import pause_flow_run
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from history.change import Approval, Verification
from tasks.packages import MaintenancePlan
from tasks.rollout import RestoreAnswer


class ApprovalForm(RunInput):
    """The approval form shown in the Prefect UI when a maintenance run waits."""

    decision: Literal["approve", "reject"] = Field(
        default="approve", description="Approve the production change, or reject it."
    )
    approver: str = Field(
        min_length=1, max_length=64, description="Your approver name, as listed for the client."
    )
    comment: str = Field(default="", max_length=2000, description="Why, or any condition.")
    ticket: str = Field(default="", max_length=64, description="Change ticket reference.")


Verdict = Literal["pending", "approved", "rejected"]

#: The name under which caretaker itself ends an approval wait at its deadline.
TIMEOUT_APPROVER = "caretaker-approval-timeout"


class RestoreForm(RunInput):
    """Asked when a production server failed and the client's on_failure is ``ask``."""

    restore: bool = Field(
        default=True, description="Restore the failed server from its pre-change snapshot."
    )
    approver: str = Field(
        min_length=1, max_length=64, description="Your approver name, as listed for the client."
    )
    comment: str = Field(default="", max_length=2000, description="Why.")


#: What the deadline watchdog answers on each form: a rejection / no restore.
TIMEOUT_ANSWERS: dict[str, dict[str, object]] = {
    "approval": {
        "decision": "reject",
        "approver": TIMEOUT_APPROVER,
        "comment": "no decision before the approval deadline",
        "ticket": "",
    },
    "restore": {
        "restore": False,
        "approver": TIMEOUT_APPROVER,
        "comment": "no decision before the deadline: left as it is",
    },
}


class ApprovalDeadline:
    """Ends a pause at its deadline by answering the form as ``TIMEOUT_APPROVER``.

    Prefect fails a run whose own pause timeout expires, before the flow can record
    anything. So the pause is given a longer timeout, and at the real deadline this
    watchdog resumes the run with a refusal from ``TIMEOUT_APPROVER``; the flow treats
    that answer as the timeout (and, arriving before the deadline, as an unlisted name).
    """

    def __init__(self, flow_run_id: str, seconds: float, form: str = "approval") -> None:
        self._answer = TIMEOUT_ANSWERS[form]
        self._timer = threading.Timer(seconds, self._fire, args=(UUID(flow_run_id),))
        self._timer.daemon = True

    def _fire(self, run_id: UUID) -> None:
        try:
            resume_flow_run(run_id, run_input=dict(self._answer))
        except Exception:  # the run was answered (and resumed) just before: nothing to end
            return

    def __enter__(self) -> ApprovalDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class ApprovalTally(BaseModel):
    """Answers received so far, and what they add up to."""

    model_config = ConfigDict(frozen=True)

    required: int = Field(ge=1, description="Distinct listed approvers needed.")
    answers: tuple[Approval, ...] = ()

    @property
    def counted(self) -> list[Approval]:
        """Answers that counted."""
        return [a for a in self.answers if a.counted]

    @property
    def verdict(self) -> Verdict:
        """Rejected by any counted rejection; approved once the quorum is reached."""
        if any(a.decision == "reject" for a in self.counted):
            return "rejected"
        approvals = {a.approver for a in self.counted if a.decision == "approve"}
        return "approved" if len(approvals) >= self.required else "pending"


def count_answer(
    tally: ApprovalTally, form: ApprovalForm, approvers: Sequence[str], at: datetime
) -> ApprovalTally:
    """Add one answer to the tally (pure).

    Args:
        tally: the answers so far.
        form: the answer received.
        approvers: names of the client's listed approvers.
        at: when the answer arrived (aware).

    Returns:
        The new tally; the answer is recorded whether it counted or not.
    """
    name = form.approver.strip()
    reason: str | None = None
    if name not in approvers:
        reason = f"{name!r} is not a listed approver (listed: {', '.join(approvers)})"
    elif any(a.counted and a.approver == name for a in tally.answers):
        reason = f"{name} already answered; each approver counts once"
    answer = Approval(
        approver=name or "?",
        decision=form.decision,
        at=at,
        comment=form.comment,
        ticket=form.ticket or None,
        counted=reason is None,
        not_counted_reason=reason,
    )
    return tally.model_copy(update={"answers": (*tally.answers, answer)})


def approval_description(
    *,
    client: str,
    change_ref: str,
    staging_summary: str,
    production_plan: str,
    tally: ApprovalTally,
    approvers: Sequence[str],
    deadline: datetime,
) -> str:
    """The markdown shown above the form: staging result, production plan, who may approve."""
    received = len({a.approver for a in tally.counted})
    lines = [
        f"## Approve production maintenance for {client} — {change_ref}",
        "",
        f"Listed approvers: {', '.join(approvers)}. "
        f"Approvals needed: {tally.required} (received {received}).",
        f"Waiting until {deadline:%Y-%m-%d %H:%M %Z}; "
        "without an answer production stays untouched.",
        "",
        "### Staging result",
        staging_summary,
        "",
        "### Production plan",
        production_plan,
    ]
    ignored = [a for a in tally.answers if not a.counted]
    if ignored:
        lines += ["", "### Answers that did not count"]
        lines += [f"- {a.approver}: {a.not_counted_reason}" for a in ignored]
    return "\n".join(lines) + "\n"


def staging_summary(verifications: Sequence[Verification]) -> str:
    """The staging result shown above the approval form, one line per server (pure)."""
    return (
        "\n".join(
            f"- {v.server}: {'passed' if v.passed else 'FAILED'}"
            for v in verifications
            if v.phase == "staging"
        )
        or "- no staging server in scope"
    )


def production_plan_text(plan: MaintenancePlan) -> str:
    """The production plan shown above the approval form, one line per server (pure)."""
    return (
        "\n".join(
            f"- {h.server}: "
            + (
                ", ".join(f"{c.name} {c.from_version} → {c.to_version}" for c in h.changes)
                or "no change"
            )
            for h in plan.hosts
            if h.role == "production"
        )
        or "- no production server in scope"
    )


def restore_question(server: str, change_ref: str, why: str, approvers: Sequence[str]) -> str:
    """The markdown shown above the restore form (pure)."""
    return (
        f"## {server} failed during {change_ref}\n\n{why}\n\n"
        f"Restore it from its pre-change snapshot? Listed approvers: {', '.join(approvers)}."
    )


def restore_answer(form: RestoreForm, approvers: Sequence[str]) -> RestoreAnswer | None:
    """A listed approver's answer to the restore question; None for anyone else (pure).

    The name must match a listed approver exactly (unlike the approval form's, it is not
    stripped): an unlisted answer is ignored and the question is asked again.
    """
    if form.approver not in approvers:
        return None
    verb = "restore" if form.restore else "leave it"
    return RestoreAnswer(form.restore, f"{form.approver} chose to {verb}: {form.comment}")


FormT = TypeVar("FormT", bound=RunInput)


class Pause(Protocol):
    """Prefect's pause, or a scripted stand-in in tests: the answer to one form."""

    def __call__(self, form: type[FormT], timeout_s: int, poll_s: int, key: str) -> FormT: ...


def prefect_pause(form: type[FormT], timeout_s: int, poll_s: int, key: str) -> FormT:
    """Suspend the flow run with ``form`` until someone answers it (Prefect's pause)."""
    return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_s, key=key)


def ask(
    make_form: Callable[[], type[FormT]],
    settle: Callable[[FormT], bool],
    *,
    flow_run_id: str,
    deadline: datetime,
    key: str,
    form_name: Literal["approval", "restore"],
    poll_s: int,
    pause: Pause = prefect_pause,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> bool:
    """Pause with a form until ``settle`` says the wait is over, or the deadline passes.

    Each round shows a fresh form (``make_form``: its text may say what was received so
    far) under the key ``<key>-<round>``. Prefect's own pause timeout is only a backstop:
    the deadline is kept by :class:`ApprovalDeadline`, so that a timeout is recorded
    rather than failing the run.

    Args:
        make_form: builds the form for the next round.
        settle: takes one answer; True when no further answer is needed.
        flow_run_id: the paused run (the deadline watchdog resumes it).
        deadline: when to stop waiting (aware).
        key: the pause key's prefix (``approval``, ``restore-<server>``).
        form_name: which form the watchdog answers at the deadline.
        poll_s: how often the paused run polls for an answer.
        pause: the pause itself (Prefect's; scripted in unit tests).
        now: the clock.

    Returns:
        True when settled, False when the deadline passed first.
    """
    asked = 0
    while (remaining := int((deadline - now()).total_seconds())) > 0:
        asked += 1
        with ApprovalDeadline(flow_run_id, remaining, form=form_name):
            answer = pause(make_form(), remaining + 300, poll_s, f"{key}-{asked}")
        if getattr(answer, "approver", None) == TIMEOUT_APPROVER and now() >= deadline:
            return False
        if settle(answer):
            return True
    return False


def wait_for_approval(
    *,
    client_name: str,
    change_ref: str,
    flow_run_id: str,
    approvers: Sequence[str],
    required: int,
    deadline: datetime,
    staging_text: str,
    production_text: str,
    tz: tzinfo,
    on_answer: Callable[[ApprovalTally], None],
    poll_s: int,
    pause: Pause = prefect_pause,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ApprovalTally | None:
    """Ask for approval until the tally is decided or the deadline passes.

    Each round's form shows the staging result, the production plan, the approvals
    received so far and the answers that did not count.

    Args:
        client_name: the client's display name.
        change_ref: the change asked for.
        flow_run_id: the paused run.
        approvers: the client's listed approvers.
        required: distinct listed approvals needed.
        deadline: when production is left untouched without a decision (aware).
        staging_text: :func:`staging_summary`.
        production_text: :func:`production_plan_text`.
        tz: the client's time zone, for the deadline shown.
        on_answer: told the tally after each answer (to record it).
        poll_s: how often the paused run polls for an answer.
        pause: the pause itself (Prefect's; scripted in unit tests).
        now: the clock.

    Returns:
        The decided tally (approved or rejected), or None at the deadline.
    """
    tally = ApprovalTally(required=required)

    def form() -> type[ApprovalForm]:
        return ApprovalForm.with_initial_data(
            description=approval_description(
                client=client_name,
                change_ref=change_ref,
                staging_summary=staging_text,
                production_plan=production_text,
                tally=tally,
                approvers=approvers,
                deadline=deadline.astimezone(tz),
            ),
            decision="approve",
        )

    def settle(answer: ApprovalForm) -> bool:
        nonlocal tally
        tally = count_answer(tally, answer, approvers, now())
        on_answer(tally)
        return tally.verdict != "pending"

    settled = ask(
        form,
        settle,
        flow_run_id=flow_run_id,
        deadline=deadline,
        key="approval",
        form_name="approval",
        poll_s=poll_s,
        pause=pause,
        now=now,
    )
    return tally if settled else None


def ask_restore(
    *,
    server: str,
    change_ref: str,
    why: str,
    approvers: Sequence[str],
    flow_run_id: str,
    timeout: timedelta,
    on_ignored: Callable[[str], None],
    poll_s: int,
    pause: Pause = prefect_pause,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RestoreAnswer:
    """Ask a listed approver whether to restore a failed server; no answer in time is a no.

    Args:
        server: the failed server.
        change_ref: the change it failed in.
        why: what failed.
        approvers: the client's listed approvers.
        flow_run_id: the paused run.
        timeout: how long to wait (the client's approval timeout).
        on_ignored: told the name of an unlisted answer (the question is asked again).
        poll_s: how often the paused run polls for an answer.
        pause: the pause itself (Prefect's; scripted in unit tests).
        now: the clock.
    """
    answers: list[RestoreAnswer] = []

    def form() -> type[RestoreForm]:
        question = restore_question(server, change_ref, why, approvers)
        return RestoreForm.with_initial_data(description=question, restore=True)

    def settle(form: RestoreForm) -> bool:
        answer = restore_answer(form, approvers)
        if answer is None:
            on_ignored(form.approver)
            return False
        answers.append(answer)
        return True

    ask(
        form,
        settle,
        flow_run_id=flow_run_id,
        deadline=now() + timeout,
        key=f"restore-{server}",
        form_name="restore",
        poll_s=poll_s,
        pause=pause,
        now=now,
    )
    return answers[0] if answers else RestoreAnswer(False, f"no decision within {timeout}")
