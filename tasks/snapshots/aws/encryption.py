"""The snapshot policy's encryption rules, applied once a set or image is completed.

The record says whether every snapshot is encrypted. With ``encrypted_copy`` the
unencrypted snapshots get encrypted copies (``CopySnapshot`` ``Encrypted=True``, tagged
``caretaker:copy-of``) and the record lists both; an earlier attempt's copies are
reused, so applying the policy again after a transient error is safe. With
``require_encryption`` alone, an unencrypted snapshot is an error. (Refusing an
unencrypted *volume* before anything is taken happens at create time.)
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import SnapshotError
from inventory import SnapshotPolicy
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.tags import TAG_COPY_OF, TAG_KIND, tag_list, tag_map
from tasks.snapshots.aws.volumes import wait_for_snapshots
from tasks.snapshots.base import SnapshotRecord, caretaker_tags

log = logging.getLogger(__name__)


class Encryption:
    """Checks a completed record's encryption and makes encrypted copies when asked.

    Args:
        ec2: The EC2 boundary.
        policy: The client's snapshot policy.
    """

    def __init__(self, ec2: Ec2, policy: SnapshotPolicy) -> None:
        self.ec2 = ec2
        self.policy = policy

    def apply(
        self, record: SnapshotRecord, timeout_s: float, poll_s: float, where: str
    ) -> SnapshotRecord:
        """The record with ``encrypted`` (and any encrypted copies) set by the policy.

        Raises:
            SnapshotError: A copy came out unencrypted, or encryption is required and
                missing without ``encrypted_copy``.
        """
        snapshot_ids = record.ids[1:] if record.kind == "ami" else record.ids
        if not snapshot_ids:
            return record
        found = {
            s["SnapshotId"]: s
            for s in self.ec2.call("describe_snapshots", SnapshotIds=snapshot_ids).get(
                "Snapshots", []
            )
        }
        unencrypted = [sid for sid in snapshot_ids if not found.get(sid, {}).get("Encrypted")]
        record = record.model_copy(update={"encrypted": not unencrypted})
        if not unencrypted:
            return record
        if self.policy.encrypted_copy:
            copies = self._ensure_copies(record, unencrypted, found)
            wait_for_snapshots(self.ec2, list(copies.values()), timeout_s, poll_s, where)
            described = self.ec2.call("describe_snapshots", SnapshotIds=list(copies.values()))
            plain = [
                s["SnapshotId"] for s in described.get("Snapshots", []) if not s.get("Encrypted")
            ]
            if plain:
                raise SnapshotError(
                    f"{where}: the copies {', '.join(plain)} were asked to be encrypted but are"
                    " not (check the region's EBS encryption and KMS key)"
                )
            return record.model_copy(
                update={"encrypted_copies": {**record.encrypted_copies, **copies}}
            )
        if self.policy.require_encryption:
            raise SnapshotError(
                f"{where}: encryption is required but snapshot(s) {', '.join(unencrypted)}"
                " are not encrypted"
            )
        return record

    def _ensure_copies(
        self,
        record: SnapshotRecord,
        sources: list[str],
        described: dict[str, dict[str, Any]],
    ) -> dict[str, str]:
        """An encrypted copy of each source, reusing copies an earlier attempt made."""
        existing = self.ec2.pages(
            "describe_snapshots",
            "Snapshots",
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{TAG_COPY_OF}", "Values": sources}],
        )
        copies = {tag_map(s)[TAG_COPY_OF]: s["SnapshotId"] for s in existing}
        for source in sources:
            if source in copies:
                continue
            tags = {
                k: v
                for k, v in tag_map(described.get(source, {})).items()
                if k.startswith("caretaker:")
            }
            tags.update(caretaker_tags(record.client, record.change_ref, record.server))
            tags[TAG_COPY_OF] = source
            tags.setdefault(TAG_KIND, record.kind)
            response = self.ec2.call(
                "copy_snapshot",
                SourceSnapshotId=source,
                SourceRegion=self.ec2.region,
                Encrypted=True,
                Description=f"caretaker encrypted copy of {source}",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list(tags)}],
            )
            copies[source] = response["SnapshotId"]
            log.info("%s: encrypted copy %s of %s started", record.server, copies[source], source)
        return {source: copies[source] for source in sources}
