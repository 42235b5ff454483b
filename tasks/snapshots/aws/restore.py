"""Restore by swapping volumes: the instance comes back on disks made from the snapshots.

Stop the instance, create a volume from each snapshot in the instance's zone, detach
the current volume at that device (kept, tagged ``caretaker:replaced-by``, never
deleted here: deleting the pre-restore disks is a human decision), attach the new one,
start. Which snapshot goes to which device comes from the ``caretaker:device`` tags (or
the image's mapping, for an AMI), else from the source volume's attachment.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.images import image_devices
from tasks.snapshots.aws.instances import Instances, attached_volumes
from tasks.snapshots.aws.tags import (
    TAG_DEVICE,
    TAG_REPLACED_BY,
    TAG_RESTORED_FROM,
    tag_list,
    tag_map,
)
from tasks.snapshots.base import TAG_CHANGE_REF, TAG_CLIENT, TAG_SERVER, SnapshotRecord

log = logging.getLogger(__name__)


def require_completed(record: SnapshotRecord) -> None:
    """Refuse a record that is not a completed aws snapshot."""
    if record.provider != "aws":
        raise SnapshotError(f"{record.server}: a {record.provider} snapshot is not an aws one")
    if record.state != "completed":
        raise SnapshotError(
            f"{record.server}: snapshot {', '.join(record.ids)} is {record.state}, not completed"
        )


def device_map(ec2: Ec2, record: SnapshotRecord) -> dict[str, str]:
    """Device name -> snapshot id of the record (from tags, or the image's mapping)."""
    if record.kind == "ami":
        image = ec2.image(record.ids[0])
        if image is None:
            raise SnapshotError(f"{record.server}: image {record.ids[0]} no longer exists")
        return image_devices(image)
    found = ec2.call("describe_snapshots", SnapshotIds=record.ids).get("Snapshots", [])
    mapping: dict[str, str] = {}
    for snap in found:
        device = tag_map(snap).get(TAG_DEVICE)
        if not device:
            # An untagged member (the tagging call did not happen): ask the source volume.
            volumes = ec2.call(
                "describe_volumes",
                Filters=[{"Name": "volume-id", "Values": [snap.get("VolumeId", "")]}],
            ).get("Volumes", [])
            attachments = volumes[0].get("Attachments", []) if volumes else []
            if not attachments:
                raise SnapshotError(
                    f"{record.server}: snapshot {snap['SnapshotId']} has no {TAG_DEVICE} tag"
                    " and its source volume is not attached: cannot tell where it goes"
                )
            device = attachments[0]["Device"]
        mapping[device] = snap["SnapshotId"]
    return mapping


class VolumeSwap:
    """Restores an instance from a record by swapping its volumes.

    Args:
        instances: Finds and waits on the instance and its volumes (and holds the
            EC2 boundary).
    """

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self.ec2 = instances.ec2

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Swap the instance's volumes for new ones made from the snapshots.

        Raises:
            SnapshotError: The record is not completed, the instance is not found, a
                state change did not happen in time, or EC2 refused. The message says
                which devices were already swapped; the instance is then left stopped.
        """
        require_completed(record)
        instance = self.instances.of(server)
        instance_id = instance["InstanceId"]
        zone = instance["Placement"]["AvailabilityZone"]
        mapping = device_map(self.ec2, record)
        swapped: list[str] = []
        # Where the device being swapped stands, so a failure says where its disks are.
        step: list[str] = []
        try:
            self.ec2.call("stop_instances", InstanceIds=[instance_id])
            self.instances.wait(instance_id, "stopped", self.ec2.pace.state_timeout_s)
            attached = attached_volumes(self.instances.refresh(instance_id))
            for device, snapshot_id in sorted(mapping.items()):
                old = attached.get(device)
                step[:] = [f"{device}: {old or 'no volume'} still attached"]
                new = self._volume_from(server, record, device, snapshot_id, old, zone)
                step[:] = [f"{step[0]}, {new} made from {snapshot_id} but not attached"]
                self._swap(instance_id, device, old, new, step)
                swapped.append(f"{device}: {old or '-'} -> {new} (from {snapshot_id})")
                step.clear()
            self.ec2.call("start_instances", InstanceIds=[instance_id])
            self.instances.wait(instance_id, "running", self.ec2.pace.state_timeout_s)
        except SnapshotError as exc:
            done = "; ".join(swapped) or "none"
            doing = f"; in progress: {step[0]}" if step else ""
            raise SnapshotError(
                f"{server.name}: restore of {instance_id} from {', '.join(record.ids)} failed"
                f" (devices swapped so far: {done}{doing}; no volume was deleted;"
                f" the instance may be left stopped): {exc}"
            ) from exc
        log.info("%s: restored %s: %s", server.name, instance_id, "; ".join(swapped))

    def _volume_from(
        self,
        server: Server,
        record: SnapshotRecord,
        device: str,
        snapshot_id: str,
        old: str | None,
        zone: str,
    ) -> str:
        """A new volume from the snapshot, of the replaced volume's type; waited available."""
        volume_type = "gp3"
        if old:
            described = self.ec2.call("describe_volumes", VolumeIds=[old])["Volumes"]
            volume_type = described[0].get("VolumeType", "gp3") if described else "gp3"
        tags = {
            "Name": f"{server.name} {device}",
            TAG_SERVER: server.name,
            TAG_CLIENT: record.client,
            TAG_CHANGE_REF: record.change_ref,
            TAG_RESTORED_FROM: snapshot_id,
        }
        new: str = self.ec2.call(
            "create_volume",
            SnapshotId=snapshot_id,
            AvailabilityZone=zone,
            VolumeType=volume_type,
            TagSpecifications=[{"ResourceType": "volume", "Tags": tag_list(tags)}],
        )["VolumeId"]
        self.instances.wait_volume(new, "available")
        return new

    def _swap(
        self, instance_id: str, device: str, old: str | None, new: str, step: list[str]
    ) -> None:
        """Detach (and tag) the old volume at ``device``, attach the new one.

        ``step`` is kept saying where the device's volumes are, for a failure's message.
        """
        if old:
            self.ec2.call("detach_volume", VolumeId=old, InstanceId=instance_id, Device=device)
            step[:] = [f"{device}: {old} detached from the instance, {new} not attached yet"]
            self.instances.wait_volume(old, "available")
            self.ec2.call(
                "create_tags",
                Resources=[old],
                Tags=[
                    {"Key": TAG_REPLACED_BY, "Value": new},
                    {"Key": "caretaker:replaced-at", "Value": datetime.now(UTC).isoformat()},
                ],
            )
            step[:] = [
                f"{device}: {old} detached (tagged {TAG_REPLACED_BY}={new}), {new} not attached"
            ]
        self.ec2.call("attach_volume", VolumeId=new, InstanceId=instance_id, Device=device)
        self.instances.wait_volume(new, "in-use")
