"""What caretaker holds in the account: its sets and images, by tag, and their deletion.

Only resources tagged ``caretaker:managed=true`` and ``caretaker:server=<name>`` (and,
when the provider is bound to a client, ``caretaker:client``) are ever seen, so nothing
else in the account is touched. Images become ``ami`` records with their snapshots and
encrypted copies; the remaining snapshots are grouped by (client, change) into
``volumes`` records, root device first.

A record is not deleted while it is in use: an AMI an instance runs from, or snapshots
backing another registered image. Deleting what is already gone is success.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.images import (
    IMAGE_STATES,
    image_encrypted,
    image_size,
    image_snapshot_ids,
)
from tasks.snapshots.aws.instances import LIVE_INSTANCE_STATES
from tasks.snapshots.aws.tags import TAG_COPY_OF, TAG_DEVICE, TAG_ROOT_DEVICE, tag_map
from tasks.snapshots.aws.volumes import SNAPSHOT_STATES, set_state
from tasks.snapshots.base import (
    TAG_CHANGE_REF,
    TAG_CLIENT,
    TAG_MANAGED,
    TAG_SERVER,
    SnapshotRecord,
    parse_time,
)

log = logging.getLogger(__name__)


class Catalog:
    """Lists, checks and deletes a server's caretaker snapshots and images.

    Args:
        ec2: The EC2 boundary.
        client: The client slug; when given, only its snapshots are seen.
    """

    def __init__(self, ec2: Ec2, client: str | None = None) -> None:
        self.ec2 = ec2
        self.client = client

    def _filters(self, server: Server, change_ref: str | None = None) -> list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": f"tag:{TAG_SERVER}", "Values": [server.name]},
        ]
        if self.client:
            filters.append({"Name": f"tag:{TAG_CLIENT}", "Values": [self.client]})
        if change_ref is not None:
            filters.append({"Name": f"tag:{TAG_CHANGE_REF}", "Values": [change_ref]})
        return filters

    def records(self, server: Server, change_ref: str | None = None) -> list[SnapshotRecord]:
        """The server's caretaker images and volume sets (of one change, if given), oldest first."""
        filters = self._filters(server, change_ref)
        snapshots = self.ec2.pages(
            "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters
        )
        images = self.ec2.pages("describe_images", "Images", Owners=["self"], Filters=filters)
        by_id = {s["SnapshotId"]: s for s in snapshots}
        copies: dict[str, str] = {}
        for snap in snapshots:
            source = tag_map(snap).get(TAG_COPY_OF)
            if source:
                copies[source] = snap["SnapshotId"]
        claimed: set[str] = set()
        records = [self._image_record(server, i, by_id, copies, claimed) for i in images]
        sets: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for snap in snapshots:
            sid = snap["SnapshotId"]
            tags = tag_map(snap)
            if sid in claimed or (TAG_COPY_OF in tags and tags[TAG_COPY_OF] in by_id):
                continue
            sets[(tags.get(TAG_CLIENT, ""), tags.get(TAG_CHANGE_REF, ""))].append(snap)
        for (client, change), members in sets.items():
            records.append(self._set_record(server, client, change, members, copies))
        return sorted(records, key=lambda r: r.created_at)

    @staticmethod
    def _image_record(
        server: Server,
        image: dict[str, Any],
        by_id: dict[str, dict[str, Any]],
        copies: dict[str, str],
        claimed: set[str],
    ) -> SnapshotRecord:
        """An ``ami`` record; its snapshots and their copies are added to ``claimed``."""
        tags = tag_map(image)
        snapshot_ids = image_snapshot_ids(image)
        claimed.update(snapshot_ids)
        own_copies = {s: copies[s] for s in snapshot_ids if s in copies}
        claimed.update(own_copies.values())
        return SnapshotRecord(
            provider="aws",
            kind="ami",
            server=server.name,
            client=tags.get(TAG_CLIENT, ""),
            change_ref=tags.get(TAG_CHANGE_REF, ""),
            ids=[image["ImageId"], *snapshot_ids],
            state=IMAGE_STATES.get(image.get("State", ""), "error"),
            encrypted=(
                all(bool(by_id[s].get("Encrypted")) for s in snapshot_ids)
                if snapshot_ids and all(s in by_id for s in snapshot_ids)
                else image_encrypted(image)
            ),
            encrypted_copies=own_copies,
            created_at=parse_time(image.get("CreationDate")),
            size_gb=image_size(image),
        )

    @staticmethod
    def _set_record(
        server: Server,
        client: str,
        change_ref: str,
        members: list[dict[str, Any]],
        copies: dict[str, str],
    ) -> SnapshotRecord:
        """A ``volumes`` record of one change's snapshots, root device first."""
        root = tag_map(members[0]).get(TAG_ROOT_DEVICE)
        members.sort(key=lambda s: (tag_map(s).get(TAG_DEVICE) != root, s["SnapshotId"]))
        ids = [s["SnapshotId"] for s in members]
        states = [SNAPSHOT_STATES.get(s.get("State", ""), "error") for s in members]
        return SnapshotRecord(
            provider="aws",
            kind="volumes",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=ids,
            state=set_state(states),
            encrypted=all(bool(s.get("Encrypted")) for s in members),
            encrypted_copies={s: copies[s] for s in ids if s in copies},
            created_at=min(parse_time(s.get("StartTime")) for s in members),
            size_gb=sum(int(s.get("VolumeSize", 0) or 0) for s in members),
        )

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the record cannot be deleted: an AMI it backs, or instances running from it."""
        if record.kind == "ami":
            image_id = record.ids[0]
            reservations = self.ec2.pages(
                "describe_instances",
                "Reservations",
                Filters=[
                    {"Name": "image-id", "Values": [image_id]},
                    {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
                ],
            )
            users = sorted(i["InstanceId"] for r in reservations for i in r.get("Instances", []))
            if users:
                return f"image {image_id} is used by instance(s) {', '.join(users)}"
        own = set(record.all_ids)
        own_image = record.ids[0] if record.kind == "ami" else None
        for image in self.ec2.pages("describe_images", "Images", Owners=["self"]):
            if image["ImageId"] == own_image:
                continue
            backing = own.intersection(image_snapshot_ids(image))
            if backing:
                return (
                    f"snapshot(s) {', '.join(sorted(backing))} back registered image"
                    f" {image['ImageId']}"
                )
        return None

    def delete(self, record: SnapshotRecord) -> None:
        """Deregister the image (ami) and delete the snapshots and their encrypted copies.

        Raises:
            SnapshotError: The record is still in use (nothing is deleted), or EC2 refused.
        """
        reason = self.in_use(record)
        if reason:
            raise SnapshotError(f"{record.server}: not deleting {record.ids[0]}: {reason}")
        snapshot_ids = record.all_ids
        if record.kind == "ami":
            image_id, snapshot_ids = snapshot_ids[0], snapshot_ids[1:]
            self.ec2.call_unless_gone("deregister_image", ImageId=image_id)
        for sid in snapshot_ids:
            self.ec2.call_unless_gone("delete_snapshot", SnapshotId=sid)
        log.info("%s: deleted %s", record.server, ", ".join(record.all_ids))
