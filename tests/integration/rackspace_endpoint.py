"""A tiny local Rackspace: identity v2.0, compute v2, image v2 and block storage v1.

No OpenStack emulator is small enough to start in a test, so this answers exactly the
calls of ``tasks/snapshots/rackspace.py`` over real HTTP on ``127.0.0.1`` (a free port,
one thread per request), with the answers' shapes taken from the OpenStack and
Rackspace API references:

* ``POST /identity/v2.0/tokens`` (``RAX-KSKEY:apiKeyCredentials``): a token and a service
  catalog with a compute and an image endpoint per region;
* compute ``/compute/<region>/v2/<tenant>``: ``GET /servers/{id}``,
  ``GET /servers/detail?image=``, ``POST /servers``, ``DELETE /servers/{id}``,
  ``POST /servers/{id}/action`` with ``createImage`` (202 + ``Location``) or ``rebuild``;
* image ``/image/<region>/v2/<tenant>``: ``GET /images/{id}``, ``GET /images`` (property
  filters, ``limit``/``marker`` paging with a ``next`` link), ``DELETE /images/{id}``;
* compute volume attachments: ``GET|POST /servers/{id}/os-volume_attachments``,
  ``DELETE /servers/{id}/os-volume_attachments/{volume}``;
* block storage (Cinder v1, as Rackspace Cloud Block Storage) ``/volume/<region>/v1/<tenant>``:
  ``GET /snapshots/detail``, ``POST /snapshots`` (``force`` needed for an attached
  volume), ``GET|DELETE /snapshots/{id}``, ``POST /volumes`` (from a snapshot),
  ``GET /volumes/{id}``. ``block_storage=False`` leaves it out of the catalog.

Things move one step per look, like a slow cloud: an image is ``queued`` then ``saving``
then ``active``; a new server is ``BUILD`` then ``ACTIVE``; a deleted one lingers as
``DELETED`` once, then 404s; a volume snapshot is ``creating`` then ``available``; a
volume is ``creating``/``attaching``/``detaching`` for one look. Tests steer it with
attributes: ``hold_saving`` keeps new images saving, ``fail_images`` kills them,
``fail_builds`` puts new servers in ERROR, ``fail_volume_snapshots`` puts new volume
snapshots in ``error``, ``expire_tokens()`` makes the next call 401.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeRackspace:
    """The state of the fake cloud and the HTTP server answering for it."""

    def __init__(
        self,
        *,
        username: str = "caretaker",
        api_key: str = "rackspace-test-key",
        tenant: str = "123456",
        regions: tuple[str, ...] = ("DFW", "ORD"),
        page_size: int = 100,
        block_storage: bool = True,
    ) -> None:
        self.username = username
        self.api_key = api_key
        self.tenant = tenant
        self.regions = regions
        self.page_size = page_size
        self.block_storage = block_storage
        self.lock = threading.Lock()
        self.tokens: set[str] = set()
        self.images: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.volume_snapshots: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        #: The ``server`` part of every POST /servers, kept after the server is gone.
        self.builds: list[dict[str, Any]] = []
        self.hold_saving = False
        self.fail_images = False
        self.fail_builds = False
        self.fail_volume_snapshots = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        assert self._httpd is not None, "not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def auth_url(self) -> str:
        """The identity v2.0 root to put in the credentials block."""
        return f"{self.url}/identity/v2.0"

    def start(self) -> FakeRackspace:
        """Serve on a free loopback port in a daemon thread."""
        fake = self

        class Handler(_Handler):
            cloud = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def expire_tokens(self) -> None:
        """Every token issued so far is refused (401) from now on."""
        with self.lock:
            self.tokens.clear()

    def add_server(
        self, name: str, region: str = "DFW", image: str = "base-image", flavor: str = "general1-2"
    ) -> str:
        """A running server; returns its id."""
        server_id = str(uuid.uuid4())
        with self.lock:
            self.servers[server_id] = {
                "id": server_id,
                "name": name,
                "status": "ACTIVE",
                "image": {"id": image},
                "flavor": {"id": flavor},
                "metadata": {},
                "networks": [PUBLIC, SERVICE],
                "region": region,
                "pending": [],
            }
        return server_id

    def add_volume(self, server_id: str, device: str, size_gb: int = 100) -> str:
        """A volume attached to the server at ``device``; returns its id."""
        volume_id = str(uuid.uuid4())
        with self.lock:
            server = self.servers[server_id]
            self.volumes[volume_id] = {
                "id": volume_id,
                "display_name": f"{server['name']} {device}",
                "size": size_gb,
                "status": "in-use",
                "attachments": [{"server_id": server_id, "device": device}],
                "region": server["region"],
                "pending": [],
            }
        return volume_id

    def attached(self, server_id: str) -> dict[str, str]:
        """device -> volume id of what is attached to the server now."""
        with self.lock:
            return {
                a["device"]: v["id"]
                for v in self.volumes.values()
                for a in v["attachments"]
                if a["server_id"] == server_id
            }

    def add_image(self, region: str = "DFW", **properties: Any) -> str:
        """An image that exists already (e.g. an older snapshot), active; returns its id."""
        image_id = str(uuid.uuid4())
        with self.lock:
            self.images[image_id] = {
                "id": image_id,
                "name": properties.pop("name", f"image {image_id[:8]}"),
                "status": "active",
                "created_at": properties.pop("created_at", _now()),
                "size": 1_073_741_824,
                "min_disk": 20,
                "protected": False,
                "visibility": "private",
                "region": region,
                "pending": [],
                **properties,
            }
        return image_id

    def public_image(self, image: dict[str, Any]) -> dict[str, Any]:
        """An image as the API shows it (no internal fields)."""
        return {k: v for k, v in image.items() if k not in ("region", "pending")}

    def public_volume(self, volume: dict[str, Any]) -> dict[str, Any]:
        """A volume or volume snapshot as the API shows it."""
        return {k: v for k, v in volume.items() if k not in ("region", "pending")}

    def public_server(self, server: dict[str, Any]) -> dict[str, Any]:
        """A server as the API shows it."""
        return {k: v for k, v in server.items() if k not in ("region", "pending", "networks")}


PUBLIC = "00000000-0000-0000-0000-000000000000"
SERVICE = "11111111-1111-1111-1111-111111111111"


class _Handler(BaseHTTPRequestHandler):
    cloud: FakeRackspace

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for the tests."""

    # -- plumbing --------------------------------------------------------------------

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._reply(status, {kind: {"code": status, "message": message}})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        parts = [p for p in split.path.split("/") if p]
        query = dict(urllib.parse.parse_qsl(split.query))
        cloud = self.cloud
        with cloud.lock:
            cloud.requests.append((method, self.path))
        if parts[:3] == ["identity", "v2.0", "tokens"] and method == "POST":
            self._tokens()
            return
        with cloud.lock:
            authorised = self.headers.get("X-Auth-Token") in cloud.tokens
        if not authorised:
            self._error(401, "unauthorized", "The request you have made requires authentication.")
            return
        # /compute/<region>/v2/<tenant>/..., /image/<region>/v2/<tenant>/...,
        # /volume/<region>/v1/<tenant>/...
        if len(parts) < 4 or parts[2] not in ("v1", "v2") or parts[3] != cloud.tenant:
            self._error(404, "itemNotFound", "no such endpoint")
            return
        service, region, rest = parts[0], parts[1], parts[4:]
        with cloud.lock:
            if service == "compute":
                self._compute(method, region, rest, query)
            elif service == "image":
                self._image(method, region, rest, query)
            elif service == "volume" and cloud.block_storage:
                self._volume(method, region, rest)
            else:
                self._error(404, "itemNotFound", "no such service")

    # -- identity ----------------------------------------------------------------------

    def _tokens(self) -> None:
        cloud = self.cloud
        body = self._body() or {}
        creds = body.get("auth", {}).get("RAX-KSKEY:apiKeyCredentials", {})
        if creds.get("username") != cloud.username or creds.get("apiKey") != cloud.api_key:
            self._error(401, "unauthorized", "Username or api key is invalid.")
            return
        token = uuid.uuid4().hex
        with cloud.lock:
            cloud.tokens.add(token)
        base = cloud.url
        catalog = [
            {
                "name": "cloudServersOpenStack",
                "type": "compute",
                "endpoints": [
                    {
                        "region": r,
                        "tenantId": cloud.tenant,
                        "publicURL": f"{base}/compute/{r}/v2/{cloud.tenant}",
                    }
                    for r in cloud.regions
                ],
            },
            {
                "name": "cloudImages",
                "type": "image",
                "endpoints": [
                    {
                        "region": r,
                        "tenantId": cloud.tenant,
                        "publicURL": f"{base}/image/{r}/v2/{cloud.tenant}",
                    }
                    for r in cloud.regions
                ],
            },
            {"name": "cloudFiles", "type": "object-store", "endpoints": []},
        ]
        if cloud.block_storage:
            catalog.append(
                {
                    "name": "cloudBlockStorage",
                    "type": "volume",
                    "endpoints": [
                        {
                            "region": r,
                            "tenantId": cloud.tenant,
                            "publicURL": f"{base}/volume/{r}/v1/{cloud.tenant}",
                        }
                        for r in cloud.regions
                    ],
                }
            )
        self._reply(
            200,
            {
                "access": {
                    "token": {"id": token, "tenant": {"id": cloud.tenant}},
                    "serviceCatalog": catalog,
                    "user": {"name": cloud.username},
                }
            },
        )

    # -- compute -------------------------------------------------------------------------

    def _step_server(self, server: dict[str, Any]) -> None:
        """One look moves a server one step along its pending statuses."""
        if server["pending"]:
            server["status"] = server["pending"].pop(0)
            if server["status"] == "ACTIVE":
                server.pop("OS-EXT-STS:task_state", None)

    def _compute(self, method: str, region: str, rest: list[str], query: dict[str, str]) -> None:
        cloud = self.cloud
        servers = {k: v for k, v in cloud.servers.items() if v["region"] == region}
        if rest == ["servers", "detail"] and method == "GET":
            found = [
                cloud.public_server(s)
                for s in servers.values()
                if "image" not in query or s["image"]["id"] == query["image"]
            ]
            self._reply(200, {"servers": found})
            return
        if rest == ["servers"] and method == "POST":
            spec = (self._body() or {}).get("server", {})
            cloud.builds.append(spec)
            image = cloud.images.get(str(spec.get("imageRef")))
            if image is None or image["region"] != region or image["status"] != "active":
                self._error(400, "badRequest", f"Image {spec.get('imageRef')} is not active.")
                return
            server_id = str(uuid.uuid4())
            cloud.servers[server_id] = {
                "id": server_id,
                "name": spec.get("name"),
                "status": "BUILD",
                "image": {"id": image["id"]},
                "flavor": {"id": spec.get("flavorRef")},
                "metadata": spec.get("metadata", {}),
                "networks": [n.get("uuid") for n in spec.get("networks", [PUBLIC, SERVICE])],
                "region": region,
                "pending": ["BUILD", "ERROR" if cloud.fail_builds else "ACTIVE"],
            }
            if cloud.fail_builds:
                cloud.servers[server_id]["fault"] = {"message": "No valid host was found."}
            self._reply(202, {"server": {"id": server_id, "adminPass": "not-used"}})
            return
        if len(rest) < 2 or rest[0] != "servers" or rest[1] not in servers:
            self._error(404, "itemNotFound", "Instance could not be found")
            return
        server = servers[rest[1]]
        if len(rest) == 2 and method == "GET":
            self._step_server(server)
            if server["status"] == "DELETED":
                # Shown once as DELETED, then forgotten (later looks answer 404).
                del cloud.servers[server["id"]]
            self._reply(200, {"server": cloud.public_server(server)})
            return
        if len(rest) == 2 and method == "DELETE":
            server["status"] = "ACTIVE" if server["status"] == "BUILD" else server["status"]
            server["pending"] = ["DELETED"]
            self._reply(204)
            return
        if rest[2:] == ["action"] and method == "POST":
            self._action(server, region)
            return
        if rest[2:3] == ["os-volume_attachments"]:
            self._attachments(method, server, rest[3:])
            return
        self._error(404, "itemNotFound", "no such call")

    def _attachments(self, method: str, server: dict[str, Any], rest: list[str]) -> None:
        cloud = self.cloud
        mine = {
            v["id"]: a
            for v in cloud.volumes.values()
            for a in v["attachments"]
            if a["server_id"] == server["id"]
        }
        if method == "GET" and not rest:
            self._reply(
                200,
                {
                    "volumeAttachments": [
                        {
                            "id": volume_id,
                            "volumeId": volume_id,
                            "serverId": server["id"],
                            "device": a["device"],
                        }
                        for volume_id, a in mine.items()
                    ]
                },
            )
            return
        if method == "DELETE" and len(rest) == 1:
            if rest[0] not in mine:
                self._error(404, "itemNotFound", "Volume attachment could not be found")
                return
            volume = cloud.volumes[rest[0]]
            volume["attachments"] = []
            volume["status"], volume["pending"] = "detaching", ["available"]
            self._reply(202)
            return
        if method == "POST" and not rest:
            spec = (self._body() or {}).get("volumeAttachment", {})
            volume = cloud.volumes.get(str(spec.get("volumeId")))
            if volume is None or volume["status"] != "available":
                self._error(400, "badRequest", "Volume is not available to attach.")
                return
            device = str(spec.get("device") or f"/dev/xvd{chr(ord('b') + len(mine))}")
            if any(a["device"] == device for a in mine.values()):
                self._error(409, "conflictingRequest", f"{device} is in use")
                return
            volume["attachments"] = [{"server_id": server["id"], "device": device}]
            volume["status"], volume["pending"] = "attaching", ["in-use"]
            self._reply(200, {"volumeAttachment": {"id": volume["id"], "device": device}})
            return
        self._error(405, "badMethod", "not allowed")

    def _action(self, server: dict[str, Any], region: str) -> None:
        cloud = self.cloud
        body = self._body() or {}
        if server["status"] != "ACTIVE":
            self._error(409, "conflictingRequest", f"Cannot act on a server in {server['status']}")
            return
        if "createImage" in body:
            spec = body["createImage"]
            image_id = str(uuid.uuid4())
            final = "killed" if cloud.fail_images else "active"
            cloud.images[image_id] = {
                "id": image_id,
                "name": spec.get("name"),
                "status": "queued",
                "created_at": _now(),
                "size": 2_147_483_648,
                "min_disk": 40,
                "protected": False,
                "visibility": "private",
                "instance_uuid": server["id"],
                "image_type": "snapshot",
                # Nova turns the request's metadata into image properties (top level in v2).
                **{str(k): str(v) for k, v in spec.get("metadata", {}).items()},
                "region": region,
                "pending": ["saving"] + ([] if cloud.hold_saving else [final]),
            }
            location = f"{cloud.url}/compute/{region}/v2/{cloud.tenant}/images/{image_id}"
            self._reply(202, None, {"Location": location})
            return
        if "rebuild" in body:
            image = cloud.images.get(str(body["rebuild"].get("imageRef")))
            if image is None or image["status"] != "active":
                self._error(400, "badRequest", "Image is not active.")
                return
            server["image"] = {"id": image["id"]}
            server["status"] = "REBUILD"
            server["OS-EXT-STS:task_state"] = "rebuilding"
            server["pending"] = ["REBUILD", "ACTIVE"]
            self._reply(202, {"server": cloud.public_server(server)})
            return
        self._error(400, "badRequest", "unsupported action")

    # -- image ---------------------------------------------------------------------------

    def _image(self, method: str, region: str, rest: list[str], query: dict[str, str]) -> None:
        cloud = self.cloud
        images = {k: v for k, v in cloud.images.items() if v["region"] == region}
        if rest == ["images"] and method == "GET":
            limit = min(int(query.pop("limit", "100")), cloud.page_size)
            marker = query.pop("marker", None)
            matching = sorted(
                (i for i in images.values() if all(str(i.get(k)) == v for k, v in query.items())),
                key=lambda i: (i["created_at"], i["id"]),
            )
            if marker:
                ids = [i["id"] for i in matching]
                matching = matching[ids.index(marker) + 1 :] if marker in ids else []
            page = matching[:limit]
            body: dict[str, Any] = {"images": [cloud.public_image(i) for i in page]}
            if len(matching) > limit:
                params = urllib.parse.urlencode({**query, "limit": limit, "marker": page[-1]["id"]})
                body["next"] = f"/image/{region}/v2/{cloud.tenant}/images?{params}"
            self._reply(200, body)
            return
        if len(rest) != 2 or rest[0] != "images" or rest[1] not in images:
            self._error(404, "itemNotFound", "Image not found")
            return
        image = images[rest[1]]
        if method == "GET":
            if image["pending"]:
                image["status"] = image["pending"].pop(0)
            self._reply(200, cloud.public_image(image))
            return
        if method == "DELETE":
            if image["protected"]:
                self._error(403, "forbidden", "Image is protected")
                return
            del cloud.images[image["id"]]
            self._reply(204)
            return
        self._error(405, "badMethod", "not allowed")

    # -- block storage -------------------------------------------------------------------

    def _volume(self, method: str, region: str, rest: list[str]) -> None:
        cloud = self.cloud
        snapshots = {k: v for k, v in cloud.volume_snapshots.items() if v["region"] == region}
        volumes = {k: v for k, v in cloud.volumes.items() if v["region"] == region}
        if rest == ["snapshots", "detail"] and method == "GET":
            self._reply(200, {"snapshots": [cloud.public_volume(s) for s in snapshots.values()]})
            return
        if rest == ["snapshots"] and method == "POST":
            spec = (self._body() or {}).get("snapshot", {})
            volume = volumes.get(str(spec.get("volume_id")))
            if volume is None:
                self._error(404, "itemNotFound", "Volume could not be found")
                return
            if volume["status"] == "in-use" and not spec.get("force"):
                self._error(400, "badRequest", "Volume is attached: force is required")
                return
            snapshot_id = str(uuid.uuid4())
            cloud.volume_snapshots[snapshot_id] = {
                "id": snapshot_id,
                "display_name": spec.get("display_name"),
                "display_description": spec.get("display_description"),
                "volume_id": volume["id"],
                "size": volume["size"],
                "status": "creating",
                "created_at": _now(),
                "metadata": {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()},
                "region": region,
                "pending": ["error" if cloud.fail_volume_snapshots else "available"],
            }
            self._reply(200, {"snapshot": cloud.public_volume(cloud.volume_snapshots[snapshot_id])})
            return
        if rest == ["volumes"] and method == "POST":
            spec = (self._body() or {}).get("volume", {})
            source = snapshots.get(str(spec.get("snapshot_id")))
            if source is None or source["status"] != "available":
                self._error(400, "badRequest", "Snapshot is not available.")
                return
            volume_id = str(uuid.uuid4())
            cloud.volumes[volume_id] = {
                "id": volume_id,
                "display_name": spec.get("display_name"),
                "size": spec.get("size") or source["size"],
                "snapshot_id": source["id"],
                "status": "creating",
                "attachments": [],
                "region": region,
                "pending": ["available"],
            }
            self._reply(200, {"volume": cloud.public_volume(cloud.volumes[volume_id])})
            return
        if len(rest) == 2 and rest[0] in ("snapshots", "volumes"):
            found = (snapshots if rest[0] == "snapshots" else volumes).get(rest[1])
            if found is None:
                self._error(404, "itemNotFound", f"{rest[0][:-1].title()} could not be found")
                return
            kind = rest[0][:-1]
            if method == "GET":
                if found["pending"]:
                    found["status"] = found["pending"].pop(0)
                self._reply(200, {kind: cloud.public_volume(found)})
                return
            if method == "DELETE" and kind == "snapshot":
                del cloud.volume_snapshots[found["id"]]
                self._reply(202)
                return
        self._error(404, "itemNotFound", "no such call")


@contextmanager
def running(**kwargs: Any) -> Iterator[FakeRackspace]:
    """A started fake cloud, stopped at the end of the block."""
    cloud = FakeRackspace(**kwargs).start()
    try:
        yield cloud
    finally:
        cloud.stop()
