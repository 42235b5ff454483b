"""The ``rackspace`` provider: server images of one Rackspace cloud server.

Rackspace Cloud Servers are OpenStack: a snapshot is a server *image*.

* create: ``POST /servers/{id}/action {"createImage": {name, metadata}}``; the image id
  comes from the ``Location`` header (or the 2.45+ JSON body); the caretaker tags ride
  along as image metadata, which the image API v2 shows as image properties;
* wait: ``GET <image>/images/{id}`` until ``active`` (``queued``/``saving`` are pending,
  ``killed``/``deleted``/``error`` are failures);
* list/find: ``GET <image>/images?caretaker:server=...&caretaker:managed=true`` (paged);
* delete: ``DELETE <image>/images/{id}``; refused while the image is protected or a
  server runs from it (``GET /servers/detail?image=``), e.g. after a restore;
* restore: ``POST /servers/{id}/action {"rebuild": {"imageRef": id}}``, then wait ACTIVE;
* restore test: ``POST /servers`` from the image on ServiceNet only (no public network),
  wait ACTIVE, record the RTO, and always ``DELETE`` the server and wait until it is gone.

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


def _image_state(status: str) -> SnapshotState:
    return _IMAGE_STATES.get(status.lower(), "pending")


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

    def _record(self, image: dict[str, Any], server_name: str) -> SnapshotRecord:
        size = image.get("size")
        min_disk = image.get("min_disk")
        return SnapshotRecord(
            provider="rackspace",
            kind="image",
            server=server_name,
            client=str(image.get(TAG_CLIENT, "")),
            change_ref=str(image.get(TAG_CHANGE_REF, "")),
            ids=[str(image["id"])],
            state=_image_state(str(image.get("status", ""))),
            encrypted=None,
            created_at=parse_time(image.get("created_at")),
            size_gb=int(min_disk) if isinstance(min_disk, int) and min_disk > 0 else None,
            size_bytes=int(size) if isinstance(size, int) else None,
            detail=str(image.get("name", "")),
        )

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
        """The image already taken for ``change_ref`` (a failed one does not count)."""
        records = sorted(
            (self._record(i, server.name) for i in self._images(server, change_ref)),
            key=lambda r: r.created_at,
        )
        usable = [r for r in records if r.state != "error"]
        return usable[-1] if usable else None

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """Every caretaker image of the server, oldest first."""
        return sorted(
            (self._record(i, server.name) for i in self._images(server)), key=lambda r: r.created_at
        )

    # ------------------------------------------------------------------ create / wait

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Ask Nova for an image of the server, tagged with the caretaker metadata.

        Raises:
            SnapshotError: The policy requires encryption (not verifiable here), or the
                API refused (the server is busy, over quota, ...).
        """
        where = self._where(server)
        if self.policy.require_encryption:
            raise SnapshotError(
                f"{where}: encryption is required but Rackspace images do not report"
                " encryption at rest; use another provider or record the risk"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        metadata = {**caretaker_tags(client, change_ref, server.name), TAG_KIND: "image"}
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
        return SnapshotRecord(
            provider="rackspace",
            kind="image",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[image_id],
            state="pending",
            encrypted=None,
            created_at=datetime.now(UTC),
            detail=f"server {self.server_id}",
        )

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
        """Poll the image until it is active.

        Raises:
            SnapshotError: The image failed (``killed``/``error``/``deleted``) or is not
                active within ``timeout_s`` (the message has the id and the last status).
        """
        image_id = record.ids[0]
        where = f"{record.server} (rackspace {self.provider.region})"
        last: dict[str, Any] = {}

        def probe() -> tuple[bool, str]:
            image = self._image(image_id)
            last.clear()
            last.update(image)
            status = str(image.get("status", "unknown"))
            if _image_state(status) == "error":
                raise SnapshotError(f"{where}: image {image_id} is in status {status}")
            return _image_state(status) == "completed", status

        self.pace.until(probe, f"{where}: image {image_id}", timeout_s=timeout_s, poll_s=poll_s)
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
        """Delete the image (already gone counts as deleted).

        Raises:
            SnapshotError: The image is in use (nothing is deleted), or the API refused.
        """
        reason = self.in_use(record)
        if reason:
            raise SnapshotError(f"{record.server}: not deleting {record.ids[0]}: {reason}")
        self.api.request(
            "image", "DELETE", f"/images/{record.ids[0]}", allow=(404,), what="delete image"
        )
        log.info("%s: deleted image %s", record.server, record.ids[0])

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
        """Rebuild the server from the image and wait until it is ACTIVE again.

        Raises:
            SnapshotError: The record is not a completed image, the rebuild was refused,
                the server went to ERROR, or it is not ACTIVE within the pace's ``state_timeout_s``.
        """
        self._require_completed(record)
        image_id = record.ids[0]
        where = self._where(server)
        try:
            self.api.request(
                "compute",
                "POST",
                f"/servers/{self.server_id}/action",
                json={"rebuild": {"imageRef": image_id}},
                what="rebuild",
            )
            self._wait_active(self.server_id, self.pace.state_timeout_s, image_id=image_id)
        except SnapshotError as exc:
            raise SnapshotError(f"{where}: restore from image {image_id} failed: {exc}") from exc
        log.info("%s: rebuilt from image %s", where, image_id)

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
