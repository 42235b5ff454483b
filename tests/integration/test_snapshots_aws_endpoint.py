"""The aws provider against a real EC2 endpoint: moto in server mode (sandbox/moto.py).

Each test reads what it did back from the endpoint: snapshots with their tags, images,
volumes attached to the instance, instances and security groups left (or not).
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from core.errors import SnapshotError
from inventory import AwsProvider, Server, SnapshotPolicy
from sandbox import moto
from sandbox.estate import AwsInstanceSpec, Estate, EstateSpec
from tasks.snapshots.aws.provider import AwsSnapshotProvider
from tasks.snapshots.base import Pace
from tasks.snapshots.tasks import apply_retention, take_snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("moto.server") is None, reason="moto[server] is not installed"
    ),
]

REGION = "eu-west-1"
HOSTS = ("snap-web-1", "snap-web-2", "snap-web-3", "snap-web-4", "snap-ami-1", "snap-ami-2")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto on a free loopback port, knowing one instance (root + data volume) per name."""
    spec = EstateSpec(
        name="test-snap-aws",
        net=72,
        hosts=[],
        aws=[AwsInstanceSpec(name=h, region=REGION, client="acme") for h in HOSTS],
    )
    estate = Estate(spec)
    estate.dir.mkdir(parents=True, exist_ok=True)
    try:
        yield moto.start(estate)
    finally:
        estate.down(purge=True)


@pytest.fixture(scope="module")
def ec2(endpoint: str) -> Any:
    return moto.client(endpoint, REGION)


def server(name: str) -> Server:
    return Server.model_validate(
        {
            "name": name,
            "role": "production",
            "address": "10.213.72.11",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {
                "type": "aws",
                "region": REGION,
                "instance_name": name,
                "credentials_block": "caretaker-sandbox-aws",
            },
        }
    )


def provider(ec2: Any, name: str, policy: SnapshotPolicy | None = None) -> AwsSnapshotProvider:
    entry = server(name).provider
    assert isinstance(entry, AwsProvider)
    return AwsSnapshotProvider(
        ec2, entry, policy or SnapshotPolicy(), client="acme", pace=Pace(poll_s=0.05)
    )


def change() -> str:
    return f"CHG-{uuid.uuid4().hex[:6]}"


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def instance(ec2: Any, name: str) -> dict[str, Any]:
    found = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": [name]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
        ]
    )
    (only,) = [i for r in found["Reservations"] for i in r["Instances"]]
    return only


def test_a_volume_set_snapshots_every_volume_with_the_caretaker_tags(ec2: Any) -> None:
    ref = change()
    aws = provider(ec2, "snap-web-1")
    record = aws.wait(aws.create(server("snap-web-1"), "acme", ref), timeout_s=30, poll_s=0.05)
    snapshots = ec2.describe_snapshots(SnapshotIds=record.ids)["Snapshots"]
    attached = {
        m["Ebs"]["VolumeId"]: m["DeviceName"]
        for m in instance(ec2, "snap-web-1")["BlockDeviceMappings"]
    }
    assert {s["VolumeId"] for s in snapshots} == set(attached)  # root and data volume
    for snap in snapshots:
        assert {
            "caretaker:client": "acme",
            "caretaker:change-ref": ref,
            "caretaker:server": "snap-web-1",
            "caretaker:managed": "true",
        }.items() <= tags(snap).items()
        assert tags(snap)["caretaker:device"] == attached[snap["VolumeId"]]
    assert record.state == "completed" and record.kind == "volumes"
    assert record.encrypted is False  # the root volume is not encrypted, the data volume is


def test_a_rerun_with_the_same_change_ref_takes_no_second_snapshot(ec2: Any) -> None:
    ref = change()
    aws = provider(ec2, "snap-web-1")
    first = take_snapshot(aws, server("snap-web-1"), "acme", ref)
    again = take_snapshot(aws, server("snap-web-1"), "acme", ref)
    assert again.reused and sorted(again.ids) == sorted(first.ids)
    tagged = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:caretaker:change-ref", "Values": [ref]}]
    )["Snapshots"]
    assert len(tagged) == len(first.ids)


def test_ami_mode_registers_an_image_and_tags_its_snapshots(ec2: Any) -> None:
    ref = change()
    aws = provider(ec2, "snap-ami-1", SnapshotPolicy(mode="ami"))
    record = aws.wait(aws.create(server("snap-ami-1"), "acme", ref), timeout_s=30, poll_s=0.05)
    image_id, *snapshot_ids = record.ids
    (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert image["State"] == "available"
    assert tags(image)["caretaker:change-ref"] == ref
    assert image["SourceInstanceId"] == instance(ec2, "snap-ami-1")["InstanceId"]
    assert snapshot_ids
    for snap in ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]:
        assert tags(snap)["caretaker:server"] == "snap-ami-1"


def test_required_encryption_with_an_unencrypted_root_volume_takes_nothing(ec2: Any) -> None:
    ref = change()
    aws = provider(ec2, "snap-web-2", SnapshotPolicy(require_encryption=True))
    with pytest.raises(SnapshotError, match="not encrypted"):
        aws.create(server("snap-web-2"), "acme", ref)
    tagged = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:caretaker:change-ref", "Values": [ref]}]
    )["Snapshots"]
    assert tagged == []


def test_a_restore_swaps_in_volumes_made_from_the_snapshots_and_keeps_the_old_ones(
    ec2: Any,
) -> None:
    aws = provider(ec2, "snap-web-3")
    record = aws.wait(aws.create(server("snap-web-3"), "acme", change()), timeout_s=30, poll_s=0.05)
    before = {
        m["DeviceName"]: m["Ebs"]["VolumeId"]
        for m in instance(ec2, "snap-web-3")["BlockDeviceMappings"]
    }

    aws.restore(server("snap-web-3"), record)

    after_instance = instance(ec2, "snap-web-3")
    after = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in after_instance["BlockDeviceMappings"]}
    assert after_instance["State"]["Name"] == "running"
    assert after.keys() == before.keys()
    new_volumes = ec2.describe_volumes(VolumeIds=list(after.values()))["Volumes"]
    device_of = {
        s["SnapshotId"]: tags(s)["caretaker:device"]
        for s in ec2.describe_snapshots(SnapshotIds=record.ids)["Snapshots"]
    }
    for volume in new_volumes:
        assert volume["VolumeId"] not in before.values()
        assert device_of[volume["SnapshotId"]] == volume["Attachments"][0]["Device"]
    old_volumes = ec2.describe_volumes(VolumeIds=list(before.values()))["Volumes"]
    assert all(v["State"] == "available" for v in old_volumes)  # detached, not deleted
    assert {tags(v)["caretaker:replaced-by"] for v in old_volumes} == set(after.values())


def _restore_test_leftovers(ec2: Any) -> list[str]:
    found = [
        i["InstanceId"]
        for r in ec2.describe_instances(
            Filters=[{"Name": "tag-key", "Values": ["caretaker:restore-test"]}]
        )["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    found += [
        g["GroupId"]
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith("caretaker-restore-test-")
    ]
    found += [
        i["ImageId"]
        for i in ec2.describe_images(Owners=["self"])["Images"]
        if i["Name"].startswith("caretaker-restore-test-")
    ]
    return found


@pytest.mark.parametrize("mode", ["volumes", "ami"])
def test_a_restore_test_boots_an_isolated_copy_times_it_and_removes_everything(
    ec2: Any, mode: str
) -> None:
    name = "snap-web-4" if mode == "volumes" else "snap-ami-2"
    aws = provider(ec2, name, SnapshotPolicy.model_validate({"mode": mode}))
    record = aws.wait(aws.create(server(name), "acme", change()), timeout_s=30, poll_s=0.05)

    result = aws.restore_test(server(name), record, timeout_s=60)

    assert result.ok, result.detail
    assert result.rto_s is not None and 0 <= result.rto_s < 60
    assert "no ingress, no egress" in result.detail
    assert result.cleaned_up
    assert _restore_test_leftovers(ec2) == []


class ImpairedStatus:
    """Injects a failure: the EC2 endpoint reports every instance's status checks impaired.

    Only the restore test asks for status checks (of its throwaway instance).
    """

    def __init__(self, ec2: Any) -> None:
        self._ec2 = ec2

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ec2, name)

    def describe_instance_status(self, **kwargs: Any) -> Any:
        return {
            "InstanceStatuses": [
                {
                    "InstanceId": instance_id,
                    "InstanceStatus": {"Status": "impaired"},
                    "SystemStatus": {"Status": "ok"},
                }
                for instance_id in kwargs["InstanceIds"]
            ]
        }


def test_a_restore_test_that_fails_still_removes_everything(ec2: Any) -> None:
    entry = server("snap-web-4").provider
    assert isinstance(entry, AwsProvider)
    aws = AwsSnapshotProvider(
        ImpairedStatus(ec2), entry, SnapshotPolicy(), client="acme", pace=Pace(poll_s=0.05)
    )
    record = aws.wait(aws.create(server("snap-web-4"), "acme", change()), timeout_s=30, poll_s=0.05)

    result = aws.restore_test(server("snap-web-4"), record, timeout_s=60)

    assert not result.ok and result.rto_s is None
    assert "status checks failed (instance impaired, system ok)" in result.detail
    assert result.cleaned_up
    assert _restore_test_leftovers(ec2) == []


def test_retention_keeps_the_newest_deletes_older_and_skips_an_image_in_use(ec2: Any) -> None:
    aws = provider(ec2, "snap-ami-2", SnapshotPolicy(mode="ami"))
    web = server("snap-ami-2")
    before = aws.list(web)
    records = []
    for _ in range(4):
        records.append(aws.wait(aws.create(web, "acme", change()), timeout_s=30, poll_s=0.05))
        time.sleep(1.05)  # image creation times have one-second resolution
    # Someone launched an instance from the oldest image: it must survive retention.
    used = ec2.run_instances(ImageId=records[0].ids[0], MinCount=1, MaxCount=1)["Instances"][0]

    result = apply_retention(aws, web, keep=1, protect_ids=set(records[-1].ids))

    remaining = {r.ids[0] for r in aws.list(web)}
    assert records[-1].ids[0] in remaining and records[0].ids[0] in remaining
    assert not {r.ids[0] for r in records[1:3]} & remaining
    assert [s.record.ids[0] for s in result.skipped] == [records[0].ids[0]]
    assert used["InstanceId"] in result.skipped[0].reason
    assert {r.ids[0] for r in result.deleted} == {r.ids[0] for r in before + records[1:3]}
    assert result.ok
    ec2.terminate_instances(InstanceIds=[used["InstanceId"]])


def test_the_prefect_tasks_load_the_aws_block_and_snapshot_once_per_change(
    prefect_api: None, endpoint: str, ec2: Any
) -> None:
    from prefect import flow
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    from tasks.snapshots.tasks import create_snapshot, wait_for_snapshot

    AwsCredentials(
        aws_access_key_id=moto.ACCESS_KEY,
        aws_secret_access_key=SecretStr(moto.SECRET_KEY),
        region_name="us-east-1",  # the inventory's region must win over the block's
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    ).save("caretaker-test-snap-aws", overwrite=True)
    web = server("snap-web-2").model_copy(
        update={
            "provider": AwsProvider(
                type="aws",
                region=REGION,
                instance_name="snap-web-2",
                credentials_block="caretaker-test-snap-aws",
            )
        }
    )
    ref = change()

    @flow
    def snapshot_twice() -> list[Any]:
        first = create_snapshot(web, "acme", ref, SnapshotPolicy())
        again = create_snapshot(web, "acme", ref, SnapshotPolicy())
        return [first, wait_for_snapshot(web, again, SnapshotPolicy(), timeout_s=30, poll_s=0.1)]

    first, done = snapshot_twice()
    assert done.reused and done.state == "completed" and sorted(done.ids) == sorted(first.ids)
    tagged = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:caretaker:change-ref", "Values": [ref]}]
    )["Snapshots"]
    assert len(tagged) == len(first.ids) == 2
