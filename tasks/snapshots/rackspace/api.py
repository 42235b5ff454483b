"""The Rackspace (OpenStack) API client the rackspace provider talks through.

Authentication is identity v2.0 ``POST /tokens`` with ``RAX-KSKEY:apiKeyCredentials``
(what Rackspace uses); the answer's service catalog gives the compute and image
endpoints of the server's region, and its block storage (``volume``, Cinder) endpoint
when the account has one. An expired token (401) re-authenticates once.

Every HTTP failure becomes a :class:`~core.errors.SnapshotError` in one place,
:meth:`RackspaceApi.request`: unreachable, timed out, rate limited (413, 429) and 5xx
are :class:`~core.errors.TransientSnapshotError`; the API key and the token never
appear in a message.
"""

from __future__ import annotations

import builtins
import urllib.parse
from collections.abc import Iterable
from typing import Any, Literal

import httpx

from blocks.rackspace import RackspaceCredentials
from core.errors import SnapshotError, TransientSnapshotError

REDACTED = "********"

Service = Literal["compute", "image", "volume"]


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
            if kind not in ("compute", "image", "volume"):
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
        """One authenticated call to the compute, image or block storage API of the region.

        A 401 (expired token) re-authenticates once and repeats the call: the refused
        call was not carried out, so repeating it is safe even for a POST.

        Args:
            service: ``compute``, ``image`` or ``volume``.
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
            url = path if path.startswith("http") else self.endpoint(service) + path
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

    def has(self, service: Service) -> bool:
        """Whether the account's catalog lists the service in this region (authenticates)."""
        if self._token is None:
            self.authenticate()
        return service in self._endpoints

    def endpoint(self, service: Service) -> str:
        """The service's endpoint URL (authenticates first if needed).

        Raises:
            SnapshotError: The catalog lists no such endpoint in the region (only block
                storage may be missing; compute and image are checked at authentication).
        """
        if not self.has(service):
            raise SnapshotError(
                f"rackspace: the account's service catalog has no {service} endpoint in"
                f" region {self.region}"
            )
        return self._endpoints[service]
