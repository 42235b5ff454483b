"""Reruns of a change, and the package set production may get: pure decisions.

A run whose worker died leaves its change half done: staging patched and verified, an
approval recorded, some production batches patched. A rerun with the same change ref
continues that change instead of starting another one:

- :func:`continue_record`: the rerun's record becomes the continuation of the change's
  stored record (one change, one record): what was snapshotted, patched, verified and
  approved stays in it, and a ``resume`` gate names the run it continues.
- :func:`patched_hosts`: production hosts the record shows patched and verified in this
  change; the rerun skips them (no second snapshot, no second patch).
- :func:`remaining_plan`: what is left: the plan without the skipped hosts (a host that
  was mid-patch is planned from its facts: the remainder, or nothing).
- :func:`done_unrecorded`: approved changes apt no longer plans that the record does not
  show (a dead run did them before it could record them): named in the record.
- :func:`resume_point`: what the rerun skips, and whether the recorded counted approvals
  still stand: they were for the digest of the plan recorded with them, and what is left
  is a part of that plan (:func:`plan_left_of`); else a new approval, and why.
- :func:`package_set_rule`: production gets only versions staging was patched to and
  verified with in this change; a package no staging server got is named for the approvers.

``tests/unit/test_resume.py`` lists the cases as tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from history.change import ChangeRecord, GateDecision
from tasks.approval import digest_of
from tasks.packages import MaintenancePlan

__all__ = [
    "SAME_PACKAGE_SET",
    "ApprovalCarry",
    "PackageSet",
    "PackageSetDecision",
    "ResumePoint",
    "continue_record",
    "done_unrecorded",
    "package_set_rule",
    "patched_hosts",
    "plan_left_of",
    "remaining_plan",
    "resume_point",
    "staging_versions",
]

#: What a rerun takes over from the record it continues (everything the change did).
CONTINUED_FIELDS = (
    "snapshots",
    "package_changes",
    "reboots",
    "verifications",
    "approvals",
    "approval_plan",
    "rollbacks",
    "gates",
    "notification_failures",
    "phase_seconds",
    "started",
)


def continue_record(record: ChangeRecord, previous: ChangeRecord, now: datetime) -> None:
    """Make ``record`` (a rerun's, just begun) the continuation of ``previous`` (in place).

    The change's evidence (snapshots, package changes, reboots, verifications, approvals,
    rollbacks, gates, phase times, start) is taken over; the rerun's own flow run,
    requester, window and plan stay; the outcome is decided again at the end. A
    ``resume`` gate says which run it continues and how that run ended.

    Args:
        record: the rerun's new record (same client and change ref).
        previous: the change's stored record, written by an earlier flow run.
        now: when the rerun continues it (aware).
    """
    if (record.client, record.change_ref) != (previous.client, previous.change_ref):
        raise ValueError(
            f"{record.client} {record.change_ref} cannot continue"
            f" {previous.client} {previous.change_ref}"
        )
    for name in CONTINUED_FIELDS:
        value = getattr(previous, name)
        setattr(record, name, value.copy() if isinstance(value, list | dict) else value)
    ended = (
        f"ended {previous.outcome.value}: {previous.outcome_detail}"
        if previous.outcome is not None
        else "never ended (its worker died)"
    )
    record.gates.append(
        GateDecision(
            gate="resume",
            decision="continued",
            at=now,
            by=record.requester,
            detail=f"continues the change record of flow run {previous.flow_run_id}, which {ended}",
        )
    )


def patched_hosts(record: ChangeRecord, production: Iterable[str]) -> tuple[str, ...]:
    """The ``production`` hosts this change patched and verified, per its record (pure).

    A host counts when its last production verification passed and it was never rolled
    back in this change. A host that failed, was restored, or was never verified (its
    worker died mid-patch) does not: the rerun plans it again from its facts.
    """
    rolled_back = {r.server for r in record.rollbacks}
    done = []
    for name in production:
        verified = [v for v in record.verifications if v.server == name and v.phase == "production"]
        if verified and verified[-1].passed and name not in rolled_back:
            done.append(name)
    return tuple(done)


def remaining_plan(plan: MaintenancePlan, skipped: Sequence[str]) -> MaintenancePlan:
    """``plan`` without the production hosts a rerun skips (pure): what is left of the
    change. A host that was mid-patch when its worker died is in it as apt plans it now
    (the remainder, or nothing). On a first run (nothing skipped) it is ``plan``."""
    if not skipped:
        return plan
    hosts = [h for h in plan.hosts if not (h.role == "production" and h.server in skipped)]
    return plan.model_copy(update={"hosts": hosts})


def plan_left_of(
    approved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What ``now`` would do that ``approved`` does not hold (pure; empty: it is a part).

    Both are canonical production plans (``tasks.approval.production_canonical``). A host
    of ``now`` must be in ``approved``, and each of its changes ``[name, from, to]`` and
    removals must be there too: what is left of an approved plan (packages done since
    drop out of apt's plan) is a part of it; a new host, package, version or removal is
    not.
    """
    hosts = {str(h["server"]): h for h in approved}
    outside: list[str] = []
    for host in now:
        name = str(host["server"])
        was = hosts.get(name)
        if was is None:
            if host["changes"] or host["removals"]:
                outside.append(f"{name}: not in the approved plan")
            continue
        known = {tuple(c) for c in was["changes"]}
        outside += [
            f"{name}: {c[0]} {c[1] or '(new)'} → {c[2]}"
            for c in host["changes"]
            if tuple(c) not in known
        ]
        outside += [f"{name}: remove {r}" for r in host["removals"] if r not in was["removals"]]
    return outside


def done_unrecorded(
    record: ChangeRecord, plan_now: Sequence[Mapping[str, Any]]
) -> dict[str, list[str]]:
    """Approved changes that apt no longer plans and the record does not show (pure).

    On a rerun, a server that was mid-patch when its worker died may have got some (or
    all) of its approved packages before the dead run could record them: they are in the
    record's ``approval_plan`` but no longer in apt's plan. They are named so the record
    says what an earlier run of the change did without recording it (read from apt's
    plan, not from the package database: worded as such).

    Args:
        record: the change's record as continued.
        plan_now: the canonical production plan of what is left (skipped servers out).

    Returns:
        Server -> ``"name from → to"`` per such change; only servers with any.
    """
    approved = {str(h["server"]): h for h in record.approval_plan}
    recorded = {(c.server, c.name, c.to_version) for c in record.package_changes}
    found: dict[str, list[str]] = {}
    for host in plan_now:
        name = str(host["server"])
        was = approved.get(name)
        if was is None:
            continue
        left = {tuple(c) for c in host["changes"]}
        lines = [
            f"{c[0]} {c[1] or '(new)'} → {c[2]}"
            for c in was["changes"]
            if tuple(c) not in left and (name, c[0], c[2]) not in recorded
        ]
        if lines:
            found[name] = lines
    return found


class ApprovalCarry(StrEnum):
    """Whether a run asks for approval."""

    ASK = "ask"  # no counted approval in this change yet: ask, as any run does
    CARRIED_OVER = "approval-carried-over"  # approved earlier in this change, plan unchanged
    NEEDED = "approval-needed"  # approved earlier, but not this: ask again, say why


@dataclass(frozen=True)
class ResumePoint:
    """What a run skips and whether it asks for approval (a first run skips nothing)."""

    skip: tuple[str, ...]  # production hosts patched and verified earlier in this change
    approval: ApprovalCarry
    detail: str  # why, for the record ("" when simply asking)


def resume_point(
    record: ChangeRecord,
    production: Sequence[str],
    plan_now: Sequence[Mapping[str, Any]],
    required: int,
) -> ResumePoint:
    """Where a run of a change picks up (pure).

    The recorded counted approvals stand when the plan they were given for is still the
    plan: the record's ``approval_plan`` has the digest they signed, at least ``required``
    distinct approvers approved it and none rejected it, and what the run would do now is
    a part of it (:func:`plan_left_of`). Anything else asks again, saying why.

    Args:
        record: the change's record as continued (a first run's holds nothing).
        production: the production hosts in the run's scope.
        plan_now: the canonical production plan of what is left (:func:`remaining_plan`).
        required: the counted approvals the client needs.
    """
    skip = patched_hosts(record, production)
    counted = [a for a in record.approvals if a.counted]
    if not counted:
        return ResumePoint(skip, ApprovalCarry.ASK, "")
    approved = digest_of(list(record.approval_plan)) if record.approval_plan else None
    same = [a for a in counted if approved is not None and a.plan_digest == approved]
    approvers = sorted({a.approver for a in same if a.decision == "approve"})
    rejected = sorted({a.approver for a in same if a.decision == "reject"})
    outside = plan_left_of(record.approval_plan, plan_now)
    if approved is None or not same:
        why = "the record holds no plan with the digest the counted approvals signed"
    elif rejected:
        why = f"{', '.join(rejected)} rejected plan {approved} earlier in this change"
    elif len(approvers) < required:
        why = f"only {len(approvers)} of {required} approval(s) recorded for plan {approved}"
    elif outside:
        why = f"the production plan changed since {approved} was approved: " + "; ".join(outside)
    else:
        return ResumePoint(
            skip,
            ApprovalCarry.CARRIED_OVER,
            f"plan {approved} approved earlier in this change by {', '.join(approvers)};"
            " what is left of it now is part of it: no new approval asked",
        )
    return ResumePoint(skip, ApprovalCarry.NEEDED, why + ": a new approval is needed")


# ---- the same package set ---------------------------------------------------------------


#: The rule, as the refusal and the docs state it.
SAME_PACKAGE_SET = (
    "production gets only package versions that staging was patched to and verified with in"
    " this change"
)


class PackageSetDecision(StrEnum):
    """Whether the production plan keeps to what staging was verified with."""

    SAME = "same"  # every production change is a version staging got and passed with
    PRODUCTION_ONLY = "production-only"  # the rest are packages no staging server got: named
    REFUSED = "refused"  # a package staging got in another version than production would


@dataclass(frozen=True)
class PackageSet:
    """The package-set rule's decision and what the approvers are told."""

    decision: PackageSetDecision
    untested: tuple[str, ...]  # "h02: pkg 1.0 → 1.1" for packages no staging server got
    detail: str

    @property
    def allowed(self) -> bool:
        """Whether approval may be asked for this plan."""
        return self.decision is not PackageSetDecision.REFUSED


def staging_versions(record: ChangeRecord, staging: Iterable[str]) -> dict[str, set[str]]:
    """Package name -> the versions ``staging`` servers were patched to in this change and
    then passed verification with (pure): per server, the last version each package got,
    counted only when the server's last staging verification passed."""
    versions: dict[str, set[str]] = {}
    for name in staging:
        verified = [v for v in record.verifications if v.server == name and v.phase == "staging"]
        if not verified or not verified[-1].passed:
            continue
        last: dict[str, str | None] = {}
        for c in record.package_changes:
            if c.server == name:
                last[c.name] = c.to_version
        for package, version in last.items():
            if version is not None:
                versions.setdefault(package, set()).add(version)
    return versions


def package_set_rule(
    plan: MaintenancePlan, record: ChangeRecord, staging: Iterable[str]
) -> PackageSet:
    """Whether the production plan gets only what staging was verified with (pure).

    For each production change (name, to version): when a staging server got that package
    in this change, ``to`` must be a version a staging server got and then passed its
    verification with, else the plan is refused (staging proved another version). A
    package no staging server got (production only, or already current on staging) cannot
    be proven there: it is allowed, and named in the approval text so the approvers see it.

    Args:
        plan: the production plan to approve (:func:`remaining_plan`).
        record: the change's record (staging's package changes and verifications).
        staging: the client's staging servers in the run.
    """
    proven = staging_versions(record, staging)
    mismatched: list[str] = []
    untested: list[str] = []
    for host in plan.hosts:
        if host.role != "production":
            continue
        for c in host.changes:
            line = f"{host.server}: {c.name} {c.from_version or '(new)'} → {c.to_version}"
            if c.name not in proven:
                untested.append(line)
            elif c.to_version not in proven[c.name]:
                got = ", ".join(sorted(proven[c.name]))
                mismatched.append(f"{line} (staging was verified with {got})")
    if mismatched:
        return PackageSet(
            PackageSetDecision.REFUSED,
            tuple(untested),
            f"refused: {SAME_PACKAGE_SET}; " + "; ".join(mismatched) + "; production untouched"
            " (rerun the change so staging is patched to the same versions first)",
        )
    if untested:
        return PackageSet(
            PackageSetDecision.PRODUCTION_ONLY,
            tuple(untested),
            "not proven on staging (no staging server got these packages in this change): "
            + "; ".join(untested),
        )
    return PackageSet(
        PackageSetDecision.SAME,
        (),
        "every production package version was patched and verified on staging in this change",
    )


def resume_record(record: ChangeRecord, own: ChangeRecord, now: datetime) -> None:
    """Make ``record`` (a run's, begun again after it was suspended at a question) the
    record that same run wrote before it was suspended (in place).

    Everything the run did and recorded stays, and so do its window, requester and plan
    (the run is the same change request, however late it was answered); a ``resume``
    gate says the run was run again once answered.

    Args:
        record: the new record of this execution (same flow run, same change ref).
        own: the record the run saved before it was suspended.
        now: when it is run again (aware).
    """
    if (record.client, record.change_ref, record.flow_run_id) != (
        own.client,
        own.change_ref,
        own.flow_run_id,
    ):
        raise ValueError(
            f"flow run {record.flow_run_id} cannot resume the record of {own.flow_run_id}"
        )
    for name in (*CONTINUED_FIELDS, "window", "requester", "plan"):
        value = getattr(own, name)
        setattr(record, name, value.copy() if isinstance(value, list | dict) else value)
    record.gates.append(
        GateDecision(
            gate="resume",
            decision="resumed",
            at=now,
            detail="run again once answered: it was suspended at a question, holding no"
            " worker and no SSH session; what it did before is not done again",
        )
    )
