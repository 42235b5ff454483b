"""Volume mode: one ``CreateSnapshots`` call snapshots every EBS volume of an instance.

The set is crash-consistent (every volume at the same instant). The caretaker tags go
on atomically with the call; each snapshot then gets the device it was attached at
(``caretaker:device``), so a restore knows where it goes back. A record lists the root
volume's snapshot first.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import SnapshotError
from inventory import Server
from tasks.snapshots.aws.endpoint import Ec2
from tasks.snapshots.aws.tags import TAG_DEVICE, TAG_ROOT_DEVICE, tag_list
from tasks.snapshots.base import SnapshotRecord, SnapshotState, parse_time

log = logging.getLogger(__name__)

SNAPSHOT_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "completed": "completed",
    "error": "error",
    "recoverable": "error",
    "recovering": "pending",
}


def set_state(states: list[SnapshotState]) -> SnapshotState:
    """The state of a set: error if any failed, completed if all did, else pending."""
    if "error" in states:
        return "error"
    if states and all(s == "completed" for s in states):
        return "completed"
    return "pending"


def create_volume_set(
    ec2: Ec2,
    server: Server,
    client: str,
    change_ref: str,
    instance: dict[str, Any],
    attached: dict[str, str],
    tags: dict[str, str],
) -> SnapshotRecord:
    """Snapshot every attached volume at once, tagged; the record is usually pending."""
    response = ec2.call(
        "create_snapshots",
        InstanceSpecification={
            "InstanceId": instance["InstanceId"],
            "ExcludeBootVolume": False,
        },
        Description=f"caretaker {client} {change_ref} {server.name}",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list(tags)}],
    )
    snapshots = response.get("Snapshots", [])
    if not snapshots:
        raise SnapshotError(f"{server.name}: CreateSnapshots returned no snapshot")
    device_of = {volume: device for device, volume in attached.items()}
    for snap in snapshots:
        device = device_of.get(snap.get("VolumeId", ""))
        if device:
            _tag_device(ec2, server, snap["SnapshotId"], device)
    root = tags[TAG_ROOT_DEVICE]
    ordered = sorted(
        snapshots,
        key=lambda s: (device_of.get(s.get("VolumeId", "")) != root, s["SnapshotId"]),
    )
    states = [SNAPSHOT_STATES.get(s.get("State", "pending"), "pending") for s in ordered]
    record = SnapshotRecord(
        provider="aws",
        kind="volumes",
        server=server.name,
        client=client,
        change_ref=change_ref,
        ids=[s["SnapshotId"] for s in ordered],
        state=set_state(states),
        encrypted=all(bool(s.get("Encrypted")) for s in ordered),
        created_at=min(parse_time(s.get("StartTime")) for s in ordered),
        size_gb=sum(int(s.get("VolumeSize", 0) or 0) for s in ordered),
        detail=f"instance {instance['InstanceId']}",
    )
    log.info("%s: snapshot set %s started", server.name, ", ".join(record.ids))
    return record


def _tag_device(ec2: Ec2, server: Server, snapshot_id: str, device: str) -> None:
    # The set's tags went on atomically; the device differs per snapshot. The set
    # exists now, so failing here would only make a rerun find it: a missing device
    # tag is recovered at restore time from the source volume's attachment.
    try:
        ec2.call(
            "create_tags", Resources=[snapshot_id], Tags=[{"Key": TAG_DEVICE, "Value": device}]
        )
    except SnapshotError as exc:
        log.warning("%s: could not tag %s with its device: %s", server.name, snapshot_id, exc)


def wait_for_snapshots(
    ec2: Ec2, ids: list[str], timeout_s: float, poll_s: float, where: str
) -> dict[str, dict[str, Any]]:
    """Poll until every snapshot is completed; one in state error fails at once.

    Returns:
        The last description of each snapshot, by id.
    """
    last: dict[str, dict[str, Any]] = {}

    def probe() -> tuple[bool, str]:
        found = ec2.call("describe_snapshots", SnapshotIds=ids).get("Snapshots", [])
        last.update({s["SnapshotId"]: s for s in found})
        states = {
            sid: last[sid].get("State", "unknown") if sid in last else "missing" for sid in ids
        }
        for sid, state in states.items():
            if SNAPSHOT_STATES.get(state) == "error":
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

    ec2.pace.until(
        probe, f"{where}: snapshots {', '.join(ids)}", timeout_s=timeout_s, poll_s=poll_s
    )
    return last
