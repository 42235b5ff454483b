"""AMI mode: ``CreateImage`` with ``NoReboot=True`` (the server keeps running).

The record holds the AMI id followed by its snapshot ids. The image is tagged when it
is created; its snapshots get the image's caretaker tags once the image lists them
(at once if EC2 already does, else when :func:`wait_for_image` sees it available).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.tags import tag_list, tag_map
from tasks.snapshots.base import SnapshotRecord, SnapshotState, parse_time

log = logging.getLogger(__name__)

IMAGE_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "transient": "pending",
    "available": "completed",
    "invalid": "error",
    "deregistered": "error",
    "failed": "error",
    "error": "error",
    "disabled": "error",
}
# AMI names allow letters, digits and ( ) [ ] space . / - ' @ _ ; 3-128 characters.
AMI_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]")


def image_devices(image: dict[str, Any]) -> dict[str, str]:
    """Device name -> snapshot id of an image's EBS mappings."""
    return {
        m["DeviceName"]: m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    }


def image_snapshot_ids(image: dict[str, Any]) -> list[str]:
    """The snapshots behind an image, in mapping order."""
    return [
        m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    ]


def image_encrypted(image: dict[str, Any]) -> bool | None:
    """Whether every EBS mapping of the image is encrypted; None when one does not say."""
    flags = [m["Ebs"].get("Encrypted") for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
    if not flags or any(f is None for f in flags):
        return None
    return all(flags)


def image_size(image: dict[str, Any]) -> int | None:
    """The image's provisioned size in GiB (None when unknown)."""
    sizes = [m["Ebs"].get("VolumeSize") for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
    return sum(int(s) for s in sizes if s) or None


def create_image(
    ec2: Ec2,
    server: Server,
    client: str,
    change_ref: str,
    instance: dict[str, Any],
    tags: dict[str, str],
) -> SnapshotRecord:
    """Start an image of the running instance, tagged; the record is usually pending."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = AMI_NAME_FORBIDDEN.sub("-", f"caretaker {server.name} {change_ref} {stamp}")[:128]
    response = ec2.call(
        "create_image",
        InstanceId=instance["InstanceId"],
        Name=name,
        Description=f"caretaker {client} {change_ref} {server.name}",
        NoReboot=True,
        # Snapshot tags are added once the image lists its snapshots (tag_image_snapshots).
        TagSpecifications=[{"ResourceType": "image", "Tags": tag_list(tags)}],
    )
    image_id = response["ImageId"]
    try:
        image = ec2.image(image_id)
    except SnapshotError as exc:
        # A brand-new image may not be visible yet (eventual consistency); wait() looks again.
        log.info("%s: image %s not described yet: %s", server.name, image_id, exc)
        image = None
    snapshot_ids = tag_image_snapshots(ec2, image) if image else []
    state = IMAGE_STATES.get(image.get("State", "pending"), "pending") if image else "pending"
    log.info("%s: image %s started", server.name, image_id)
    return SnapshotRecord(
        provider="aws",
        kind="ami",
        server=server.name,
        client=client,
        change_ref=change_ref,
        ids=[image_id, *snapshot_ids],
        state=state,
        encrypted=image_encrypted(image) if image else None,
        created_at=parse_time(image.get("CreationDate") if image else None),
        size_gb=image_size(image) if image else None,
        detail=f"instance {instance['InstanceId']}",
    )


def tag_image_snapshots(ec2: Ec2, image: dict[str, Any]) -> list[str]:
    """Give the image's snapshots the image's caretaker tags (idempotent)."""
    snapshot_ids = image_snapshot_ids(image)
    tags = {k: v for k, v in tag_map(image).items() if k.startswith("caretaker:")}
    if snapshot_ids and tags:
        ec2.call("create_tags", Resources=snapshot_ids, Tags=tag_list(tags))
    return snapshot_ids


def wait_for_image(
    ec2: Ec2, record: SnapshotRecord, timeout_s: float, poll_s: float, where: str
) -> SnapshotRecord:
    """Poll until the image is available; a failed image fails at once.

    Returns:
        The record, completed, with the image's snapshot ids, encryption and size.
    """
    image_id = record.ids[0]
    seen: dict[str, Any] = {}

    def probe() -> tuple[bool, str]:
        image = ec2.image(image_id)
        if image is None:
            raise SnapshotError(f"{where}: image {image_id} does not exist")
        seen.update(image)
        state = image.get("State", "pending")
        if IMAGE_STATES.get(state) == "error":
            reason = image.get("StateReason", {}).get("Message", "")
            raise SnapshotError(
                f"{where}: image {image_id} is in state {state}" + (f": {reason}" if reason else "")
            )
        return state == "available", state

    ec2.pace.until(probe, f"{where}: image {image_id}", timeout_s=timeout_s, poll_s=poll_s)
    snapshot_ids = tag_image_snapshots(ec2, seen)
    return record.model_copy(
        update={
            "ids": [image_id, *snapshot_ids],
            "state": "completed",
            "encrypted": image_encrypted(seen),
            "size_gb": image_size(seen),
        }
    )
