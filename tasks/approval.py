"""Approval of a production change: the form approvers fill in, and how answers count.

The flow pauses with :class:`ApprovalForm` (the Prefect UI renders it as a form; the
API accepts the same fields as ``run_input``). Only approvers listed for the client
count, each once; a rejection by a listed approver ends the wait; the change goes
ahead when ``approvals_required`` distinct listed approvers said yes. Everything else
(an unlisted name, a second answer from the same person) is recorded, not counted,
and the run waits again. The counting is pure and tested without Prefect.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from history.change import Approval


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
