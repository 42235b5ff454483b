"""Stakeholder notices: the pure builders, and real sends through Prefect webhook blocks.

The sending tests save ``CustomWebhookNotificationBlock`` documents on a real Prefect API
(the session's test harness) pointing at a loopback receiver, and assert what arrives.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from core.errors import ConfigError
from history.change import (
    Approval,
    ChangeRecord,
    ChangeWindow,
    Finding,
    Outcome,
    PackageChange,
    PlanSummary,
    RestoreTestResult,
    Verification,
)
from inventory import load_client
from sandbox.webhook import WebhookReceiver
from tasks.notify import (
    DEMO_WEBHOOK_BLOCK,
    load_notification_block,
    notice_approval_requested,
    notice_before_change,
    notice_end,
    notify,
    save_demo_webhook,
)

# notify() called outside a flow (as some tests here do) has no flow run to log to.
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted")

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 3, 2, 0, tzinfo=UTC)
WINDOW = ChangeWindow(start=T0, end=T0 + timedelta(hours=4), inside=True)
PLAN = PlanSummary(
    policy="security",
    staging=("acme-stg-1",),
    production=("acme-web-1", "acme-web-2"),
    package_changes=4,
    reboots_expected=("acme-web-1",),
)


def finished_record() -> ChangeRecord:
    return ChangeRecord(
        client="acme",
        change_ref="CHG-7",
        flow_run_id="run-7",
        requester="schedule",
        window=WINDOW,
        package_changes=[
            PackageChange(server="acme-web-1", name="openssl", from_version="1", to_version="2")
        ],
        approvals=[
            Approval(approver="alice", decision="approve", at=T0, counted=True, ticket="CAB-1")
        ],
        restore_test=RestoreTestResult(server="acme-web-1", ok=True, rto_s=120),
        security_findings=[
            Finding(server="acme-web-2", severity="critical", summary="port 6379 open")
        ],
        outcome=Outcome.COMPLETED,
        outcome_detail="deploy token=abc123 rotated",
        started=T0,
        ended=T0 + timedelta(minutes=50),
    )


# ---- builders (pure)


def test_the_notice_before_a_change_names_the_change_window_and_servers() -> None:
    subject, body = notice_before_change(
        "ACME Logistics Ltd", "CHG-7", WINDOW, PLAN, tz="Europe/Paris", run_url="http://ui/run/1"
    )

    assert (
        subject == "[caretaker] ACME Logistics Ltd: maintenance CHG-7 starts 2026-01-03 03:00 CET"
    )
    assert "Window: 2026-01-03 03:00 CET to 2026-01-03 07:00 CET" in body
    assert "(2026-01-03 02:00 UTC to 2026-01-03 06:00 UTC)" in body
    assert "Production servers: acme-web-1, acme-web-2" in body
    assert "Planned package changes: 4 (security updates only)" in body
    assert "Reboots expected: acme-web-1" in body
    assert "Follow the run: http://ui/run/1" in body


def test_the_approval_request_shows_staging_results_approvers_and_where_to_answer() -> None:
    staging = [
        Verification(server="acme-stg-1", phase="staging", passed=True),
        Verification(server="acme-stg-2", phase="staging", passed=False, failures=("tcp:443",)),
    ]

    subject, body = notice_approval_requested(
        "ACME",
        "CHG-7",
        PLAN,
        staging,
        ["alice", "bob"],
        "http://ui/runs/flow-run/abc",
        deadline=T0 + timedelta(hours=24),
    )

    assert subject == "[caretaker] Approval needed: ACME change CHG-7"
    assert "Staging result: FAILED" in body
    assert "  - acme-stg-2: FAILED: tcp:443" in body
    assert "Who may approve: alice, bob (1 approval(s) needed)." in body
    assert "Answer before 2026-01-04 02:00 UTC" in body
    assert body.rstrip().endswith("Approve or reject here: http://ui/runs/flow-run/abc")


def test_the_approval_request_gives_the_plan_digest_and_how_to_sign() -> None:
    _subject, body = notice_approval_requested(
        "ACME",
        "CHG-7",
        PLAN,
        [],
        ["alice", "bob", "carol"],
        "http://ui/runs/flow-run/abc",
        plan_digest="sha256:" + "ab" * 32,
        flow_run_id="abc",
        keyless=["carol"],
    )

    assert "No ssh_key in the inventory, so their answers cannot count: carol." in body
    assert f"Plan digest: sha256:{'ab' * 32}." in body
    assert "python -m deployments.approve abc --approver <name> --key ~/.ssh/id_ed25519" in body


def test_the_end_notice_sums_up_the_record_without_its_secrets() -> None:
    subject, body = notice_end(finished_record(), client_name="ACME")

    assert subject == "[caretaker] ACME: maintenance CHG-7 completed"
    assert "All planned changes were applied and verified." in body
    assert "Packages changed: 1 on 1 server(s) (acme-web-1)" in body
    assert "Approvals: 1 of 1 (alice)" in body
    assert "Restore test: passed on acme-web-1, RTO 120 s" in body
    assert "  - acme-web-2: port 6379 open" in body
    assert "abc123" not in body and "token=***" in body


# ---- sending through Prefect


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


def block_name() -> str:
    return f"test-hook-{secrets.token_hex(3)}"


def test_a_notice_arrives_through_a_webhook_block(
    prefect_api: None, receiver: WebhookReceiver
) -> None:
    name = block_name()
    save_demo_webhook(receiver.url, name=name)
    subject, body = notice_end(finished_record())

    problems = notify([name], subject, body)

    (message,) = receiver.wait_for(1)
    assert problems == []
    assert message == {"subject": subject, "body": body, "source": "caretaker", "block": name}


def test_every_named_block_gets_the_notice(prefect_api: None) -> None:
    with WebhookReceiver() as first, WebhookReceiver() as second:
        names = [block_name(), block_name()]
        save_demo_webhook(first.url, name=names[0])
        save_demo_webhook(second.url, name=names[1])

        problems = notify(names, "subject", "body")

        assert problems == []
        assert first.wait_for(1)[0]["subject"] == "subject"
        assert second.wait_for(1)[0]["body"] == "body"


def test_failing_notices_are_reported_and_the_flow_carries_on(
    prefect_api: None, receiver: WebhookReceiver
) -> None:
    good = block_name()
    save_demo_webhook(receiver.url, name=good)
    with WebhookReceiver(status=500) as broken_endpoint:
        broken = block_name()
        save_demo_webhook(broken_endpoint.url, name=broken)

        @flow(name="notify-test")
        def maintenance() -> list[str]:
            return notify([broken, "no-such-block", good], "subject", "body")

        state = maintenance(return_state=True)
        problems = state.result()
        broken_endpoint.wait_for(1)

    assert state.is_completed()
    assert len(problems) == 2
    assert problems[0].startswith(f"{broken}: HTTPStatusError:") and "500" in problems[0]
    assert "/hook" not in problems[0]  # webhook URLs can be credentials: host only
    assert problems[1].startswith("no-such-block: ConfigError:")
    assert receiver.wait_for(1)[0]["subject"] == "subject"


def test_the_demo_block_has_the_name_the_example_inventory_uses(
    prefect_api: None, receiver: WebhookReceiver
) -> None:
    inventory = load_client(REPO_ROOT / "clients" / "acme.yaml")

    save_demo_webhook(receiver.url)
    block = load_notification_block(inventory.client.notify[0])

    assert inventory.client.notify[0] == DEMO_WEBHOOK_BLOCK
    assert isinstance(block, CustomWebhookNotificationBlock)
    assert block.url == receiver.url


def test_a_block_that_is_not_a_notification_block_is_refused(prefect_api: None) -> None:
    from prefect.blocks.system import Secret

    name = block_name()
    Secret(value="not-a-notifier").save(name)

    with pytest.raises(ConfigError, match="does not exist"):
        load_notification_block(name)
    with pytest.raises(ConfigError, match="not a notification"):
        load_notification_block(f"secret/{name}")
