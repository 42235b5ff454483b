"""The server's EC2 instance: found by id or by its Name tag, and waited on.

An inventory entry names its instance by ``instance_id`` or by ``instance_name`` (the
``Name`` tag, among live instances); exactly one must match, or the error names what
matched. Waits are bounded (the provider's :class:`~tasks.snapshots.base.Pace`) and give up at
once on a state that cannot get better (terminated, impaired, a volume in error).
"""

from __future__ import annotations

from typing import Any

from core.errors import SnapshotError
from inventory import AwsProvider, Server
from tasks.snapshots.aws.endpoint import Ec2

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


def attached_volumes(instance: dict[str, Any]) -> dict[str, str]:
    """Device name -> volume id of the instance's EBS volumes."""
    return {
        m["DeviceName"]: m["Ebs"]["VolumeId"]
        for m in instance.get("BlockDeviceMappings", [])
        if "Ebs" in m and "VolumeId" in m["Ebs"]
    }


class Instances:
    """Looks up and waits on instances and volumes in the provider's region.

    Args:
        ec2: The EC2 boundary (its pace bounds the waits).
        entry: The server's ``aws`` provider entry (instance id or name).
    """

    def __init__(self, ec2: Ec2, entry: AwsProvider) -> None:
        self.ec2 = ec2
        self.entry = entry

    def of(self, server: Server) -> dict[str, Any]:
        """The server's instance, by id or by its Name tag (exactly one must match)."""
        where = f"{server.name} (aws {self.entry.region})"
        if self.entry.instance_id:
            reservations = self.ec2.pages(
                "describe_instances", "Reservations", InstanceIds=[self.entry.instance_id]
            )
            label = f"instance id {self.entry.instance_id}"
        else:
            reservations = self.ec2.pages(
                "describe_instances",
                "Reservations",
                Filters=[
                    {"Name": "tag:Name", "Values": [str(self.entry.instance_name)]},
                    {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
                ],
            )
            label = f"tag Name={self.entry.instance_name}"
        instances = [i for r in reservations for i in r.get("Instances", [])]
        if not instances:
            raise SnapshotError(f"{where}: no EC2 instance with {label}")
        if len(instances) > 1:
            ids = ", ".join(sorted(i["InstanceId"] for i in instances))
            raise SnapshotError(
                f"{where}: {len(instances)} EC2 instances with {label} ({ids});"
                " give instance_id in the inventory instead"
            )
        return instances[0]

    def refresh(self, instance_id: str) -> dict[str, Any]:
        """The instance as EC2 describes it now."""
        reservations = self.ec2.pages(
            "describe_instances", "Reservations", InstanceIds=[instance_id]
        )
        instances = [i for r in reservations for i in r.get("Instances", [])]
        if not instances:
            raise SnapshotError(f"aws {self.ec2.region}: instance {instance_id} vanished")
        return instances[0]

    def wait(
        self, instance_id: str, wanted: str, timeout_s: float, *, status_ok: bool = False
    ) -> None:
        """Wait for an instance state (and, optionally, both status checks ok)."""

        def probe() -> tuple[bool, str]:
            state = self.refresh(instance_id)["State"]["Name"]
            if state != wanted:
                if state in ("terminated", "shutting-down") and wanted != "terminated":
                    raise SnapshotError(f"instance {instance_id} is {state}")
                return False, state
            if not status_ok:
                return True, state
            statuses = self.ec2.call(
                "describe_instance_status", InstanceIds=[instance_id], IncludeAllInstances=True
            ).get("InstanceStatuses", [])
            if not statuses:
                return False, f"{state}, no status yet"
            inst = statuses[0].get("InstanceStatus", {}).get("Status", "")
            system = statuses[0].get("SystemStatus", {}).get("Status", "")
            if "impaired" in (inst, system):
                raise SnapshotError(
                    f"instance {instance_id} status checks failed"
                    f" (instance {inst}, system {system})"
                )
            return inst == "ok" and system == "ok", f"{state}, instance {inst}, system {system}"

        self.ec2.pace.until(
            probe,
            f"instance {instance_id} to be {wanted}" + (" with status ok" if status_ok else ""),
            timeout_s=timeout_s,
        )

    def wait_volume(self, volume_id: str, wanted: str) -> None:
        """Wait for a volume state; a volume in state error fails at once."""

        def probe() -> tuple[bool, str]:
            volumes = self.ec2.call("describe_volumes", VolumeIds=[volume_id]).get("Volumes", [])
            state = volumes[0]["State"] if volumes else "missing"
            if state == "error":
                raise SnapshotError(f"volume {volume_id} is in state error")
            return state == wanted, state

        self.ec2.pace.until(probe, f"volume {volume_id} to be {wanted}")
