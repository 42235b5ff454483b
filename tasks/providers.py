"""The providers' hardware maintenance: EC2 scheduled events, shown before a change and in
the monthly report.

AWS maintains the hardware of EC2 instances and announces it as *scheduled events*
(``system-reboot``, ``instance-reboot``, ``system-maintenance``, ``instance-retirement``,
``instance-stop``) in ``describe_instance_status``. :func:`instance_events` asks for them
for every ``aws`` server of a client (through the snapshot provider's one EC2 boundary, so
botocore errors are translated there), :func:`parse_instance_events` reads the answer
(pure; completed and cancelled events are left out) and :func:`events_in` keeps those that
overlap a span, such as the maintenance window: a server with an event inside the window
is a warning the approver sees.

Rackspace: its Cloud Servers API (OpenStack Nova) has no endpoint for scheduled host
maintenance; Rackspace announces it by ticket and on its status page, and Cloud Feeds
reports server events after the fact. So a Rackspace server's maintenance is not read
here: docs/policy.md says so rather than inventing an endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import TransientSnapshotError
from history.change import Finding
from inventory import AwsProvider, Server, SnapshotPolicy
from tasks.snapshots.factory import provider_for

if TYPE_CHECKING:
    from tasks.snapshots.aws.provider import AwsSnapshotProvider

__all__ = [
    "ProviderEvent",
    "event_findings",
    "events_in",
    "instance_events",
    "parse_instance_events",
    "scheduled_events",
]

#: Descriptions EC2 prefixes to events that are over.
_FINISHED = ("[Completed]", "[Canceled]", "[Cancelled]")


class ProviderEvent(BaseModel):
    """One scheduled maintenance event of a server's provider."""

    model_config = ConfigDict(frozen=True)

    server: str
    provider: str = Field(description="aws")
    code: str = Field(description="EC2's event code, e.g. system-reboot.")
    description: str = ""
    not_before: datetime | None = Field(default=None, description="Earliest start (UTC).")
    not_after: datetime | None = Field(default=None, description="Latest end (UTC).")
    event_id: str | None = None

    def line(self) -> str:
        """``web-1: aws system-reboot 2026-12-05 02:00..04:00 UTC (scheduled reboot)``."""
        when = f"{self.not_before:%Y-%m-%d %H:%M}" if self.not_before else "?"
        until = f"..{self.not_after:%Y-%m-%d %H:%M}" if self.not_after else ""
        text = f" ({self.description})" if self.description else ""
        return f"{self.server}: {self.provider} {self.code} {when}{until} UTC{text}"


def parse_instance_events(
    response: Mapping[str, Any], servers_by_instance: Mapping[str, str]
) -> list[ProviderEvent]:
    """The scheduled events in a ``describe_instance_status`` answer (pure).

    Args:
        response: the answer (``InstanceStatuses``, each with ``Events``).
        servers_by_instance: instance id -> server name (instances not in it are left out).
    """
    out: list[ProviderEvent] = []
    for status in response.get("InstanceStatuses", []):
        server = servers_by_instance.get(str(status.get("InstanceId", "")))
        if server is None:
            continue
        for event in status.get("Events", []) or []:
            description = str(event.get("Description", ""))
            if description.startswith(_FINISHED):
                continue
            out.append(
                ProviderEvent(
                    server=server,
                    provider="aws",
                    code=str(event.get("Code", "unknown")),
                    description=description,
                    not_before=event.get("NotBefore"),
                    not_after=event.get("NotAfter"),
                    event_id=event.get("InstanceEventId"),
                )
            )
    return sorted(
        out, key=lambda e: (e.not_before.timestamp() if e.not_before else float("inf"), e.server)
    )


def events_in(
    events: Sequence[ProviderEvent], start: datetime, end: datetime
) -> list[ProviderEvent]:
    """The events that may fall inside ``[start, end)`` (pure): an event overlaps when it may
    begin before ``end`` and end after ``start``; one without dates is always kept."""
    kept = []
    for event in events:
        last = event.not_after or event.not_before
        if (event.not_before is None or event.not_before < end) and (last is None or last >= start):
            kept.append(event)
    return kept


def event_findings(events: Sequence[ProviderEvent], where: str) -> list[Finding]:
    """One warning per event, naming where it falls (``in the maintenance window``)."""
    return [
        Finding(
            server=e.server,
            severity="warning",
            summary=f"provider maintenance {where}: {e.line()}",
            detail=e.event_id or "",
            kind="provider-event",
        )
        for e in events
    ]


def instance_events(servers: Sequence[Server], client: str) -> list[ProviderEvent]:
    """Every scheduled event of the ``aws`` servers among ``servers``.

    Servers are grouped by credentials block and region: one ``describe_instance_status``
    call (``IncludeAllInstances``: stopped instances have events too) per group.

    Raises:
        SnapshotError: EC2 refused or could not be reached (translated at its boundary).
        ConfigError: a credentials block does not exist.
    """
    groups: dict[tuple[str, str], list[Server]] = {}
    for server in servers:
        if isinstance(server.provider, AwsProvider):
            key = (server.provider.credentials_block, server.provider.region)
            groups.setdefault(key, []).append(server)
    from tasks.snapshots.aws.instances import Instances  # boto only for a fleet with aws

    events: list[ProviderEvent] = []
    for members in groups.values():
        ec2 = cast(
            "AwsSnapshotProvider", provider_for(members[0], SnapshotPolicy(), client=client)
        ).ec2
        ids = {
            str(Instances(ec2, cast(AwsProvider, s.provider)).of(s)["InstanceId"]): s.name
            for s in members
        }
        statuses = ec2.pages(
            "describe_instance_status",
            "InstanceStatuses",
            InstanceIds=sorted(ids),
            IncludeAllInstances=True,
        )
        events += parse_instance_events({"InstanceStatuses": statuses}, ids)
    return events


def _transient(task: Any, run: Any, state: Any) -> bool:
    """Retry only what may pass (throttling, an unreachable endpoint), never a refusal."""
    try:
        state.result()
    except TransientSnapshotError:
        return True
    except Exception:  # anything else is final
        return False
    return False


@task(
    name="scheduled-events",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
def scheduled_events(servers: Sequence[Server], client: str) -> list[ProviderEvent]:
    """The providers' scheduled maintenance events for ``servers`` (read-only; retried once
    when EC2 was throttled or unreachable).

    Raises:
        SnapshotError: the provider could not be asked.
    """
    return instance_events(servers, client)
