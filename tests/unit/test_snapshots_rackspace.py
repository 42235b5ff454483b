"""The Rackspace client's one translation boundary, against scripted answers (MockTransport),
and the provider's pure decisions (an image and its volume snapshots as one snapshot)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from blocks.rackspace import RackspaceCredentials
from core.errors import SnapshotError
from tasks.snapshots.base import SnapshotState, TransientSnapshotError
from tasks.snapshots.rackspace.api import RackspaceApi
from tasks.snapshots.rackspace.provider import set_state

API_KEY = "0123456789abcdef-secret-api-key"
IDENTITY = "https://identity.example/v2.0"


def credentials() -> RackspaceCredentials:
    return RackspaceCredentials(auth_url=IDENTITY, username="ops", api_key=SecretStr(API_KEY))


def catalog(
    token: str, image_url: str = "https://dfw.images.example/v2/123456"
) -> dict[str, object]:
    return {
        "access": {
            "token": {"id": token},
            "serviceCatalog": [
                {
                    "type": "compute",
                    "endpoints": [
                        {"region": "DFW", "publicURL": "https://dfw.servers.example/v2/123456"},
                        {"region": "ORD", "publicURL": "https://ord.servers.example/v2/123456"},
                    ],
                },
                {"type": "image", "endpoints": [{"region": "DFW", "publicURL": image_url}]},
            ],
        }
    }


def api(handler: Callable[[httpx.Request], httpx.Response], region: str = "DFW") -> RackspaceApi:
    return RackspaceApi(credentials(), region, transport=httpx.MockTransport(handler))


def with_identity(
    answer: Callable[[httpx.Request], httpx.Response], tokens: list[str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    issued = tokens if tokens is not None else []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2.0/tokens":
            body = json.loads(request.content)
            assert body["auth"]["RAX-KSKEY:apiKeyCredentials"] == {
                "username": "ops",
                "apiKey": API_KEY,
            }
            issued.append(f"token-{len(issued) + 1}")
            return httpx.Response(200, json=catalog(issued[-1]))
        return answer(request)

    return handler


def test_authentication_uses_the_api_key_and_picks_the_regions_endpoints() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.headers["X-Auth-Token"] == "token-1"
        return httpx.Response(200, json={"server": {"id": "s1"}})

    api(with_identity(answer)).get_json("compute", "/servers/s1")
    assert seen == ["https://dfw.servers.example/v2/123456/servers/s1"]


def test_a_region_missing_from_the_catalog_is_an_error_naming_it() -> None:
    client = api(with_identity(lambda r: httpx.Response(200, json={})), region="SYD")
    with pytest.raises(SnapshotError, match="no compute or image endpoint in region SYD"):
        client.get_json("compute", "/servers/s1")


def test_a_plain_openstack_image_endpoint_gets_its_v2_prefix() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2.0/tokens":
            return httpx.Response(200, json=catalog("t", image_url="https://glance.example:9292"))
        return httpx.Response(200, json={})

    assert api(handler).endpoint("image") == "https://glance.example:9292/v2"


def test_an_expired_token_is_renewed_once_and_the_call_repeated() -> None:
    tokens: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["X-Auth-Token"] == "token-1":
            return httpx.Response(401, json={"unauthorized": {"message": "expired"}})
        return httpx.Response(200, json={"ok": True})

    assert api(with_identity(answer, tokens)).get_json("image", "/images/i1") == {"ok": True}
    assert tokens == ["token-1", "token-2"]


def test_wrong_credentials_are_a_snapshot_error_without_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, json={"unauthorized": {"message": f"Username or api key {API_KEY} is invalid"}}
        )

    with pytest.raises(SnapshotError) as failure:
        api(handler).get_json("compute", "/servers/s1")
    assert "HTTP 401" in str(failure.value)
    assert API_KEY not in str(failure.value)


@pytest.mark.parametrize(
    ("response", "expected", "text"),
    [
        (
            httpx.Response(404, json={"itemNotFound": {"message": "Image not found"}}),
            SnapshotError,
            "HTTP 404: Image not found",
        ),
        (
            httpx.Response(409, json={"conflictingRequest": {"message": "busy"}}),
            SnapshotError,
            "HTTP 409: busy",
        ),
        (
            httpx.Response(413, json={"overLimit": {"message": "rate limit"}}),
            TransientSnapshotError,
            "HTTP 413",
        ),
        (httpx.Response(429, text="slow down"), TransientSnapshotError, "HTTP 429: slow down"),
        (httpx.Response(503, text="maintenance"), TransientSnapshotError, "HTTP 503"),
        (httpx.Response(200, text="<html>not json</html>"), SnapshotError, "answer is not JSON"),
        (httpx.Response(200, json=[1, 2]), SnapshotError, "not a JSON object"),
    ],
    ids=["404", "409", "413", "429", "503", "not-json", "not-object"],
)
def test_every_error_answer_becomes_the_right_snapshot_error(
    response: httpx.Response, expected: type[SnapshotError], text: str
) -> None:
    with pytest.raises(SnapshotError) as failure:
        api(with_identity(lambda r: response)).get_json("image", "/images/i1", what="image i1")
    assert type(failure.value) is expected
    assert text in str(failure.value)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("server hung up"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_failures_are_transient_and_chained(exc: httpx.HTTPError) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(TransientSnapshotError) as failure:
        api(with_identity(answer)).get_json("compute", "/servers/s1")
    assert failure.value.__cause__ is exc


def test_the_block_builds_the_rackspace_api_key_request_and_hides_the_key() -> None:
    block = credentials().model_copy(update={"tenant_id": "123456"})
    assert block.auth_request() == {
        "auth": {
            "RAX-KSKEY:apiKeyCredentials": {"username": "ops", "apiKey": API_KEY},
            "tenantId": "123456",
        }
    }
    assert API_KEY not in repr(block)


# ---- an image and its volume snapshots as one snapshot


@pytest.mark.parametrize(
    ("image", "volumes", "expected"),
    [
        ("completed", {}, "completed"),  # no volumes attached: the image is the snapshot
        ("pending", {}, "pending"),
        ("completed", {"vol-a": "completed", "vol-b": "completed"}, "completed"),
        ("completed", {"vol-a": "completed", "vol-b": "pending"}, "pending"),
        ("pending", {"vol-a": "completed"}, "pending"),
        ("completed", {"vol-a": "error"}, "error"),  # a failed volume snapshot fails the set
        ("error", {"vol-a": "completed"}, "error"),
        ("pending", {"vol-a": "error"}, "error"),
        ("completed", {"vol-a": "completed", "vol-b": None}, "error"),  # a volume left out
    ],
)
def test_an_image_counts_only_with_a_snapshot_of_every_volume_it_was_taken_with(
    image: SnapshotState, volumes: dict[str, SnapshotState | None], expected: SnapshotState
) -> None:
    assert set_state(image, volumes) == expected


def test_a_catalog_without_block_storage_is_known_and_named_when_asked_for() -> None:
    rackspace = api(with_identity(lambda request: httpx.Response(404)))

    assert rackspace.has("compute") and not rackspace.has("volume")
    with pytest.raises(SnapshotError, match="no volume endpoint in region DFW"):
        rackspace.endpoint("volume")
