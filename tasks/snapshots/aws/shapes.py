"""The shapes of EC2 answers the aws provider reads: tags, state maps, pure helpers.

No IO here: what EC2 calls a snapshot or image state in caretaker's words, the tags
caretaker puts on what it makes, and small functions over ``describe_*`` answers
(a resource's tags, an image's snapshots, an instance's attached volumes).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from tasks.snapshots.base import SnapshotState, utc

TAG_KIND = "caretaker:kind"
TAG_DEVICE = "caretaker:device"
TAG_ROOT_DEVICE = "caretaker:root-device"
TAG_COPY_OF = "caretaker:copy-of"
TAG_RESTORE_TEST = "caretaker:restore-test"
TAG_RESTORED_FROM = "caretaker:restored-from"
TAG_REPLACED_BY = "caretaker:replaced-by"

SNAPSHOT_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "completed": "completed",
    "error": "error",
    "recoverable": "error",
    "recovering": "pending",
}
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
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
# AMI names allow letters, digits and ( ) [ ] space . / - ' @ _ ; 3-128 characters.
AMI_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]")


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """EC2's ``[{"Key": ..., "Value": ...}]`` form of a tag mapping."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_map(resource: dict[str, Any]) -> dict[str, str]:
    """A described resource's tags as a mapping."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) or []}


def parse_time(value: Any) -> datetime:
    """An EC2 timestamp (datetime or ISO text) in UTC; now when there is none."""
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return datetime.now(UTC)


def set_state(states: list[SnapshotState]) -> SnapshotState:
    """The state of a set: error if any failed, completed if all did, else pending."""
    if "error" in states:
        return "error"
    if states and all(s == "completed" for s in states):
        return "completed"
    return "pending"


def attached_volumes(instance: dict[str, Any]) -> dict[str, str]:
    """Device name -> volume id of the instance's EBS volumes."""
    return {
        m["DeviceName"]: m["Ebs"]["VolumeId"]
        for m in instance.get("BlockDeviceMappings", [])
        if "Ebs" in m and "VolumeId" in m["Ebs"]
    }


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
