"""The aws restore test: a throwaway, isolated instance from the snapshot, timed to "status ok".

The instance is launched from the AMI (for a volume set: a temporary AMI registered
from the snapshots) in a new security group with no ingress rule and its default egress
rule revoked, and no public address. It must reach running with both status checks ok
within the bound; the RTO is the time from the start of the test to that. Whatever
happens, the instance is terminated and the group and any temporary AMI deleted;
``cleaned_up`` reports whether that worked.
"""

from __future__ import annotations

import uuid
from typing import Any

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.instances import Instances
from tasks.snapshots.aws.restore import device_map, require_completed
from tasks.snapshots.aws.tags import TAG_RESTORE_TEST, tag_list
from tasks.snapshots.base import (
    TAG_CHANGE_REF,
    RestoreTestResult,
    SnapshotRecord,
    restore_test_result,
)


class RestoreTest:
    """Runs restore tests of one server's snapshots.

    Args:
        instances: Finds the original and waits on the throwaway instance (and holds
            the EC2 boundary).
    """

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self.ec2: Ec2 = instances.ec2

    def run(self, server: Server, record: SnapshotRecord, timeout_s: float) -> RestoreTestResult:
        """Launch, wait for running with status ok (bounded by ``timeout_s``), clean up.

        Returns:
            ok with the RTO in seconds, or ok=False with what failed.
        """
        clock = self.ec2.pace.clock
        started = clock()
        token = uuid.uuid4().hex[:8]
        made: dict[str, str] = {}
        ok, rto, detail = False, None, ""
        try:
            require_completed(record)
            instance = self.instances.of(server)
            if record.kind == "ami":
                image_id = record.ids[0]
            else:
                image_id = self._register_temporary_image(server, record, instance, token)
                made["image"] = image_id
            group_id = self._isolated_group(server, instance, token)
            made["group"] = group_id
            test_id = self._launch(server, record, instance, image_id, group_id)
            made["instance"] = test_id
            remaining = max(0.0, timeout_s - (clock() - started))
            self.instances.wait(test_id, "running", remaining, status_ok=True)
            rto = round(clock() - started, 3)
            ok = True
            detail = (
                f"instance {test_id} from {image_id} reached running with status checks ok"
                f" in {rto:.1f}s (isolated group {group_id}: no ingress, no egress)"
            )
        except SnapshotError as exc:
            detail = f"restore test failed: {exc}"
        finally:
            problems = self._clean_up(made)
        return restore_test_result(
            server, "aws", record, ok=ok, rto_s=rto, detail=detail, leftovers=problems
        )

    def _launch(
        self,
        server: Server,
        record: SnapshotRecord,
        instance: dict[str, Any],
        image_id: str,
        group_id: str,
    ) -> str:
        """Run one instance from the image in the group, without a public address."""
        interface: dict[str, Any] = {
            "DeviceIndex": 0,
            "Groups": [group_id],
            "AssociatePublicIpAddress": False,
            "DeleteOnTermination": True,
        }
        if instance.get("SubnetId"):
            interface["SubnetId"] = instance["SubnetId"]
        tags = {
            "Name": f"{server.name}-restore-test",
            TAG_RESTORE_TEST: server.name,
            TAG_CHANGE_REF: record.change_ref,
        }
        launched = self.ec2.call(
            "run_instances",
            ImageId=image_id,
            InstanceType=instance.get("InstanceType", "t3.micro"),
            MinCount=1,
            MaxCount=1,
            NetworkInterfaces=[interface],
            TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(tags)}],
        )
        return str(launched["Instances"][0]["InstanceId"])

    def _register_temporary_image(
        self, server: Server, record: SnapshotRecord, instance: dict[str, Any], token: str
    ) -> str:
        mapping = device_map(self.ec2, record)
        root = instance.get("RootDeviceName") or sorted(mapping)[0]
        if root not in mapping:
            raise SnapshotError(
                f"{server.name}: the set {', '.join(record.ids)} has no snapshot of the root"
                f" device {root}"
            )
        image_id: str = self.ec2.call(
            "register_image",
            Name=f"caretaker-restore-test-{server.name}-{token}",
            Description=f"caretaker restore test of {', '.join(record.ids)} (temporary)",
            RootDeviceName=root,
            Architecture=instance.get("Architecture") or "x86_64",
            VirtualizationType=instance.get("VirtualizationType") or "hvm",
            BlockDeviceMappings=[
                {"DeviceName": device, "Ebs": {"SnapshotId": sid, "DeleteOnTermination": True}}
                for device, sid in sorted(mapping.items())
            ],
        )["ImageId"]
        # Not tagged caretaker:managed: a temporary image is not a snapshot retention keeps.
        self.ec2.call(
            "create_tags",
            Resources=[image_id],
            Tags=[{"Key": TAG_RESTORE_TEST, "Value": server.name}],
        )
        return image_id

    def _isolated_group(self, server: Server, instance: dict[str, Any], token: str) -> str:
        params: dict[str, Any] = {
            "GroupName": f"caretaker-restore-test-{server.name}-{token}",
            "Description": "caretaker restore test: no ingress, no egress",
        }
        if instance.get("VpcId"):
            params["VpcId"] = instance["VpcId"]
        group_id: str = self.ec2.call("create_security_group", **params)["GroupId"]
        groups = self.ec2.call("describe_security_groups", GroupIds=[group_id])["SecurityGroups"]
        egress = groups[0].get("IpPermissionsEgress", []) if groups else []
        if egress:
            # A new group allows all egress by default; the test instance must reach nothing.
            self.ec2.call("revoke_security_group_egress", GroupId=group_id, IpPermissions=egress)
        return group_id

    def _clean_up(self, made: dict[str, str]) -> list[str]:
        """Terminate, then delete the group and the temporary image; return what failed."""
        problems: list[str] = []
        if "instance" in made:
            try:
                self.ec2.call("terminate_instances", InstanceIds=[made["instance"]])
                # The group cannot go while the instance's interface still uses it.
                self.instances.wait(made["instance"], "terminated", self.ec2.pace.state_timeout_s)
            except SnapshotError as exc:
                problems.append(f"instance {made['instance']}: {exc}")
        for kind, operation, key in (
            ("group", "delete_security_group", "GroupId"),
            ("image", "deregister_image", "ImageId"),
        ):
            if kind in made:
                try:
                    self.ec2.call(operation, **{key: made[kind]})
                except SnapshotError as exc:
                    label = "security group" if kind == "group" else kind
                    problems.append(f"{label} {made[kind]}: {exc}")
        return problems
