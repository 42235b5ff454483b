"""The tags the aws provider puts on what it makes, and how EC2 spells tags.

No IO here. The tags every provider uses (``caretaker:client`` ...) are in
``tasks.snapshots.base``; these are the aws provider's own.
"""

from __future__ import annotations

from typing import Any

TAG_KIND = "caretaker:kind"
TAG_DEVICE = "caretaker:device"
TAG_ROOT_DEVICE = "caretaker:root-device"
TAG_COPY_OF = "caretaker:copy-of"
TAG_RESTORE_TEST = "caretaker:restore-test"
TAG_RESTORED_FROM = "caretaker:restored-from"
TAG_REPLACED_BY = "caretaker:replaced-by"


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """EC2's ``[{"Key": ..., "Value": ...}]`` form of a tag mapping."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_map(resource: dict[str, Any]) -> dict[str, str]:
    """A described resource's tags as a mapping."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) or []}
