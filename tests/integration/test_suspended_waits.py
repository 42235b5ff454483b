"""A deployment's run waits for approval suspended: no process, no SSH session, lock kept.

The run is a deployment's, executed by a worker (``prefect.serve`` in a process group of
its own, against the session's Prefect API) on the sandbox estate (h01 staging, h02
production). At the approval it is Suspended: its flow process is gone (only the worker
is left in the group), and the worker is then killed with SIGKILL. While it waits, the
client's run lock still holds (another run of the client is refused before it touches
anything). A proof signed for another plan is taken by Prefect's form (the fields are
there) and refused by the run, executed again by a NEW worker: it records why and is
Suspended again, production untouched.
Then ``python -m deployments.approve`` signs alice's approval. Production (h02, where
caretaker-agent 1.1's postinst fails; ``on_failure: ask``) fails, and the run waits again,
Suspended, on the restore question: an unsigned ``restore`` is refused by yet another
execution (Suspended again; a typed name is all it has), a signed one
(``deployments.approve --restore``) restores h02 from the snapshot taken before its batch.
Staging was snapshotted, patched and announced once, h02 patched once, one record holds
the two answers and the restore.

And the deadline nobody's process keeps: the health-check round's sweep answers a
Suspended wait past its deadline as the timeout approver (the run is scheduled again), and
leaves a wait before its deadline alone. An answer given after the deadline but before any
sweep (or timer) ended the wait does not count, suspended or paused in process, however
soon it is read; one given in time counts however late a worker reads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from sandbox.estate import Estate
from sandbox.repo import PackageSpec
from sandbox.system import process_group_members
from tests.conftest import ssh
from tests.integration.maintenance_world import (
    APPROVE,
    agent,
    eventually,
    private_key,
    signed_answer,
    write_client,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLUG = "suspendco"
REF = "CHG-SUSPEND-1"
DEPLOYMENT = "suspend-test"
# A marker on one host that makes caretaker-agent 1.1's postinst fail there only.
BROKEN = "/etc/caretaker-fault-broken-postinst"
AGENT_1_1 = PackageSpec(
    name="caretaker-agent",
    version="1.1",
    postinst_script=f"if [ -e {BROKEN} ]; then echo 'postinst failed (fault)' >&2; exit 1; fi",
)

#: A worker: the flow served as a deployment; each flow run is a subprocess of it.
WORKER = """
import sys
from prefect import serve
from flows.server_maintenance import server_maintenance
serve(server_maintenance.to_deployment(name=sys.argv[1]))
"""


@contextmanager
def worker() -> Iterator[subprocess.Popen[bytes]]:
    """A worker in a process group of its own; SIGKILLed with its whole group at the end."""
    from prefect.settings import PREFECT_API_URL

    env = dict(
        os.environ,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, DEPLOYMENT],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def suspended_at(run_id: UUID, pause_key: str) -> Any:
    """The run, once it is Suspended at ``pause_key``; else None."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    state = run.state
    if state and state.name == "Suspended" and state.state_details.pause_key == pause_key:
        return run
    return None


def the_record() -> Any:
    from history.store import open_store

    with open_store() as store:
        return store.change_record(SLUG, REF)


def request(run_id: UUID) -> dict[str, Any]:
    from prefect.input.actions import read_flow_run_input

    answer = read_flow_run_input("approval-request", flow_run_id=run_id)
    assert isinstance(answer, dict)
    return answer


def test_suspended_waits_hold_no_process_and_a_new_worker_goes_on_once_signed(
    world: dict[str, Any], estate: Estate
) -> None:
    write_client(world["dir"], estate, SLUG)
    path = world["dir"] / f"{SLUG}.yaml"
    path.write_text(path.read_text().replace("on_failure: restore", "on_failure: ask"))
    staging, production = estate.spec.hosts[0].name, estate.spec.hosts[1].name
    estate.publish(AGENT_1_1)
    ssh(estate, production, f"touch {BROKEN}")
    try:
        suspend_approve_and_restore(world, estate, staging, production)
    finally:
        ssh(estate, production, f"rm -f {BROKEN}")


def suspend_approve_and_restore(
    world: dict[str, Any], estate: Estate, staging: str, production: str
) -> None:
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    from deployments import approve
    from flows.server_maintenance import server_maintenance

    with worker() as first:
        eventually(
            lambda: _deployment_exists(f"server-maintenance/{DEPLOYMENT}"), 60, "the deployment"
        )
        run = run_deployment(
            f"server-maintenance/{DEPLOYMENT}",
            parameters={"client": SLUG, "change_ref": REF, "scope": f"{staging},{production}"},
            timeout=0,
        )
        eventually(lambda: suspended_at(run.id, "approval-1"), 90, "suspended at approval-1")
        # The flow process exited: the worker alone is left in its group.
        eventually(
            lambda: True if process_group_members(first.pid) == [first.pid] else None,
            15,
            "no flow process left beside the worker",
        )
    assert process_group_members(first.pid) == []  # the worker, killed with SIGKILL

    # While it waits, nobody holds a process, yet the lock holds: another run is refused.
    other = server_maintenance(client=SLUG, change_ref="CHG-SUSPEND-OTHER", return_state=True)
    assert other.is_failed() and "MaintenanceInProgress" in (other.message or "")

    # A proof signed for another plan: Prefect takes the form, the run (on a new worker)
    # does not.
    forged = signed_answer(request(run.id), {**APPROVE, "signed_plan": "sha256:" + "0" * 64})
    resume_flow_run(run.id, run_input=forged)
    with worker():
        eventually(lambda: suspended_at(run.id, "approval-2"), 90, "suspended again")
        assert agent(estate, production) == "1.0"  # production untouched
        # The script path signs alice's answer with her key and resumes the run.
        argv = [str(run.id), "--approver", "alice", "--key", str(private_key("alice"))]
        assert approve.main([*argv, "--ticket", "CAB-7"]) == 0
        # h02 fails in production: the run waits on the restore question, suspended too.
        question = f"restore-{production}"
        eventually(lambda: suspended_at(run.id, f"{question}-1"), 90, "the restore question")
        # A typed name without a proof: refused the same way.
        unsigned = {"decision": "restore", "approver": "alice", "signature": "x", "comment": ""}
        resume_flow_run(run.id, run_input=unsigned)
        eventually(lambda: suspended_at(run.id, f"{question}-2"), 90, "asked again")
        assert the_record().rollbacks == []  # nothing restored on an unsigned answer
        assert approve.main([*argv, "--restore"]) == 0
        final = eventually(lambda: final_state(run.id), 90, "the run to end")
    record = the_record()
    assert record.outcome.value == "halted", final.message  # the budget: 0 failures
    assert (agent(estate, staging), agent(estate, production)) == ("1.1", "1.0")
    (rollback,) = record.rollbacks
    assert rollback.server == production and rollback.restored_ok and rollback.verified_ok
    assert [c.server for c in record.package_changes].count(production) <= 1
    assert [(a.approver, a.counted) for a in record.approvals] == [
        ("alice", False),
        ("alice", True),
    ]
    assert "not proven" in (record.approvals[0].proof or "")
    assert record.approvals[1].ticket == "CAB-7"
    # Staging was snapshotted, patched and announced once, however often the run ran.
    assert [c.server for c in record.package_changes].count(staging) == 1
    assert len([s for s in record.snapshots if s.server == staging]) == 1
    assert len([g for g in record.gates if g.decision == "resumed"]) == 4
    subjects = [str(m) for m in world["inbox"].received]
    # one approval request and one pre-change notice, not one per execution
    assert sum("Approval needed" in s for s in subjects) == 1, subjects
    assert sum(f"maintenance {REF} starts" in s for s in subjects) == 1, subjects


def final_state(run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state if state is not None and state.is_final() else None


def _deployment_exists(name: str) -> bool | None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    return True


def test_a_suspended_wait_past_its_deadline_is_answered_as_the_timeout_and_no_other(
    prefect_api: None,
) -> None:
    """The health-check round's sweep (``end_expired_waits``) against the real API: runs
    Suspended at ``approval-1`` as ``suspend_flow_run`` leaves them (the form's schema in
    the run's inputs, the wait kept as ``approval-wait``): one past its deadline, one
    before it; one past it whose answer was written through the API without a resume (so
    Prefect's resume would fail on its existing response); one whose kept wait is broken.
    The broken one is named and left; it keeps none of the others waiting."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.input.actions import create_flow_run_input, read_flow_run_input
    from prefect.input.run_input import keyset_from_base_key
    from prefect.states import Suspended

    from core.errors import CaretakerError
    from tasks.approval import (
        TIMEOUT_ANSWERS,
        ApprovalForm,
        Wait,
        end_expired_waits,
        publish_request,
        wait_key,
    )

    now = datetime.now(UTC)
    forged = {"decision": "approve", "approver": "alice", "signature": "s", "comment": ""}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("server-maintenance")
        deployment_id = client.create_deployment(flow_id, f"sweep-{uuid4().hex[:8]}")

        def suspended(deadline: datetime, *, broken: bool = False) -> UUID:
            run = client.create_flow_run_from_deployment(deployment_id)
            state = Suspended(timeout_seconds=7200, pause_key="approval-1")
            keyset = keyset_from_base_key("suspended-approval-1")
            state.state_details.run_input_keyset = keyset
            client.set_flow_run_state(run.id, state, force=True)
            ApprovalForm.save(keyset, flow_run_id=run.id)
            wait = (
                {"deadline": "not a time"}
                if broken
                else Wait(digest="sha256:" + "1" * 64, deadline=deadline).model_dump(mode="json")
            )
            publish_request(wait_key("approval"), wait, str(run.id))
            return run.id

        late, waiting = suspended(now - timedelta(minutes=1)), suspended(now + timedelta(hours=1))
        answered = suspended(now - timedelta(minutes=1))
        create_flow_run_input("suspended-approval-1-response", forged, flow_run_id=answered)
        broken = suspended(now - timedelta(minutes=1), broken=True)
        with pytest.raises(CaretakerError, match=f"not ended: .*{broken} \\(ValidationError"):
            end_expired_waits.fn()
        states = {r: client.read_flow_run(r).state for r in (late, waiting, answered, broken)}
    assert states[late] is not None and states[late].is_scheduled()  # a worker runs it again
    answer = read_flow_run_input("suspended-approval-1-response", flow_run_id=late)
    assert answer == TIMEOUT_ANSWERS["approval"]
    assert states[waiting] is not None and states[waiting].name == "Suspended"
    # scheduled again as Prefect's resume would; the answer it reads is the one written
    # (given after the deadline: the run ends as the timeout, decided by the wait loop)
    assert states[answered] is not None and states[answered].is_scheduled()
    assert read_flow_run_input("suspended-approval-1-response", flow_run_id=answered) == forged
    assert states[broken] is not None and states[broken].name == "Suspended"
    # the next round again: the broken one is still named, nothing else is touched
    try:
        with pytest.raises(CaretakerError, match=f"not ended: .*{broken} \\(ValidationError"):
            end_expired_waits.fn()
    finally:  # later tests' sweeps share this server: the broken wait is not theirs
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(broken, Cancelled(), force=True)


def test_an_answer_given_after_the_deadline_never_counts_and_one_given_before_it_always_does(
    prefect_api: None,
) -> None:
    """Runs waiting at ``approval-1`` as Prefect leaves them (Suspended by a deployment's
    run, Paused by a direct call's), answered through the API now: the server stores each
    answer (its ``created`` is the clock that counts). Read back by the wait loop, as the
    run executed again reads it: an answer stored after the deadline ends the wait as the
    timeout, one stored before it counts even when it is read an hour after it."""
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_base_key
    from prefect.states import Paused, Suspended

    from tasks.approval import ApprovalForm

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("server-maintenance")
        deployment_id = client.create_deployment(flow_id, f"late-{uuid4().hex[:8]}")

        def waiting(kind: Callable[..., Any]) -> tuple[UUID, str]:
            run = client.create_flow_run_from_deployment(deployment_id)
            state = kind(timeout_seconds=7200, pause_key="approval-1")
            base = f"{state.name.lower()}-approval-1"
            state.state_details.run_input_keyset = keyset_from_base_key(base)
            client.set_flow_run_state(run.id, state, force=True)
            ApprovalForm.save(keyset_from_base_key(base), flow_run_id=run.id)
            return run.id, state.name.lower()

        runs = [waiting(Suspended), waiting(Paused)]
        answer = {"decision": "approve", "approver": "alice", "signature": "s", "comment": ""}
        for run_id, _ in runs:
            resume_flow_run(run_id, run_input=dict(answer))

    for run_id, state_name in runs:
        late_and_timely_answers(run_id, state_name)


def late_and_timely_answers(run_id: UUID, state_name: str) -> None:
    """The answer stored for ``run_id``, read by the wait loop with two deadlines."""
    from datetime import datetime, timedelta

    from prefect.input.run_input import keyset_from_base_key

    from tasks.approval import ApprovalForm, answer_given_at, ask

    def read_answer(form: type[ApprovalForm], timeout_s: int, poll_s: float, key: str) -> Any:
        # what suspend_flow_run / pause_flow_run hand back for an answered key
        return form.load(keyset_from_base_key(f"{state_name}-{key}"), flow_run_id=run_id)

    given = answer_given_at(read_answer(ApprovalForm, 0, 0, "approval-1"))
    assert given is not None
    settled: list[str] = []

    def wait(deadline: datetime, read_at: datetime) -> bool:
        return ask(
            lambda: ApprovalForm,
            lambda a, _at: settled.append(a.approver) is None,
            flow_run_id=str(run_id),
            deadline=deadline,
            key="approval",
            form_name="approval",
            poll_s=1,
            pause=read_answer,
            now=lambda: read_at,
            answered={"approval-1"},
        )

    # the deadline passed a moment before the answer was stored; no sweep ran yet
    assert wait(given - timedelta(seconds=1), given + timedelta(seconds=1)) is False
    assert settled == []
    # stored a moment before the deadline, read by a worker an hour after it
    deadline = given + timedelta(seconds=1)
    assert wait(deadline, deadline + timedelta(hours=1)) is True
    assert settled == ["alice"]
