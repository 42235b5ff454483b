"""Approval of a production change: the forms, the signed answers, and how answers count.

The flow pauses with :class:`ApprovalForm` (the Prefect UI renders it as a form; the
API accepts the same fields as ``run_input``). An answer counts only when it proves who
gave it: an OpenSSH signature (``ssh-keygen -Y sign -n caretaker-approval``) by the key
the inventory lists for that approver, over the one message :func:`signed_message`
builds from the client, the change ref, the production plan's digest
(:func:`plan_digest`), the decision and the approver's name. A signature made for
another change, another plan, another decision or another name does not verify, so it
cannot be replayed; a changed plan needs a new approval. Only listed approvers count,
each once; a proven rejection ends the wait; the change goes ahead when
``approvals_required`` distinct listed approvers signed yes. Everything else (an
unlisted name, a missing or bad signature, a second answer from the same person) is
recorded with the reason, not counted, and the run waits again.

Before pausing, the flow publishes what is to be signed as the run input
``<question>-request`` (:func:`request_key`), so ``python -m deployments.approve`` can
sign it with the approver's own key. Counting (:func:`count_answer`), the signature's
pre-checks (:func:`parse_signature`, :func:`prove`) and the texts are pure; only
:func:`verify_signature` runs ``ssh-keygen -Y verify``.

The same wait serves the restore question (on_failure ``ask``), with a signed
``restore`` or ``leave``: :func:`ask` is the one wait loop for both, bounded by a
deadline.

**Waits hold nothing.** A run of a deployment waits *suspended* (:func:`prefect_wait`:
Prefect's ``suspend_flow_run``): its process exits (SSH sessions closed, the client's run
lock kept in the history store) and, once answered, any worker runs it again from the
start; the procedure skips what this run already did (``tasks/maintenance.py``), and the
wait continues where it was: :class:`Wait` (the deadline, the first round, the answers
recorded before it) is kept as the run input ``<question>-wait``, each round's answer is
the run input of its pause key (``approval-<n>``), which Prefect hands back at once to a
run resumed past that round. The deadline of a suspended wait is kept by
:func:`end_expired_waits` (run by every ``health-check`` round): it answers an expired
wait as ``TIMEOUT_APPROVER``, and the resumed run records the timeout. A run that is not
a deployment's (a direct call, ``python -m flows...``) cannot be suspended: it pauses in
its process instead, and :class:`ApprovalDeadline` (a timer in that process) keeps its
deadline.

**A late answer does not count**, whenever it is read: an answer counts only when the
Prefect server created its run input before the wait's deadline (:func:`answer_given_at`,
judged by :func:`answer_timing`), not when a worker reads it. An answer given after the
deadline, before the sweep or the timer ended the wait, ends the wait as the timeout; an
answer given in time and read late (the run queued for a worker) still counts. The same
rule holds for suspended and in-process waits (one loop, :func:`ask`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast
from uuid import UUID

from prefect import pause_flow_run, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from core.errors import CaretakerError, ConfigError
from history.change import Approval, Verification
from inventory.types import ssh_key_blob, ssh_key_fingerprint
from tasks.packages import MaintenancePlan
from tasks.rollout import RestoreAnswer
from tasks.sessions import close_sessions

#: The signature namespace: a signature made for anything else (git commits, files) is refused.
NAMESPACE = "caretaker-approval"
#: The longest signature text the forms take (an RSA-8192 signature is about 2,700 characters).
SIGNATURE_MAX = 8000
#: How long one ``ssh-keygen -Y verify`` may take.
VERIFY_TIMEOUT_S = 10.0
#: How long past a wait's deadline Prefect itself fails a run nobody ended: a backstop only
#: (the deadline watchdog, or :func:`end_expired_waits` every health-check round, ends it).
WAIT_GRACE_S = 3600
#: The command shown to approvers (the file is the message, saved as message.txt).
SIGN_COMMAND = f"ssh-keygen -Y sign -n {NAMESPACE} -f ~/.ssh/id_ed25519 message.txt"

log = logging.getLogger(__name__)

#: Who may answer, and the public key each answer must be signed with (None: cannot count).
ApproverKeys = Mapping[str, "str | None"]


_SIGNATURE_HELP = (
    "The whole -----BEGIN SSH SIGNATURE----- ... -----END SSH SIGNATURE----- text of"
    f" `{SIGN_COMMAND}` (message.txt.sig), the message being the one shown above for your"
    " decision."
)


class ApprovalForm(RunInput):
    """The approval form shown in the Prefect UI when a maintenance run waits."""

    decision: Literal["approve", "reject"] = Field(
        description="Approve the production change, or reject it (no default: choose)."
    )
    approver: str = Field(
        min_length=1, max_length=64, description="Your approver name, as listed for the client."
    )
    signature: str = Field(min_length=1, max_length=SIGNATURE_MAX, description=_SIGNATURE_HELP)
    comment: str = Field(default="", max_length=2000, description="Why, or any condition.")
    ticket: str = Field(default="", max_length=64, description="Change ticket reference.")


Verdict = Literal["pending", "approved", "rejected"]

#: The name under which caretaker itself ends an approval wait at its deadline.
TIMEOUT_APPROVER = "caretaker-approval-timeout"


class RestoreForm(RunInput):
    """Asked when a production server failed and the client's on_failure is ``ask``."""

    decision: Literal["restore", "leave"] = Field(
        description=(
            "restore: roll the failed server back from its pre-change snapshot; leave: leave"
            " it as it is (no default: choose)."
        )
    )
    approver: str = Field(
        min_length=1, max_length=64, description="Your approver name, as listed for the client."
    )
    signature: str = Field(min_length=1, max_length=SIGNATURE_MAX, description=_SIGNATURE_HELP)
    comment: str = Field(default="", max_length=2000, description="Why.")


#: What the deadline watchdog answers on each form: a rejection / no restore. Its answer is
#: recognised by name at the deadline; before it, the name is unlisted and cannot count.
TIMEOUT_ANSWERS: dict[str, dict[str, object]] = {
    "approval": {
        "decision": "reject",
        "approver": TIMEOUT_APPROVER,
        "signature": "none: the deadline passed",
        "comment": "no decision before the approval deadline",
        "ticket": "",
    },
    "restore": {
        "decision": "leave",
        "approver": TIMEOUT_APPROVER,
        "signature": "none: the deadline passed",
        "comment": "no decision before the deadline: left as it is",
    },
}


# ---- what is signed ---------------------------------------------------------------------


def production_canonical(plan: MaintenancePlan) -> list[dict[str, Any]]:
    """The production part of ``plan`` in its canonical form (pure).

    The production hosts sorted by name, each with its package changes ``[name, from,
    to]`` (from is ``""`` for a new package) and removals, sorted.
    """
    hosts = [
        {
            "server": h.server,
            "changes": sorted([c.name, c.from_version or "", c.to_version] for c in h.changes),
            "removals": sorted(h.removals),
        }
        for h in plan.hosts
        if h.role == "production"
    ]
    return sorted(hosts, key=lambda host: str(host["server"]))


def digest_of(canonical: list[dict[str, Any]]) -> str:
    """``sha256:<hex>`` of a canonical production plan, as JSON with sorted keys (pure)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def plan_digest(plan: MaintenancePlan) -> str:
    """``sha256:<hex>`` of the production part of ``plan`` (pure).

    The same production plan always gives the same digest (order of hosts and packages
    does not matter; staging and the change ref are not part of it), and any change to
    what production would get (a host, a package, a version, a removal) gives another.
    """
    return digest_of(production_canonical(plan))


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:@+/=-]+")


def _value(text: str) -> str:
    # Plain values as they are; anything else JSON-quoted, so no two answers share a message.
    return text if _PLAIN_VALUE.fullmatch(text) else json.dumps(text)


def signed_message(
    *,
    client: str,
    change_ref: str,
    plan: str,
    decision: str,
    approver: str,
    server: str | None = None,
) -> str:
    """The one line an approver signs (pure).

    ``caretaker-approval client=acme change=CHG-1 plan=sha256:... decision=approve
    approver=alice``; the restore question adds ``server=<name>`` before the decision.
    Verification accepts the line with or without one final newline (a saved file).
    """
    fields = [("client", client), ("change", change_ref), ("plan", plan)]
    if server is not None:
        fields.append(("server", server))
    fields += [("decision", decision), ("approver", approver)]
    return " ".join([NAMESPACE, *(f"{k}={_value(v)}" for k, v in fields)])


# ---- is the signature the approver's, over this message? ----------------------------------


@dataclass(frozen=True)
class SignatureInfo:
    """What an armored SSH signature says about itself (before it is verified)."""

    namespace: str
    fingerprint: str
    armored: str


_ARMOR = re.compile(
    r"-----BEGIN SSH SIGNATURE-----(?P<body>[A-Za-z0-9+/=\s]*)-----END SSH SIGNATURE-----"
)


def parse_signature(text: str) -> SignatureInfo:
    """Read an armored OpenSSH signature (pure); ValueError saying what is wrong.

    Whitespace inside the armor is free (a form may rewrap it); the text is re-armored
    as ``ssh-keygen`` writes it.
    """
    match = _ARMOR.fullmatch(text.strip())
    if match is None:
        raise ValueError("not an OpenSSH signature (-----BEGIN SSH SIGNATURE----- ... END)")
    body = "".join(match.group("body").split())
    try:
        blob = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("the signature is not valid base64") from None
    if not blob.startswith(b"SSHSIG"):
        raise ValueError("not an OpenSSH signature (no SSHSIG header)")
    fields: list[bytes] = []
    at = 10  # magic (6) and version (4)
    while at + 4 <= len(blob) and len(fields) < 5:
        size = int.from_bytes(blob[at : at + 4], "big")
        fields.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    if len(fields) < 5 or at > len(blob):
        raise ValueError("a truncated OpenSSH signature")
    public_key, namespace = fields[0], fields[1]
    digest = base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    armored = "\n".join(
        ["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----", ""]
    )
    return SignatureInfo(namespace.decode(errors="replace"), f"SHA256:{digest}", armored)


class Verifier(Protocol):
    """Checks a signature over a message with one approver's key: None when good, else why."""

    def __call__(
        self, message: str, armored: str, approver: str, public_key: str
    ) -> str | None: ...


def verify_signature(
    message: str,
    armored: str,
    approver: str,
    public_key: str,
    *,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> str | None:
    """``ssh-keygen -Y verify`` of ``armored`` over ``message`` with ``approver``'s key.

    The message is tried as it is, then with a final newline (a saved file has one).

    Returns:
        None when the signature is good, else ssh-keygen's reason.

    Raises:
        ConfigError: ssh-keygen is not installed.
    """
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise ConfigError(
            "ssh-keygen is not installed: approvals cannot be verified (install openssh-client)"
        )
    kind, blob = ssh_key_blob(public_key)
    why = "the signature does not verify"
    with tempfile.TemporaryDirectory(prefix="caretaker-approval-") as folder:
        signers, sig = Path(folder) / "allowed_signers", Path(folder) / "answer.sig"
        key = base64.b64encode(blob).decode()
        signers.write_text(f'{approver} namespaces="{NAMESPACE}" {kind} {key}\n')
        sig.write_text(armored)
        command = [tool, "-Y", "verify", "-f", str(signers), "-I", approver, "-n", NAMESPACE]
        for variant in (message, message + "\n", message + "\r\n"):
            try:
                done = subprocess.run(
                    [*command, "-s", str(sig)],
                    input=variant.encode(),
                    capture_output=True,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return f"ssh-keygen -Y verify took longer than {timeout_s:g} s"
            if done.returncode == 0:
                return None
            why = (done.stderr.decode(errors="replace").strip().splitlines() or [why])[-1]
    return why


@dataclass(frozen=True)
class Proof:
    """Whether an answer proved who gave it, and how (or why not)."""

    ok: bool
    detail: str  # "ssh-signature SHA256:..." when ok, else the reason
    fingerprint: str | None = None

    @property
    def recorded(self) -> str:
        """The change record's ``proof`` text."""
        return self.detail if self.ok else f"not proven: {self.detail}"


def prove(
    signature: str,
    message: str,
    approver: str,
    public_key: str | None,
    verify: Verifier = verify_signature,
) -> Proof:
    """Whether ``signature`` is ``approver``'s signature over ``message``.

    The pre-checks are pure (no key, no signature, not a signature, another namespace,
    another key); only a signature by the approver's own key reaches ``verify``.
    """
    if public_key is None:
        return Proof(False, f"{approver} has no ssh_key in the inventory: cannot be proven")
    if not signature.strip():
        return Proof(False, "no signature given")
    try:
        info = parse_signature(signature)
    except ValueError as exc:
        return Proof(False, str(exc))
    if info.namespace != NAMESPACE:
        return Proof(False, f"signed for namespace {info.namespace!r}, not {NAMESPACE!r}")
    expected = ssh_key_fingerprint(public_key)
    if info.fingerprint != expected:
        return Proof(
            False, f"signed with another key ({info.fingerprint}), not {approver}'s ({expected})"
        )
    why = verify(message, info.armored, approver, public_key)
    if why is not None:
        return Proof(
            False,
            "the signature is not over this answer's message (signed for another change,"
            f" plan, decision or approver): {why}",
            expected,
        )
    return Proof(True, f"ssh-signature {expected}", expected)


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


def check_answer(
    answer: ApprovalForm | RestoreForm,
    approvers: ApproverKeys,
    message: Callable[[str, str], str],
    verify: Verifier = verify_signature,
) -> Proof:
    """Prove one answer: ``message(decision, approver)`` is what it must be a signature of.

    An unlisted name is not checked at all (its proof says so).
    """
    name = answer.approver.strip()
    if name not in approvers:
        return Proof(False, "not checked: not a listed approver")
    return prove(answer.signature, message(answer.decision, name), name, approvers[name], verify)


def count_answer(
    tally: ApprovalTally,
    form: ApprovalForm,
    approvers: Sequence[str],
    at: datetime,
    proof: Proof,
    digest: str | None = None,
) -> ApprovalTally:
    """Add one answer to the tally (pure).

    Args:
        tally: the answers so far.
        form: the answer received.
        approvers: names of the client's listed approvers.
        at: when the answer arrived (aware).
        proof: what :func:`check_answer` found about its signature.
        digest: the plan digest the answer was about (for the record).

    Returns:
        The new tally; the answer is recorded whether it counted or not.
    """
    name = form.approver.strip()
    reason: str | None = None
    counted = [a for a in tally.answers if a.counted]
    if name not in approvers:
        reason = f"{name!r} is not a listed approver (listed: {', '.join(approvers)})"
    elif not proof.ok:
        reason = proof.detail
    elif any(a.approver == name for a in counted):
        reason = f"{name} already answered; each approver counts once"
    elif proof.fingerprint and any(proof.fingerprint in (a.proof or "") for a in counted):
        reason = f"signed with the key of an answer already counted ({proof.fingerprint})"
    answer = Approval(
        approver=name or "?",
        decision=form.decision,
        at=at,
        comment=form.comment,
        ticket=form.ticket or None,
        counted=reason is None,
        proof=proof.recorded,
        plan_digest=digest,
        not_counted_reason=reason,
    )
    return tally.model_copy(update={"answers": (*tally.answers, answer)})


def how_to_answer(question: Question, *, choices: str) -> list[str]:
    """The markdown lines saying exactly what to sign and how (pure)."""
    lines = [
        "### How to answer",
        f"Plan digest: `{question.digest}`",
        "",
        "Your answer counts only when signed with your own key, the one the inventory lists"
        f" for you. Save the line for your name and decision ({choices}) as `message.txt`,"
        " unchanged:",
        "",
    ]
    for name, messages in question.messages().items():
        for decision, message in messages.items():
            lines += [f"{name}, {decision}:", "```", message, "```"]
    decision = "--reject" if question.server is None else "--leave (or --restore)"
    lines += [
        "",
        f"Sign it with `{SIGN_COMMAND}` and paste all of `message.txt.sig` into Signature.",
        f"Or from a shell: `python -m deployments.approve {question.flow_run_id} --approver"
        f" NAME --key ~/.ssh/id_ed25519` (add `{decision}` for the other answer).",
    ]
    return lines


def approval_description(
    *,
    client: str,
    change_ref: str,
    staging_summary: str,
    production_plan: str,
    tally: ApprovalTally,
    approvers: ApproverKeys,
    deadline: datetime,
    question: Question | None = None,
) -> str:
    """The markdown shown above the form: staging result, production plan, what to sign."""
    received = len({a.approver for a in tally.counted})
    keyless = [name for name, key in approvers.items() if key is None]
    lines = [
        f"## Approve production maintenance for {client} — {change_ref}",
        "",
        f"Listed approvers: {', '.join(approvers)}. "
        f"Approvals needed: {tally.required} (received {received}).",
        f"Waiting until {deadline:%Y-%m-%d %H:%M %Z}; "
        "without an answer production stays untouched.",
    ]
    if keyless:
        lines.append(
            f"No ssh_key in the inventory, so their answers cannot count: {', '.join(keyless)}."
        )
    lines += [
        "",
        "### Staging result",
        staging_summary,
        "",
        "### Production plan",
        production_plan,
    ]
    if question is not None:
        lines += ["", *how_to_answer(question, choices="approve or reject")]
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


def restore_answer(
    form: RestoreForm, approvers: Sequence[str], proof: Proof
) -> RestoreAnswer | None:
    """A listed approver's proven answer to the restore question; None otherwise (pure).

    The name must match a listed approver exactly (unlike the approval form's, it is not
    stripped) and the signature must verify: any other answer is ignored and the question
    is asked again.
    """
    if form.approver not in approvers or not proof.ok:
        return None
    restore = form.decision == "restore"
    verb = "restore" if restore else "leave it"
    return RestoreAnswer(
        restore, f"{form.approver} chose to {verb} ({proof.detail}): {form.comment}"
    )


# ---- the request scripts read, and the question it belongs to ----------------------------


@dataclass(frozen=True)
class Question:
    """One question to the client's approvers: what it is about and who may answer."""

    client: str  # the client's slug
    change_ref: str
    digest: str  # plan_digest of the production plan
    approvers: ApproverKeys
    flow_run_id: str
    server: str | None = None  # the restore question's failed server
    production: tuple[dict[str, Any], ...] = ()  # production_canonical, shown to scripts

    @property
    def key(self) -> str:
        """The pause key's prefix: ``approval``, or ``restore-<server>``."""
        return "approval" if self.server is None else f"restore-{self.server}"

    @property
    def decisions(self) -> tuple[str, str]:
        """The two answers: approve/reject, or restore/leave."""
        return ("approve", "reject") if self.server is None else ("restore", "leave")

    def message(self, decision: str, approver: str) -> str:
        """What ``approver`` signs to answer ``decision`` (:func:`signed_message`)."""
        return signed_message(
            client=self.client,
            change_ref=self.change_ref,
            plan=self.digest,
            decision=decision,
            approver=approver,
            server=self.server,
        )

    def messages(self) -> dict[str, dict[str, str]]:
        """Per approver who can be proven, per decision, the message to sign."""
        return {
            name: {d: self.message(d, name) for d in self.decisions}
            for name, key in self.approvers.items()
            if key is not None
        }

    def request(self) -> dict[str, Any]:
        """The run input ``<key>-request`` (JSON) that ``deployments.approve`` signs from."""
        return {
            "question": "approval" if self.server is None else "restore",
            "client": self.client,
            "change_ref": self.change_ref,
            "plan_digest": self.digest,
            "production_plan": list(self.production),
            "server": self.server,
            "namespace": NAMESPACE,
            "decisions": list(self.decisions),
            "approvers": [name for name, key in self.approvers.items() if key is not None],
            "messages": self.messages(),
        }


def request_key(pause_key: str) -> str:
    """The run input key of the request a paused run published (``approval-2`` ->
    ``approval-request``, ``restore-web-1-1`` -> ``restore-web-1-request``) (pure)."""
    return pause_key.rsplit("-", 1)[0] + "-request"


def publish_request(key: str, request: dict[str, Any], flow_run_id: str) -> None:
    """Write ``request`` as the flow run's input ``key`` (replacing one from a retry)."""
    from prefect.input.actions import (
        create_flow_run_input,
        delete_flow_run_input,
        read_flow_run_input,
    )

    run_id = UUID(flow_run_id)
    if read_flow_run_input(key, flow_run_id=run_id) is not None:
        delete_flow_run_input(key, flow_run_id=run_id)
    create_flow_run_input(key, request, flow_run_id=run_id)


def read_input(key: str, flow_run_id: str) -> Any:
    """The flow run's input ``key`` (JSON), or None."""
    from prefect.input.actions import read_flow_run_input

    return read_flow_run_input(key, flow_run_id=UUID(flow_run_id))


Publish = Callable[[str, dict[str, Any], str], None]
Read = Callable[[str, str], Any]


# ---- one wait, across the executions of a suspended run -----------------------------------


class Wait(BaseModel):
    """One question's wait, kept as the run input ``<question>-wait`` (written before the
    first round), so that the run, suspended and run again from the start, continues it."""

    model_config = ConfigDict(frozen=True)

    digest: str = Field(description="The plan digest asked about.")
    deadline: datetime = Field(description="When the wait ends without a decision (aware).")
    answers_before: int = Field(
        default=0, ge=0, description="Approvals the change record held before this wait."
    )
    first_round: int = Field(default=1, ge=1, description="The pause key number of round 1.")


def wait_key(key: str) -> str:
    """The run input a question's wait is kept in (``approval`` -> ``approval-wait``)."""
    return f"{key}-wait"


def next_wait(
    existing: Wait | None, digest: str, now: datetime, timeout: timedelta, recorded: int
) -> tuple[Wait, bool]:
    """The wait a question is in, and whether it is new (pure).

    The run's wait for the same plan digest is continued (its deadline, its rounds); so is
    one whose deadline passed (a run resumed at its deadline ends as a timeout, whatever
    its plan is now). Otherwise a new wait begins: ``timeout`` from ``now``, its rounds
    after the earlier wait's (the answered ones and the one whose answer resumed the run:
    pause keys are used once per run).

    Args:
        existing: the run's wait for this question so far, if any.
        digest: the plan digest asked about now.
        now: the clock (aware).
        timeout: how long a new wait lasts.
        recorded: approvals the change record holds now.
    """
    if existing is not None and (existing.digest == digest or now >= existing.deadline):
        return existing, False
    first = 1
    if existing is not None:
        first = existing.first_round + max(recorded - existing.answers_before, 0) + 1
    return Wait(
        digest=digest, deadline=now + timeout, answers_before=recorded, first_round=first
    ), True


def open_wait(
    key: str,
    digest: str,
    *,
    timeout: timedelta,
    recorded: int,
    flow_run_id: str,
    now: datetime,
    read: Read = read_input,
    publish: Publish = publish_request,
) -> tuple[Wait, bool]:
    """:func:`next_wait` from the run input ``<key>-wait``; a new wait is written there."""
    raw = read(wait_key(key), flow_run_id)
    existing = Wait.model_validate(raw) if raw else None
    wait, new = next_wait(existing, digest, now, timeout, recorded)
    if new:
        publish(wait_key(key), wait.model_dump(mode="json"), flow_run_id)
    return wait, new


FormT = TypeVar("FormT", bound=RunInput)

#: Whether an answer came in time: ``in-time`` counts as its proof says; ``late`` (given at
#: or after the deadline) and ``timeout`` (the deadline's own answer) end the wait.
Timing = Literal["in-time", "late", "timeout"]


def answer_timing(
    approver: str, given_at: datetime | None, read_at: datetime, deadline: datetime
) -> Timing:
    """Whether an answer was given before the wait's deadline (pure).

    ``given_at`` is when the Prefect server stored the answer (its run input's
    ``created``): a clock the approver does not control, and that does not move when the
    run is queued and read late. Unknown (the API did not say), the time it was read is
    used instead: later than the real one, so an answer is never counted on a guess.
    The deadline's own answer (``TIMEOUT_APPROVER``) ends the wait once it is read at or
    after the deadline; before it, it is someone typing the name (an unlisted answer).

    Args:
        approver: the name in the answer.
        given_at: when the server stored the answer (aware), or None when unknown.
        read_at: when the run read it (aware).
        deadline: the wait's deadline (aware).
    """
    if approver.strip() == TIMEOUT_APPROVER and read_at >= deadline:
        return "timeout"
    at = read_at if given_at is None else given_at
    return "in-time" if at < deadline else "late"


def answer_given_at(answer: RunInput) -> datetime | None:
    """When the Prefect server stored ``answer`` (its run input's ``created``), or None.

    None for an answer that did not come from a run input (a scripted one in tests) or
    when the API does not say (then :func:`answer_timing` uses the time it was read).
    """
    try:
        meta = answer.metadata
    except AttributeError:  # not loaded from a run input
        return None
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            found = client.filter_flow_run_input(
                meta.receiver, key_prefix=meta.key, limit=10, exclude_keys=set()
            )
    except Exception as exc:  # any API failure: the read time is used, never a guess
        log.warning("when answer %s was given is unknown (%s): its read time counts", meta.key, exc)
        return None
    for item in found:
        if item.key == meta.key and item.created is not None:
            # a plain aware datetime: Prefect's DateTime loses its zone in arithmetic
            return datetime.fromtimestamp(item.created.timestamp(), UTC)
    return None


class Pause(Protocol):
    """Prefect's wait, or a scripted stand-in in tests: the answer to one form."""

    def __call__(self, form: type[FormT], timeout_s: int, poll_s: float, key: str) -> FormT: ...


def suspends() -> bool:
    """Whether this flow run's waits suspend (it is a deployment's run) or pause in process."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return run is not None and run.deployment_id is not None


def used_pause_keys() -> frozenset[str]:
    """The pause keys this flow run was suspended with and resumed from (answered rounds);
    empty for a run that never suspended (Prefect keeps them only for suspensions)."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return frozenset(run.empirical_policy.pause_keys or ()) if run is not None else frozenset()


def prefect_pause(form: type[FormT], timeout_s: int, poll_s: float, key: str) -> FormT:
    """Pause the flow run in its process with ``form`` until someone answers it."""
    # Prefect types poll_interval as int but only sleeps it (anyio.sleep): a fraction works.
    interval = cast(int, poll_s)
    return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=interval, key=key)


def prefect_wait(form: type[FormT], timeout_s: int, poll_s: float, key: str) -> FormT:
    """Wait for an answer to ``form``: suspended when the run is a deployment's, else paused.

    Suspended, the process exits here (Prefect's ``Pause`` signal) and the run is run
    again from the start once answered; called again with the same key, the answer given
    is returned at once. A run without a deployment cannot be suspended: it pauses, its
    process (and its worker, if any) waiting. Either way the run's SSH sessions are
    closed first and their slots of ``caretaker-ssh-sessions`` given back (decision 78):
    a waiting run holds none; they reconnect at their next command. (Not for a round
    already answered: its answer comes back at once.)
    """
    if not (suspends() and key in used_pause_keys()):
        close_sessions()
    if suspends():
        return suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    return prefect_pause(form, timeout_s, poll_s, key)


def ask(
    make_form: Callable[[], type[FormT]],
    settle: Callable[[FormT, datetime], bool],
    *,
    flow_run_id: str,
    deadline: datetime,
    key: str,
    form_name: Literal["approval", "restore"],
    poll_s: float,
    pause: Pause = prefect_wait,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    first_round: int = 1,
    answered: Collection[str] = frozenset(),
    given_at: Callable[[RunInput], datetime | None] = answer_given_at,
) -> bool:
    """Wait with a form until ``settle`` says the wait is over, or the deadline passes.

    Each round shows a fresh form (``make_form``: its text may say what was received so
    far) under the key ``<key>-<round>``. Prefect's own pause timeout is only a backstop
    (``WAIT_GRACE_S`` past the deadline): the deadline is kept by :class:`ApprovalDeadline`
    (in process) or :func:`end_expired_waits` (suspended), so that a timeout is recorded
    rather than failing the run. An answer given at or after the deadline (by the Prefect
    server's clock: :func:`answer_timing`) is not taken: the wait ends as the timeout.

    Args:
        make_form: builds the form for the next round.
        settle: takes one answer and when it was given (the server's stored time, else
            when it was read); True when no further answer is needed.
        flow_run_id: the waiting run (the deadline watchdog resumes it).
        deadline: when to stop waiting (aware).
        key: the pause key's prefix (``approval``, ``restore-<server>``).
        form_name: which form the watchdog answers at the deadline.
        poll_s: how often a paused run polls for an answer.
        pause: the wait itself (Prefect's; scripted in unit tests).
        now: the clock.
        first_round: the number of the first round asked (a resumed wait continues).
        answered: pause keys already answered (a resumed run reads their answers even
            past the deadline; each still counts only if it was given before it).
        given_at: when the server stored an answer (:func:`answer_given_at`).

    Returns:
        True when settled, False when the deadline passed first.
    """
    asked = first_round - 1
    while True:
        asked += 1
        round_key = f"{key}-{asked}"
        left = (deadline - now()).total_seconds()
        remaining = int(left)
        if remaining <= 0 and round_key not in answered:
            return False
        # The timer fires just past the deadline, so its answer is stored after it.
        with (
            ApprovalDeadline(flow_run_id, math.ceil(left) + 1, form=form_name)
            if remaining > 0
            else nullcontext()
        ):
            answer = pause(make_form(), max(remaining, 0) + WAIT_GRACE_S, poll_s, round_key)
        approver = str(getattr(answer, "approver", ""))
        given = given_at(answer)
        timing = answer_timing(approver, given, now(), deadline)
        if timing == "late":
            log.warning(
                "%s: the answer of %r was given at %s, after the deadline %s: it does not"
                " count, the wait ends as the timeout",
                round_key,
                approver,
                (given or now()).isoformat(),
                deadline.isoformat(),
            )
        if timing != "in-time":
            return False
        if settle(answer, given or now()):
            return True


def wait_for_approval(
    question: Question,
    *,
    client_name: str,
    required: int,
    deadline: datetime,
    staging_text: str,
    production_text: str,
    tz: tzinfo,
    on_answer: Callable[[ApprovalTally], None],
    poll_s: float,
    pause: Pause = prefect_wait,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    verify: Verifier = verify_signature,
    publish: Publish = publish_request,
    resumed: bool = False,
    first_round: int = 1,
    recorded: Sequence[Approval] = (),
    answered: Collection[str] = frozenset(),
    given_at: Callable[[RunInput], datetime | None] = answer_given_at,
) -> ApprovalTally | None:
    """Ask for approval until the tally is decided or the deadline passes.

    The request (what to sign) is published first; each round's form shows the staging
    result, the production plan, the messages to sign, the approvals received so far
    and the answers that did not count.

    Args:
        question: the client, change, plan digest, approvers' keys and paused run.
        client_name: the client's display name.
        required: distinct listed approvals needed.
        deadline: when production is left untouched without a decision (aware).
        staging_text: :func:`staging_summary`.
        production_text: :func:`production_plan_text`.
        tz: the client's time zone, for the deadline shown.
        on_answer: told the tally after each answer (to record it).
        poll_s: how often the paused run polls for an answer.
        pause: the pause itself (Prefect's; scripted in unit tests).
        now: the clock.
        verify: the signature check (``ssh-keygen -Y verify``).
        publish: writes the request as a run input.
        resumed: the wait began in an earlier execution of the run (suspended, then
            resumed): its request is published already.
        first_round: the wait's first round (:class:`Wait`).
        recorded: the answers this wait recorded in earlier executions (they count as
            they were counted; the next round follows them).
        answered: pause keys already answered (:func:`used_pause_keys`).
        given_at: when the server stored an answer (:func:`answer_given_at`).

    Returns:
        The decided tally (approved or rejected), or None at the deadline (or when an
        answer came after it).
    """
    tally = ApprovalTally(required=required, answers=tuple(recorded))
    if tally.verdict != "pending":
        return tally
    if not resumed:
        publish(f"{question.key}-request", question.request(), question.flow_run_id)

    def form() -> type[ApprovalForm]:
        return ApprovalForm.with_initial_data(
            description=approval_description(
                client=client_name,
                change_ref=question.change_ref,
                staging_summary=staging_text,
                production_plan=production_text,
                tally=tally,
                approvers=question.approvers,
                deadline=deadline.astimezone(tz),
                question=question,
            )
        )

    def settle(answer: ApprovalForm, at: datetime) -> bool:
        nonlocal tally
        proof = check_answer(answer, question.approvers, question.message, verify)
        names = list(question.approvers)
        tally = count_answer(tally, answer, names, at, proof, question.digest)
        on_answer(tally)
        return tally.verdict != "pending"

    settled = ask(
        form,
        settle,
        flow_run_id=question.flow_run_id,
        deadline=deadline,
        key=question.key,
        form_name="approval",
        poll_s=poll_s,
        pause=pause,
        now=now,
        first_round=first_round + len(recorded),
        answered=answered,
        given_at=given_at,
    )
    return tally if settled else None


def ask_restore(
    question: Question,
    *,
    why: str,
    timeout: timedelta,
    on_ignored: Callable[[str, str], None],
    poll_s: float,
    pause: Pause = prefect_wait,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    verify: Verifier = verify_signature,
    publish: Publish = publish_request,
    deadline: datetime | None = None,
    resumed: bool = False,
    answered: Collection[str] = frozenset(),
    given_at: Callable[[RunInput], datetime | None] = answer_given_at,
) -> RestoreAnswer:
    """Ask a listed approver whether to restore a failed server; no answer in time is a no.

    Args:
        question: the change, the failed server (``question.server``), approvers' keys.
        why: what failed.
        timeout: how long to wait (the client's approval timeout).
        on_ignored: told the name and the reason of an answer that did not count (the
            question is asked again).
        poll_s: how often the paused run polls for an answer.
        pause: the pause itself (Prefect's; scripted in unit tests).
        now: the clock.
        verify: the signature check (``ssh-keygen -Y verify``).
        publish: writes the request as a run input.
        deadline: when the wait ends (:class:`Wait`); default ``timeout`` from now.
        resumed: the question was asked in an earlier execution of the run (suspended,
            then resumed): its request is published already, and its answered rounds are
            read again from the first (answers that did not count are not recorded).
        answered: pause keys already answered (:func:`used_pause_keys`).
        given_at: when the server stored an answer (:func:`answer_given_at`).
    """
    assert question.server is not None, "the restore question names its server"
    answers: list[RestoreAnswer] = []
    if not resumed:
        publish(f"{question.key}-request", question.request(), question.flow_run_id)
    names = list(question.approvers)

    def form() -> type[RestoreForm]:
        text = restore_question(question.server or "", question.change_ref, why, names)
        text += "\n\n" + "\n".join(how_to_answer(question, choices="restore or leave"))
        return RestoreForm.with_initial_data(description=text)

    def settle(form: RestoreForm, at: datetime) -> bool:
        proof = check_answer(form, question.approvers, question.message, verify)
        answer = restore_answer(form, names, proof)
        if answer is None:
            on_ignored(
                form.approver,
                proof.detail if form.approver in names else "not a listed approver",
            )
            return False
        answers.append(answer)
        return True

    ask(
        form,
        settle,
        flow_run_id=question.flow_run_id,
        deadline=deadline or now() + timeout,
        key=question.key,
        form_name="restore",
        poll_s=poll_s,
        pause=pause,
        now=now,
        answered=answered,
        given_at=given_at,
    )
    return answers[0] if answers else RestoreAnswer(False, f"no decision within {timeout}")


# ---- the deadline of suspended waits --------------------------------------------------------


def form_of(pause_key: str) -> Literal["approval", "restore"]:
    """Which form a pause key asks (``approval-3`` -> approval, ``restore-h04-1`` -> restore)."""
    return "approval" if pause_key.startswith("approval-") else "restore"


def wait_expired(wait: Wait | None, now: datetime) -> bool:
    """Whether a suspended wait is past its deadline (pure); without a wait: not ours."""
    return wait is not None and now >= wait.deadline


@task(name="end-expired-waits", cache_policy=NO_CACHE)
def end_expired_waits(flow_name: str = "server-maintenance") -> list[str]:
    """End every suspended wait of ``flow_name`` past its deadline; return the runs ended.

    A suspended run has no process to keep its deadline, so this does: each such run is
    resumed with the answer :data:`TIMEOUT_ANSWERS` gives its form, and the run, executed
    again by a worker, records the timeout (production untouched) and sends its notices.
    A run answered just before is skipped. A run whose answer was written through the API
    without resuming it (its ``...-response`` input is there: Prefect's resume would fail
    on it) is scheduled again as Prefect's resume does: it reads that answer, which counts
    only if the server stored it before the deadline. Called by every ``health-check``
    round.

    Raises:
        CaretakerError: naming the runs whose wait could not be ended (every other run's
            was; the next round tries them again).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.states import Scheduled

    now = datetime.now(UTC)
    runs: list[Any] = []
    ended: list[str] = []
    failed: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"]))
                ),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
        for run in runs:
            details = run.state.state_details if run.state else None
            pause_key = str(details.pause_key or "") if details else ""
            keyset = details.run_input_keyset if details else None
            try:
                raw = read_input(wait_key(pause_key.rsplit("-", 1)[0]), str(run.id))
                if not wait_expired(Wait.model_validate(raw) if raw else None, now):
                    continue
                if keyset and read_input(keyset["response"], str(run.id)) is not None:
                    client.set_flow_run_state(
                        run.id, Scheduled(name="Resuming", scheduled_time=now), force=True
                    )
                else:
                    resume_flow_run(run.id, run_input=dict(TIMEOUT_ANSWERS[form_of(pause_key)]))
            except (NotPausedError, FlowPauseTimeout, RuntimeError):  # answered just before
                continue
            except Exception as exc:  # one run's failure never keeps the others waiting
                failed.append(f"{run.id} ({type(exc).__name__}: {exc})")
                continue
            ended.append(str(run.id))
    if failed:
        raise CaretakerError(f"{len(ended)} expired wait(s) ended; not ended: {'; '.join(failed)}")
    return ended
