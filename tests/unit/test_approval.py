"""Approval without Prefect: signed answers, the tally, the restore answer, the texts, the loop.

Signatures are real: each approver's key pair is made by ``ssh-keygen`` and every answer
is signed and verified by it, as on a worker. The tables list what an operator might try
to get an answer counted without the approver's key: another key, a signature made for
another change, plan, decision or name, garbage, nothing, the same answer twice, one
person under two names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import uuid4

import pytest
from prefect.input import RunInput
from pydantic import ValidationError

from core.errors import ConfigError
from history.change import Verification
from inventory.models import Client
from inventory.types import ssh_key_fingerprint
from tasks.approval import (
    NAMESPACE,
    TIMEOUT_APPROVER,
    WAIT_GRACE_S,
    ApprovalForm,
    ApprovalTally,
    Proof,
    Question,
    RestoreForm,
    Wait,
    answer_given_at,
    answer_timing,
    approval_description,
    ask,
    ask_restore,
    check_answer,
    count_answer,
    form_of,
    next_wait,
    plan_digest,
    production_plan_text,
    request_key,
    restore_answer,
    restore_question,
    signed_message,
    staging_summary,
    verify_signature,
    wait_expired,
    wait_for_approval,
)
from tasks.facts import PackageChange
from tasks.packages import HostPlan, MaintenancePlan
from tasks.rollout import RestoreAnswer

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")

FormT = TypeVar("FormT", bound=RunInput)
LISTED = ["alice", "bob", "carol"]
AT = datetime(2026, 1, 10, 3, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


class Keys:
    """Real ed25519 key pairs, made once per module, and signing with them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def private(self, name: str) -> Path:
        path = self.folder / name
        if not path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                check=True,
            )
        return path

    def public(self, name: str) -> str:
        self.private(name)
        return (self.folder / f"{name}.pub").read_text().strip()

    def sign(self, name: str, message: str, namespace: str = NAMESPACE) -> str:
        done = subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-q", "-n", namespace, "-f", str(self.private(name))],
            input=message.encode(),
            capture_output=True,
            check=True,
        )
        return done.stdout.decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("approver-keys"))


def question(keys: Keys, *, server: str | None = None, carol_key: bool = True) -> Question:
    approvers: dict[str, str | None] = {"alice": keys.public("alice"), "bob": keys.public("bob")}
    approvers["carol"] = keys.public("carol") if carol_key else None
    return Question(
        client="acme",
        change_ref="CHG-1",
        digest=DIGEST,
        approvers=approvers,
        flow_run_id=str(uuid4()),
        server=server,
    )


# --- what is signed -------------------------------------------------------------------------


def test_the_signed_message_names_client_change_plan_decision_and_approver() -> None:
    message = signed_message(
        client="acme", change_ref="CHG-1", plan=DIGEST, decision="approve", approver="alice"
    )
    assert message == (
        f"caretaker-approval client=acme change=CHG-1 plan={DIGEST} decision=approve approver=alice"
    )
    # a value that is not plain is quoted, so no field can pose as another
    odd = signed_message(
        client="acme", change_ref="X plan=evil", plan=DIGEST, decision="approve", approver="a"
    )
    assert 'change="X plan=evil"' in odd
    restore = signed_message(
        client="acme", change_ref="C", plan=DIGEST, decision="leave", approver="a", server="w1"
    )
    assert restore.endswith("server=w1 decision=leave approver=a")


def host(server: str, role: str, *changes: tuple[str, str, str]) -> HostPlan:
    return HostPlan(
        server=server,
        role=role,
        address="10.0.0.1",
        reachable=True,
        changes=[
            PackageChange(
                name=n, from_version=f, to_version=t, suites=["stable"], arch=None, security=False
            )
            for n, f, t in changes
        ],
    )


def plan(*hosts: HostPlan, change_ref: str = "CHG-1") -> MaintenancePlan:
    return MaintenancePlan(
        client="acme", change_ref=change_ref, dry_run=False, policy="all", hosts=list(hosts)
    )


WEB1 = host("web-1", "production", ("openssl", "3.0.1", "3.0.2"), ("curl", "7", "8"))
WEB2 = host("web-2", "production", ("openssl", "3.0.1", "3.0.2"))
STG = host("stg-1", "staging", ("openssl", "3.0.1", "3.0.2"))
BASE = plan(STG, WEB1, WEB2)


@pytest.mark.parametrize(
    ("other", "same"),
    [
        (plan(STG, WEB1, WEB2), True),
        (plan(WEB2, WEB1, STG), True),  # host order does not matter
        (plan(STG, host("web-1", "production", ("curl", "7", "8"),
                         ("openssl", "3.0.1", "3.0.2")), WEB2), True),  # nor package order
        (plan(host("stg-1", "staging"), WEB1, WEB2), True),  # staging is not in the digest
        (plan(STG, WEB1, WEB2, change_ref="CHG-2"), True),  # the change ref is signed apart
        (plan(STG, WEB1), False),  # a host fewer
        (plan(STG, WEB1, WEB2, host("web-3", "production")), False),  # a host more
        (plan(STG, WEB1, host("web-2", "production", ("openssl", "3.0.1", "3.0.3"))), False),
        (plan(STG, WEB1, host("web-2", "production", ("openssl", "3.0.0", "3.0.2"))), False),
        (plan(STG, WEB1, host("web-2", "production", ("libssl3", "3.0.1", "3.0.2"))), False),
    ],
)  # fmt: skip
def test_the_plan_digest_changes_exactly_when_what_production_gets_changes(
    other: MaintenancePlan, same: bool
) -> None:
    assert plan_digest(BASE).startswith("sha256:") and len(plan_digest(BASE)) == 71
    assert (plan_digest(other) == plan_digest(BASE)) is same


# --- is the answer proven? --------------------------------------------------------------------


def answer_signed(
    keys: Keys,
    q: Question,
    *,
    name: str = "alice",
    decision: str = "approve",
    signer: str | None = None,
    signed_decision: str | None = None,
    signed_name: str | None = None,
    signed_change: str | None = None,
    signed_plan: str | None = None,
    signature: str | None = None,
    namespace: str = NAMESPACE,
) -> ApprovalForm:
    message = signed_message(
        client=q.client,
        change_ref=signed_change or q.change_ref,
        plan=signed_plan or q.digest,
        decision=signed_decision or decision,
        approver=signed_name or name,
    )
    if signature is None:
        signature = keys.sign(signer or name, message, namespace)
    return ApprovalForm(approver=name, decision=decision, signature=signature or " ")


NOT_OVER = "the signature is not over this answer's message"


@pytest.mark.parametrize(
    ("case", "how", "reason"),
    [
        ("valid", {}, None),
        ("forged: another key", {"signer": "mallory"}, "signed with another key"),
        ("another approver's key", {"signer": "bob"}, "signed with another key"),
        ("replayed from another change", {"signed_change": "CHG-0"}, NOT_OVER),
        ("signed for another plan", {"signed_plan": "sha256:" + "cd" * 32}, NOT_OVER),
        ("signed reject, sent as approve", {"signed_decision": "reject"}, NOT_OVER),
        ("signed under another name", {"signed_name": "bob"}, NOT_OVER),
        ("another namespace", {"namespace": "git"}, "signed for namespace 'git'"),
        ("garbage", {"signature": "trust me, it is alice"}, "not an OpenSSH signature"),
        ("armor with garbage inside",
         {"signature": "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----"},
         "not an OpenSSH signature (no SSHSIG header)"),
        ("empty", {"signature": ""}, "no signature given"),
        ("no key listed", {"name": "carol"}, "carol has no ssh_key in the inventory"),
        ("unlisted name", {"name": "mallory"}, "not checked: not a listed approver"),
    ],
)  # fmt: skip
def test_an_answer_is_proven_only_by_the_approvers_own_signature_over_this_answer(
    keys: Keys, case: str, how: dict[str, Any], reason: str | None
) -> None:
    q = question(keys, carol_key=False)
    proof = check_answer(answer_signed(keys, q, **how), q.approvers, q.message)
    assert proof.ok is (reason is None), proof.detail
    if reason is None:
        assert proof.detail == f"ssh-signature {ssh_key_fingerprint(keys.public('alice'))}"
    else:
        assert reason in proof.detail
        assert proof.recorded.startswith(("not proven: ", "not checked"))


def test_a_signature_of_the_saved_file_or_rewrapped_by_a_form_still_verifies(keys: Keys) -> None:
    q = question(keys)
    message = q.message("approve", "alice")
    with_newline = keys.sign("alice", message + "\n")  # echo '...' > message.txt
    rewrapped = " ".join(keys.sign("alice", message).split("\n"))  # a form's textarea
    one_line = "".join(keys.sign("alice", message).split("\n"))  # an <input> drops newlines
    for signature in (with_newline, rewrapped, one_line, "\n  " + with_newline + "\n"):
        form = ApprovalForm(approver="alice", decision="approve", signature=signature)
        assert check_answer(form, q.approvers, q.message).ok


def test_without_ssh_keygen_a_signature_cannot_be_checked(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="ssh-keygen is not installed"):
        verify_signature("m", "sig", "alice", keys.public("alice"))


# --- the tally -------------------------------------------------------------------------------


def tally_of(required: int, *answers: tuple[str, str] | tuple[str, str, bool]) -> ApprovalTally:
    """Answers as (name, decision[, proven]); a proven answer's key is the name's own."""
    tally = ApprovalTally(required=required)
    for name, decision, *rest in answers:
        proven = rest[0] if rest else True
        fingerprint = f"SHA256:{name.strip()}"
        proof = (
            Proof(True, f"ssh-signature {fingerprint}", fingerprint)
            if proven
            else Proof(False, "no signature given")
        )
        form = ApprovalForm(approver=name, decision=decision, signature="s")
        tally = count_answer(tally, form, LISTED, AT, proof, DIGEST)
    return tally


@pytest.mark.parametrize(
    ("required", "answers", "verdict", "counted"),
    [
        (1, [("alice", "approve")], "approved", ["alice"]),
        (1, [("alice", "approve", False)], "pending", []),  # unproven: recorded, not counted
        (1, [("alice", "reject", False)], "pending", []),  # an unproven rejection changes nothing
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
        (2, [("alice", "approve"), ("bob", "approve", False)], "pending", ["alice"]),
        (2, [("alice", "approve"), ("bob", "approve")], "approved", ["alice", "bob"]),
        (2, [("alice", "approve"), ("bob", "reject")], "rejected", ["alice", "bob"]),
        (2, [("alice", "approve"), ("alice", "reject")], "pending", ["alice"]),  # no change of mind
        (2, [("mallory", "approve"), ("alice", "approve")], "pending", ["alice"]),
        (3, [("alice", "approve"), ("bob", "approve"), ("carol", "approve")], "approved", LISTED),
    ],
)
def test_only_proven_listed_approvers_count_each_once_and_a_counted_rejection_ends_the_wait(
    required: int, answers: list[tuple[str, str]], verdict: str, counted: list[str]
) -> None:
    tally = tally_of(required, *answers)
    assert tally.verdict == verdict
    assert [a.approver for a in tally.counted] == counted
    assert len(tally.answers) == len(answers)  # every answer is recorded, counted or not
    for answer in tally.answers:
        assert answer.counted == (answer.not_counted_reason is None)
        assert answer.plan_digest == DIGEST


def test_an_answer_that_does_not_count_says_why_and_how_it_was_proven() -> None:
    tally = tally_of(
        2,
        ("mallory", "approve"),
        ("alice", "approve"),
        ("alice", "approve"),
        ("bob", "approve", False),
    )
    reasons = [a.not_counted_reason for a in tally.answers]
    assert reasons == [
        "'mallory' is not a listed approver (listed: alice, bob, carol)",
        None,
        "alice already answered; each approver counts once",
        "no signature given",
    ]
    assert tally.answers[1].proof == "ssh-signature SHA256:alice"
    assert tally.answers[3].proof == "not proven: no signature given"


def test_one_person_with_one_key_cannot_make_a_quorum_of_two_under_two_names(keys: Keys) -> None:
    q = question(keys)
    tally = ApprovalTally(required=2)
    # alice answers as herself, then as bob: bob's answer needs bob's key, which she lacks
    for name in ("alice", "bob"):
        form = answer_signed(keys, q, name=name, signer="alice")
        proof = check_answer(form, q.approvers, q.message)
        tally = count_answer(tally, form, list(q.approvers), AT, proof, q.digest)
    assert tally.verdict == "pending"
    assert [a.counted for a in tally.answers] == [True, False]
    assert "signed with another key" in (tally.answers[1].not_counted_reason or "")
    # and the inventory refuses to give two names one key
    same = keys.public("alice")
    with pytest.raises(ValidationError, match="same ssh_key as 'alice'"):
        Client(
            slug="acme",
            name="ACME",
            timezone="UTC",
            contact={"name": "Ops", "email": "ops@acme.example"},
            approvers=(
                {"name": "alice", "email": "a@acme.example", "ssh_key": same},
                {"name": "bob", "email": "b@acme.example", "ssh_key": same},
            ),
            approvals_required=2,
        )


# --- the approver's key in the inventory -------------------------------------------------------


def keygen(folder: Path, kind: str, bits: int | None = None) -> str:
    path = folder / f"k-{kind}-{bits}"
    command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)]
    subprocess.run([*command, "-b", str(bits)] if bits else command, check=True)
    return (folder / f"k-{kind}-{bits}.pub").read_text().strip()


def approver(key: str) -> Client:
    return Client(
        slug="acme",
        name="ACME",
        timezone="UTC",
        contact={"name": "Ops", "email": "ops@acme.example"},
        approvers=({"name": "alice", "email": "a@acme.example", "ssh_key": key},),
    )


def test_an_approver_key_is_an_openssh_public_key_of_an_allowed_type_and_size(
    tmp_path: Path,
) -> None:
    for kind, bits in (("ed25519", None), ("ecdsa", 256), ("rsa", 3072)):
        key = keygen(tmp_path, kind, bits)
        assert approver(key).approvers[0].ssh_key == key
    refused = {
        keygen(tmp_path, "rsa", 2048): "is an RSA key of 2048 bits, fewer than 3072",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP": "key type 'ssh-dss', which is not allowed",
        "ssh-ed25519 not-base64!": "not valid base64",
        "ssh-ed25519 " + keygen(tmp_path, "ecdsa", 384).split()[1]: "not a ssh-ed25519 key",
        "alice@laptop": "is not '<type> <base64 key> [comment]'",
    }
    for key, message in refused.items():
        with pytest.raises(ValidationError, match=re.escape(message)):
            approver(key)


def test_an_approver_without_a_key_is_listed_but_warned_about() -> None:
    client = Client(
        slug="acme",
        name="ACME",
        timezone="UTC",
        contact={"name": "Ops", "email": "ops@acme.example"},
        approvers=({"name": "alice", "email": "a@acme.example"},),
    )
    assert client.approver_keys == {"alice": None}
    assert client.approval_warnings() == [
        "approver alice has no ssh_key: none of their answers can count",
        "approvals_required is 1 but only 0 approver(s) have an ssh_key:"
        " no production change can be approved",
    ]


# --- forms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"approver": "alice", "signature": "s"}, "decision"),  # a bare Submit approves nothing
        ({"approver": "alice", "decision": "approve"}, "signature"),
        ({"approver": "alice", "decision": "approve", "signature": "s" * 8001}, "signature"),
        ({"approver": "alice", "decision": "yes", "signature": "s"}, "decision"),
    ],
)
def test_the_forms_need_a_decision_and_a_signature(fields: dict[str, str], missing: str) -> None:
    with pytest.raises(ValidationError, match=missing):
        ApprovalForm(**fields)
    restore_fields = {**fields, "decision": "restore" if "decision" in fields else None}
    restore_fields = {k: v for k, v in restore_fields.items() if v is not None}
    if missing != "decision" or "decision" not in fields:
        with pytest.raises(ValidationError, match=missing):
            RestoreForm(**restore_fields)
    schema = ApprovalForm.model_json_schema()
    assert {"decision", "approver", "signature"} <= set(schema["required"])
    assert "default" not in schema["properties"]["decision"]


@pytest.mark.parametrize(
    ("approver_name", "decision", "signer", "expected"),
    [
        ("alice", "restore", "alice", (True, "alice chose to restore")),
        ("bob", "leave", "bob", (False, "bob chose to leave it")),
        ("bob", "restore", "alice", None),  # forged
        ("mallory", "restore", "mallory", None),  # unlisted: asked again
        (" alice", "restore", "alice", None),  # the restore form's name is not stripped
        ("Alice", "restore", "alice", None),
    ],
)
def test_only_a_listed_approvers_signed_answer_decides_a_restore(
    keys: Keys,
    approver_name: str,
    decision: str,
    signer: str,
    expected: tuple[bool, str] | None,
) -> None:
    q = question(keys, server="web-1")
    signature = keys.sign(signer, q.message(decision, approver_name.strip()))
    form = RestoreForm(approver=approver_name, decision=decision, signature=signature, comment="c")
    answer = restore_answer(form, list(q.approvers), check_answer(form, q.approvers, q.message))
    if expected is None:
        assert answer is None
    else:
        assert answer is not None and answer.restore is expected[0]
        assert answer.detail.startswith(expected[1]) and "ssh-signature SHA256:" in answer.detail


def test_an_approval_signature_cannot_answer_the_restore_question(keys: Keys) -> None:
    approval, restore = question(keys), question(keys, server="web-1")
    signature = keys.sign("alice", approval.message("approve", "alice"))
    form = RestoreForm(approver="alice", decision="restore", signature=signature)
    assert not check_answer(form, restore.approvers, restore.message).ok


# --- texts ---------------------------------------------------------------------------------


def test_the_approval_text_shows_staging_the_plan_what_to_sign_and_answers_that_did_not_count(
    keys: Keys,
) -> None:
    staging = [
        Verification(server="stg-1", phase="staging", passed=True),
        Verification(server="stg-2", phase="staging", passed=False, failures=("tcp:80",)),
        Verification(server="web-1", phase="production", passed=True),
    ]
    q = question(keys, carol_key=False)
    text = approval_description(
        client="ACME",
        change_ref="CHG-1",
        staging_summary=staging_summary(staging),
        production_plan=production_plan_text(plan(STG, host("web-1", "production"))),
        tally=tally_of(2, ("mallory", "approve"), ("alice", "approve")),
        approvers=q.approvers,
        deadline=AT,
        question=q,
    )
    assert "## Approve production maintenance for ACME — CHG-1" in text
    assert "Approvals needed: 2 (received 1)." in text
    assert "No ssh_key in the inventory, so their answers cannot count: carol." in text
    assert "- stg-1: passed\n- stg-2: FAILED\n" in text
    assert "web-1: passed" not in text
    assert "- web-1: no change" in text
    assert f"Plan digest: `{DIGEST}`" in text
    assert f"alice, approve:\n```\n{q.message('approve', 'alice')}\n```" in text
    assert f"bob, reject:\n```\n{q.message('reject', 'bob')}\n```" in text
    assert "carol, approve" not in text
    assert "ssh-keygen -Y sign -n caretaker-approval -f ~/.ssh/id_ed25519 message.txt" in text
    assert f"python -m deployments.approve {q.flow_run_id} --approver NAME" in text
    assert "- mallory: 'mallory' is not a listed approver" in text
    assert staging_summary([]) == "- no staging server in scope"


def test_the_request_published_for_scripts_has_each_message_to_sign(keys: Keys) -> None:
    q = question(keys, carol_key=False)
    request = q.request()
    assert request["plan_digest"] == DIGEST and request["change_ref"] == "CHG-1"
    assert request["approvers"] == ["alice", "bob"]
    assert request["messages"]["bob"]["reject"] == q.message("reject", "bob")
    assert question(keys, server="web-1").request()["decisions"] == ["restore", "leave"]
    assert request_key("approval-3") == "approval-request"
    assert request_key("restore-web-1-2") == "restore-web-1-request"


def test_the_restore_question_names_the_server_the_failure_and_the_approvers() -> None:
    text = restore_question("web-1", "CHG-1", "verification failed: tcp:80", LISTED)
    assert text.startswith("## web-1 failed during CHG-1\n\nverification failed: tcp:80\n\n")
    assert text.endswith("Listed approvers: alice, bob, carol.")


# --- the ask-loop, with a scripted pause and clock ----------------------------------------


class Script:
    """A scripted pause: each call advances the clock and returns the next answer.

    An answer is given when it is read, unless ``given`` says when the server stored it
    (a run read by a worker later than the answer was given)."""

    def __init__(
        self,
        answers: list[tuple[float, RunInput]],
        start: datetime = AT,
        given: dict[int, datetime | None] | None = None,
    ) -> None:
        self.answers: Iterator[tuple[float, RunInput]] = iter(answers)
        self.clock = start
        self.keys: list[str] = []
        self.timeouts: list[int] = []
        self.forms: list[type[RunInput]] = []
        self.given = dict(given or {})

    def now(self) -> datetime:
        return self.clock

    def given_at(self, answer: RunInput) -> datetime | None:
        return self.given.get(id(answer))

    def __call__(self, form: type[FormT], timeout_s: int, poll_s: float, key: str) -> FormT:
        self.keys.append(key)
        self.timeouts.append(timeout_s)
        self.forms.append(form)
        waited, answer = next(self.answers)
        self.clock += timedelta(seconds=waited)
        self.given.setdefault(id(answer), self.clock)
        return cast(FormT, answer)


def run_ask(script: Script, deadline_s: float, settle: list[RunInput]) -> bool:
    def take(answer: RunInput, at: datetime) -> bool:
        settle.append(answer)
        return getattr(answer, "approver", "") == "alice"

    return ask(
        lambda: ApprovalForm,
        take,
        flow_run_id=str(uuid4()),
        deadline=AT + timedelta(seconds=deadline_s),
        key="approval",
        form_name="approval",
        poll_s=1,
        pause=script,
        now=script.now,
        given_at=script.given_at,
    )


def form(name: str) -> ApprovalForm:
    return ApprovalForm(approver=name, decision="approve", signature="s")


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
        ([(1800, form("mallory")), (1799, form("bob")), (1, form(TIMEOUT_APPROVER))], False, 3,
         ["mallory", "bob"]),
        # an answer given at (or after) the deadline is not taken, whoever gave it
        ([(1800, form("mallory")), (1800, form("alice"))], False, 2, ["mallory"]),
        ([(5400, form("alice"))], False, 1, []),
    ],
)  # fmt: skip
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
    assert script.timeouts[0] == 3600 + WAIT_GRACE_S


def test_the_ask_loop_does_not_pause_after_the_deadline() -> None:
    script = Script([])
    assert run_ask(script, 0, []) is False
    assert script.keys == []


# --- the approval wait and the restore question, end to end through the loop ------------------


def approve_run(
    keys: Keys, script: Script, required: int
) -> tuple[ApprovalTally | None, list[int], list[tuple[str, dict[str, Any]]]]:
    seen: list[int] = []
    published: list[tuple[str, dict[str, Any]]] = []
    tally = wait_for_approval(
        question(keys),
        client_name="ACME",
        required=required,
        deadline=AT + timedelta(hours=24),
        staging_text="- stg-1: passed",
        production_text="- web-1: no change",
        tz=UTC,
        on_answer=lambda t: seen.append(len(t.answers)),
        poll_s=1,
        pause=script,
        now=script.now,
        publish=lambda key, request, _run: published.append((key, request)),
        given_at=script.given_at,
    )
    return tally, seen, published


Answer = tuple[str, str, str | None, float]  # name, decision, signer (None: unsigned), after


def signed_answers(keys: Keys, answers: list[Answer]) -> list[tuple[float, RunInput]]:
    q = question(keys)
    out: list[tuple[float, RunInput]] = []
    for name, decision, signer, after_s in answers:
        signature = keys.sign(signer, q.message(decision, name)) if signer else "none"
        out.append((after_s, ApprovalForm(approver=name, decision=decision, signature=signature)))
    return out


@pytest.mark.parametrize(
    ("required", "answers", "verdict", "rounds"),
    [
        (1, [("alice", "approve", "alice", 60)], "approved", 1),
        (1, [("alice", "approve", "mallory", 60), ("alice", "approve", "alice", 60)],
         "approved", 2),
        (1, [("mallory", "approve", "mallory", 60), ("alice", "reject", "alice", 60)],
         "rejected", 2),
        (1, [("bob", "reject", None, 60), ("alice", "approve", "alice", 60)], "approved", 2),
        (2, [("alice", "approve", "alice", 60), ("alice", "approve", "alice", 60),
             ("bob", "approve", "bob", 60)], "approved", 3),
        (2, [("alice", "approve", "alice", 60), ("bob", "approve", "alice", 60)], None, 2),
        (2, [("alice", "approve", "alice", 60), ("bob", "reject", "bob", 60)], "rejected", 2),
        (2, [("alice", "approve", "alice", 60), (TIMEOUT_APPROVER, "reject", None, 86400)],
         None, 2),
        (1, [("mallory", "approve", "mallory", 86400)], None, 1),  # the last answer came too late
    ],
)  # fmt: skip
def test_the_approval_wait_ends_approved_rejected_or_at_the_deadline(
    keys: Keys, required: int, answers: list[Answer], verdict: str | None, rounds: int
) -> None:
    script = Script([*signed_answers(keys, answers), (86400, form(TIMEOUT_APPROVER))])
    tally, seen, published = approve_run(keys, script, required)
    assert (tally.verdict if tally else None) == verdict
    assert script.keys[:rounds] == [f"approval-{i}" for i in range(1, rounds + 1)]
    # every answer but the watchdog's at the deadline is recorded as it arrives
    assert seen == list(range(1, len(seen) + 1))
    # the request is published once, before the first pause
    assert [key for key, _ in published] == ["approval-request"]
    # the form has no default decision: Submit alone approves nothing
    assert "decision" in script.forms[0].model_json_schema()["required"]


@pytest.mark.parametrize(
    ("stored_after_s", "recorded_after_s"),
    [
        (10, 10),  # stored 50 s before the run read it (a suspended run picked up late)
        (None, 60),  # no server time (not a run input): when it was read
    ],
)
def test_an_answer_is_recorded_at_the_time_the_server_stored_it(
    keys: Keys, stored_after_s: float | None, recorded_after_s: float
) -> None:
    answers = signed_answers(keys, [("alice", "approve", "alice", 60)])
    given: dict[int, datetime | None] = (
        {}
        if stored_after_s is None
        else {id(answers[0][1]): AT + timedelta(seconds=stored_after_s)}
    )
    tally, _, _ = approve_run(keys, Script(answers, given=given), 1)
    assert tally is not None and tally.verdict == "approved"
    assert [a.at for a in tally.answers] == [AT + timedelta(seconds=recorded_after_s)]


def test_the_restore_question_is_answered_by_a_listed_approvers_signature_or_left_at_the_deadline(
    keys: Keys,
) -> None:
    q = question(keys, server="web-1")
    forged = RestoreForm(
        approver="bob",
        decision="restore",
        signature=keys.sign("alice", q.message("restore", "bob")),
    )
    unlisted = RestoreForm(
        approver="mallory",
        decision="restore",
        signature=keys.sign("mallory", q.message("restore", "mallory")),
    )
    good = RestoreForm(
        approver="bob",
        decision="leave",
        signature=keys.sign("bob", q.message("leave", "bob")),
        comment="mine",
    )
    cases: list[tuple[list[tuple[float, RunInput]], bool | None, list[str]]] = [
        ([(5, forged), (5, unlisted), (5, good)], False, ["bob", "mallory"]),
        ([(86400, RestoreForm(**TIMEOUT_ANSWERS_RESTORE))], None, []),
    ]
    for answers, restore, ignored in cases:
        script = Script(answers)
        names: list[str] = []
        published: list[str] = []
        got = ask_restore(
            q,
            why="verification failed",
            timeout=timedelta(days=1),
            on_ignored=lambda name, _why, names=names: names.append(name),
            poll_s=1,
            pause=script,
            now=script.now,
            publish=lambda key, _r, _i, published=published: published.append(key),
        )
        if restore is None:
            assert got == RestoreAnswer(False, "no decision within 1 day, 0:00:00")
        else:
            assert got.restore is restore and got.detail.startswith("bob chose to leave it")
        assert names == ignored
        assert script.keys[0] == "restore-web-1-1"
        assert published == ["restore-web-1-request"]


TIMEOUT_ANSWERS_RESTORE: dict[str, Any] = {
    "decision": "leave",
    "approver": TIMEOUT_APPROVER,
    "signature": "none",
}


# --- a wait across the executions of a suspended run --------------------------------------


DAY = timedelta(days=1)
W = Wait(digest="sha256:a", deadline=AT + DAY, answers_before=2, first_round=1)


@pytest.mark.parametrize(
    ("existing", "digest", "now", "recorded", "expected", "new"),
    [
        # a first wait: the timeout from now, round 1, after the answers already recorded
        (None, "sha256:a", AT, 2,
         Wait(digest="sha256:a", deadline=AT + DAY, answers_before=2), True),
        # run again once answered: the same wait, whatever the clock says now
        (W, "sha256:a", AT + timedelta(hours=5), 4, W, False),
        # run again past the deadline with another plan: still the wait that timed out
        (W, "sha256:b", AT + DAY, 3, W, False),
        # the plan changed while it waited: a new wait, its rounds after the old one's
        # (answers_before 2, 1 answer recorded -> rounds 1, 2 used: the new one starts at 3)
        (W, "sha256:b", AT + timedelta(hours=1), 3,
         Wait(digest="sha256:b", deadline=AT + timedelta(hours=1) + DAY, answers_before=3,
              first_round=3), True),
    ],
)  # fmt: skip
def test_a_wait_is_continued_when_the_run_is_run_again_and_begun_again_for_a_new_plan(
    existing: Wait | None, digest: str, now: datetime, recorded: int, expected: Wait, new: bool
) -> None:
    assert next_wait(existing, digest, now, DAY, recorded) == (expected, new)


def ask_late(
    script: Script, first_round: int, settle: Callable[[RunInput, datetime], bool]
) -> bool:
    """The loop of a run executed again an hour past its deadline, rounds 1-3 answered."""
    return ask(
        lambda: ApprovalForm,
        settle,
        flow_run_id=str(uuid4()),
        deadline=AT + timedelta(hours=1),
        key="approval",
        form_name="approval",
        poll_s=1,
        pause=script,
        now=script.now,
        first_round=first_round,
        answered={"approval-1", "approval-2", "approval-3"},
        given_at=script.given_at,
    )


@pytest.mark.parametrize(
    ("given", "counts"),
    [
        (AT + timedelta(minutes=59), True),  # given in time, read an hour late (queued)
        (AT + timedelta(hours=1), False),  # given at the deadline
        (AT + timedelta(hours=1, minutes=1), False),  # given before any sweep ended it
        (None, False),  # when it was given is unknown: its read time (late) counts
    ],
)
def test_a_resumed_ask_loop_takes_the_answer_of_its_round_only_if_given_before_the_deadline(
    given: datetime | None, counts: bool
) -> None:
    # Run again after its deadline, round 3 was answered (Prefect keeps its key): it is read,
    # and it counts only if the server stored it before the deadline.
    alice = form("alice")
    script = Script([(0, alice)], start=AT + timedelta(hours=2))
    script.given[id(alice)] = given
    got: list[RunInput] = []
    assert ask_late(script, 3, lambda a, at: got.append(a) is None) is counts
    assert script.keys == ["approval-3"] and len(got) == int(counts)
    # the round after it was never asked: past the deadline nothing more is asked
    script = Script([], start=AT + timedelta(hours=2))
    assert ask_late(script, 4, lambda a, at: False) is False
    assert script.keys == []


D = AT + timedelta(hours=1)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("approver", "given", "read", "timing"),
    [
        ("alice", D - SECOND, D - SECOND, "in-time"),
        ("alice", D - SECOND, D + timedelta(hours=3), "in-time"),  # a worker picked it up late
        ("alice", D, D, "late"),  # at the deadline is not before it
        ("alice", D + SECOND, D + SECOND, "late"),  # between the deadline and the sweep
        ("alice", None, D - SECOND, "in-time"),  # unknown: read before the deadline
        ("alice", None, D, "late"),  # unknown: never counted on a guess
        (" alice ", D + SECOND, D + SECOND, "late"),
        # the deadline's own answer ends the wait once read at the deadline
        (TIMEOUT_APPROVER, D + SECOND, D + SECOND, "timeout"),
        (TIMEOUT_APPROVER, D - SECOND, D, "timeout"),  # stored a moment early, read at it
        # typed by someone before the deadline: an unlisted answer, not the timeout
        (TIMEOUT_APPROVER, D - SECOND, D - SECOND, "in-time"),
        (f" {TIMEOUT_APPROVER}", D - SECOND, D - SECOND, "in-time"),
    ],
)
def test_an_answer_counts_only_if_the_server_stored_it_before_the_deadline(
    approver: str, given: datetime | None, read: datetime, timing: str
) -> None:
    assert answer_timing(approver, given, read, D) == timing


def test_an_answer_not_from_a_run_input_has_no_server_time() -> None:
    assert answer_given_at(form("alice")) is None


def test_a_resumed_approval_wait_keeps_its_recorded_answers_and_asks_the_next_round(
    keys: Keys,
) -> None:
    # Execution 1 recorded mallory's answer (not counted) in round 1 and was suspended at
    # round 2; run again, round 2's answer is alice's: approved, nothing published again.
    (mallory,) = signed_answers(keys, [("mallory", "approve", "mallory", 0)])
    first = Script([mallory, (86400, form(TIMEOUT_APPROVER))])
    tally, _, _ = approve_run(keys, first, 1)
    assert tally is None and first.keys[0] == "approval-1"
    script = Script(signed_answers(keys, [("alice", "approve", "alice", 60)]))
    published: list[str] = []
    seen: list[int] = []
    q = question(keys)
    recorded = count_answer(
        ApprovalTally(required=1),
        cast(ApprovalForm, mallory[1]),
        LISTED,
        AT,
        check_answer(cast(ApprovalForm, mallory[1]), q.approvers, q.message),
        q.digest,
    ).answers
    tally = wait_for_approval(
        q,
        client_name="ACME",
        required=1,
        deadline=AT + timedelta(hours=24),
        staging_text="",
        production_text="",
        tz=UTC,
        on_answer=lambda t: seen.append(len(t.answers)),
        poll_s=1,
        pause=script,
        now=script.now,
        publish=lambda key, _r, _i: published.append(key),
        resumed=True,
        recorded=recorded,
        answered={"approval-1", "approval-2"},
    )
    assert tally is not None and tally.verdict == "approved"
    assert [a.approver for a in tally.answers] == ["mallory", "alice"]
    assert script.keys == ["approval-2"] and published == [] and seen == [2]
    # recorded answers that already decide it: nothing is asked at all
    again = Script([])
    decided = wait_for_approval(
        q,
        client_name="ACME",
        required=1,
        deadline=AT,
        staging_text="",
        production_text="",
        tz=UTC,
        on_answer=lambda t: None,
        poll_s=1,
        pause=again,
        now=again.now,
        publish=lambda key, _r, _i: published.append(key),
        resumed=True,
        recorded=tally.answers,
    )
    assert decided == tally and again.keys == [] and published == []


@pytest.mark.parametrize(
    ("wait", "now", "expired"),
    [
        (None, AT, False),  # no wait of ours: another flow's pause, never answered by us
        (W, AT, False),
        (W, AT + DAY - timedelta(seconds=1), False),
        (W, AT + DAY, True),
    ],
)
def test_a_suspended_wait_is_ended_only_past_its_deadline(
    wait: Wait | None, now: datetime, expired: bool
) -> None:
    assert wait_expired(wait, now) is expired


def test_the_form_a_pause_key_asks() -> None:
    assert form_of("approval-3") == "approval"
    assert form_of("restore-h04-1") == "restore"
