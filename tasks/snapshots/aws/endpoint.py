"""The one boundary between the aws provider and botocore: every EC2 call goes through here.

:func:`translate` maps every botocore failure to ours: a throttled or unavailable
service (or any 5xx) and an unreachable endpoint are
:class:`~core.errors.TransientSnapshotError` (a read may simply be repeated); anything
else (refused, not found, missing credentials, invalid parameters, an answer that does
not parse) is a plain :class:`~core.errors.SnapshotError`. :class:`Ec2` raises them
``from`` the botocore exception, so the evidence stays attached.

:class:`Ec2` also carries the provider's :class:`~tasks.snapshots.base.Pace`: how long
and how often it looks at a resource that is changing state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from core.errors import SnapshotError, TransientSnapshotError
from tasks.limits import aws_api_call
from tasks.snapshots.base import Pace

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# Error codes that mean "slow down" or "try later": a read may simply be repeated.
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "ServiceUnavailable",
        "InternalError",
        "Unavailable",
    }
)
TRANSPORT = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def translate(exc: Exception, region: str, operation: str) -> SnapshotError:
    """Our error for a botocore failure of ``operation`` (the caller raises it ``from exc``).

    Args:
        exc: A ``ClientError`` or any ``BotoCoreError``.
        region: The provider's region, for the message.
        operation: The EC2 operation (``describe_snapshots``), for the message.

    Returns:
        A TransientSnapshotError for throttling, 5xx and transport failures, else a
        SnapshotError.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", exc))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"aws {region}: {operation}: {code}: {message}"
        if code in THROTTLING or status >= 500:
            return TransientSnapshotError(text)
        return SnapshotError(text)
    if isinstance(exc, TRANSPORT):
        return TransientSnapshotError(f"aws {region}: {operation}: endpoint unreachable: {exc}")
    # Missing credentials, invalid parameters, unparsable answers: not transient.
    return SnapshotError(f"aws {region}: {operation}: {exc}")


def is_not_found(exc: SnapshotError) -> bool:
    """The error is EC2 saying the resource does not exist (``*.NotFound``)."""
    cause = exc.__cause__
    return isinstance(cause, ClientError) and "NotFound" in str(
        cause.response.get("Error", {}).get("Code", "")
    )


class Ec2:
    """One boto3 EC2 client in one region, behind the one error boundary.

    Args:
        client: A boto3 EC2 client for the region (and endpoint).
        region: The region, named in every message.
        pace: How long and how often to look at a resource changing state.
    """

    def __init__(self, client: EC2Client, region: str, pace: Pace) -> None:
        self.client = client
        self.region = region
        self.pace = pace

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Call one EC2 operation; every botocore failure becomes a SnapshotError here.

        Each call first waits for a slot of the region's rate limit
        (``caretaker-aws-api-<region>``, shared by every worker: ``tasks.limits``).
        """
        aws_api_call(self.region)
        try:
            response: dict[str, Any] = getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, self.region, operation) from exc
        return response

    def pages(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """All items under ``key`` across NextToken pages."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = self.call(operation, **kwargs, **({"NextToken": token} if token else {}))
            items.extend(response.get(key, []))
            token = response.get("NextToken")
            if not token:
                return items

    def call_unless_gone(self, operation: str, **kwargs: Any) -> None:
        """Deleting what is already gone is success: retention may run twice."""
        try:
            self.call(operation, **kwargs)
        except SnapshotError as exc:
            if not is_not_found(exc):
                raise

    def image(self, image_id: str) -> dict[str, Any] | None:
        """The described image, or None when EC2 does not list it."""
        images = self.call("describe_images", ImageIds=[image_id]).get("Images", [])
        return images[0] if images else None
