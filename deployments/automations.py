"""Example Prefect automation as code: a server down for 2 checks sends a notification.

The ``health-check`` flow emits ``caretaker.server.down`` once a server has failed
``CONFIRM_AFTER`` (2) consecutive checks, and ``caretaker.server.up`` when it passes
again (``flows/health_check.py``). This module creates an automation that reacts to the
down event with a message through a Prefect notification block (Slack, Teams, email,
webhook: any ``NotificationBlock``)::

    python -m deployments.automations --block caretaker-demo-webhook [--client acme]

Running it again replaces the automation of the same name (it is looked up by name and
deleted first), so it can live in a deploy script. See docs/health-check.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.client.orchestration import get_client

from core.settings import telemetry_off

__all__ = [
    "DOWN_BODY",
    "DOWN_SUBJECT",
    "SERVER_DOWN_AUTOMATION",
    "create_server_down_automation",
    "main",
    "server_down_automation",
]

SERVER_DOWN_AUTOMATION = "caretaker-server-down"

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
    automation = server_down_automation(_block_document_id(block), client)
    with get_client(sync_client=True) as api:
        for old in api.read_automations_by_name(automation.name):
            api.delete_automation(old.id)
    created = automation.create()
    assert isinstance(created, Automation) and created.id is not None
    return created.id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.automations --block NAME [--client SLUG]``."""
    telemetry_off()
    parser = argparse.ArgumentParser(prog="python -m deployments.automations")
    parser.add_argument("--block", required=True, help="notification block name")
    parser.add_argument("--client", default=None, help="only this client's servers")
    args = parser.parse_args(argv)
    automation_id = create_server_down_automation(args.block, args.client)
    print(f"automation {SERVER_DOWN_AUTOMATION} saved: {automation_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
