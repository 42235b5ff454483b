"""Providers' scheduled maintenance: EC2 events read through botocore (Stubber: moto
returns no events), and which of them fall inside a maintenance window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from core.errors import SnapshotError
from tasks.providers import ProviderEvent, event_findings, events_in, parse_instance_events
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.base import Pace

WINDOW = (datetime(2026, 12, 6, 2, tzinfo=UTC), datetime(2026, 12, 6, 6, tzinfo=UTC))


def ec2_client() -> Any:
    return boto3.client(
        "ec2", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y"
    )


def status(instance: str, *events: dict[str, Any]) -> dict[str, Any]:
    return {
        "InstanceId": instance,
        "AvailabilityZone": "eu-west-1a",
        "InstanceState": {"Code": 16, "Name": "running"},
        "Events": list(events),
    }


def test_scheduled_events_are_read_through_botocore_and_finished_ones_left_out() -> None:
    client = ec2_client()
    reboot = {
        "InstanceEventId": "instance-event-0a1b2c3d4e5f6a7b8",
        "Code": "system-reboot",
        "Description": "scheduled reboot",
        "NotBefore": datetime(2026, 12, 6, 3, tzinfo=UTC),
        "NotAfter": datetime(2026, 12, 6, 5, tzinfo=UTC),
    }
    done = {
        "Code": "instance-stop",
        "Description": "[Completed] The instance is running on degraded hardware",
        "NotBefore": datetime(2026, 11, 1, tzinfo=UTC),
    }
    retire = {"Code": "instance-retirement", "NotBefore": datetime(2026, 12, 20, tzinfo=UTC)}
    with Stubber(client) as stub:
        stub.add_response(
            "describe_instance_status",
            {
                "InstanceStatuses": [status("i-0aaa", reboot, done), status("i-0bbb", retire)],
                "NextToken": "page-2",
            },
            {"InstanceIds": ["i-0aaa", "i-0bbb", "i-0ccc"], "IncludeAllInstances": True},
        )
        stub.add_response(
            "describe_instance_status",
            {"InstanceStatuses": [status("i-0ccc"), status("i-0zzz", retire)]},
            {
                "InstanceIds": ["i-0aaa", "i-0bbb", "i-0ccc"],
                "IncludeAllInstances": True,
                "NextToken": "page-2",
            },
        )
        statuses = Ec2(client, "eu-west-1", Pace()).pages(
            "describe_instance_status",
            "InstanceStatuses",
            InstanceIds=["i-0aaa", "i-0bbb", "i-0ccc"],
            IncludeAllInstances=True,
        )
    names = {"i-0aaa": "web-1", "i-0bbb": "web-2", "i-0ccc": "db-1"}
    events = parse_instance_events({"InstanceStatuses": statuses}, names)
    assert [(e.server, e.code, e.event_id) for e in events] == [
        ("web-1", "system-reboot", "instance-event-0a1b2c3d4e5f6a7b8"),
        ("web-2", "instance-retirement", None),
    ]
    assert events[0].line() == (
        "web-1: aws system-reboot 2026-12-06 03:00..2026-12-06 05:00 UTC (scheduled reboot)"
    )


def test_an_ec2_refusal_becomes_a_snapshot_error_at_the_one_boundary() -> None:
    client = ec2_client()
    with Stubber(client) as stub:
        stub.add_client_error("describe_instance_status", "UnauthorizedOperation", "no", 403)
        with pytest.raises(SnapshotError, match="UnauthorizedOperation"):
            Ec2(client, "eu-west-1", Pace()).pages("describe_instance_status", "InstanceStatuses")


def event(before: datetime | None, after: datetime | None) -> ProviderEvent:
    return ProviderEvent(
        server="s", provider="aws", code="system-reboot", not_before=before, not_after=after
    )


H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("before", "after", "inside"),
    [
        (WINDOW[0] + H, WINDOW[0] + 2 * H, True),  # wholly inside
        (WINDOW[0] - 2 * H, WINDOW[0] + H, True),  # starts before, runs into it
        (WINDOW[1] - H, None, True),  # may start inside, no end given
        (WINDOW[1], WINDOW[1] + H, False),  # starts as the window ends
        (WINDOW[0] - 3 * H, WINDOW[0] - H, False),  # over before it starts
        (WINDOW[0] + 10 * H, None, False),  # later
        (None, None, True),  # no dates: cannot rule it out
    ],
)
def test_an_event_that_may_fall_in_the_window_is_kept(
    before: datetime | None, after: datetime | None, inside: bool
) -> None:
    assert bool(events_in([event(before, after)], *WINDOW)) is inside


def test_events_in_the_window_are_warnings_the_approver_sees() -> None:
    (finding,) = event_findings([event(WINDOW[0] + H, None)], "in the maintenance window")
    assert finding.severity == "warning" and finding.kind == "provider-event"
    assert finding.summary.startswith("provider maintenance in the maintenance window: s: aws")
