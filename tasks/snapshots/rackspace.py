"""The ``rackspace`` provider: server images through the OpenStack compute and image APIs.

Rackspace Cloud Servers are OpenStack: a snapshot is a server *image*.

* authentication: identity v2.0 ``POST /tokens`` with ``RAX-KSKEY:apiKeyCredentials``
  (what Rackspace uses); the answer's service catalog gives the compute and image
  endpoints of the server's region;
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

Every HTTP failure becomes a :class:`~core.errors.SnapshotError` in one place,
:meth:`RackspaceApi.request`; the API key and the token never appear in a message.
"""

from __future__ import annotations

import builtins
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from blocks.rackspace import RackspaceCredentials
from core.errors import SnapshotError
from inventory import RackspaceProvider, Server, SnapshotPolicy
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

log = logging.getLogger(__name__)

#: Rackspace's public Internet network and its private ServiceNet.
PUBLICNET = "00000000-0000-0000-0000-000000000000"
SERVICENET = "11111111-1111-1111-1111-111111111111"
TAG_KIND = "caretaker:kind"
TAG_RESTORE_TEST = "caretaker:restore-test"
REDACTED = "********"

Service = Literal["compute", "image"]

_IMAGE_STATES: dict[str, SnapshotState] = {
    "queued": "pending",
    "saving": "pending",
    "uploading": "pending",
    "importing": "pending",
    "active": "completed",
    "killed": "error",
    "deleted": "error",
    "pending_delete": "error",
    "deactivated": "error",
    "error": "error",
    "unknown": "pending",
}
# Statuses in which a server will not become ACTIVE again without help.
_SERVER_FAILED = {"ERROR", "DELETED", "SOFT_DELETED", "SHUTOFF", "SUSPENDED", "UNKNOWN"}


def _image_state(status: str) -> SnapshotState:
    return _IMAGE_STATES.get(status.lower(), "pending")


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str) and value:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return datetime.now(UTC)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _error_message(response: httpx.Response) -> str:
    """The OpenStack error text: ``{"itemNotFound": {"message": ...}}`` or plain text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip()
    if isinstance(body, dict):
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
        if "message" in body:
            return str(body["message"])
    return str(body)[:300]


class RackspaceApi:
    """The few OpenStack calls the provider makes, with the token handled here.

    Args:
        credentials: The Rackspace credentials block.
        region: Region code whose endpoints are used (DFW, ORD, ...).
        transport: An httpx transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        credentials: RackspaceCredentials,
        region: str,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.credentials = credentials
        self.region = region
        self._http = httpx.Client(timeout=credentials.timeout_s, transport=transport)
        self._token: str | None = None
        self._endpoints: dict[str, str] = {}

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _secrets(self) -> builtins.list[str]:
        return [*self.credentials.secrets(), self._token or ""]

    # -- the one translation boundary ---------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientSnapshotError(
                f"rackspace {self.region}: {method} {url}: timed out"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientSnapshotError(
                _redact(f"rackspace {self.region}: {method} {url}: {exc}", self._secrets())
            ) from exc
        except httpx.HTTPError as exc:
            raise SnapshotError(
                _redact(f"rackspace {self.region}: {method} {url}: {exc}", self._secrets())
            ) from exc

    def _check(
        self, response: httpx.Response, what: str, allow: Iterable[int] = ()
    ) -> httpx.Response:
        """Raise the right SnapshotError for an error status (unless allowed)."""
        status = response.status_code
        if status < 400 or status in allow:
            return response
        text = _redact(
            f"rackspace {self.region}: {what}: HTTP {status}: {_error_message(response)}",
            self._secrets(),
        )
        # 413 is how Nova says "over the rate limit"; like 429 and 5xx, later may work.
        if status in (413, 429) or status >= 500:
            raise TransientSnapshotError(text)
        raise SnapshotError(text)

    def json_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The answer's JSON object, or SnapshotError."""
        try:
            body = response.json()
        except ValueError as exc:
            raise SnapshotError(f"rackspace {self.region}: {what}: answer is not JSON") from exc
        if not isinstance(body, dict):
            raise SnapshotError(f"rackspace {self.region}: {what}: answer is not a JSON object")
        return body

    # -- identity -----------------------------------------------------------------

    def authenticate(self) -> None:
        """Get a token and this region's compute and image endpoints from identity v2.0."""
        url = self.credentials.auth_url.rstrip("/") + "/tokens"
        response = self._check(
            self._send("POST", url, json=self.credentials.auth_request()), "authenticate"
        )
        body = self.json_object(response, "authenticate")
        try:
            access = body["access"]
            token = str(access["token"]["id"])
            catalog = access["serviceCatalog"]
        except (KeyError, TypeError) as exc:
            raise SnapshotError(
                f"rackspace {self.region}: authenticate: unexpected answer (no token/catalog)"
            ) from exc
        endpoints: dict[str, str] = {}
        for service in catalog:
            kind = service.get("type")
            if kind not in ("compute", "image"):
                continue
            for endpoint in service.get("endpoints", []):
                if str(endpoint.get("region", "")).upper() == self.region.upper():
                    endpoints[kind] = str(endpoint["publicURL"]).rstrip("/")
        missing = {"compute", "image"} - endpoints.keys()
        if missing:
            raise SnapshotError(
                f"rackspace: the account's service catalog has no {' or '.join(sorted(missing))}"
                f" endpoint in region {self.region}"
            )
        image = endpoints["image"]
        if "/v2" not in urllib.parse.urlsplit(image).path:
            # Plain OpenStack lists Glance without its version; Rackspace lists .../v2/<tenant>.
            endpoints["image"] = image + "/v2"
        self._token = token
        self._endpoints = endpoints

    # -- requests -----------------------------------------------------------------

    def request(
        self,
        service: Service,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        allow: Iterable[int] = (),
        what: str = "",
    ) -> httpx.Response:
        """One authenticated call to the compute or image API of the region.

        A 401 (expired token) re-authenticates once and repeats the call: the refused
        call was not carried out, so repeating it is safe even for a POST.

        Args:
            service: ``compute`` or ``image``.
            method: HTTP method.
            path: Path below the service endpoint (``/servers/{id}``) or a full URL.
            json: JSON body.
            params: Query parameters.
            allow: Error statuses returned instead of raised (e.g. 404 while deleting).
            what: What the call does, for messages.

        Raises:
            SnapshotError: Any HTTP error status not allowed, or a bad answer.
            TransientSnapshotError: The endpoint was unreachable, timed out, rate
                limited us or answered 5xx.
        """
        label = what or f"{method} {path}"
        allowed = tuple(allow)
        for attempt in (1, 2):
            if self._token is None:
                self.authenticate()
            url = path if path.startswith("http") else self._endpoints[service] + path
            response = self._send(
                method,
                url,
                json=json,
                params=params,
                headers={"X-Auth-Token": self._token or "", "Accept": "application/json"},
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            return self._check(response, label, allowed)
        raise SnapshotError(
            f"rackspace {self.region}: {label}: still unauthorised"
        )  # pragma: no cover

    def get_json(
        self, service: Service, path: str, *, params: dict[str, str] | None = None, what: str = ""
    ) -> dict[str, Any]:
        """GET and parse a JSON object."""
        return self.json_object(
            self.request(service, "GET", path, params=params, what=what), what or path
        )

    def endpoint(self, service: Service) -> str:
        """The service's endpoint URL (authenticates first if needed)."""
        if self._token is None:
            self.authenticate()
        return self._endpoints[service]


class RackspaceSnapshotProvider:
    """Images of one Rackspace cloud server.

    Args:
        api: The OpenStack client for the server's region.
        provider: The server's ``rackspace`` provider entry from the inventory.
        policy: The client's snapshot policy.
        client: The client slug; when given, ``find`` and ``list`` see only its images.
        state_timeout_s: Bound for a rebuild and for deleting a restore-test server.
        poll_s: Seconds between looks at a server.
        restore_network: The only network of a restore-test server (ServiceNet).
        sleep: Injected for tests.
        clock: Injected for tests.
    """

    name: ProviderName = "rackspace"

    def __init__(
        self,
        api: RackspaceApi,
        provider: RackspaceProvider,
        policy: SnapshotPolicy,
        *,
        client: str | None = None,
        state_timeout_s: float = 1800,
        poll_s: float = 5,
        restore_network: str = SERVICENET,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.provider = provider
        self.policy = policy
        self.client = client
        self.state_timeout_s = state_timeout_s
        self.poll_s = poll_s
        self.restore_network = restore_network
        self._sleep = sleep
        self._clock = clock

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
            created_at=_parse_time(image.get("created_at")),
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

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=poll_s,
            what=f"{where}: image {image_id}",
            sleep=self._sleep,
            clock=self._clock,
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

        poll_until(
            probe,
            timeout_s=timeout_s,
            poll_s=self.poll_s,
            what=f"server {server_id} to be ACTIVE",
            sleep=self._sleep,
            clock=self._clock,
        )

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
                the server went to ERROR, or it is not ACTIVE within ``state_timeout_s``.
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
            self._wait_active(self.server_id, self.state_timeout_s, image_id=image_id)
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
        started = self._clock()
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
            remaining = max(0.0, timeout_s - (self._clock() - started))
            self._wait_active(test_id, remaining)
            rto = round(self._clock() - started, 3)
            ok = True
            detail = (
                f"server {test_id} built from image {record.ids[0]} was ACTIVE in {rto:.1f}s"
                f" (network {self.restore_network} only)"
            )
        except (SnapshotError, KeyError, TypeError) as exc:
            detail = f"restore test failed: {exc}"
        finally:
            problem = self._delete_server(test_id) if test_id else None
        if problem:
            detail += f"; clean-up incomplete: {problem}"
        return RestoreTestResult(
            server=server.name,
            provider="rackspace",
            snapshot_ids=record.ids,
            ok=ok,
            rto_s=rto,
            detail=detail,
            cleaned_up=problem is None,
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

            poll_until(
                gone,
                timeout_s=self.state_timeout_s,
                poll_s=self.poll_s,
                what=f"server {server_id} to be deleted",
                sleep=self._sleep,
                clock=self._clock,
            )
        except SnapshotError as exc:
            return f"server {server_id}: {exc}"
        return None
