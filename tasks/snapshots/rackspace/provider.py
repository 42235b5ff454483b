"""The ``rackspace`` provider: server images of one Rackspace cloud server, and its volumes.

Rackspace Cloud Servers are OpenStack: a snapshot is a server *image* (the system disk)
plus a Cloud Block Storage (Cinder) *snapshot of every volume attached* to the server.
An image alone would leave the data on attached volumes out of the change's backout.

* create: the server's attachments first (``GET /servers/{id}/os-volume_attachments``);
  with volumes attached and no block storage endpoint in the region, refuse before
  anything is made. Then ``POST /servers/{id}/action {"createImage": {name, metadata}}``
  (the image id from the ``Location`` header or the 2.45+ JSON body; the caretaker tags
  ride along as image metadata, shown as image properties, with ``caretaker:volumes``
  naming the volumes attached), then ``POST <volume>/snapshots`` for each volume
  (``force``: it is attached), tagged the same plus ``caretaker:image`` and
  ``caretaker:device``. The record's ids: the image id, then the volume snapshot ids;
* wait: ``GET <image>/images/{id}`` until ``active`` (``queued``/``saving`` are pending,
  ``killed``/``deleted``/``error`` are failures), and ``GET <volume>/snapshots/{id}``
  until ``available`` (``error`` fails);
* list/find: ``GET <image>/images?caretaker:server=...&caretaker:managed=true`` (paged),
  each image with the volume snapshots tagged with it; an image whose set misses a
  volume named in ``caretaker:volumes`` is not a usable snapshot (``error``);
* delete: ``DELETE <volume>/snapshots/{id}`` for each volume snapshot, then
  ``DELETE <image>/images/{id}``; refused while the image is protected or a server runs
  from it (``GET /servers/detail?image=``), e.g. after a restore;
* restore: each volume first gets a new volume made from its snapshot (``POST
  <volume>/volumes``, wait ``available``), then ``POST /servers/{id}/action {"rebuild":
  {"imageRef": id}}`` and wait ACTIVE, then each old volume is detached (``DELETE
  /servers/{id}/os-volume_attachments/{volume}``, wait ``available``; it is kept, not
  deleted) and the new one attached at the same device (wait ``in-use``);
* restore test: ``POST /servers`` from the image on ServiceNet only (no public network),
  wait ACTIVE, record the RTO, and always ``DELETE`` the server and wait until it is gone
  (it boots the system disk; the volume snapshots were waited for until ``available``).

Encryption at rest of Rackspace images cannot be verified through the API, so records
say ``encrypted=None`` and a policy that requires encryption is refused up front.
The HTTP calls and their error translation are in ``tasks.snapshots.rackspace.api``.
"""

from __future__ import annotations

import builtins
import logging
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from core.errors import SnapshotError
from inventory import RackspaceProvider, Server, SnapshotPolicy
from tasks.snapshots.base import (
    TAG_CHANGE_REF,
    TAG_CLIENT,
    TAG_MANAGED,
    TAG_SERVER,
    Pace,
    ProviderName,
    RestoreTestResult,
    SnapshotRecord,
    SnapshotState,
    caretaker_tags,
    parse_time,
    restore_test_result,
)
from tasks.snapshots.rackspace.api import RackspaceApi

log = logging.getLogger(__name__)

#: Rackspace's public Internet network and its private ServiceNet.
PUBLICNET = "00000000-0000-0000-0000-000000000000"
SERVICENET = "11111111-1111-1111-1111-111111111111"
TAG_KIND = "caretaker:kind"
TAG_RESTORE_TEST = "caretaker:restore-test"
#: On an image: the volume ids attached when it was taken (comma-separated, sorted).
TAG_VOLUMES = "caretaker:volumes"
#: On a volume snapshot: the image it belongs with, and the device its volume was on.
TAG_IMAGE = "caretaker:image"
TAG_DEVICE = "caretaker:device"
#: A rebuild (and a restore-test server's deletion) within 30 minutes, looked at every 5 s.
RACKSPACE_PACE = Pace(state_timeout_s=1800, poll_s=5)

_PENDING: SnapshotState = "pending"
_FAILED: SnapshotState = "error"
# Glance image statuses; anything not listed (a status of a newer API) is pending.
_IMAGE_STATES: dict[str, SnapshotState] = {
    **dict.fromkeys(("queued", "saving", "uploading", "importing", "unknown"), _PENDING),
    "active": "completed",
    **dict.fromkeys(("killed", "deleted", "pending_delete", "deactivated", "error"), _FAILED),
}
# Statuses in which a server will not become ACTIVE again without help.
_SERVER_FAILED = {"ERROR", "DELETED", "SOFT_DELETED", "SHUTOFF", "SUSPENDED", "UNKNOWN"}


# Cinder snapshot statuses; anything else is pending.
_VOLUME_SNAPSHOT_STATES: dict[str, SnapshotState] = {
    "available": "completed",
    **dict.fromkeys(("error", "error_deleting", "deleting", "deleted"), _FAILED),
}


def _image_state(status: str) -> SnapshotState:
    return _IMAGE_STATES.get(status.lower(), "pending")


def _volume_snapshot_state(status: str) -> SnapshotState:
    return _VOLUME_SNAPSHOT_STATES.get(status.lower(), "pending")


def set_state(image: SnapshotState, volumes: dict[str, SnapshotState | None]) -> SnapshotState:
    """The state of an image and its volume snapshots as one snapshot (pure).

    Args:
        image: the image's state.
        volumes: volume id -> the state of its snapshot, None when it has none.

    Returns:
        ``error`` when any part failed or a volume has no snapshot (the set cannot
        restore the server), ``completed`` when every part is, else ``pending``.
    """
    parts = [image, *volumes.values()]
    if any(part is None or part == _FAILED for part in parts):
        return _FAILED
    if all(part == "completed" for part in parts):
        return "completed"
    return _PENDING


class RackspaceSnapshotProvider:
    """Images of one Rackspace cloud server.

    Args:
        api: The OpenStack client for the server's region.
        provider: The server's ``rackspace`` provider entry from the inventory.
        policy: The client's snapshot policy.
        client: The client slug; when given, ``find`` and ``list`` see only its images.
        pace: Bound for a rebuild and for deleting a restore-test server, seconds
            between looks at a server, sleep and clock.
        restore_network: The only network of a restore-test server (ServiceNet).
    """

    name: ProviderName = "rackspace"

    def __init__(
        self,
        api: RackspaceApi,
        provider: RackspaceProvider,
        policy: SnapshotPolicy,
        *,
        client: str | None = None,
        pace: Pace = RACKSPACE_PACE,
        restore_network: str = SERVICENET,
    ) -> None:
        self.api = api
        self.provider = provider
        self.policy = policy
        self.client = client
        self.pace = pace
        self.restore_network = restore_network

    @property
    def server_id(self) -> str:
        """The cloud server's UUID."""
        return str(self.provider.server_id)

    def _where(self, server: Server) -> str:
        return f"{server.name} (rackspace {self.provider.region} {self.server_id})"

    # ------------------------------------------------------------------ records

    def _record(
        self,
        image: dict[str, Any],
        server_name: str,
        volume_snapshots: builtins.list[dict[str, Any]] | None = None,
    ) -> SnapshotRecord:
        """The record of an image and the volume snapshots taken with it."""
        size = image.get("size")
        min_disk = image.get("min_disk")
        image_id = str(image["id"])
        snapshots = [
            v
            for v in (volume_snapshots or [])
            if str((v.get("metadata") or {}).get(TAG_IMAGE, "")) == image_id
        ]
        by_volume = {str(v.get("volume_id")): v for v in snapshots}
        expected = [v for v in str(image.get(TAG_VOLUMES, "")).split(",") if v]
        states: dict[str, SnapshotState | None] = {
            volume: (
                _volume_snapshot_state(str(by_volume[volume].get("status", "")))
                if volume in by_volume
                else None
            )
            for volume in expected
        }
        missing = [v for v, state in states.items() if state is None]
        detail = str(image.get("name", ""))
        if expected:
            detail += f"; {len(expected)} volume(s): {', '.join(expected)}"
        if missing:
            detail += f"; no snapshot of volume(s) {', '.join(missing)}"
        return SnapshotRecord(
            provider="rackspace",
            kind="image",
            server=server_name,
            client=str(image.get(TAG_CLIENT, "")),
            change_ref=str(image.get(TAG_CHANGE_REF, "")),
            ids=[image_id, *(str(by_volume[v]["id"]) for v in expected if v in by_volume)],
            state=set_state(_image_state(str(image.get("status", ""))), states),
            encrypted=None,
            created_at=parse_time(image.get("created_at")),
            size_gb=int(min_disk) if isinstance(min_disk, int) and min_disk > 0 else None,
            size_bytes=int(size) if isinstance(size, int) else None,
            detail=detail,
        )

    def _volume_snapshots(
        self, server: Server, change_ref: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """The caretaker volume snapshots of the server (none without block storage)."""
        if not self.api.has("volume"):
            return []
        wanted = {TAG_MANAGED: "true", TAG_SERVER: server.name}
        if self.client:
            wanted[TAG_CLIENT] = self.client
        if change_ref is not None:
            wanted[TAG_CHANGE_REF] = change_ref
        body = self.api.get_json("volume", "/snapshots/detail", what="list volume snapshots")
        return [
            snap
            for snap in body.get("snapshots", [])
            if all(str((snap.get("metadata") or {}).get(k, "")) == v for k, v in wanted.items())
        ]

    def attachments(self) -> builtins.list[dict[str, Any]]:
        """The server's volume attachments (``id``, ``volumeId``, ``device``), by device."""
        body = self.api.get_json(
            "compute",
            f"/servers/{self.server_id}/os-volume_attachments",
            what="volume attachments",
        )
        found = [a for a in body.get("volumeAttachments", []) if isinstance(a, dict)]
        return sorted(found, key=lambda a: str(a.get("device", "")))

    def _images(
        self, server: Server, change_ref: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """The caretaker images of the server, following the API's ``next`` links."""
        wanted = {TAG_MANAGED: "true", TAG_SERVER: server.name}
        if self.client:
            wanted[TAG_CLIENT] = self.client
        if change_ref is not None:
            wanted[TAG_CHANGE_REF] = change_ref
        params: dict[str, str] | None = {**wanted, "limit": "100"}
        path = "/images"
        images: builtins.list[dict[str, Any]] = []
        base = self.api.endpoint("image")
        while True:
            body = self.api.get_json("image", path, params=params, what="list images")
            images.extend(body.get("images", []))
            next_link = body.get("next")
            if not next_link:
                break
            # The link is relative to the API root (/v2/images?marker=...) and keeps the filters.
            split = urllib.parse.urlsplit(base)
            path = urllib.parse.urlunsplit((split.scheme, split.netloc, "", "", "")) + str(
                next_link
            )
            params = None
        # Filter again here: a cloud that ignores unknown filters must not widen the set.
        return [i for i in images if all(str(i.get(k, "")) == v for k, v in wanted.items())]

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """The image (and volume snapshots) already taken for ``change_ref``.

        A failed one, or one whose set misses a volume, does not count.
        """
        volumes = self._volume_snapshots(server, change_ref)
        records = sorted(
            (self._record(i, server.name, volumes) for i in self._images(server, change_ref)),
            key=lambda r: r.created_at,
        )
        usable = [r for r in records if r.state != "error"]
        return usable[-1] if usable else None

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """Every caretaker image of the server, with its volume snapshots, oldest first."""
        volumes = self._volume_snapshots(server)
        return sorted(
            (self._record(i, server.name, volumes) for i in self._images(server)),
            key=lambda r: r.created_at,
        )

    # ------------------------------------------------------------------ create / wait

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Ask Nova for an image of the server, tagged with the caretaker metadata.

        Every volume attached to the server gets a Cinder snapshot too, tagged with the
        image; the record's ids are the image's, then the volume snapshots'.

        Raises:
            SnapshotError: The policy requires encryption (not verifiable here); volumes
                are attached and the region has no block storage endpoint (nothing is
                made); or the API refused (the server is busy, over quota, ...).
        """
        where = self._where(server)
        if self.policy.require_encryption:
            raise SnapshotError(
                f"{where}: encryption is required but Rackspace images do not report"
                " encryption at rest; use another provider or record the risk"
            )
        attached = self.attachments()
        volumes = [str(a.get("volumeId")) for a in attached]
        if volumes and not self.api.has("volume"):
            raise SnapshotError(
                f"{where}: volume(s) {', '.join(volumes)} are attached but the account has no"
                f" block storage endpoint in {self.provider.region}, so they cannot be"
                " snapshotted; an image alone would not cover them. Nothing was made."
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        metadata = {
            **caretaker_tags(client, change_ref, server.name),
            TAG_KIND: "image",
            TAG_VOLUMES: ",".join(sorted(volumes)),
        }
        response = self.api.request(
            "compute",
            "POST",
            f"/servers/{self.server_id}/action",
            json={
                "createImage": {
                    "name": f"caretaker {server.name} {change_ref} {stamp}",
                    "metadata": metadata,
                }
            },
            what="createImage",
        )
        image_id = self._image_id(response)
        log.info("%s: image %s started", where, image_id)
        snapshot_ids = [
            self._snapshot_volume(server, client, change_ref, image_id, attachment, stamp)
            for attachment in sorted(attached, key=lambda a: str(a.get("volumeId")))
        ]
        return SnapshotRecord(
            provider="rackspace",
            kind="image",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[image_id, *snapshot_ids],
            state="pending",
            encrypted=None,
            created_at=datetime.now(UTC),
            detail=f"server {self.server_id}"
            + (f"; {len(volumes)} volume(s): {', '.join(sorted(volumes))}" if volumes else ""),
        )

    def _snapshot_volume(
        self,
        server: Server,
        client: str,
        change_ref: str,
        image_id: str,
        attachment: dict[str, Any],
        stamp: str,
    ) -> str:
        """Start a Cinder snapshot of one attached volume; return its id."""
        volume_id, device = str(attachment.get("volumeId")), str(attachment.get("device", ""))
        what = f"snapshot of volume {volume_id}"
        body = self.api.json_object(
            self.api.request(
                "volume",
                "POST",
                "/snapshots",
                json={
                    "snapshot": {
                        "volume_id": volume_id,
                        # The volume is attached (in use); Cinder needs force for that.
                        "force": True,
                        "display_name": f"caretaker {server.name} {change_ref} {device} {stamp}",
                        "display_description": f"with image {image_id}",
                        "metadata": {
                            **caretaker_tags(client, change_ref, server.name),
                            TAG_IMAGE: image_id,
                            TAG_DEVICE: device,
                        },
                    }
                },
                what=what,
            ),
            what,
        )
        try:
            snapshot_id = str(body["snapshot"]["id"])
        except (KeyError, TypeError) as exc:
            raise SnapshotError(f"rackspace {self.provider.region}: {what}: no id") from exc
        log.info("%s: %s started: %s", self._where(server), what, snapshot_id)
        return snapshot_id

    def _volume_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        body = self.api.get_json(
            "volume", f"/snapshots/{snapshot_id}", what=f"volume snapshot {snapshot_id}"
        )
        snapshot = body.get("snapshot")
        if not isinstance(snapshot, dict):
            raise SnapshotError(f"rackspace: volume snapshot {snapshot_id}: no snapshot")
        return snapshot

    def _image_id(self, response: httpx.Response) -> str:
        location = response.headers.get("Location", "")
        if location:
            return urllib.parse.urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("image_id"):
            return str(body["image_id"])
        raise SnapshotError(
            f"rackspace {self.provider.region}: createImage answered {response.status_code}"
            " without a Location header or image_id"
        )

    def _image(self, image_id: str) -> dict[str, Any]:
        return self.api.get_json("image", f"/images/{image_id}", what=f"image {image_id}")

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Poll the image until it is active, then each volume snapshot until it is available.

        Raises:
            SnapshotError: The image failed (``killed``/``error``/``deleted``) or a volume
                snapshot did (``error``), or either is not done within ``timeout_s`` (the
                message has the id and the last status).
        """
        image_id = record.ids[0]
        where = f"{record.server} (rackspace {self.provider.region})"
        last: dict[str, Any] = {}
        started = self.pace.clock()

        def probe() -> tuple[bool, str]:
            image = self._image(image_id)
            last.clear()
            last.update(image)
            status = str(image.get("status", "unknown"))
            if _image_state(status) == "error":
                raise SnapshotError(f"{where}: image {image_id} is in status {status}")
            return _image_state(status) == "completed", status

        self.pace.until(probe, f"{where}: image {image_id}", timeout_s=timeout_s, poll_s=poll_s)
        for snapshot_id in record.ids[1:]:

            def volume_probe(snapshot_id: str = snapshot_id) -> tuple[bool, str]:
                status = str(self._volume_snapshot(snapshot_id).get("status", "unknown"))
                if _volume_snapshot_state(status) == "error":
                    raise SnapshotError(
                        f"{where}: volume snapshot {snapshot_id} is in status {status}"
                    )
                return _volume_snapshot_state(status) == "completed", status

            remaining = max(0.0, timeout_s - (self.pace.clock() - started))
            self.pace.until(
                volume_probe,
                f"{where}: volume snapshot {snapshot_id}",
                timeout_s=remaining,
                poll_s=poll_s,
            )
        done = self._record(last, record.server)
        return record.model_copy(
            update={"state": "completed", "size_gb": done.size_gb, "size_bytes": done.size_bytes}
        )

    # ------------------------------------------------------------------ delete

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the image cannot be deleted: it is protected, or a server runs from it."""
        image_id = record.ids[0]
        response = self.api.request(
            "image", "GET", f"/images/{image_id}", allow=(404,), what=f"image {image_id}"
        )
        if response.status_code == 404:
            return None
        if self.api.json_object(response, f"image {image_id}").get("protected"):
            return f"image {image_id} is protected"
        servers = self.api.get_json(
            "compute", "/servers/detail", params={"image": image_id}, what="servers using image"
        ).get("servers", [])
        users = sorted(str(s.get("name") or s.get("id")) for s in servers)
        if users:
            return f"image {image_id} is the image of server(s) {', '.join(users)}"
        return None

    def delete(self, record: SnapshotRecord) -> None:
        """Delete the volume snapshots, then the image (already gone counts as deleted).

        Raises:
            SnapshotError: The image is in use (nothing is deleted), or the API refused.
        """
        reason = self.in_use(record)
        if reason:
            raise SnapshotError(f"{record.server}: not deleting {record.ids[0]}: {reason}")
        for snapshot_id in record.ids[1:]:
            self.api.request(
                "volume",
                "DELETE",
                f"/snapshots/{snapshot_id}",
                allow=(404,),
                what="delete volume snapshot",
            )
        self.api.request(
            "image", "DELETE", f"/images/{record.ids[0]}", allow=(404,), what="delete image"
        )
        log.info("%s: deleted %s", record.server, ", ".join(record.ids))

    # ------------------------------------------------------------------ servers

    def _server(self, server_id: str, allow_missing: bool = False) -> dict[str, Any] | None:
        response = self.api.request(
            "compute",
            "GET",
            f"/servers/{server_id}",
            allow=(404,) if allow_missing else (),
            what=f"server {server_id}",
        )
        if response.status_code == 404:
            return None
        server = self.api.json_object(response, f"server {server_id}").get("server")
        if not isinstance(server, dict):
            raise SnapshotError(f"rackspace {self.provider.region}: server {server_id}: no server")
        return server

    def _wait_active(self, server_id: str, timeout_s: float, image_id: str | None = None) -> None:
        def probe() -> tuple[bool, str]:
            found = self._server(server_id)
            assert found is not None
            status = str(found.get("status", "UNKNOWN")).upper()
            if status in _SERVER_FAILED:
                fault = found.get("fault", {}).get("message", "")
                raise SnapshotError(
                    f"server {server_id} is {status}" + (f": {fault}" if fault else "")
                )
            image = found.get("image")
            current = str(image.get("id")) if isinstance(image, dict) else str(image or "")
            task = found.get("OS-EXT-STS:task_state")
            # Right after a rebuild is accepted the server may still read ACTIVE with the
            # old image; only the new image with no task running means it is done.
            done = status == "ACTIVE" and not task and (image_id is None or current == image_id)
            return done, status + (f" ({task})" if task else "")

        self.pace.until(probe, f"server {server_id} to be ACTIVE", timeout_s=timeout_s)

    # ------------------------------------------------------------------ restore

    def _require_completed(self, record: SnapshotRecord) -> None:
        if record.provider != "rackspace":
            raise SnapshotError(
                f"{record.server}: a {record.provider} snapshot is not a rackspace one"
            )
        if record.state != "completed":
            raise SnapshotError(f"{record.server}: image {record.ids[0]} is {record.state}")

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Rebuild the server from the image, and put back its volumes from their snapshots.

        A new volume is made from each volume snapshot first (a failure there leaves the
        server untouched); then the server is rebuilt and waited for until ACTIVE; then
        each old volume is detached (and kept) and its new one attached at its device.

        Raises:
            SnapshotError: The record is not a completed image, a volume could not be made,
                the rebuild was refused, the server went to ERROR, a volume would not
                detach or attach, or a step is not done within the pace's ``state_timeout_s``.
        """
        self._require_completed(record)
        image_id = record.ids[0]
        where = self._where(server)
        try:
            replacements = [self._volume_from_snapshot(sid) for sid in record.ids[1:]]
            self.api.request(
                "compute",
                "POST",
                f"/servers/{self.server_id}/action",
                json={"rebuild": {"imageRef": image_id}},
                what="rebuild",
            )
            self._wait_active(self.server_id, self.pace.state_timeout_s, image_id=image_id)
            for old_volume, new_volume, device in replacements:
                self._swap_volume(old_volume, new_volume, device)
        except SnapshotError as exc:
            raise SnapshotError(f"{where}: restore from image {image_id} failed: {exc}") from exc
        swapped = "".join(f"; {old} -> {new} on {dev}" for old, new, dev in replacements)
        log.info("%s: rebuilt from image %s%s", where, image_id, swapped)

    def _volume_from_snapshot(self, snapshot_id: str) -> tuple[str, str, str]:
        """Make a volume from a volume snapshot; return (old volume, new volume, device)."""
        snapshot = self._volume_snapshot(snapshot_id)
        old_volume = str(snapshot.get("volume_id"))
        device = str((snapshot.get("metadata") or {}).get(TAG_DEVICE, ""))
        what = f"volume from snapshot {snapshot_id}"
        body = self.api.json_object(
            self.api.request(
                "volume",
                "POST",
                "/volumes",
                json={
                    "volume": {
                        "snapshot_id": snapshot_id,
                        "size": snapshot.get("size"),
                        "display_name": f"caretaker restore of {old_volume}",
                    }
                },
                what=what,
            ),
            what,
        )
        try:
            new_volume = str(body["volume"]["id"])
        except (KeyError, TypeError) as exc:
            raise SnapshotError(f"rackspace {self.provider.region}: {what}: no id") from exc
        self._wait_volume(new_volume, "available")
        return old_volume, new_volume, device

    def _swap_volume(self, old_volume: str, new_volume: str, device: str) -> None:
        """Detach the old volume (kept), attach the new one at the same device."""
        attachments = f"/servers/{self.server_id}/os-volume_attachments"
        self.api.request(
            "compute", "DELETE", f"{attachments}/{old_volume}", allow=(404,), what="detach volume"
        )
        self._wait_volume(old_volume, "available")
        self.api.request(
            "compute",
            "POST",
            attachments,
            json={"volumeAttachment": {"volumeId": new_volume, "device": device or None}},
            what="attach volume",
        )
        self._wait_volume(new_volume, "in-use")

    def _wait_volume(self, volume_id: str, wanted: str) -> None:
        def probe() -> tuple[bool, str]:
            body = self.api.get_json("volume", f"/volumes/{volume_id}", what=f"volume {volume_id}")
            volume = body.get("volume")
            status = str(volume.get("status", "unknown")) if isinstance(volume, dict) else "?"
            if status.lower().startswith("error"):
                raise SnapshotError(f"volume {volume_id} is in status {status}")
            return status.lower() == wanted, status

        self.pace.until(probe, f"volume {volume_id} to be {wanted}")

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Build a throwaway server from the image on ServiceNet only; time it to ACTIVE.

        The test server is always deleted (and waited for until it is gone), whatever
        happened; ``cleaned_up`` says whether that worked.
        """
        started = self.pace.clock()
        test_id: str | None = None
        ok, rto, detail = False, None, ""
        try:
            self._require_completed(record)
            original = self._server(self.server_id)
            assert original is not None
            flavor = original.get("flavor", {})
            flavor_id = flavor.get("id") if isinstance(flavor, dict) else flavor
            body = self.api.json_object(
                self.api.request(
                    "compute",
                    "POST",
                    "/servers",
                    json={
                        "server": {
                            "name": f"{server.name}-restore-test-{uuid.uuid4().hex[:8]}",
                            "imageRef": record.ids[0],
                            "flavorRef": flavor_id,
                            # No PublicNet: the copy must not answer on the Internet.
                            "networks": [{"uuid": self.restore_network}],
                            "metadata": {
                                TAG_RESTORE_TEST: server.name,
                                TAG_CHANGE_REF: record.change_ref,
                            },
                        }
                    },
                    what="create restore-test server",
                ),
                "create restore-test server",
            )
            test_id = str(body["server"]["id"])
            remaining = max(0.0, timeout_s - (self.pace.clock() - started))
            self._wait_active(test_id, remaining)
            rto = round(self.pace.clock() - started, 3)
            ok = True
            detail = (
                f"server {test_id} built from image {record.ids[0]} was ACTIVE in {rto:.1f}s"
                f" (network {self.restore_network} only)"
            )
        except (SnapshotError, KeyError, TypeError) as exc:
            detail = f"restore test failed: {exc}"
        finally:
            problem = self._delete_server(test_id) if test_id else None
        return restore_test_result(
            server,
            "rackspace",
            record,
            ok=ok,
            rto_s=rto,
            detail=detail,
            leftovers=[problem] if problem else [],
        )

    def _delete_server(self, server_id: str) -> str | None:
        """Delete a server and wait until the API no longer knows it; return any problem."""
        try:
            self.api.request(
                "compute", "DELETE", f"/servers/{server_id}", allow=(404,), what="delete server"
            )

            def gone() -> tuple[bool, str]:
                found = self._server(server_id, allow_missing=True)
                if found is None:
                    return True, "gone"
                return str(found.get("status", "")).upper() == "DELETED", str(found.get("status"))

            self.pace.until(gone, f"server {server_id} to be deleted")
        except SnapshotError as exc:
            return f"server {server_id}: {exc}"
        return None
