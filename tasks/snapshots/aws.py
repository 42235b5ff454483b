"""The ``aws`` provider: EBS snapshot sets and AMIs through the EC2 API (boto3).

Two modes, chosen by the client's snapshot policy:

* ``volumes``: one ``CreateSnapshots`` call snapshots every EBS volume of the instance
  at the same instant (a crash-consistent multi-volume set). Each snapshot is tagged
  with the device it was attached at, so a restore knows where it goes back.
* ``ami``: ``CreateImage`` with ``NoReboot=True`` (the server keeps running); the
  record holds the AMI id followed by its snapshot ids.

Everything caretaker makes is tagged ``caretaker:client``, ``caretaker:change-ref``,
``caretaker:server`` and ``caretaker:managed=true``; ``find``/``list`` search by those
tags only, so nothing else in the account is ever touched.

Encryption: the record says whether every snapshot is encrypted. With
``require_encryption`` an unencrypted volume is refused *before* anything is taken;
with ``encrypted_copy`` the unencrypted snapshots get encrypted copies (``CopySnapshot``
``Encrypted=True``, tagged ``caretaker:copy-of``) once they complete, and the record
lists both.

Restore swaps volumes: stop the instance, create a volume from each snapshot in the
instance's zone, detach the current volume at that device (kept, tagged
``caretaker:replaced-by``, never deleted here), attach the new one, start. The restore
test launches a throwaway instance from the AMI (for a volume set: a temporary AMI
registered from the snapshots) in a new security group with no ingress and no egress,
waits for it to run with status checks ok, and always terminates it and deletes the
group and any temporary AMI.

Every botocore error becomes a :class:`~core.errors.SnapshotError` in one place,
:meth:`AwsSnapshotProvider._call`.
"""

from __future__ import annotations

import builtins
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from core.errors import SnapshotError
from inventory import AwsProvider, Server, SnapshotPolicy
from tasks.snapshots.base import (
    TAG_CHANGE_REF,
    TAG_CLIENT,
    TAG_MANAGED,
    TAG_SERVER,
    ProviderName,
    RestoreTestResult,
    SnapshotRecord,
    SnapshotState,
    TransientSnapshotError,
    caretaker_tags,
    poll_until,
    utc,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

TAG_KIND = "caretaker:kind"
TAG_DEVICE = "caretaker:device"
TAG_ROOT_DEVICE = "caretaker:root-device"
TAG_COPY_OF = "caretaker:copy-of"
TAG_RESTORE_TEST = "caretaker:restore-test"
TAG_RESTORED_FROM = "caretaker:restored-from"
TAG_REPLACED_BY = "caretaker:replaced-by"

# Error codes that mean "slow down" or "try later": a read may simply be repeated.
_THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "Unavailable",
}
_TRANSPORT = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
_SNAPSHOT_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "completed": "completed",
    "error": "error",
    "recoverable": "error",
    "recovering": "pending",
}
_IMAGE_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "transient": "pending",
    "available": "completed",
    "invalid": "error",
    "deregistered": "error",
    "failed": "error",
    "error": "error",
    "disabled": "error",
}
_LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
# AMI names allow letters, digits and ( ) [ ] space . / - ' @ _ ; 3-128 characters.
_AMI_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]")


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _tag_map(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) or []}


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return datetime.now(UTC)


def _set_state(states: builtins.list[SnapshotState]) -> SnapshotState:
    """The state of a set: error if any failed, completed if all did, else pending."""
    if "error" in states:
        return "error"
    if states and all(s == "completed" for s in states):
        return "completed"
    return "pending"


class AwsSnapshotProvider:
    """Snapshots of one EC2 instance (found by id or Name tag) in one region.

    Args:
        ec2: A boto3 EC2 client for the provider's region (and endpoint).
        provider: The server's ``aws`` provider entry from the inventory.
        policy: The client's snapshot policy (mode, encryption).
        client: The client slug; when given, ``find`` and ``list`` see only its snapshots.
        state_timeout_s: Bound for instance and volume state changes during restore
            and for the clean-up of a restore test.
        poll_s: Seconds between looks at an instance or volume.
        sleep: Injected for tests.
        clock: Injected for tests.
    """

    name: ProviderName = "aws"

    def __init__(
        self,
        ec2: EC2Client,
        provider: AwsProvider,
        policy: SnapshotPolicy,
        *,
        client: str | None = None,
        state_timeout_s: float = 600,
        poll_s: float = 2,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ec2 = ec2
        self.provider = provider
        self.policy = policy
        self.client = client
        self.state_timeout_s = state_timeout_s
        self.poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    # ------------------------------------------------------------------ the one boundary

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Call one EC2 operation; every botocore failure becomes a SnapshotError here."""
        try:
            response: dict[str, Any] = getattr(self.ec2, operation)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            message = str(error.get("Message", exc))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            text = f"aws {self.provider.region}: {operation}: {code}: {message}"
            if code in _THROTTLING or status >= 500:
                raise TransientSnapshotError(text) from exc
            raise SnapshotError(text) from exc
        except _TRANSPORT as exc:
            raise TransientSnapshotError(
                f"aws {self.provider.region}: {operation}: endpoint unreachable: {exc}"
            ) from exc
        except BotoCoreError as exc:
            # Missing credentials, invalid parameters, unparsable answers: not transient.
            raise SnapshotError(f"aws {self.provider.region}: {operation}: {exc}") from exc
        return response

    def _pages(self, operation: str, key: str, **kwargs: Any) -> builtins.list[dict[str, Any]]:
        """All items under ``key`` across NextToken pages."""
        items: builtins.list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = self._call(operation, **kwargs, **({"NextToken": token} if token else {}))
            items.extend(response.get(key, []))
            token = response.get("NextToken")
            if not token:
                return items

    # ------------------------------------------------------------------ the instance

    def _instance(self, server: Server) -> dict[str, Any]:
        """The server's instance, by id or by its Name tag (exactly one must match)."""
        where = f"{server.name} (aws {self.provider.region})"
        if self.provider.instance_id:
            reservations = self._pages(
                "describe_instances", "Reservations", InstanceIds=[self.provider.instance_id]
            )
            label = f"instance id {self.provider.instance_id}"
        else:
            reservations = self._pages(
                "describe_instances",
                "Reservations",
                Filters=[
                    {"Name": "tag:Name", "Values": [str(self.provider.instance_name)]},
                    {"Name": "instance-state-name", "Values": _LIVE_INSTANCE_STATES},
                ],
            )
            label = f"tag Name={self.provider.instance_name}"
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

    @staticmethod
    def _attached(instance: dict[str, Any]) -> dict[str, str]:
        """Device name -> volume id of the instance's EBS volumes."""
        return {
            m["DeviceName"]: m["Ebs"]["VolumeId"]
            for m in instance.get("BlockDeviceMappings", [])
            if "Ebs" in m and "VolumeId" in m["Ebs"]
        }

    def _refresh(self, instance_id: str) -> dict[str, Any]:
        reservations = self._pages("describe_instances", "Reservations", InstanceIds=[instance_id])
        instances = [i for r in reservations for i in r.get("Instances", [])]
        if not instances:
            raise SnapshotError(f"aws {self.provider.region}: instance {instance_id} vanished")
        return instances[0]

    def _wait_instance(
        self, instance_id: str, wanted: str, timeout_s: float, *, status_ok: bool = False
    ) -> None:
        """Wait for an instance state (and, optionally, both status checks ok)."""

        def probe() -> tuple[bool, str]:
            state = self._refresh(instance_id)["State"]["Name"]
            if state != wanted:
                if state in ("terminated", "shutting-down") and wanted != "terminated":
                    raise SnapshotError(f"instance {instance_id} is {state}")
                return False, state
            if not status_ok:
                return True, state
            statuses = self._call(
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

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=self.poll_s,
            what=f"instance {instance_id} to be {wanted}"
            + (" with status ok" if status_ok else ""),
            sleep=self._sleep,
            clock=self._clock,
        )

    def _wait_volume(self, volume_id: str, wanted: str) -> None:
        def probe() -> tuple[bool, str]:
            volumes = self._call("describe_volumes", VolumeIds=[volume_id]).get("Volumes", [])
            state = volumes[0]["State"] if volumes else "missing"
            if state == "error":
                raise SnapshotError(f"volume {volume_id} is in state error")
            return state == wanted, state

        poll_until(
            probe,
            timeout_s=self.state_timeout_s,
            poll_s=self.poll_s,
            what=f"volume {volume_id} to be {wanted}",
            sleep=self._sleep,
            clock=self._clock,
        )

    # ------------------------------------------------------------------ create

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Take a crash-consistent volume set or an AMI (policy mode), tagged, without waiting.

        Raises:
            SnapshotError: The instance is not found (or not unique), a volume is
                unencrypted while encryption is required without ``encrypted_copy``,
                or EC2 refused.
        """
        instance = self._instance(server)
        attached = self._attached(instance)
        if not attached:
            raise SnapshotError(
                f"{server.name}: instance {instance['InstanceId']} has no EBS volume"
            )
        volumes = self._call("describe_volumes", VolumeIds=sorted(attached.values()))["Volumes"]
        unencrypted = sorted(v["VolumeId"] for v in volumes if not v.get("Encrypted"))
        if unencrypted and self.policy.require_encryption and not self.policy.encrypted_copy:
            # Refuse before taking anything: a non-compliant snapshot is not left behind.
            raise SnapshotError(
                f"{server.name}: encryption is required but volume(s) {', '.join(unencrypted)}"
                f" of {instance['InstanceId']} are not encrypted (set encrypted_copy to make"
                " encrypted copies instead)"
            )
        root = instance.get("RootDeviceName") or next(iter(attached))
        tags = {
            **caretaker_tags(client, change_ref, server.name),
            TAG_KIND: self.policy.mode,
            TAG_ROOT_DEVICE: root,
            "Name": f"{server.name} {change_ref}",
        }
        if self.policy.mode == "ami":
            return self._create_image(server, client, change_ref, instance, tags)
        return self._create_volume_set(server, client, change_ref, instance, attached, tags)

    def _create_volume_set(
        self,
        server: Server,
        client: str,
        change_ref: str,
        instance: dict[str, Any],
        attached: dict[str, str],
        tags: dict[str, str],
    ) -> SnapshotRecord:
        response = self._call(
            "create_snapshots",
            InstanceSpecification={
                "InstanceId": instance["InstanceId"],
                "ExcludeBootVolume": False,
            },
            Description=f"caretaker {client} {change_ref} {server.name}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": _tag_list(tags)}],
        )
        snapshots = response.get("Snapshots", [])
        if not snapshots:
            raise SnapshotError(f"{server.name}: CreateSnapshots returned no snapshot")
        device_of = {volume: device for device, volume in attached.items()}
        for snap in snapshots:
            device = device_of.get(snap.get("VolumeId", ""))
            if not device:
                continue
            # The set's tags went on atomically; the device differs per snapshot. The set
            # exists now, so failing here would only make a rerun find it: a missing device
            # tag is recovered at restore time from the source volume's attachment.
            try:
                self._call(
                    "create_tags",
                    Resources=[snap["SnapshotId"]],
                    Tags=[{"Key": TAG_DEVICE, "Value": device}],
                )
            except SnapshotError as exc:
                log.warning(
                    "%s: could not tag %s with its device: %s", server.name, snap["SnapshotId"], exc
                )
        root = tags[TAG_ROOT_DEVICE]
        ordered = sorted(
            snapshots,
            key=lambda s: (device_of.get(s.get("VolumeId", "")) != root, s["SnapshotId"]),
        )
        states = [_SNAPSHOT_STATES.get(s.get("State", "pending"), "pending") for s in ordered]
        record = SnapshotRecord(
            provider="aws",
            kind="volumes",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[s["SnapshotId"] for s in ordered],
            state=_set_state(states),
            encrypted=all(bool(s.get("Encrypted")) for s in ordered),
            created_at=min(_parse_time(s.get("StartTime")) for s in ordered),
            size_gb=sum(int(s.get("VolumeSize", 0) or 0) for s in ordered),
            detail=f"instance {instance['InstanceId']}",
        )
        log.info("%s: snapshot set %s started", server.name, ", ".join(record.ids))
        return record

    def _create_image(
        self,
        server: Server,
        client: str,
        change_ref: str,
        instance: dict[str, Any],
        tags: dict[str, str],
    ) -> SnapshotRecord:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = _AMI_NAME_FORBIDDEN.sub("-", f"caretaker {server.name} {change_ref} {stamp}")[:128]
        response = self._call(
            "create_image",
            InstanceId=instance["InstanceId"],
            Name=name,
            Description=f"caretaker {client} {change_ref} {server.name}",
            NoReboot=True,
            # Snapshot tags are added once the image lists its snapshots (see _tag_image_snapshots).
            TagSpecifications=[{"ResourceType": "image", "Tags": _tag_list(tags)}],
        )
        image_id = response["ImageId"]
        try:
            image = self._image(image_id)
        except SnapshotError as exc:
            # A brand-new image may not be visible yet (eventual consistency); wait() looks again.
            log.info("%s: image %s not described yet: %s", server.name, image_id, exc)
            image = None
        snapshot_ids = self._tag_image_snapshots(image) if image else []
        state = _IMAGE_STATES.get(image.get("State", "pending"), "pending") if image else "pending"
        log.info("%s: image %s started", server.name, image_id)
        return SnapshotRecord(
            provider="aws",
            kind="ami",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[image_id, *snapshot_ids],
            state=state,
            encrypted=self._image_encrypted(image) if image else None,
            created_at=_parse_time(image.get("CreationDate") if image else None),
            size_gb=self._image_size(image) if image else None,
            detail=f"instance {instance['InstanceId']}",
        )

    def _image(self, image_id: str) -> dict[str, Any] | None:
        images = self._call("describe_images", ImageIds=[image_id]).get("Images", [])
        return images[0] if images else None

    @staticmethod
    def _image_snapshot_ids(image: dict[str, Any]) -> builtins.list[str]:
        return [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]

    @staticmethod
    def _image_encrypted(image: dict[str, Any]) -> bool | None:
        flags = [
            m["Ebs"].get("Encrypted") for m in image.get("BlockDeviceMappings", []) if "Ebs" in m
        ]
        if not flags or any(f is None for f in flags):
            return None
        return all(flags)

    @staticmethod
    def _image_size(image: dict[str, Any]) -> int | None:
        sizes = [
            m["Ebs"].get("VolumeSize") for m in image.get("BlockDeviceMappings", []) if "Ebs" in m
        ]
        return sum(int(s) for s in sizes if s) or None

    def _tag_image_snapshots(self, image: dict[str, Any]) -> builtins.list[str]:
        """Give the image's snapshots the image's caretaker tags (idempotent)."""
        snapshot_ids = self._image_snapshot_ids(image)
        tags = {k: v for k, v in _tag_map(image).items() if k.startswith("caretaker:")}
        if snapshot_ids and tags:
            self._call("create_tags", Resources=snapshot_ids, Tags=_tag_list(tags))
        return snapshot_ids

    # ------------------------------------------------------------------ wait

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Poll until the set (or image) is completed, then apply the encryption policy.

        Making encrypted copies is idempotent (an existing ``caretaker:copy-of`` copy is
        reused), so repeating ``wait`` after a transient error is safe.

        Raises:
            SnapshotError: A snapshot or the image failed (at once, with the provider's
                message), the bound passed (with the ids and their last states), or the
                policy requires encryption that is not there.
        """
        where = f"{record.server} (aws {self.provider.region})"
        if record.kind == "ami":
            record = self._wait_image(record, timeout_s, poll_s, where)
        else:
            self._wait_snapshots(record.ids, timeout_s, poll_s, where)
            record = record.model_copy(update={"state": "completed"})
        return self._apply_encryption_policy(record, timeout_s, poll_s, where)

    def _wait_snapshots(
        self, ids: builtins.list[str], timeout_s: float, poll_s: float, where: str
    ) -> dict[str, dict[str, Any]]:
        last: dict[str, dict[str, Any]] = {}

        def probe() -> tuple[bool, str]:
            found = self._call("describe_snapshots", SnapshotIds=ids).get("Snapshots", [])
            last.update({s["SnapshotId"]: s for s in found})
            states = {
                sid: last[sid].get("State", "unknown") if sid in last else "missing" for sid in ids
            }
            for sid, state in states.items():
                if _SNAPSHOT_STATES.get(state) == "error":
                    message = last[sid].get("StateMessage", "") if sid in last else ""
                    raise SnapshotError(
                        f"{where}: snapshot {sid} is in state {state}"
                        + (f": {message}" if message else "")
                        + f" (set: {', '.join(ids)})"
                    )
            text = ", ".join(
                f"{sid}={state}" + (f" {last[sid].get('Progress', '')}" if sid in last else "")
                for sid, state in states.items()
            )
            return all(s == "completed" for s in states.values()), text

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=poll_s,
            what=f"{where}: snapshots {', '.join(ids)}",
            sleep=self._sleep,
            clock=self._clock,
        )
        return last

    def _wait_image(
        self, record: SnapshotRecord, timeout_s: float, poll_s: float, where: str
    ) -> SnapshotRecord:
        image_id = record.ids[0]
        seen: dict[str, Any] = {}

        def probe() -> tuple[bool, str]:
            image = self._image(image_id)
            if image is None:
                raise SnapshotError(f"{where}: image {image_id} does not exist")
            seen.update(image)
            state = image.get("State", "pending")
            if _IMAGE_STATES.get(state) == "error":
                reason = image.get("StateReason", {}).get("Message", "")
                raise SnapshotError(
                    f"{where}: image {image_id} is in state {state}"
                    + (f": {reason}" if reason else "")
                )
            return state == "available", state

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=poll_s,
            what=f"{where}: image {image_id}",
            sleep=self._sleep,
            clock=self._clock,
        )
        snapshot_ids = self._tag_image_snapshots(seen)
        return record.model_copy(
            update={
                "ids": [image_id, *snapshot_ids],
                "state": "completed",
                "encrypted": self._image_encrypted(seen),
                "size_gb": self._image_size(seen),
            }
        )

    def _apply_encryption_policy(
        self, record: SnapshotRecord, timeout_s: float, poll_s: float, where: str
    ) -> SnapshotRecord:
        snapshot_ids = record.ids[1:] if record.kind == "ami" else record.ids
        if not snapshot_ids:
            return record
        found = {
            s["SnapshotId"]: s
            for s in self._call("describe_snapshots", SnapshotIds=snapshot_ids).get("Snapshots", [])
        }
        unencrypted = [sid for sid in snapshot_ids if not found.get(sid, {}).get("Encrypted")]
        record = record.model_copy(update={"encrypted": not unencrypted})
        if not unencrypted:
            return record
        if self.policy.encrypted_copy:
            copies = self._ensure_encrypted_copies(record, unencrypted, found)
            self._wait_snapshots(list(copies.values()), timeout_s, poll_s, where)
            described = self._call("describe_snapshots", SnapshotIds=list(copies.values()))
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

    def _ensure_encrypted_copies(
        self,
        record: SnapshotRecord,
        sources: builtins.list[str],
        described: dict[str, dict[str, Any]],
    ) -> dict[str, str]:
        """An encrypted copy of each source, reusing copies an earlier attempt made."""
        existing = self._pages(
            "describe_snapshots",
            "Snapshots",
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{TAG_COPY_OF}", "Values": sources}],
        )
        copies = {_tag_map(s)[TAG_COPY_OF]: s["SnapshotId"] for s in existing}
        for source in sources:
            if source in copies:
                continue
            tags = {
                k: v
                for k, v in _tag_map(described.get(source, {})).items()
                if k.startswith("caretaker:")
            }
            tags.update(caretaker_tags(record.client, record.change_ref, record.server))
            tags[TAG_COPY_OF] = source
            tags.setdefault(TAG_KIND, record.kind)
            response = self._call(
                "copy_snapshot",
                SourceSnapshotId=source,
                SourceRegion=self.provider.region,
                Encrypted=True,
                Description=f"caretaker encrypted copy of {source}",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": _tag_list(tags)}],
            )
            copies[source] = response["SnapshotId"]
            log.info("%s: encrypted copy %s of %s started", record.server, copies[source], source)
        return {source: copies[source] for source in sources}

    # ------------------------------------------------------------------ find / list

    def _filters(
        self, server: Server, change_ref: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": f"tag:{TAG_SERVER}", "Values": [server.name]},
        ]
        if self.client:
            filters.append({"Name": f"tag:{TAG_CLIENT}", "Values": [self.client]})
        if change_ref is not None:
            filters.append({"Name": f"tag:{TAG_CHANGE_REF}", "Values": [change_ref]})
        return filters

    def _records(
        self, server: Server, change_ref: str | None = None
    ) -> builtins.list[SnapshotRecord]:
        filters = self._filters(server, change_ref)
        snapshots = self._pages(
            "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters
        )
        images = self._pages("describe_images", "Images", Owners=["self"], Filters=filters)
        by_id = {s["SnapshotId"]: s for s in snapshots}
        records: builtins.list[SnapshotRecord] = []
        claimed: set[str] = set()
        copies: dict[str, str] = {}
        for snap in snapshots:
            source = _tag_map(snap).get(TAG_COPY_OF)
            if source:
                copies[source] = snap["SnapshotId"]

        for image in images:
            tags = _tag_map(image)
            snapshot_ids = self._image_snapshot_ids(image)
            claimed.update(snapshot_ids)
            own_copies = {s: copies[s] for s in snapshot_ids if s in copies}
            claimed.update(own_copies.values())
            records.append(
                SnapshotRecord(
                    provider="aws",
                    kind="ami",
                    server=server.name,
                    client=tags.get(TAG_CLIENT, ""),
                    change_ref=tags.get(TAG_CHANGE_REF, ""),
                    ids=[image["ImageId"], *snapshot_ids],
                    state=_IMAGE_STATES.get(image.get("State", ""), "error"),
                    encrypted=(
                        all(bool(by_id[s].get("Encrypted")) for s in snapshot_ids)
                        if snapshot_ids and all(s in by_id for s in snapshot_ids)
                        else self._image_encrypted(image)
                    ),
                    encrypted_copies=own_copies,
                    created_at=_parse_time(image.get("CreationDate")),
                    size_gb=self._image_size(image),
                )
            )

        sets: dict[tuple[str, str], builtins.list[dict[str, Any]]] = defaultdict(list)
        for snap in snapshots:
            sid = snap["SnapshotId"]
            tags = _tag_map(snap)
            if sid in claimed or (TAG_COPY_OF in tags and tags[TAG_COPY_OF] in by_id):
                continue
            sets[(tags.get(TAG_CLIENT, ""), tags.get(TAG_CHANGE_REF, ""))].append(snap)
        for (client, change_ref_), members in sets.items():
            root = _tag_map(members[0]).get(TAG_ROOT_DEVICE)
            members.sort(key=lambda s: (_tag_map(s).get(TAG_DEVICE) != root, s["SnapshotId"]))
            ids = [s["SnapshotId"] for s in members]
            states = [_SNAPSHOT_STATES.get(s.get("State", ""), "error") for s in members]
            records.append(
                SnapshotRecord(
                    provider="aws",
                    kind="volumes",
                    server=server.name,
                    client=client,
                    change_ref=change_ref_,
                    ids=ids,
                    state=_set_state(states),
                    encrypted=all(bool(s.get("Encrypted")) for s in members),
                    encrypted_copies={s: copies[s] for s in ids if s in copies},
                    created_at=min(_parse_time(s.get("StartTime")) for s in members),
                    size_gb=sum(int(s.get("VolumeSize", 0) or 0) for s in members),
                )
            )
        return sorted(records, key=lambda r: r.created_at)

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """The set or image already taken for ``change_ref`` (a failed one does not count)."""
        usable = [r for r in self._records(server, change_ref) if r.state != "error"]
        return usable[-1] if usable else None

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """Every caretaker-tagged set and image of the server, oldest first."""
        return self._records(server)

    # ------------------------------------------------------------------ delete

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the record cannot be deleted: an AMI it backs, or instances running from it."""
        if record.kind == "ami":
            image_id = record.ids[0]
            reservations = self._pages(
                "describe_instances",
                "Reservations",
                Filters=[
                    {"Name": "image-id", "Values": [image_id]},
                    {"Name": "instance-state-name", "Values": _LIVE_INSTANCE_STATES},
                ],
            )
            users = sorted(i["InstanceId"] for r in reservations for i in r.get("Instances", []))
            if users:
                return f"image {image_id} is used by instance(s) {', '.join(users)}"
        own = set(record.all_ids)
        own_image = record.ids[0] if record.kind == "ami" else None
        for image in self._pages("describe_images", "Images", Owners=["self"]):
            if image["ImageId"] == own_image:
                continue
            backing = own.intersection(self._image_snapshot_ids(image))
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
            self._ignore_missing("deregister_image", ImageId=image_id)
        for sid in snapshot_ids:
            self._ignore_missing("delete_snapshot", SnapshotId=sid)
        log.info("%s: deleted %s", record.server, ", ".join(record.all_ids))

    def _ignore_missing(self, operation: str, **kwargs: Any) -> None:
        """Deleting what is already gone is success: retention may run twice."""
        try:
            self._call(operation, **kwargs)
        except SnapshotError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and "NotFound" in str(
                cause.response.get("Error", {}).get("Code", "")
            ):
                return
            raise

    # ------------------------------------------------------------------ restore

    def _device_map(self, record: SnapshotRecord) -> dict[str, str]:
        """Device name -> snapshot id of the record (from tags, or the image's mapping)."""
        if record.kind == "ami":
            image = self._image(record.ids[0])
            if image is None:
                raise SnapshotError(f"{record.server}: image {record.ids[0]} no longer exists")
            return {
                m["DeviceName"]: m["Ebs"]["SnapshotId"]
                for m in image.get("BlockDeviceMappings", [])
                if m.get("Ebs", {}).get("SnapshotId")
            }
        found = self._call("describe_snapshots", SnapshotIds=record.ids).get("Snapshots", [])
        mapping: dict[str, str] = {}
        for snap in found:
            device = _tag_map(snap).get(TAG_DEVICE)
            if not device:
                # An untagged member (the tagging call did not happen): ask the source volume.
                volumes = self._call(
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

    def _require_completed(self, record: SnapshotRecord) -> None:
        if record.provider != "aws":
            raise SnapshotError(f"{record.server}: a {record.provider} snapshot is not an aws one")
        if record.state != "completed":
            raise SnapshotError(
                f"{record.server}: snapshot {', '.join(record.ids)} is {record.state},"
                " not completed"
            )

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Swap the instance's volumes for new ones made from the snapshots.

        The replaced volumes are detached and kept (tagged ``caretaker:replaced-by``):
        deleting the pre-restore disks is a human decision.

        Raises:
            SnapshotError: The record is not completed, the instance is not found, a
                state change did not happen in time, or EC2 refused. The message says
                which devices were already swapped; the instance is then left stopped.
        """
        self._require_completed(record)
        instance = self._instance(server)
        instance_id = instance["InstanceId"]
        zone = instance["Placement"]["AvailabilityZone"]
        mapping = self._device_map(record)
        swapped: builtins.list[str] = []
        try:
            self._call("stop_instances", InstanceIds=[instance_id])
            self._wait_instance(instance_id, "stopped", self.state_timeout_s)
            attached = self._attached(self._refresh(instance_id))
            for device, snapshot_id in sorted(mapping.items()):
                old = attached.get(device)
                volume_type = "gp3"
                if old:
                    described = self._call("describe_volumes", VolumeIds=[old])["Volumes"]
                    volume_type = described[0].get("VolumeType", "gp3") if described else "gp3"
                new = self._call(
                    "create_volume",
                    SnapshotId=snapshot_id,
                    AvailabilityZone=zone,
                    VolumeType=volume_type,
                    TagSpecifications=[
                        {
                            "ResourceType": "volume",
                            "Tags": _tag_list(
                                {
                                    "Name": f"{server.name} {device}",
                                    TAG_SERVER: server.name,
                                    TAG_CLIENT: record.client,
                                    TAG_CHANGE_REF: record.change_ref,
                                    TAG_RESTORED_FROM: snapshot_id,
                                }
                            ),
                        }
                    ],
                )["VolumeId"]
                self._wait_volume(new, "available")
                if old:
                    self._call("detach_volume", VolumeId=old, InstanceId=instance_id, Device=device)
                    self._wait_volume(old, "available")
                    self._call(
                        "create_tags",
                        Resources=[old],
                        Tags=[
                            {"Key": TAG_REPLACED_BY, "Value": new},
                            {
                                "Key": "caretaker:replaced-at",
                                "Value": datetime.now(UTC).isoformat(),
                            },
                        ],
                    )
                self._call("attach_volume", VolumeId=new, InstanceId=instance_id, Device=device)
                self._wait_volume(new, "in-use")
                swapped.append(f"{device}: {old or '-'} -> {new} (from {snapshot_id})")
            self._call("start_instances", InstanceIds=[instance_id])
            self._wait_instance(instance_id, "running", self.state_timeout_s)
        except SnapshotError as exc:
            done = "; ".join(swapped) or "none"
            raise SnapshotError(
                f"{server.name}: restore of {instance_id} from {', '.join(record.ids)} failed"
                f" (devices swapped so far: {done}; the instance may be left stopped): {exc}"
            ) from exc
        log.info("%s: restored %s: %s", server.name, instance_id, "; ".join(swapped))

    # ------------------------------------------------------------------ restore test

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Launch a throwaway instance from the snapshot, isolated, and time it to "status ok".

        The instance gets a new security group with no ingress rule and its default
        egress rule revoked, and no public address. Whatever happens, the instance is
        terminated and the group and any temporary AMI deleted; ``cleaned_up`` reports
        whether that worked.

        Returns:
            ok with the RTO in seconds, or ok=False with what failed.
        """
        started = self._clock()
        token = uuid.uuid4().hex[:8]
        made: dict[str, str] = {}
        ok, rto, detail = False, None, ""
        try:
            self._require_completed(record)
            instance = self._instance(server)
            if record.kind == "ami":
                image_id = record.ids[0]
            else:
                image_id = self._register_temporary_image(server, record, instance, token)
                made["image"] = image_id
            group_id = self._isolated_group(server, instance, token)
            made["group"] = group_id
            interface: dict[str, Any] = {
                "DeviceIndex": 0,
                "Groups": [group_id],
                "AssociatePublicIpAddress": False,
                "DeleteOnTermination": True,
            }
            if instance.get("SubnetId"):
                interface["SubnetId"] = instance["SubnetId"]
            launched = self._call(
                "run_instances",
                ImageId=image_id,
                InstanceType=instance.get("InstanceType", "t3.micro"),
                MinCount=1,
                MaxCount=1,
                NetworkInterfaces=[interface],
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": _tag_list(
                            {
                                "Name": f"{server.name}-restore-test",
                                TAG_RESTORE_TEST: server.name,
                                TAG_CHANGE_REF: record.change_ref,
                            }
                        ),
                    }
                ],
            )
            test_id = launched["Instances"][0]["InstanceId"]
            made["instance"] = test_id
            remaining = max(0.0, timeout_s - (self._clock() - started))
            self._wait_instance(test_id, "running", remaining, status_ok=True)
            rto = round(self._clock() - started, 3)
            ok = True
            detail = (
                f"instance {test_id} from {image_id} reached running with status checks ok"
                f" in {rto:.1f}s (isolated group {group_id}: no ingress, no egress)"
            )
        except SnapshotError as exc:
            detail = f"restore test failed: {exc}"
        finally:
            problems = self._clean_restore_test(made)
        if problems:
            detail += "; clean-up incomplete: " + "; ".join(problems)
        return RestoreTestResult(
            server=server.name,
            provider="aws",
            snapshot_ids=record.ids,
            ok=ok,
            rto_s=rto,
            detail=detail,
            cleaned_up=not problems,
        )

    def _register_temporary_image(
        self, server: Server, record: SnapshotRecord, instance: dict[str, Any], token: str
    ) -> str:
        mapping = self._device_map(record)
        root = instance.get("RootDeviceName") or sorted(mapping)[0]
        if root not in mapping:
            raise SnapshotError(
                f"{server.name}: the set {', '.join(record.ids)} has no snapshot of the root"
                f" device {root}"
            )
        image_id = self._call(
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
        self._call(
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
        group_id = self._call("create_security_group", **params)["GroupId"]
        groups = self._call("describe_security_groups", GroupIds=[group_id])["SecurityGroups"]
        egress = groups[0].get("IpPermissionsEgress", []) if groups else []
        if egress:
            # A new group allows all egress by default; the test instance must reach nothing.
            self._call("revoke_security_group_egress", GroupId=group_id, IpPermissions=egress)
        return group_id

    def _clean_restore_test(self, made: dict[str, str]) -> builtins.list[str]:
        """Terminate, then delete the group and the temporary image; return what failed."""
        problems: builtins.list[str] = []
        if "instance" in made:
            try:
                self._call("terminate_instances", InstanceIds=[made["instance"]])
                # The group cannot go while the instance's interface still uses it.
                self._wait_instance(made["instance"], "terminated", self.state_timeout_s)
            except SnapshotError as exc:
                problems.append(f"instance {made['instance']}: {exc}")
        if "group" in made:
            try:
                self._call("delete_security_group", GroupId=made["group"])
            except SnapshotError as exc:
                problems.append(f"security group {made['group']}: {exc}")
        if "image" in made:
            try:
                self._call("deregister_image", ImageId=made["image"])
            except SnapshotError as exc:
                problems.append(f"image {made['image']}: {exc}")
        return problems
