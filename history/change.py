"""The change record: what one maintenance run planned, did, and decided.

One :class:`ChangeRecord` is kept per maintenance run (per Prefect flow run). It is the
evidence the change-management process asks for: who asked for the change and when, the
window it ran in, the plan, how it would be backed out and how it was tested, the
snapshots taken, the packages changed on each host, the reboots, every verification,
every approval decision (counted or not, and why), the rollbacks, the restore test, the
hygiene and security findings, the outcome and the post-implementation review.

The record is written by the server-maintenance flow, saved in the history store
(:mod:`history.store`, one row per run, upserted as the run progresses) and shown as a
Prefect markdown artifact rendered by :func:`tasks.record_markdown.render_markdown`. This
module is the model only. Every field is described in ``docs/change-record.md``.

The parts (snapshots, package changes, ...) are frozen: once something happened it does
not change. The record itself is mutable, so the flow can append to its lists as the run
goes on; the store validates it again as a whole before saving.

Every timestamp is timezone-aware and normalised to UTC; a naive datetime is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "OUTCOME_MEANING",
    "RECORD_VERSION",
    "Approval",
    "ChangeRecord",
    "ChangeWindow",
    "Finding",
    "GateDecision",
    "HostResult",
    "Outcome",
    "PackageChange",
    "Performance",
    "PlanSummary",
    "Reboot",
    "RestoreTestResult",
    "Rollback",
    "SnapshotRecord",
    "Verification",
]

#: Version of the record's JSON body as stored in the history store. Bump it (and teach
#: the store to read the old shape) when a field is renamed or removed.
RECORD_VERSION: Literal[1] = 1


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware datetime, normalised to UTC (a naive one is a validation error).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]

Server = Annotated[str, Field(min_length=1, max_length=255)]


class Outcome(StrEnum):
    """How a maintenance run ended (see :data:`OUTCOME_MEANING`)."""

    COMPLETED = "completed"
    COMPLETED_WITH_ROLLBACKS = "completed-with-rollbacks"
    COMPLETED_WITH_FAILURES = "completed-with-failures"
    REJECTED = "rejected"
    APPROVAL_TIMEOUT = "approval-timeout"
    STAGING_FAILED = "staging-failed"
    HALTED = "halted"
    RESTORE_FAILED = "restore-failed"
    REFUSED = "refused"
    FAILED = "failed"
    DRY_RUN = "dry-run"


#: One sentence per outcome, used by the renderer, the notices and the docs.
OUTCOME_MEANING: dict[Outcome, str] = {
    Outcome.COMPLETED: "All planned changes were applied and verified.",
    Outcome.COMPLETED_WITH_ROLLBACKS: (
        "The change was applied, but some servers failed verification and were rolled back."
    ),
    Outcome.COMPLETED_WITH_FAILURES: (
        "The rollout finished within the failure budget, but some servers failed and were left"
        " as they were (nothing had changed on them, or the policy or an approver said so)."
    ),
    Outcome.REJECTED: "An approver rejected the change; production was not touched.",
    Outcome.APPROVAL_TIMEOUT: (
        "No approval arrived before the deadline; production was not touched."
    ),
    Outcome.STAGING_FAILED: (
        "Staging failed verification; approval was not requested and production was not touched."
    ),
    Outcome.HALTED: (
        "The rollout stopped part-way (failures past the budget, or the window closing);"
        " the servers it did not reach are untouched."
    ),
    Outcome.RESTORE_FAILED: (
        "A failed production server could not be restored (or failed its checks after the"
        " restore): the rollout stopped and the server needs an operator now."
    ),
    Outcome.REFUSED: (
        "The run was refused before anything changed: it broke a rule of the change procedure."
    ),
    Outcome.FAILED: "The run failed before it could finish; see the outcome detail.",
    Outcome.DRY_RUN: "Dry run: the plan was made and nothing was changed.",
}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChangeWindow(_Part):
    """The maintenance window a run belongs to, and whether it kept to it."""

    start: UtcDatetime = Field(description="Start of the client's maintenance window (UTC).")
    end: UtcDatetime = Field(description="End of the client's maintenance window (UTC).")
    inside: bool = Field(description="Whether the run started inside the window.")
    override: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description=(
            "Why the run went ahead outside the window (who allowed it and why);"
            " None when it ran inside the window or no override was given."
        ),
    )

    @model_validator(mode="after")
    def _ends_after_start(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} is not after its start {self.start}")
        return self


class PlanSummary(_Part):
    """What the run planned to change, summarised (the full plan is its own artifact)."""

    scope: str = Field(
        default="all", description="The run's scope parameter (all, staging, production, names)."
    )
    policy: Literal["all", "security"] = Field(
        description="Patch policy: every update, or security updates only."
    )
    staging: tuple[Server, ...] = Field(
        default=(), description="Staging servers in scope, patched and verified first."
    )
    production: tuple[Server, ...] = Field(
        default=(), description="Production servers in scope, patched after approval."
    )
    package_changes: int = Field(
        default=0, ge=0, description="Number of package changes planned over all servers."
    )
    reboots_expected: tuple[Server, ...] = Field(
        default=(), description="Servers expected to need a reboot."
    )
    not_planned: tuple[str, ...] = Field(
        default=(), description="Servers left out of the plan, each as 'server: why'."
    )
    hygiene: tuple[str, ...] = Field(
        default=(),
        description=(
            "The hygiene steps planned, one line each (packages removed, services disabled,"
            " malware scan, stress test), as the approvers saw them."
        ),
    )
    warnings: tuple[str, ...] = Field(
        default=(),
        description="What the approvers must weigh: providers' scheduled events in the window.",
    )
    order: tuple[Server, ...] = Field(
        default=(), description="Production servers in rollout order (least critical first)."
    )
    summary: str = Field(default="", description="Free text: anything else worth knowing.")


class SnapshotRecord(_Part):
    """A snapshot taken of one server before it was changed, or the risk accepted instead."""

    server: Server = Field(description="The server the snapshot is of.")
    provider: Literal["aws", "rackspace", "sandbox", "none"] = Field(
        description="Snapshot provider from the inventory (none: no snapshots possible)."
    )
    ids: tuple[str, ...] = Field(
        default=(), description="Provider ids (EBS snapshot ids, AMI id, Rackspace image id)."
    )
    encrypted: bool | None = Field(
        default=None, description="Whether every snapshot is encrypted; None when unknown."
    )
    state: Literal["completed", "pending", "failed", "skipped"] = Field(
        description=(
            "completed: usable for restore; pending: not finished when recorded;"
            " failed: the provider reported an error; skipped: no snapshot (see accepted_risk)."
        )
    )
    accepted_risk: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Why going ahead without a snapshot was accepted (the inventory's reason for"
            " provider 'none'); required when state is skipped."
        ),
    )
    detail: str = Field(default="", description="Provider messages, errors, copy ids.")

    @model_validator(mode="after")
    def _evidence_matches_state(self) -> Self:
        if self.state == "skipped" and not self.accepted_risk:
            raise ValueError(f"{self.server}: a skipped snapshot needs an accepted_risk reason")
        if self.state == "completed" and not self.ids:
            raise ValueError(f"{self.server}: a completed snapshot needs its ids")
        return self


class PackageChange(_Part):
    """One package changed on one host (installed, upgraded, downgraded or removed)."""

    server: Server = Field(description="The host the package changed on.")
    name: str = Field(min_length=1, description="Package name.")
    from_version: str | None = Field(
        default=None, description="Version before the change; None when newly installed."
    )
    to_version: str | None = Field(
        default=None, description="Version after the change; None when removed."
    )
    security: bool = Field(default=False, description="Whether it came from a security update.")

    @model_validator(mode="after")
    def _is_a_change(self) -> Self:
        if self.from_version is None and self.to_version is None:
            raise ValueError(f"{self.server}: {self.name} has neither a from nor a to version")
        return self


class Reboot(_Part):
    """A reboot of one host, proven by its boot id changing."""

    server: Server = Field(description="The host that was rebooted.")
    old_boot_id: str = Field(description="/proc/sys/kernel/random/boot_id before the reboot.")
    new_boot_id: str | None = Field(
        default=None, description="boot_id after the reboot; None when the host did not return."
    )
    seconds: float | None = Field(
        default=None, ge=0, description="Seconds from the reboot command until SSH answered."
    )

    @property
    def came_back(self) -> bool:
        """Whether the host answered again with a new boot id."""
        return self.new_boot_id is not None and self.new_boot_id != self.old_boot_id


class Performance(_Part):
    """What a server was doing when it was verified: the health check's metrics and the
    top processes (their command names only: arguments can hold secrets)."""

    load_1m: float | None = Field(default=None, description="1-minute load average.")
    cpus: int | None = Field(default=None, description="CPUs (for reading the load).")
    memory_used_pct: float | None = Field(default=None, description="Memory in use, %.")
    disk_used_pct: float | None = Field(default=None, description="Fullest filesystem, % used.")
    top_cpu: tuple[str, ...] = Field(
        default=(), description="Top processes by CPU: 'name (pid N): C% cpu, M% mem, R MiB'."
    )
    top_memory: tuple[str, ...] = Field(default=(), description="Top processes by resident memory.")


class Verification(_Part):
    """The result of verifying one server after its change."""

    server: Server = Field(description="The server verified.")
    phase: Literal["staging", "production"] = Field(
        description="staging: before approval; production: during the rollout."
    )
    checks: tuple[str, ...] = Field(
        default=(), description="Health checks run (tcp:22, http:..., systemd unit ...)."
    )
    expectations: tuple[str, ...] = Field(
        default=(),
        description="Expectations checked (versions as planned, new boot id, no failed units).",
    )
    passed: bool = Field(description="True when every check and expectation held.")
    failures: tuple[str, ...] = Field(
        default=(), description="What did not hold, one line each, with its evidence."
    )
    warnings: tuple[str, ...] = Field(
        default=(),
        description=(
            "What was not checked or was accepted by the policy (e.g. a pending reboot under"
            " reboot: never), one line each; never a failure."
        ),
    )
    at: UtcDatetime | None = Field(default=None, description="When the verification ended.")
    performance: Performance | None = Field(
        default=None,
        description="Load, memory, disk and the top processes at verification; None: not read.",
    )

    @model_validator(mode="after")
    def _failures_match_result(self) -> Self:
        if self.passed and self.failures:
            raise ValueError(f"{self.server}: passed, yet failures are listed")
        if not self.passed and not self.failures:
            raise ValueError(f"{self.server}: failed, but no failure says why")
        return self


class Approval(_Part):
    """One answer to the approval form, whether or not it counted."""

    approver: str = Field(min_length=1, description="Who answered (the form's approver field).")
    decision: Literal["approve", "reject"] = Field(description="What they decided.")
    at: UtcDatetime = Field(
        description="When the answer was given: the Prefect server's stored time of its run input."
    )
    comment: str = Field(default="", description="The approver's comment.")
    ticket: str | None = Field(
        default=None, description="Ticket reference given with the answer (change ticket)."
    )
    counted: bool = Field(
        description=(
            "Whether the answer counted (only listed approvers whose signature verifies,"
            " once each, count)."
        )
    )
    proof: str | None = Field(
        default=None,
        description=(
            "How the answer was proven: 'ssh-signature SHA256:<fingerprint of the approver's"
            " key>', or 'not proven: <why>'. None in records made before answers were signed."
        ),
    )
    plan_digest: str | None = Field(
        default=None,
        description=(
            "Digest of the production plan the answer was about (sha256:<hex>; part of the"
            " signed message, so a changed plan needs a new approval)."
        ),
    )
    not_counted_reason: str | None = Field(
        default=None,
        min_length=1,
        description="Why the answer did not count; required when counted is false.",
    )

    @model_validator(mode="after")
    def _reason_when_not_counted(self) -> Self:
        if not self.counted and not self.not_counted_reason:
            raise ValueError(f"approval by {self.approver}: not counted, but no reason given")
        if self.counted and self.not_counted_reason:
            raise ValueError(f"approval by {self.approver}: counted, yet a reason is given")
        return self


class Rollback(_Part):
    """A server restored from its snapshots after a failed change."""

    server: Server = Field(description="The server rolled back.")
    snapshot_ids: tuple[str, ...] = Field(default=(), description="Snapshots it was restored from.")
    restored_ok: bool = Field(description="Whether the provider restore succeeded.")
    verified_ok: bool = Field(description="Whether the server passed its checks after restore.")
    changed: bool = Field(
        default=True,
        description=(
            "Whether this change had changed the server; False: it failed before anything"
            " changed (e.g. the dpkg lock was held), so it was not restored."
        ),
    )
    detail: str = Field(default="", description="What happened, with evidence.")


class RestoreTestResult(_Part):
    """The restore test: a snapshot restored to a scratch server and verified."""

    server: Server = Field(description="The server whose snapshot was restored.")
    snapshot_id: str | None = Field(default=None, description="The snapshot restored.")
    ok: bool = Field(description="Whether the restored copy came up and passed its checks.")
    rto_s: float | None = Field(
        default=None, ge=0, description="Seconds from restore start to a verified copy (RTO)."
    )
    rto_bound_s: float | None = Field(
        default=None, ge=0, description="The RTO bound from the inventory (restore_test.timeout)."
    )
    detail: str = Field(default="", description="What happened, with evidence.")


class GateDecision(_Part):
    """One gate of the procedure passed, used with an override, or closed."""

    gate: Literal["staging", "window", "snapshot", "package-set", "resume"] = Field(
        description=(
            "staging: production only after staging in the same change; window: inside the"
            " window with time left for the batch; snapshot: a fresh snapshot before the batch;"
            " package-set: production gets only versions staging was verified with; resume: a"
            " rerun continuing the change (the record continued, hosts skipped, the approval"
            " carried over or asked again)."
        )
    )
    batch: int | None = Field(
        default=None, ge=1, description="The production batch it was checked before; None: the run."
    )
    decision: str = Field(
        min_length=1,
        description=(
            "staging: in-scope, accepted-risk, refused, no-production; window: inside,"
            " override, closed, too-late; snapshot: taken, reused, retaken; package-set:"
            " same, production-only, refused; resume: continued, skipped, mid-patch,"
            " approval-carried-over, approval-needed."
        ),
    )
    at: UtcDatetime = Field(description="When the gate was checked.")
    by: str | None = Field(
        default=None, description="Who allowed it (the run's requester, for an override)."
    )
    detail: str = Field(default="", description="Why, with the numbers (time left, reason).")


class HostResult(StrEnum):
    """Where one production server ended up (``ChangeRecord.production_results``)."""

    PATCHED = "patched"  # patched and verified
    RESTORED = "restored"  # failed, restored from its snapshot and verified
    UNCHANGED = "unchanged"  # failed before anything changed on it; not restored
    UNTOUCHED = "untouched"  # the rollout never started it
    FAILED = "failed"  # failed and left as it is, or its restore failed: an operator's job


class Finding(_Part):
    """One hygiene or security finding."""

    server: str | None = Field(default=None, description="The server; None for the whole client.")
    severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="info: for the record; warning: to fix; critical: now."
    )
    summary: str = Field(min_length=1, description="One line: what was found.")
    detail: str = Field(default="", description="Evidence (command output tail, file, port).")
    kind: str = Field(
        default="",
        max_length=32,
        description=(
            "What found it: malware, software, services, logs, stress, provider-event,"
            " schedule; empty for the security audit's suite."
        ),
    )


class ChangeRecord(BaseModel):
    """Everything one maintenance run planned, did and decided.

    Mutable: the flow fills the lists in as the run goes (``record.snapshots.append(...)``)
    and sets ``outcome`` and ``ended`` last. ``outcome`` is None while the run is going
    (a record saved early and never finished shows a run that died).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    record_version: Literal[1] = Field(
        default=RECORD_VERSION, description="Version of this record's shape."
    )
    client: str = Field(min_length=1, max_length=64, description="Client slug.")
    change_ref: str = Field(
        min_length=1, max_length=128, description="Change reference (ticket) the run implements."
    )
    flow_run_id: str = Field(
        min_length=1, max_length=64, description="The Prefect flow run that did the work."
    )
    requester: str = Field(
        min_length=1,
        description="Who asked for the run: a user, or 'schedule' for a scheduled run.",
    )
    window: ChangeWindow = Field(description="The maintenance window and whether it was kept.")
    plan: PlanSummary | None = Field(
        default=None, description="What was planned; None when the run failed before planning."
    )
    backout_plan: str = Field(default="", description="How the change is undone (markdown).")
    test_plan: str = Field(default="", description="How the change is verified (markdown).")
    snapshots: list[SnapshotRecord] = Field(default_factory=list, description="Snapshots taken.")
    package_changes: list[PackageChange] = Field(
        default_factory=list, description="Packages changed, per host."
    )
    reboots: list[Reboot] = Field(default_factory=list, description="Reboots, per host.")
    verifications: list[Verification] = Field(
        default_factory=list, description="Verification results, staging then production."
    )
    approvals_required: int = Field(
        default=1, ge=0, description="Counted approvals needed (the inventory's setting)."
    )
    approvals: list[Approval] = Field(
        default_factory=list, description="Every approval answer, counted or not."
    )
    approval_plan: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "The production plan approval was last asked for, in the canonical form whose"
            " digest approvers sign (per host: package changes [name, from, to], removals);"
            " a rerun of the change checks what is left of it against this."
        ),
    )
    rollbacks: list[Rollback] = Field(default_factory=list, description="Servers rolled back.")
    gates: list[GateDecision] = Field(
        default_factory=list,
        description="Every gate checked: staging rule, window and time left per batch, snapshots.",
    )
    production_results: dict[str, HostResult] = Field(
        default_factory=dict,
        description=(
            "Where each production server in scope ended up: patched, restored, unchanged,"
            " untouched or failed (set when the run ends)."
        ),
    )
    restore_test: RestoreTestResult | None = Field(
        default=None, description="The restore test; None when it did not run."
    )
    hygiene_findings: list[Finding] = Field(
        default_factory=list, description="Autoremove, malware scan and log review findings."
    )
    security_findings: list[Finding] = Field(
        default_factory=list, description="Security audit findings (ports, users, updates)."
    )
    notification_failures: list[str] = Field(
        default_factory=list, description="Stakeholder notices that could not be sent."
    )
    outcome: Outcome | None = Field(
        default=None, description="How the run ended; None while it is still going."
    )
    outcome_detail: str = Field(
        default="", description="Why the run ended so: the error or decision, in a sentence."
    )
    review: str = Field(
        default="", description="Post-implementation review: what went well, what to change."
    )
    phase_seconds: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Wall time of each phase that ran (preflight, snapshots, staging, approval wait,"
            " production, restore test, retention), in seconds."
        ),
    )
    started: UtcDatetime = Field(description="When the run started (UTC).")
    ended: UtcDatetime | None = Field(default=None, description="When the run ended (UTC).")

    @model_validator(mode="after")
    def _ends_after_start(self) -> Self:
        if self.ended is not None and self.ended < self.started:
            raise ValueError(f"ended {self.ended} is before started {self.started}")
        return self

    @property
    def counted_approvals(self) -> list[Approval]:
        """Approvals that counted and said approve."""
        return [a for a in self.approvals if a.counted and a.decision == "approve"]

    @property
    def duration(self) -> timedelta | None:
        """How long the run took, once it ended."""
        return None if self.ended is None else self.ended - self.started
