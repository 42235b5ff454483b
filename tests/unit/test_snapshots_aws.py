"""The aws provider against scripted EC2 answers (botocore Stubber): the states moto never shows.

moto completes every snapshot at once, so pending, error and encrypted-copy paths are
driven here with recorded-shape answers; the moto integration tests cover the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.stub import ANY, Stubber

from core.errors import SnapshotError
from inventory import AwsProvider, Server, SnapshotPolicy
from tasks.snapshots.aws.endpoint import TRANSPORT, Ec2, translate
from tasks.snapshots.aws.provider import AwsSnapshotProvider
from tasks.snapshots.base import Pace, SnapshotRecord, TransientSnapshotError

REGION = "eu-west-1"
WHEN = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)


@pytest.fixture()
def web() -> Server:
    return Server.model_validate(
        {
            "name": "acme-web-1",
            "role": "production",
            "address": "10.213.1.12",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {
                "type": "aws",
                "region": REGION,
                "instance_name": "acme-web-1",
                "credentials_block": "acme-aws",
            },
        }
    )


@pytest.fixture()
def ec2() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "ec2", region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def provider(
    client: Any, server: Server, policy: SnapshotPolicy | None = None
) -> AwsSnapshotProvider:
    clock = FakeClock()
    assert isinstance(server.provider, AwsProvider)
    return AwsSnapshotProvider(
        client,
        server.provider,
        policy or SnapshotPolicy(),
        pace=Pace(sleep=clock.sleep, clock=clock),
    )


def volume_set(*ids: str) -> SnapshotRecord:
    return SnapshotRecord(
        provider="aws",
        kind="volumes",
        server="acme-web-1",
        client="acme",
        change_ref="CHG-1",
        ids=list(ids),
        state="pending",
        created_at=WHEN,
    )


def snapshot(
    sid: str, state: str = "completed", encrypted: bool = True, **extra: Any
) -> dict[str, Any]:
    return {
        "SnapshotId": sid,
        "State": state,
        "Encrypted": encrypted,
        "VolumeSize": 8,
        "StartTime": WHEN,
        "Progress": "100%" if state == "completed" else "40%",
        **extra,
    }


INSTANCE = {
    "InstanceId": "i-0abc12345def67890",
    "RootDeviceName": "/dev/xvda",
    "Placement": {"AvailabilityZone": "eu-west-1a"},
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-root"}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": "vol-data"}},
    ],
}


# --------------------------------------------------------------------------- waiting


def test_a_snapshot_stuck_pending_times_out_with_its_ids_and_last_state(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    for _ in range(5):  # looks at t=0, 3, 6, 9 and 10 (the bound)
        stubber.add_response(
            "describe_snapshots",
            {"Snapshots": [snapshot("snap-1", "pending"), snapshot("snap-2")]},
            {"SnapshotIds": ["snap-1", "snap-2"]},
        )
    with pytest.raises(SnapshotError) as failure:
        provider(client, web).wait(volume_set("snap-1", "snap-2"), timeout_s=10, poll_s=3)
    message = str(failure.value)
    assert "not done after 10s" in message
    assert "snap-1=pending 40%" in message and "snap-2=completed" in message


def test_a_snapshot_in_error_state_fails_at_once_with_the_providers_message(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    stubber.add_response(
        "describe_snapshots",
        {
            "Snapshots": [
                snapshot("snap-1", "error", StateMessage="volume read failed"),
                snapshot("snap-2", "pending"),
            ]
        },
        {"SnapshotIds": ["snap-1", "snap-2"]},
    )
    with pytest.raises(
        SnapshotError, match="snapshot snap-1 is in state error: volume read failed"
    ):
        provider(client, web).wait(volume_set("snap-1", "snap-2"), timeout_s=600, poll_s=5)


def test_a_failed_image_fails_at_once(ec2: tuple[Any, Stubber], web: Server) -> None:
    client, stubber = ec2
    stubber.add_response(
        "describe_images",
        {
            "Images": [
                {
                    "ImageId": "ami-1",
                    "State": "failed",
                    "StateReason": {"Code": "x", "Message": "snapshot failed"},
                }
            ]
        },
        {"ImageIds": ["ami-1"]},
    )
    record = volume_set("ami-1").model_copy(update={"kind": "ami"})
    with pytest.raises(SnapshotError, match="image ami-1 is in state failed: snapshot failed"):
        provider(client, web, SnapshotPolicy(mode="ami")).wait(record, timeout_s=600, poll_s=5)


def test_pending_then_completed_returns_a_completed_record(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    for state in ("pending", "completed"):
        stubber.add_response(
            "describe_snapshots",
            {"Snapshots": [snapshot("snap-1", state)]},
            {"SnapshotIds": ["snap-1"]},
        )
    stubber.add_response(
        "describe_snapshots", {"Snapshots": [snapshot("snap-1")]}, {"SnapshotIds": ["snap-1"]}
    )
    done = provider(client, web).wait(volume_set("snap-1"), timeout_s=60, poll_s=5)
    assert done.state == "completed" and done.encrypted is True


# --------------------------------------------------------------------------- encryption


def _completed_mixed_set(stubber: Stubber) -> None:
    for _ in range(2):  # the wait's look, then the encryption policy's look
        stubber.add_response(
            "describe_snapshots",
            {"Snapshots": [snapshot("snap-root", encrypted=False), snapshot("snap-data")]},
            {"SnapshotIds": ["snap-root", "snap-data"]},
        )


def test_encrypted_copy_copies_each_unencrypted_snapshot_encrypted_and_records_both(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    _completed_mixed_set(stubber)
    stubber.add_response(
        "describe_snapshots",
        {"Snapshots": []},
        {
            "OwnerIds": ["self"],
            "Filters": [{"Name": "tag:caretaker:copy-of", "Values": ["snap-root"]}],
        },
    )
    stubber.add_response(
        "copy_snapshot",
        {"SnapshotId": "snap-copy"},
        {
            "SourceSnapshotId": "snap-root",
            "SourceRegion": REGION,
            "Encrypted": True,
            "Description": ANY,
            "TagSpecifications": ANY,
        },
    )
    for _ in range(2):  # wait for the copy, then check it is encrypted
        stubber.add_response(
            "describe_snapshots",
            {"Snapshots": [snapshot("snap-copy")]},
            {"SnapshotIds": ["snap-copy"]},
        )
    policy = SnapshotPolicy(require_encryption=True, encrypted_copy=True)
    done = provider(client, web, policy).wait(
        volume_set("snap-root", "snap-data"), timeout_s=60, poll_s=5
    )
    assert done.encrypted is False
    assert done.encrypted_copies == {"snap-root": "snap-copy"}
    assert done.protected_by_encryption
    assert done.all_ids == ["snap-root", "snap-data", "snap-copy"]


def test_waiting_again_reuses_the_encrypted_copy_made_before(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    _completed_mixed_set(stubber)
    stubber.add_response(
        "describe_snapshots",
        {
            "Snapshots": [
                snapshot("snap-copy", Tags=[{"Key": "caretaker:copy-of", "Value": "snap-root"}])
            ]
        },
        {
            "OwnerIds": ["self"],
            "Filters": [{"Name": "tag:caretaker:copy-of", "Values": ["snap-root"]}],
        },
    )
    for _ in range(2):
        stubber.add_response(
            "describe_snapshots",
            {"Snapshots": [snapshot("snap-copy")]},
            {"SnapshotIds": ["snap-copy"]},
        )
    done = provider(client, web, SnapshotPolicy(encrypted_copy=True)).wait(
        volume_set("snap-root", "snap-data"), timeout_s=60, poll_s=5
    )
    assert done.encrypted_copies == {"snap-root": "snap-copy"}  # and no copy_snapshot call


def test_a_copy_that_came_out_unencrypted_is_an_error(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    _completed_mixed_set(stubber)
    stubber.add_response("describe_snapshots", {"Snapshots": []}, None)
    stubber.add_response("copy_snapshot", {"SnapshotId": "snap-copy"}, None)
    stubber.add_response("describe_snapshots", {"Snapshots": [snapshot("snap-copy")]}, None)
    stubber.add_response(
        "describe_snapshots", {"Snapshots": [snapshot("snap-copy", encrypted=False)]}, None
    )
    with pytest.raises(SnapshotError, match="snap-copy were asked to be encrypted but are not"):
        provider(client, web, SnapshotPolicy(encrypted_copy=True)).wait(
            volume_set("snap-root", "snap-data"), timeout_s=60, poll_s=5
        )


def test_require_encryption_refuses_an_unencrypted_volume_before_taking_anything(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    stubber.add_response("describe_instances", {"Reservations": [{"Instances": [INSTANCE]}]}, None)
    stubber.add_response(
        "describe_volumes",
        {
            "Volumes": [
                {"VolumeId": "vol-root", "Encrypted": False},
                {"VolumeId": "vol-data", "Encrypted": True},
            ]
        },
        {"VolumeIds": ["vol-data", "vol-root"]},
    )
    with pytest.raises(SnapshotError, match=r"volume\(s\) vol-root .* are not encrypted"):
        provider(client, web, SnapshotPolicy(require_encryption=True)).create(web, "acme", "CHG-1")
    # No create_snapshots answer was scripted: the fixture proves none was asked for.


# --------------------------------------------------------------------------- finding the instance


def test_an_instance_name_that_matches_nothing_is_an_error_naming_the_tag(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    stubber.add_response("describe_instances", {"Reservations": []}, None)
    with pytest.raises(SnapshotError, match="no EC2 instance with tag Name=acme-web-1"):
        provider(client, web).create(web, "acme", "CHG-1")


def test_an_instance_name_that_matches_two_instances_is_an_error_naming_both(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    twin = {**INSTANCE, "InstanceId": "i-0fff12345def67890"}
    stubber.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [INSTANCE]}, {"Instances": [twin]}]},
        None,
    )
    with pytest.raises(
        SnapshotError,
        match=r"2 EC2 instances with tag Name=acme-web-1"
        r" \(i-0abc12345def67890, i-0fff12345def67890\)",
    ):
        provider(client, web).create(web, "acme", "CHG-1")


# --------------------------------------------------------------------------- deleting


def test_a_snapshot_backing_a_registered_image_is_not_deleted(
    ec2: tuple[Any, Stubber], web: Server
) -> None:
    client, stubber = ec2
    stubber.add_response(
        "describe_images",
        {
            "Images": [
                {
                    "ImageId": "ami-golden",
                    "BlockDeviceMappings": [
                        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-root"}}
                    ],
                }
            ]
        },
        {"Owners": ["self"]},
    )
    record = volume_set("snap-root", "snap-data").model_copy(update={"state": "completed"})
    with pytest.raises(SnapshotError, match="snap-root back registered image ami-golden"):
        provider(client, web).delete(record)
    # No delete_snapshot answer was scripted: nothing was deleted.


# --------------------------------------------------------------------------- error mapping


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DescribeSnapshots")


class Raising:
    """An EC2 client whose every call raises one exception."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            raise self.exc

        return call


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("UnauthorizedOperation", 403), SnapshotError),
        (_client_error("InvalidSnapshot.NotFound", 400), SnapshotError),
        (_client_error("RequestLimitExceeded", 503), TransientSnapshotError),
        (_client_error("InternalError", 500), TransientSnapshotError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientSnapshotError),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientSnapshotError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientSnapshotError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TransientSnapshotError),
        (NoCredentialsError(), SnapshotError),
        (ParamValidationError(report="bad"), SnapshotError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
def test_every_botocore_failure_becomes_a_snapshot_error_chained_to_its_cause(
    exc: Exception, expected: type[SnapshotError], web: Server
) -> None:
    with pytest.raises(SnapshotError) as failure:
        provider(Raising(exc), web).wait(volume_set("snap-1"), timeout_s=0, poll_s=1)
    assert type(failure.value) is expected
    assert failure.value.__cause__ is exc
    assert "aws eu-west-1: describe_snapshots" in str(failure.value)


def _every_botocore_exception() -> list[type[BaseException]]:
    return sorted(
        (
            value
            for value in vars(botocore.exceptions).values()
            if isinstance(value, type) and issubclass(value, BaseException)
        ),
        key=lambda cls: cls.__name__,
    )


# Not raised by an EC2 call: warnings, and service-model errors raised when a client is built.
NOT_RAISED_BY_A_CALL = {
    "ImminentRemovalWarning",
    "MissingServiceIdError",
    "UndefinedModelAttributeError",
    "UnsupportedTLSVersionWarning",
}


@pytest.mark.parametrize("cls", _every_botocore_exception(), ids=lambda cls: cls.__name__)
def test_the_mapping_covers_every_exception_botocore_defines(cls: type[BaseException]) -> None:
    if cls.__name__ in NOT_RAISED_BY_A_CALL:
        assert not issubclass(cls, (BotoCoreError, ClientError))
        return
    assert issubclass(cls, (BotoCoreError, ClientError)), f"{cls.__name__} would escape"
    exc = cls.__new__(cls)  # every class has its own constructor: set only the message
    Exception.__init__(exc, f"{cls.__name__} happened")
    if isinstance(exc, ClientError):
        exc.response = {"Error": {"Code": "Boom", "Message": "boom"}}
    with pytest.raises(SnapshotError) as failure:
        Ec2(Raising(exc), REGION, Pace()).call("describe_snapshots")
    assert failure.value.__cause__ is exc
    transient = isinstance(exc, TRANSPORT)
    assert isinstance(failure.value, TransientSnapshotError) is transient
    assert translate(exc, REGION, "describe_snapshots").args == failure.value.args
