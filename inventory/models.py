"""The client inventory model: who the client is, when and how maintenance runs, the servers.

:class:`ClientInventory` is one ``clients/<slug>.yaml``: the client (slug, time zone,
approvers, notification blocks), the schedule and window, the rollout, patch,
restore-test, snapshot and monitoring policies, the server defaults and the servers (see
:mod:`inventory.servers`). Models are frozen and refuse unknown keys; window and cron
maths live in :mod:`inventory.schedule`, scope selection in :mod:`inventory.scope`.
"""

from __future__ import annotations

import difflib
import zoneinfo
from collections.abc import Sequence
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from core.errors import InventoryError
from inventory import schedule
from inventory.base import Model, duplicates, fail
from inventory.hygiene import Hygiene
from inventory.scope import BLOCK_KINDS, block_references, select_servers
from inventory.servers import DEFAULTABLE_KEYS, Server, ServerDefaults
from inventory.types import (
    ApprovalTimeout,
    ApproverName,
    BlockName,
    Cadence,
    ClockTime,
    CronExpression,
    Duration,
    Email,
    OnFailure,
    PackageName,
    PatchSelection,
    Reason,
    RebootPolicy,
    RestoreTimeout,
    SlaTarget,
    Slug,
    SnapshotMode,
    SshPublicKey,
    Text,
    TimeZoneName,
    Weekday,
    WindowDuration,
)

#: How old a change's snapshot may be when its server's batch starts (at most 7 days).
SnapshotMaxAge = Annotated[timedelta, Duration(timedelta(days=7))]


class Contact(Model):
    """The client's maintenance contact."""

    name: Text = Field(description="Who to talk to at the client about maintenance.")
    email: Email = Field(description="Their email address.")


class Approver(Model):
    """A person allowed to approve production changes for this client."""

    name: ApproverName = Field(
        description="Login-like name the approval form compares against (lowercase, e.g. alice)."
    )
    email: Email = Field(description="Where the approval request is sent.")
    ssh_key: SshPublicKey | None = Field(
        default=None,
        description=(
            "The approver's OpenSSH public key (one line of ~/.ssh/id_ed25519.pub; ed25519,"
            " ecdsa, or rsa of at least 3072 bits). An answer counts only when signed with it"
            " (ssh-keygen -Y sign -n caretaker-approval); without a key, none of this"
            " approver's answers can count. Each approver needs their own key."
        ),
    )


class Client(Model):
    """Who the client is and who decides about their changes."""

    slug: Slug = Field(
        description="Short identifier used in deployment names and paths; equals the file stem."
    )
    name: Text = Field(description="Display name used in reports and notifications.")
    timezone: TimeZoneName = Field(
        description="IANA time zone of the client; schedules and windows are read in it."
    )
    contact: Contact = Field(description="The client's maintenance contact.")
    approvers: tuple[Approver, ...] = Field(
        min_length=1, description="People who may approve production changes (at least one)."
    )
    approvals_required: StrictInt = Field(
        default=1,
        ge=1,
        description="How many distinct approvers must approve (1..number of approvers).",
    )
    notify: tuple[BlockName, ...] = Field(
        default=(),
        description="Names of Prefect notification blocks told about each maintenance run.",
    )

    @model_validator(mode="after")
    def _approvers_are_consistent(self) -> Self:
        for index, name in duplicates([a.name for a in self.approvers]):
            raise fail(
                f"approver {name!r} is listed more than once",
                "each approver name once",
                ("approvers", index, "name"),
            )
        keys: dict[str, str] = {}
        for index, approver in enumerate(self.approvers):
            if approver.ssh_key is None:
                continue
            key = " ".join(approver.ssh_key.split()[:2])
            if key in keys:
                raise fail(
                    f"approver {approver.name!r} has the same ssh_key as {keys[key]!r}:"
                    " one person could answer as both",
                    "each approver their own key",
                    ("approvers", index, "ssh_key"),
                )
            keys[key] = approver.name
        if self.approvals_required > len(self.approvers):
            raise fail(
                f"approvals_required is {self.approvals_required}"
                f" but only {len(self.approvers)} approver(s) are listed",
                f"1..{len(self.approvers)}",
                ("approvals_required",),
            )
        for index, name in duplicates(self.notify):
            raise fail(
                f"notification block {name!r} is listed more than once",
                "each block once",
                ("notify", index),
            )
        return self

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The client's time zone."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def approver_keys(self) -> dict[str, str | None]:
        """Each listed approver's public key, None for one without (who can never count)."""
        return {a.name: a.ssh_key for a in self.approvers}

    def approval_warnings(self) -> list[str]:
        """What keeps approvals from counting (shown by ``python -m inventory check``)."""
        keyless = [a.name for a in self.approvers if a.ssh_key is None]
        warnings = [
            f"approver {name} has no ssh_key: none of their answers can count" for name in keyless
        ]
        if len(self.approvers) - len(keyless) < self.approvals_required:
            warnings.append(
                f"approvals_required is {self.approvals_required} but only"
                f" {len(self.approvers) - len(keyless)} approver(s) have an ssh_key:"
                " no production change can be approved"
            )
        return warnings


class MaintenanceWindow(Model):
    """When changes may be made: a daily (weekly with ``weekday``) slot in the client's time zone.

    A slot starts at ``start`` local time and lasts ``duration`` of elapsed time, so it may
    cross midnight. On a DST change day a start time that does not exist is moved forward
    by the gap, and an ambiguous one takes its first occurrence.
    """

    start: ClockTime = Field(
        description="Local start time, HH:MM (24-hour clock, quote it in YAML)."
    )
    duration: WindowDuration = Field(
        description="Length of the window: seconds or '90m', '4h', '1h30m', '1d'; >0, at most 24h."
    )
    weekday: Weekday | None = Field(
        default=None,
        description=(
            "Restrict the window to this weekday (mon..sun); scheduled runs use the first such"
            " weekday of the period. Unset: every day."
        ),
    )

    def applies_on(self, day: date) -> bool:
        """Whether a slot starts on local date ``day``."""
        return schedule.applies_on(day, self.weekday)

    def slot_on(self, day: date, tz: tzinfo) -> tuple[datetime, datetime]:
        """The slot starting on local date ``day`` (applying or not), aware, in ``tz``."""
        return schedule.slot_on(day, self.start, self.duration, tz)

    def occurrences(
        self, start: datetime, end: datetime, tz: tzinfo
    ) -> list[tuple[datetime, datetime]]:
        """Slots overlapping ``[start, end)``, in order, as aware datetimes in ``tz``."""
        return schedule.windows_between(start, end, tz=tz, **self._slots())

    def contains(self, when: datetime, tz: tzinfo) -> bool:
        """Whether the aware datetime ``when`` is inside a slot (start inclusive, end exclusive)."""
        return schedule.in_window(when, tz=tz, **self._slots())

    def next_start(self, after: datetime, tz: tzinfo) -> datetime:
        """The first slot start strictly after the aware datetime ``after``, in ``tz``."""
        return schedule.next_window_start(after, tz=tz, **self._slots())

    def _slots(self) -> dict[str, Any]:
        return {"at": self.start, "duration": self.duration, "weekday": self.weekday}


class Schedule(Model):
    """How often maintenance runs and the window it runs in."""

    cadence: Cadence = Field(
        default="quarterly",
        description=(
            "quarterly (Jan/Apr/Jul/Oct), monthly, weekly, or cron (then `cron` is required)."
            " Runs start at window.start on the 1st of the period, or on the first window.weekday."
        ),
    )
    cron: CronExpression | None = Field(
        default=None,
        description="5-field cron expression in the client's time zone; only with cadence: cron.",
    )
    window: MaintenanceWindow = Field(description="When production changes may be made.")
    approval_timeout: ApprovalTimeout = Field(
        default=timedelta(hours=24),
        json_schema_extra={"default": "24h"},
        description="Wait this long for approval, then give up, production untouched (<= 7d).",
    )
    agreed_on: date | None = Field(
        default=None, description="Day the schedule was agreed with the client (YYYY-MM-DD)."
    )
    reviewed_on: date | None = Field(
        default=None, description="Day the schedule was last reviewed with the client."
    )
    review_every_months: StrictInt = Field(
        default=12,
        ge=1,
        le=60,
        description="Review the schedule at least this often; reports and audits flag it late.",
    )

    @model_validator(mode="after")
    def _reviewed_after_agreed(self) -> Self:
        if self.agreed_on and self.reviewed_on and self.reviewed_on < self.agreed_on:
            raise fail(
                f"reviewed_on {self.reviewed_on} is before agreed_on {self.agreed_on}",
                "a review on or after the day the schedule was agreed",
                ("reviewed_on",),
            )
        return self

    @model_validator(mode="after")
    def _cron_iff_cadence_cron(self) -> Self:
        if self.cadence == "cron" and self.cron is None:
            raise fail(
                "cadence is cron but no cron expression is given",
                "a 5-field cron expression such as '0 2 * * sat'",
                ("cron",),
            )
        if self.cadence != "cron" and self.cron is not None:
            raise fail(
                f"a cron expression is only used with cadence: cron (cadence is {self.cadence})",
                "remove `cron`, or set cadence: cron",
                ("cron",),
            )
        return self

    def review_problem(self, today: date) -> str | None:
        """Why the schedule's review is late on ``today`` (client's date), or None."""
        return schedule.review_problem(
            self.agreed_on, self.reviewed_on, self.review_every_months, today
        )

    def cron_expression(self) -> tuple[str, bool]:
        """The cron string for Prefect's ``CronSchedule`` and its ``day_or`` flag.

        Returns:
            ``(cron, day_or)``; ``day_or`` is False when day-of-month and day-of-week must
            both match ("the first Saturday": days 1-7 AND Saturday).
        """
        return schedule.cron_for(self.cadence, self.cron, self.window.start, self.window.weekday)


class Rollout(Model):
    """How production changes are rolled out."""

    batch_size: StrictInt = Field(
        default=1, ge=1, le=1000, description="Production servers patched at a time."
    )
    failures_tolerated: StrictInt = Field(
        default=0,
        ge=0,
        le=1000,
        description="Failed production servers tolerated before the rollout stops.",
    )
    on_failure: OnFailure = Field(
        default="halt",
        description=(
            "What happens to a failed production server: restore (roll it back from its"
            " snapshot, verify it, go on within the budget), ask (pause for a listed approver"
            " to decide), halt (leave it as it is and stop the rollout at once)."
        ),
    )
    no_staging: Reason | None = Field(
        default=None,
        description=(
            "Why this client has production servers but no staging server (who accepted the"
            " risk, e.g. 'single-server client, accepted by ACME CAB-12'); recorded in every"
            " change record as an accepted risk. Only allowed when there is no staging server."
        ),
    )

    @model_validator(mode="after")
    def _halt_tolerates_nothing(self) -> Self:
        if self.on_failure == "halt" and self.failures_tolerated > 0:
            raise fail(
                f"on_failure is halt, which stops the rollout at the first failed server, but"
                f" failures_tolerated is {self.failures_tolerated}",
                "failures_tolerated: 0 with on_failure: halt, or on_failure: restore | ask",
                ("failures_tolerated",),
            )
        return self

    def batches(self, servers: Sequence[Server]) -> list[tuple[Server, ...]]:
        """Split ``servers`` into consecutive batches of ``batch_size``."""
        return [
            tuple(servers[i : i + self.batch_size]) for i in range(0, len(servers), self.batch_size)
        ]


class PatchPolicy(Model):
    """What gets patched and whether servers reboot."""

    policy: PatchSelection = Field(
        default="all", description="all updates, or security updates only."
    )
    hold: tuple[PackageName, ...] = Field(default=(), description="Packages never upgraded (held).")
    reboot: RebootPolicy = Field(
        default="if-required",
        description="if-required (reboot when the OS says so), always, or never.",
    )

    @model_validator(mode="after")
    def _holds_are_unique(self) -> Self:
        for index, name in duplicates(self.hold):
            raise fail(
                f"package {name!r} is held more than once", "each package once", ("hold", index)
            )
        return self


class RestoreTest(Model):
    """Whether and how long the post-maintenance restore test runs."""

    enabled: StrictBool = Field(
        default=True, description="Restore a snapshot to a scratch host and verify it."
    )
    timeout: RestoreTimeout = Field(
        default=timedelta(minutes=15),
        json_schema_extra={"default": "15m"},
        description="Longest the restore may take (the RTO bound), at most 24h.",
    )


class SnapshotPolicy(Model):
    """How snapshots are taken and kept."""

    retention: StrictInt = Field(
        default=3, ge=1, le=100, description="Maintenance snapshots kept per server."
    )
    mode: SnapshotMode = Field(
        default="volumes",
        description="volumes (snapshot each volume) or ami (create an image; aws servers only).",
    )
    require_encryption: StrictBool = Field(
        default=False, description="Fail the snapshot step if a snapshot is not encrypted."
    )
    encrypted_copy: StrictBool = Field(
        default=False,
        description=(
            "Make an encrypted copy of unencrypted snapshots (aws);"
            " the copy satisfies require_encryption."
        ),
    )
    max_age: SnapshotMaxAge = Field(
        default=timedelta(hours=6),
        json_schema_extra={"default": "6h"},
        description=(
            "A production server's snapshot is taken right before its batch; a snapshot of the"
            " same change older than this (a rerun) is taken again (<= 7d)."
        ),
    )


class Monitoring(Model):
    """How health checks are judged, and the uptime the contract promises."""

    confirm_after: StrictInt = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Consecutive failed checks that confirm an outage (dated from the first failure);"
            " fewer are a blip and count as up."
        ),
    )
    sla_target_pct: SlaTarget | None = Field(
        default=None,
        description=(
            "Contracted uptime, % (e.g. 99.9); reports say whether it was met and how much of"
            " the allowed downtime was used. Unset: reports show the target as n/a."
        ),
    )
    min_coverage_pct: Annotated[StrictFloat, Field(ge=0, le=100)] = Field(
        default=90.0,
        description=(
            "Data coverage, % of a server's time in the period, below which reports judge no"
            " SLA: 'insufficient data' instead of met or missed."
        ),
    )


#: How long a report link (an S3 presigned URL) stays valid: at most 7 days (SigV4's limit).
LinkExpiry = Annotated[timedelta, Duration(timedelta(days=7))]


class Reports(Model):
    """Where the client's reports are delivered (docs/reports.md#delivery)."""

    storage: BlockName | None = Field(
        default=None,
        description=(
            "Name of a Prefect file-system block the reports are written to: prefect-aws"
            " S3Bucket (the link is a presigned URL), Prefect's LocalFileSystem (a file://"
            " link), or any other WritableFileSystem. Unset: the local folder"
            " <data>/reports on the machine that runs the report."
        ),
    )
    link_expiry: LinkExpiry = Field(
        default=timedelta(days=7),
        json_schema_extra={"default": "7d"},
        description="How long an S3 report link stays valid (<= 7d, S3's limit).",
    )


class ClientInventory(Model):
    """One client's inventory file (clients/<slug>.yaml)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # The loader drops top-level "x-..." keys (a home for YAML anchors); let editors know.
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )

    client: Client = Field(description="Who the client is and who approves changes.")
    schedule: Schedule = Field(description="When maintenance runs.")
    rollout: Rollout = Field(
        default_factory=Rollout, description="How production changes roll out."
    )
    patch: PatchPolicy = Field(default_factory=PatchPolicy, description="What gets patched.")
    restore_test: RestoreTest = Field(
        default_factory=RestoreTest, description="Restore-test settings."
    )
    snapshots: SnapshotPolicy = Field(
        default_factory=SnapshotPolicy, description="Snapshot settings."
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="Outage confirmation and the contracted uptime target.",
    )
    hygiene: Hygiene = Field(
        default_factory=Hygiene,
        description="Malware scan, unnecessary software, unused services, log review, stress.",
    )
    reports: Reports = Field(
        default_factory=Reports,
        description="Where reports are delivered; default the local folder.",
    )
    defaults: ServerDefaults = Field(
        default_factory=ServerDefaults,
        description="Values merged into every server that does not set them.",
    )
    servers: tuple[Server, ...] = Field(min_length=1, description="The servers (at least one).")

    _source: Path | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal when the content is equal, wherever it was loaded from."""
        if not isinstance(other, ClientInventory):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults")
        servers = data.get("servers")
        if isinstance(defaults, BaseModel):
            defaults = defaults.model_dump(exclude_none=True)
        if not isinstance(defaults, dict) or not isinstance(servers, list | tuple):
            return data
        inherited = {k: v for k, v in defaults.items() if k in DEFAULTABLE_KEYS and v is not None}
        merged = [
            {**inherited, **server} if isinstance(server, dict) else server for server in servers
        ]
        return {**data, "servers": merged}

    @model_validator(mode="after")
    def _servers_are_consistent(self) -> Self:
        for index, name in duplicates([s.name for s in self.servers]):
            raise fail(
                f"server name {name!r} is used more than once",
                "unique server names",
                ("servers", index, "name"),
            )
        for index, (address, port) in duplicates([(s.address, s.port) for s in self.servers]):
            raise fail(
                f"address {address}:{port} is used by more than one server",
                "one server entry per address and port",
                ("servers", index, "address"),
            )
        if self.production and not self.staging and self.rollout.no_staging is None:
            raise fail(
                f"production without staging: {len(self.production)} production server(s)"
                " but no staging server",
                "at least one server with role: staging, patched and verified before production;"
                " or rollout.no_staging: '<why, and who accepted the risk>'",
                ("servers",),
            )
        if self.staging and self.rollout.no_staging is not None:
            raise fail(
                f"rollout.no_staging is set but the client has staging server(s):"
                f" {', '.join(s.name for s in self.staging)}",
                "remove rollout.no_staging: staging servers are always patched and verified first",
                ("rollout", "no_staging"),
            )
        if self.snapshots.mode == "ami":
            for index, server in enumerate(self.servers):
                if server.provider.type not in ("aws", "none"):
                    raise fail(
                        f"snapshots.mode is ami but server {server.name!r}"
                        f" uses provider {server.provider.type}",
                        "mode: ami only with aws (or none) providers; use mode: volumes",
                        ("servers", index, "provider", "type"),
                    )
        return self

    # ---- convenience

    @property
    def slug(self) -> str:
        """The client's slug."""
        return self.client.slug

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The client's time zone."""
        return self.client.tz

    @property
    def source(self) -> Path | None:
        """The file this inventory was loaded from, if it was loaded by :func:`load_client`."""
        return self._source

    @property
    def staging(self) -> tuple[Server, ...]:
        """Staging servers, in file order."""
        return tuple(s for s in self.servers if s.role == "staging")

    @property
    def production(self) -> tuple[Server, ...]:
        """Production servers, in file order."""
        return tuple(s for s in self.servers if s.role == "production")

    def server(self, name: str) -> Server:
        """The server called ``name``.

        Raises:
            InventoryError: there is no such server (the message lists the known ones).
        """
        for server in self.servers:
            if server.name == name:
                return server
        names = [s.name for s in self.servers]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = str(self._source) if self._source else f"client {self.slug}"
        raise InventoryError(
            where,
            [f"{where}: servers: no server named {name!r}{hint} (allowed: {', '.join(names)})"],
        )

    def select(self, scope: str) -> tuple[Server, ...]:
        """Servers selected by ``scope`` (see :func:`select_servers`)."""
        return select_servers(self, scope)

    def production_batches(self) -> list[tuple[Server, ...]]:
        """Production servers split into rollout batches, in file order."""
        return self.rollout.batches(self.production)

    def in_window(self, when: datetime) -> bool:
        """Whether the aware datetime ``when`` is inside a maintenance window (client time zone)."""
        return self.schedule.window.contains(when, self.tz)

    def next_window_start(self, after: datetime) -> datetime:
        """Start of the first maintenance window strictly after ``after``, in the client's tz."""
        return self.schedule.window.next_start(after, self.tz)

    def windows_between(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Maintenance windows overlapping ``[start, end)`` (aware, client time zone)."""
        return self.schedule.window.occurrences(start, end, self.tz)

    def block_names(self) -> dict[str, set[str]]:
        """Names of the Prefect blocks referred to, by kind (see :data:`BLOCK_KINDS`)."""
        names: dict[str, set[str]] = {kind: set() for kind in BLOCK_KINDS}
        for kind, name, _ in block_references(self):
            names[kind].add(name)
        return names
