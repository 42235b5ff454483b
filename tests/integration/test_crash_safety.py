"""A maintenance run killed with SIGKILL while it holds its client's run lock, on real parts.

The dead run is a real flow run in its own process (heartbeats on, as the deployments
set them), on the sandbox estate, against a real Prefect server (the test harness,
which runs the triggers service and so the automation); the lock is the history store's.
What is shown is what an operator would see: the next run refused while Prefect still
says the dead run is Paused, then Prefect's zombie-run automation marking it Crashed,
then the next run taking the lock over, and the takeover in the lock's history.

The run is killed right after it paused for approval, before its next heartbeat: the
case in which Prefect's example automation (armed by heartbeats only) never fires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from sandbox.estate import Estate
from tests.integration.maintenance_world import CHILD, eventually, write_client

pytestmark = pytest.mark.integration

SLUG = "crashco"
#: Prefect's heartbeat floor is 30 s; the automation waits a little longer than one. Here
#: the only live run watched goes from Running to Paused (each arms the wait) in well under
#: 30 s, and a heartbeat comes at its start and every 30 s: 5 s over the floor is margin
#: enough for a heartbeat sent late, and each second more is a second this test waits.
HEARTBEAT_S = 30
SILENCE = timedelta(seconds=35)


def flow_run_state(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def lock_holder(client: str) -> str | None:
    from history.store import open_store

    with open_store() as store:
        held = store.run_lock(client)
    return held.holder_flow_run_id if held else None


@pytest.mark.fault
def test_a_killed_runs_lock_holds_until_prefect_marks_it_crashed_then_is_taken_over(
    world: dict[str, Any], estate: Estate, repo_root: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL

    from core.errors import MaintenanceInProgress
    from deployments.automations import ZOMBIE_RUN_AUTOMATION, create_zombie_run_automation
    from flows.server_maintenance import server_maintenance
    from history.store import open_store

    write_client(world["dir"], estate, SLUG)
    create_zombie_run_automation(SILENCE)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
    }
    output = tmp_path / "dead-run.log"
    with output.open("w") as sink:
        dead = subprocess.Popen(
            [sys.executable, "-c", CHILD, SLUG, "CHG-CRASH-1"],
            cwd=repo_root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        # It takes the lock, patches staging and waits for approval (heartbeats going).
        holder = eventually(lambda: lock_holder(SLUG), 60, "the run to take the lock")
        eventually(
            lambda: True if flow_run_state(holder).type == StateType.PAUSED else None,
            120,
            f"the run to wait for approval:\n{output.read_text()[-3000:]}",
        )
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)

        # Right after the kill, Prefect still says Paused: the lock is kept.
        refused = server_maintenance(
            client=SLUG, change_ref="CHG-CRASH-2", scope="staging", return_state=True
        )
        error = refused.result(raise_on_failure=False)
        assert isinstance(error, MaintenanceInProgress), error
        assert error.holder_flow_run_id == holder and "Paused" in str(error.reason)

        # No heartbeat any more: the automation marks the dead run Crashed.
        crashed = eventually(
            lambda: s if (s := flow_run_state(holder)).type == StateType.CRASHED else None,
            SILENCE.total_seconds() + 60,
            "the zombie-run automation to mark the dead run Crashed",
        )
        assert "No heartbeat" in (crashed.message or "")

        # The rerun of the change takes the lock over (staging was patched already).
        rerun = server_maintenance(
            client=SLUG, change_ref="CHG-CRASH-1", scope="staging", return_state=True
        )
        assert not isinstance(rerun.result(raise_on_failure=False), MaintenanceInProgress)
        rerun_id = str(rerun.state_details.flow_run_id)
        with open_store() as store:
            events = [
                (e.event, e.holder_flow_run_id, e.previous_holder) for e in store.lock_events(SLUG)
            ]
            assert store.run_lock(SLUG) is None  # released at the rerun's end
        assert events == [
            ("acquired", holder, None),
            ("taken-over", rerun_id, holder),
            ("released", rerun_id, None),
        ]
    finally:
        if dead.poll() is None:
            dead.kill()
            dead.wait(10)
        with get_client(sync_client=True) as api:
            for automation in api.read_automations_by_name(ZOMBIE_RUN_AUTOMATION):
                api.delete_automation(automation.id)
