"""A worker killed with SIGKILL during production batch 2, then a rerun of the change.

The first run is the flow in a process of its own against the test Prefect API, on the
sandbox estate (h01 staging; h02, h03 batch 1; h04, h05 batch 2). It is approved (one
signed answer), patches batch 1, snapshots batch 2 and starts patching it: h05 is patched,
h04 waits for its dpkg lock, held by another process. Then the worker's whole process
group is killed with SIGKILL. Prefect's zombie-run automation would mark the dead run
Crashed after its heartbeats stop (test_crash_safety.py shows that on a real server); here
the test sets that state through the API as the automation does, which releases the run
lock. The rerun with the same change ref continues the change: one record, no second
snapshot of batch 1, batch 1 not patched again, batch 2 finished, no approval asked again,
and every production host patched and verified. With a newer version published between
the crash and the rerun, the rerun asks again and says why. Last, the same-package-set
rule on real hosts: production planned a version staging was not verified with is
refused before anyone is asked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from sandbox import faults
from sandbox.estate import Estate
from sandbox.repo import PackageSpec
from tests.conftest import ssh
from tests.integration.maintenance_world import (
    APPROVE,
    CHILD,
    Approver,
    agent,
    eventually,
    run,
    write_client,
)

pytestmark = pytest.mark.integration

SLUG = "rerunco"
REF = "CHG-RERUN-1"
PRODUCTION = ("h02", "h03", "h04", "h05")


def the_record(slug: str = SLUG, ref: str = REF) -> Any:
    from history.store import open_store

    with open_store() as store:
        return store.change_record(slug, ref)


def batch_2_snapshotted(slug: str, ref: str) -> bool | None:
    record = the_record(slug, ref)
    if record is None:
        return None
    hosts = {g.detail.split(":")[0] for g in record.gates if g.gate == "snapshot" and g.batch == 2}
    return True if hosts == {"h04", "h05"} else None


def snapshots_of(estate: Estate, host: str, ref: str = REF) -> list[str]:
    """The sandbox snapshots of ``host`` made for the change ``ref`` (ids)."""
    found = []
    for meta in (estate.dir / "snapshots").glob("sbx-*/snapshot.json"):
        data = json.loads(meta.read_text())
        if (data.get("server"), data.get("change_ref")) == (host, ref):
            found.append(meta.parent.name)
    return found


def upgrades(estate: Estate, host: str) -> int:
    """How many times dpkg upgraded caretaker-agent to 1.1 on ``host`` (its dpkg log)."""
    log = ssh(estate, host, "cat /var/log/dpkg.log").stdout
    return sum(1 for line in log.splitlines() if " upgrade caretaker-agent:all 1.0 1.1" in line)


def kill_during_batch_2(
    estate: Estate, repo_root: Path, tmp_path: Path, slug: str, ref: str
) -> str:
    """Run the change in a worker process and SIGKILL its process group while batch 2 runs
    (h05 patched, h04's apt waiting for its held dpkg lock); mark the dead run Crashed as
    the zombie-run automation does. Returns the dead run's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Crashed

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        # apt waits for h04's held lock instead of failing: batch 2 stays running.
        "CARETAKER_DPKG_LOCK_TIMEOUT_S": "120",
    }
    output = tmp_path / "killed-run.log"
    faults.hold_dpkg_lock(estate, "h04")
    try:
        with output.open("w") as sink:
            worker = subprocess.Popen(
                [sys.executable, "-c", CHILD, slug, ref],
                cwd=repo_root,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            eventually(
                lambda: batch_2_snapshotted(slug, ref),
                150,
                f"batch 2 to start:\n{output.read_text()[-3000:]}",
            )
            # h05 is patched; h04's apt waits for the lock: batch 2 is running.
            eventually(lambda: True if agent(estate, "h05") == "1.1" else None, 60, "h05")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
        dead = the_record(slug, ref)
        assert dead.outcome is None  # the dead run never finished its record
        # The apt-get the dead worker left waiting on h04 goes with its session; make sure
        # before the lock is let go, so nothing of the dead run changes h04 afterwards.
        ssh(estate, "h04", "pkill -KILL -x apt-get; pkill -KILL -x dpkg; true")
    finally:
        faults.release_dpkg_lock(estate, "h04")
    assert agent(estate, "h04") == "1.0"
    assert {h: agent(estate, h) for h in ("h02", "h03", "h05")} == dict.fromkeys(
        ("h02", "h03", "h05"), "1.1"
    )
    # What Prefect's zombie-run automation does once the heartbeats stop: mark it Crashed.
    with get_client(sync_client=True) as api:
        api.set_flow_run_state(
            UUID(dead.flow_run_id), Crashed(message="No heartbeat (set by the test)"), force=True
        )
        assert api.read_flow_run(UUID(dead.flow_run_id)).state.type == StateType.CRASHED
    return str(dead.flow_run_id)


@pytest.mark.fault
def test_a_worker_killed_during_batch_2_is_continued_by_a_rerun_without_repeating_work(
    world: dict[str, Any], estate: Estate, repo_root: Path, tmp_path: Path
) -> None:
    write_client(world["dir"], estate, SLUG)
    before = {host: upgrades(estate, host) for host in PRODUCTION}
    approver = Approver(SLUG, [APPROVE, APPROVE])  # a second answer stays unused
    approver.start()
    dead_run = kill_during_batch_2(estate, repo_root, tmp_path, SLUG, REF)
    batch_1_snapshots = {h: snapshots_of(estate, h) for h in ("h02", "h03")}
    assert all(len(ids) == 1 for ids in batch_1_snapshots.values()), batch_1_snapshots

    try:
        state, record, _ = run(SLUG, [], change_ref=REF)
    finally:
        approver.stop.set()
        approver.join(5)

    # One change, one record, continued by the rerun.
    from tests.integration.maintenance_world import stored_records

    records = [r for r in stored_records(SLUG) if r.change_ref == REF]
    assert len(records) == 1 and records[0].flow_run_id == record.flow_run_id != dead_run
    assert state.is_completed(), record.outcome_detail
    assert record.outcome.value == "completed"
    resume = [(g.decision, g.detail) for g in record.gates if g.gate == "resume"]
    decisions = ["continued", "skipped", "mid-patch", "approval-carried-over"]
    assert [d for d, _ in resume] == decisions, resume
    assert f"flow run {dead_run}, which never ended" in resume[0][1]
    assert resume[1][1].startswith("h02, h03: patched and verified earlier in this change")
    # h05 was patched by the dead run before it could record it: the record names it
    assert resume[2][1].startswith("h05: approved, no longer in apt's plan")
    assert resume[2][1].count("caretaker-agent 1.0 → 1.1") == 1
    # Both runs checked production's versions against staging's before approval.
    assert [g.decision for g in record.gates if g.gate == "package-set"] == ["same", "same"]
    # No new approval: the approver saw one pause, the dead run's.
    assert approver.paused_seen == 1 and len(approver.answers) == 1
    assert [a.approver for a in record.approvals if a.counted] == ["alice"]
    # Batch 1: no second snapshot, not patched twice (one upgrade in each dpkg log).
    assert {h: snapshots_of(estate, h) for h in ("h02", "h03")} == batch_1_snapshots
    snapshot_gates = sorted(
        (g.detail.split(":")[0], g.batch) for g in record.gates if g.gate == "snapshot"
    )
    assert [x for x in snapshot_gates if x[0] in ("h02", "h03")] == [("h02", 1), ("h03", 1)]
    assert {h: upgrades(estate, h) - before[h] for h in PRODUCTION} == dict.fromkeys(PRODUCTION, 1)
    # Batch 2 finished; every production host patched and verified.
    assert {h: agent(estate, h) for h in PRODUCTION} == dict.fromkeys(PRODUCTION, "1.1")
    assert {k: v.value for k, v in record.production_results.items()} == dict.fromkeys(
        PRODUCTION, "patched"
    )
    for host in PRODUCTION:
        last = [v for v in record.verifications if v.server == host and v.phase == "production"]
        assert last and last[-1].passed, host


@pytest.mark.fault
def test_a_rerun_whose_plan_changed_since_the_approval_asks_again_and_says_why(
    world: dict[str, Any], estate: Estate, repo_root: Path, tmp_path: Path
) -> None:
    slug, ref = "rerunnew", "CHG-RERUN-2"
    write_client(world["dir"], estate, slug)
    approver = Approver(slug, [APPROVE, APPROVE])
    approver.start()
    dead_run = kill_during_batch_2(estate, repo_root, tmp_path, slug, ref)
    # Between the crash and the rerun the repository gets a newer version.
    estate.publish(PackageSpec(name="caretaker-agent", version="1.2"))
    try:
        state, record, _ = run(slug, [], change_ref=ref)
    finally:
        approver.stop.set()
        approver.join(5)

    assert state.is_completed(), record.outcome_detail
    resume = {g.decision: g.detail for g in record.gates if g.gate == "resume"}
    assert f"flow run {dead_run}, which never ended" in resume["continued"]
    why = resume["approval-needed"]
    assert why.startswith("the production plan changed since sha256:")
    assert "h04: caretaker-agent 1.0 → 1.2" in why and "h05: caretaker-agent 1.1 → 1.2" in why
    assert why.endswith("a new approval is needed")
    # Asked again (a second pause, a second counted answer for the new digest).
    assert approver.paused_seen == 2
    digests = [a.plan_digest for a in record.approvals if a.counted]
    assert len(digests) == 2 and digests[0] != digests[1]
    # Staging went to 1.2 first, so production's 1.2 is staging's package set.
    assert agent(estate, "h01") == "1.2"
    assert [g.decision for g in record.gates if g.gate == "package-set"] == ["same", "same"]
    # Batch 1 (done in the change) is not touched again; batch 2 gets the approved 1.2.
    assert {h: agent(estate, h) for h in PRODUCTION} == {
        "h02": "1.1", "h03": "1.1", "h04": "1.2", "h05": "1.2",
    }  # fmt: skip
    assert {k: v.value for k, v in record.production_results.items()} == dict.fromkeys(
        PRODUCTION, "patched"
    )


PIN = "/etc/apt/preferences.d/caretaker-test-pin"


def test_production_is_refused_a_version_staging_was_not_verified_with(
    world: dict[str, Any], estate: Estate
) -> None:
    slug, ref = "pinned", "CHG-PINNED"
    write_client(world["dir"], estate, slug)
    # The repository has 1.1 and 1.2; staging is pinned to 1.1, production would get 1.2.
    estate.publish(PackageSpec(name="caretaker-agent", version="1.2"))
    ssh(
        estate,
        "h01",
        f"printf 'Package: caretaker-agent\\nPin: version 1.1\\nPin-Priority: 1001\\n' > {PIN}",
    )
    try:
        state, record, approver = run(slug, [APPROVE], change_ref=ref)
    finally:
        ssh(estate, "h01", f"rm -f {PIN}")

    assert state.is_failed()
    assert record.outcome.value == "refused"
    assert record.outcome_detail.startswith(
        "refused: production gets only package versions that staging was patched to and"
        " verified with in this change"
    )
    assert "h02: caretaker-agent 1.0 → 1.2 (staging was verified with 1.1)" in (
        record.outcome_detail
    )
    assert [g.decision for g in record.gates if g.gate == "package-set"] == ["refused"]
    # Refused before approval: nobody was asked, production untouched.
    assert approver.paused_seen == 0 and record.approvals == []
    assert agent(estate, "h01") == "1.1"
    assert {h: agent(estate, h) for h in PRODUCTION} == dict.fromkeys(PRODUCTION, "1.0")
    assert {k: v.value for k, v in record.production_results.items()} == dict.fromkeys(
        PRODUCTION, "untouched"
    )
