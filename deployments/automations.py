"""caretaker's Prefect automations as code: dead maintenance runs, and servers down.

**Dead maintenance runs** (:func:`zombie_run_automation`). A maintenance run holds its
client's run lock (``history/lock.py``) for its whole length; if its worker is killed
(SIGKILL, an evicted container, a lost machine) the run stays Running (or Paused) in
Prefect forever, and a lock never fails open, so the client could never be maintained
again. Maintenance runs send a heartbeat every ``HEARTBEAT_FREQUENCY_S`` seconds (set in
the deployments' job variables, ``deployments/generate.py``); this automation marks a
``server-maintenance`` run Crashed when no event of it arrives within ``ZOMBIE_AFTER``
of its last heartbeat (or its last move into Running or Paused), Prefect's "Detect Zombie
Flows" pattern (a proactive trigger on ``prefect.flow-run.heartbeat``). Crashed is
final, so the next run takes the lock over and records the takeover. The bound is
generous on purpose: 10 minutes is more than three heartbeats even at Prefect's own
default frequency (180 s), so a live run that did not get our setting (a direct call,
serve mode) is never taken for dead; runs with heartbeats turned off must not be
watched (a Running run would be taken for dead after 10 silent minutes)::

    python -m deployments.automations --zombie-runs

**Servers down** (:func:`server_down_automation`). The ``health-check`` flow emits
``caretaker.server.down`` once a server has failed ``CONFIRM_AFTER`` (2) consecutive
checks, and ``caretaker.server.up`` when it passes again (``flows/health_check.py``).
This module creates an automation that reacts to the down event with a message through
a Prefect notification block (Slack, Teams, email, webhook: any ``NotificationBlock``)::

    python -m deployments.automations --block caretaker-demo-webhook [--client acme]

Running either again replaces the automation of the same name (it is looked up by name
and deleted first), so they can live in a deploy script. See docs/health-check.md and
docs/deployments.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from prefect.automations import (
    Automation,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    SendNotification,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from core.settings import telemetry_off
from deployments.generate import HEARTBEAT_FREQUENCY_S, MAINTENANCE_FLOW

__all__ = [
    "ALIVE_EVENTS",
    "DOWN_BODY",
    "DOWN_SUBJECT",
    "HEARTBEAT_FREQUENCY_S",
    "SERVER_DOWN_AUTOMATION",
    "ZOMBIE_AFTER",
    "ZOMBIE_RUN_AUTOMATION",
    "create_server_down_automation",
    "create_zombie_run_automation",
    "main",
    "server_down_automation",
    "zombie_run_automation",
]

SERVER_DOWN_AUTOMATION = "caretaker-server-down"
ZOMBIE_RUN_AUTOMATION = "caretaker-zombie-maintenance-runs"

#: A maintenance run with no event this long after its last heartbeat is dead.
ZOMBIE_AFTER = timedelta(minutes=10)
#: Events after which a live run's process sends more: its heartbeat, and the states it
#: runs in (a Suspended run has no process and is not watched).
ALIVE_EVENTS = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Running",
    "prefect.flow-run.Paused",
)


def zombie_run_automation(
    within: timedelta = ZOMBIE_AFTER,
    flow_name: str = MAINTENANCE_FLOW,
    name: str = ZOMBIE_RUN_AUTOMATION,
) -> Automation:
    """The automation (not yet saved): a run of ``flow_name`` gone silent is marked Crashed.

    After each heartbeat of a run of the flow, and after each move into a state in which
    its process must be alive and sending heartbeats (Running, Paused: the approval waits
    in the process), any event of that run (its next heartbeat, or a state change:
    ``prefect.flow-run.*``) is expected within ``within``; when none comes, the run is set
    Crashed. A final state disarms the wait for good. Arming on those states too, not
    only on heartbeats as Prefect's own example does, matters: a state change right after
    a heartbeat disarms that heartbeat's wait, and a process killed before its next
    heartbeat (measured: killed just after pausing for approval) would then never be
    taken for dead.

    Args:
        within: how long after a heartbeat silence means death; more than a few
            heartbeat intervals (``HEARTBEAT_FREQUENCY_S``, at least 30 s in Prefect).
        flow_name: the flow whose runs are watched (the related ``flow`` resource).
        name: the automation's name.

    Returns:
        An unsaved :class:`prefect.automations.Automation`.
    """
    seconds = int(within.total_seconds())
    return Automation(
        name=name,
        description=(
            f"A {flow_name} run that sent heartbeats and then nothing for {seconds} s is"
            " marked Crashed, so its client's run lock can be taken over (caretaker)."
        ),
        trigger=EventTrigger(
            after=set(ALIVE_EVENTS),
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"No heartbeat for {seconds} s: the run's process is gone (caretaker"
                    " zombie-run automation)."
                ),
            )
        ],
    )


def create_zombie_run_automation(within: timedelta = ZOMBIE_AFTER) -> UUID:
    """Create (or replace) the zombie-run automation on the current Prefect API.

    Args:
        within: how long after a heartbeat silence means death.

    Returns:
        The automation's id.
    """
    return _replace(zombie_run_automation(within))


def _replace(automation: Automation) -> UUID:
    """Save ``automation``, deleting any automation of the same name first."""
    with get_client(sync_client=True) as api:
        for old in api.read_automations_by_name(automation.name):
            api.delete_automation(old.id)
    created = automation.create()
    assert isinstance(created, Automation) and created.id is not None
    return created.id


#: Jinja templates Prefect renders with the triggering event.
DOWN_SUBJECT = "[caretaker] {{ event.resource['prefect.resource.name'] }} is DOWN"
DOWN_BODY = (
    "{{ event.resource['prefect.resource.name'] }} failed {{ event.payload.checks }} "
    "consecutive health checks.\n"
    "Down since: {{ event.payload.since }}\n"
    "First error: {{ event.payload.error }}\n"
    "Resource: {{ event.resource.id }}"
)


def server_down_automation(
    block_document_id: UUID, client: str | None = None, name: str = SERVER_DOWN_AUTOMATION
) -> Automation:
    """The automation (not yet saved): on ``caretaker.server.down``, notify.

    Args:
        block_document_id: the notification block document to send through.
        client: only this client's servers; None: every client.
        name: the automation's name (a client's name is appended when given).

    Returns:
        An unsaved :class:`prefect.automations.Automation`.
    """
    pattern = f"caretaker.server.{client}.*" if client else "caretaker.server.*"
    return Automation(
        name=f"{name}-{client}" if client else name,
        description="A server failed 2 consecutive health checks (caretaker health-check flow).",
        trigger=EventTrigger(
            expect={"caretaker.server.down"},
            match={"prefect.resource.id": pattern},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id, subject=DOWN_SUBJECT, body=DOWN_BODY
            )
        ],
    )


def _block_document_id(block: str) -> UUID:
    """The id of a notification block named ``name`` or ``<type slug>/<name>``."""
    from tasks.notify import load_notification_block

    loaded = load_notification_block(block)
    document_id = loaded._block_document_id
    if document_id is None:
        raise ValueError(f"notification block {block!r} has no saved document")
    return document_id


def create_server_down_automation(block: str, client: str | None = None) -> UUID:
    """Create (or replace) the server-down automation on the current Prefect API.

    Args:
        block: the notification block's name (as the inventory writes it).
        client: only this client's servers; None: every client.

    Returns:
        The automation's id.
    """
    return _replace(server_down_automation(_block_document_id(block), client))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.automations [--zombie-runs] [--block NAME [--client SLUG]]``."""
    telemetry_off()
    parser = argparse.ArgumentParser(prog="python -m deployments.automations")
    parser.add_argument(
        "--zombie-runs",
        action="store_true",
        help="mark maintenance runs that stopped sending heartbeats Crashed",
    )
    parser.add_argument("--block", default=None, help="server-down notices: notification block")
    parser.add_argument("--client", default=None, help="server-down notices: only this client")
    args = parser.parse_args(argv)
    if not args.zombie_runs and args.block is None:
        parser.error("give --zombie-runs, --block NAME, or both")
    if args.zombie_runs:
        print(f"automation {ZOMBIE_RUN_AUTOMATION} saved: {create_zombie_run_automation()}")
    if args.block is not None:
        automation_id = create_server_down_automation(args.block, args.client)
        print(f"automation {SERVER_DOWN_AUTOMATION} saved: {automation_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
