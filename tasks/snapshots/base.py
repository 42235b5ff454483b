"""What every snapshot provider speaks: the records, the protocol, the shared pure helpers.

A *snapshot* here is whatever a provider can restore a server from: a crash-consistent
set of EBS snapshots or an AMI (aws), a server image (rackspace), a copy of a sandbox
host's disk layer (sandbox), or nothing at all with a recorded reason (none). Each is
described by one :class:`SnapshotRecord`, whichever provider made it, so the flow, the
change record and retention never need to know which cloud they talk to.

Every provider tags what it makes with ``caretaker:client``, ``caretaker:change-ref``,
``caretaker:server`` and ``caretaker:managed=true`` (AWS tags, OpenStack image metadata,
the sandbox's metadata file). The tags are what makes a rerun idempotent (``find``) and
what retention is allowed to see (``list`` returns caretaker-tagged snapshots only).

Pure helpers (no IO) live here too: :func:`select_for_deletion` (retention),
:func:`poll_until` (the bounded wait every provider uses, at a :class:`Pace`) and
:func:`restore_test_result` (a restore test's report, leftovers included).
"""

from __future__ import annotations

import builtins
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from core.errors import SnapshotError, TransientSnapshotError
from inventory import Server

ProviderName = Literal["aws", "rackspace", "sandbox", "none"]
SnapshotState = Literal["pending", "completed", "error", "accepted-risk"]
SnapshotKind = Literal["volumes", "ami", "image", "disk", "none"]

TAG_CLIENT = "caretaker:client"
TAG_CHANGE_REF = "caretaker:change-ref"
TAG_SERVER = "caretaker:server"
TAG_MANAGED = "caretaker:managed"


def caretaker_tags(client: str, change_ref: str, server: str) -> dict[str, str]:
    """The tags every caretaker snapshot carries, in every provider.

    Args:
        client: The client's slug.
        change_ref: The change (maintenance run) the snapshot belongs to.
        server: The inventory name of the server.

    Returns:
        ``{caretaker:client, caretaker:change-ref, caretaker:server, caretaker:managed}``.
    """
    return {
        TAG_CLIENT: client,
        TAG_CHANGE_REF: change_ref,
        TAG_SERVER: server,
        TAG_MANAGED: "true",
    }


class SnapshotRecord(BaseModel):
    """One snapshot (or one multi-volume set, or a recorded absence), as any provider sees it."""

    model_config = ConfigDict(frozen=True)

    provider: ProviderName = Field(description="Which provider made it.")
    kind: SnapshotKind = Field(
        description=(
            "volumes (EBS snapshot set), ami (EC2 image + its snapshots), image (OpenStack"
            " image), disk (sandbox disk copy) or none (risk accepted)."
        )
    )
    server: str = Field(description="Inventory name of the server.")
    client: str = Field(description="Client slug.")
    change_ref: str = Field(description="The change the snapshot was taken for.")
    ids: list[str] = Field(
        default_factory=list,
        description=(
            "Provider ids: the EBS snapshot ids of a set (root volume first), the AMI id"
            " followed by its snapshot ids, the image id, or the sandbox snapshot id."
        ),
    )
    state: SnapshotState = Field(description="pending, completed, error or accepted-risk.")
    encrypted: bool | None = Field(
        default=None,
        description="Whether every snapshot of the set is encrypted; None when unknowable.",
    )
    encrypted_copies: dict[str, str] = Field(
        default_factory=dict,
        description="Encrypted copies made of unencrypted snapshots: source id -> copy id.",
    )
    created_at: datetime = Field(description="When the snapshot was started (UTC).")
    size_gb: int | None = Field(default=None, description="Provisioned size (aws, rackspace).")
    size_bytes: int | None = Field(default=None, description="Bytes on disk (sandbox).")
    detail: str = Field(
        default="",
        description="Free text: the risk-acceptance reason (none), the provider's state message.",
    )
    reused: bool = Field(
        default=False,
        description="True when a rerun found this snapshot instead of taking a second one.",
    )

    @property
    def protected_by_encryption(self) -> bool:
        """Encrypted, or encrypted copies were made.

        Providers record copies only once every unencrypted snapshot of the set has one.
        """
        return bool(self.encrypted) or bool(self.encrypted_copies)

    @property
    def all_ids(self) -> list[str]:
        """The record's ids followed by its encrypted copies' ids."""
        return [*self.ids, *self.encrypted_copies.values()]


class RestoreTestResult(BaseModel):
    """What a restore test showed: could the snapshot boot, how long did it take, is it gone."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Inventory name of the server whose snapshot was tested.")
    provider: ProviderName = Field(description="Provider of the snapshot.")
    snapshot_ids: list[str] = Field(description="Ids of the snapshot that was restored.")
    ok: bool = Field(description="The restored copy booted and passed its checks.")
    rto_s: float | None = Field(
        default=None,
        description="Seconds from the start of the restore to the checks passing (None if not).",
    )
    detail: str = Field(default="", description="What was checked, or what went wrong.")
    cleaned_up: bool = Field(
        description="Everything the test created (instance, network, disk) is gone again."
    )
    started_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When the test started (UTC)."
    )


class SkippedDeletion(BaseModel):
    """A snapshot retention wanted to delete but did not, and why."""

    model_config = ConfigDict(frozen=True)

    record: SnapshotRecord
    reason: str


class RetentionResult(BaseModel):
    """What snapshot retention did for one server."""

    model_config = ConfigDict(frozen=True)

    server: str
    kept: list[SnapshotRecord] = Field(default_factory=list)
    deleted: list[SnapshotRecord] = Field(default_factory=list)
    skipped: list[SkippedDeletion] = Field(
        default_factory=list, description="Selected for deletion but still in use."
    )
    failed: list[SkippedDeletion] = Field(
        default_factory=list, description="Deletion was attempted and the provider refused."
    )

    @property
    def ok(self) -> bool:
        """No deletion failed (skipping one that is in use is not a failure)."""
        return not self.failed


@runtime_checkable
class SnapshotProvider(Protocol):
    """Takes, finds, waits for, restores, lists, deletes and restore-tests snapshots.

    One instance serves one server's provider configuration (see ``provider_for``).
    Every method raises :class:`~core.errors.SnapshotError` (or its subclass
    :class:`TransientSnapshotError`) and nothing else on purpose.
    """

    name: ProviderName

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        """The snapshot already taken for this change, if any (pending or completed)."""
        ...

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        """Start a snapshot (never called twice for one change: ``find`` first)."""
        ...

    def wait(self, record: SnapshotRecord, timeout_s: float, poll_s: float) -> SnapshotRecord:
        """Poll until completed; SnapshotError on the error state or at the timeout."""
        ...

    def restore(self, server: Server, record: SnapshotRecord) -> None:
        """Put the server back to the snapshot's state."""
        ...

    def list(self, server: Server) -> builtins.list[SnapshotRecord]:
        """The server's caretaker-tagged snapshots, oldest first."""
        ...

    def in_use(self, record: SnapshotRecord) -> str | None:
        """Why the snapshot must not be deleted now (e.g. it backs an AMI), or None."""
        ...

    def delete(self, record: SnapshotRecord) -> None:
        """Delete the snapshot; SnapshotError if it is still in use."""
        ...

    def restore_test(
        self, server: Server, record: SnapshotRecord, timeout_s: float
    ) -> RestoreTestResult:
        """Restore to a throwaway, isolated copy, check it, measure the RTO, clean up."""
        ...


# --------------------------------------------------------------------------- pure helpers


def select_for_deletion(
    records: Iterable[SnapshotRecord], keep: int, protect_ids: set[str]
) -> list[SnapshotRecord]:
    """Choose the snapshots retention deletes.

    Per server, the newest ``keep`` *completed* snapshots are kept. Failed snapshots
    (state ``error``) are useless for a restore, so they neither count towards ``keep``
    nor survive. Pending snapshots are in flight and accepted risks have nothing to
    delete: both are always kept. A record sharing any id with ``protect_ids`` (this
    run's snapshots) is never selected.

    Args:
        records: Snapshots of one or more servers, in any order.
        keep: How many completed snapshots to keep per server (>= 0).
        protect_ids: Ids that must survive whatever their age.

    Returns:
        The records to delete, oldest first.

    Raises:
        ValueError: ``keep`` is negative.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, not {keep}")
    by_server: dict[str, list[SnapshotRecord]] = defaultdict(list)
    for record in records:
        by_server[record.server].append(record)
    doomed: list[SnapshotRecord] = []
    for group in by_server.values():
        completed = sorted(
            (r for r in group if r.state == "completed"),
            key=lambda r: r.created_at,
            reverse=True,
        )
        doomed.extend(completed[keep:])
        doomed.extend(r for r in group if r.state == "error")
    return sorted(
        (r for r in doomed if not protect_ids.intersection(r.all_ids)),
        key=lambda r: r.created_at,
    )


def poll_until(
    probe: Callable[[], tuple[bool, str]],
    *,
    timeout_s: float,
    poll_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Call ``probe`` until it reports done, at most ``timeout_s`` seconds.

    ``probe`` returns ``(done, state)``; it raises SnapshotError itself for a state that
    can never get better (error), so only waiting is handled here.

    Args:
        probe: One look at the resource.
        timeout_s: The bound; the probe runs at least once even when it is 0.
        poll_s: Seconds between looks.
        what: Names the resource in the timeout message (ids included).
        sleep: Injected for tests.
        clock: Injected for tests.

    Returns:
        The last state the probe reported.

    Raises:
        SnapshotError: Not done within ``timeout_s``; the message names ``what`` and the
            last state seen.
    """
    deadline = clock() + timeout_s
    while True:
        done, state = probe()
        if done:
            return state
        remaining = deadline - clock()
        if remaining <= 0:
            raise SnapshotError(
                f"{what}: not done after {timeout_s:g}s (last state: {state or 'unknown'})"
            )
        sleep(min(poll_s, remaining))


def restore_test_result(
    server: Server,
    provider: ProviderName,
    record: SnapshotRecord,
    *,
    ok: bool,
    rto_s: float | None,
    detail: str,
    leftovers: list[str],
    separator: str = "; ",
) -> RestoreTestResult:
    """What a restore test reports, with what its clean-up left behind appended to ``detail``.

    Args:
        server: The server whose snapshot was tested.
        provider: The provider that ran the test.
        record: The snapshot tested.
        ok: The copy booted and passed its checks.
        rto_s: Seconds to that point, or None.
        detail: What was checked, or what failed.
        leftovers: What the clean-up could not remove (empty: ``cleaned_up``).
        separator: Joins the leftovers in the message.
    """
    if leftovers:
        detail += "; clean-up incomplete: " + separator.join(leftovers)
    return RestoreTestResult(
        server=server.name,
        provider=provider,
        snapshot_ids=record.ids,
        ok=ok,
        rto_s=rto_s,
        detail=detail,
        cleaned_up=not leftovers,
    )


@dataclass(frozen=True)
class Pace:
    """How long and how often a provider looks at a resource that is changing state.

    Args:
        state_timeout_s: Bound for a state change (a server or volume stopping,
            starting, rebuilding, going away).
        poll_s: Seconds between looks.
        sleep: Injected for tests.
        clock: Injected for tests.
    """

    state_timeout_s: float = 600
    poll_s: float = 2
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)

    def until(
        self,
        probe: Callable[[], tuple[bool, str]],
        what: str,
        *,
        timeout_s: float | None = None,
        poll_s: float | None = None,
    ) -> str:
        """:func:`poll_until` at this pace (or within the bound and interval given)."""
        return poll_until(
            probe,
            timeout_s=self.state_timeout_s if timeout_s is None else timeout_s,
            poll_s=self.poll_s if poll_s is None else poll_s,
            what=what,
            sleep=self.sleep,
            clock=self.clock,
        )


def parse_time(value: object) -> datetime:
    """A provider's timestamp (datetime or ISO 8601 text) in UTC; now when there is none."""
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


__all__ = [
    "TAG_CHANGE_REF",
    "TAG_CLIENT",
    "TAG_MANAGED",
    "TAG_SERVER",
    "Pace",
    "ProviderName",
    "RestoreTestResult",
    "RetentionResult",
    "SkippedDeletion",
    "SnapshotKind",
    "SnapshotProvider",
    "SnapshotRecord",
    "SnapshotState",
    "TransientSnapshotError",
    "caretaker_tags",
    "parse_time",
    "poll_until",
    "restore_test_result",
    "select_for_deletion",
    "utc",
]
