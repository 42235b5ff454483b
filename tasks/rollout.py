"""The production rollout's decisions: batches, failure budget, window gate, rollback, restore test.

Every function here is pure: inputs in, a decision out, no IO and no Prefect. The
procedure (:mod:`tasks.maintenance`) does the IO and asks these functions what to do;
``tests/unit/test_rollout.py`` lists every case as a table, including the ones an
operator would try to get around the rule.

- :func:`staging_rule`: production only in a change whose staging servers are in the
  same run (so they pass verification against the same plan first), or with the
  inventory's recorded ``rollout.no_staging`` risk acceptance; anything else is refused.
- :func:`batches`: production servers, least critical first (:func:`rollout_order`), split
  into the inventory's ``batch_size``.
- :func:`budget_spent`: more servers failed than ``failures_tolerated`` (Ansible's
  ``max_fail_percentage`` semantics with a count: equal to the budget still goes on);
  ``on_failure: halt`` stops at the first failed server.
- :func:`window_gate`: production only inside the maintenance
  window, or outside it with a recorded override reason.
- :func:`batch_gate`: before each batch, the window is open and has time left for the
  batch's expected duration (:func:`expected_batch_time`, measured from staging).
- :func:`rollback_choice`: what to do with a failed production server: restore it from
  its snapshot, ask an approver first, or leave it (and why); a server on which nothing
  changed is never restored.
- :func:`snapshot_reusable`: a change's snapshot is reused only while younger than
  ``snapshots.max_age``.
- :func:`restore_test_candidate`: which server's fresh snapshot the restore test
  restores this run (a rotation over the runs of the client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from inventory import ClientInventory, Server
from inventory.hygiene import CRITICALITY_ORDER

__all__ = [
    "BATCH_TIME_FACTOR",
    "BATCH_TIME_FLOOR",
    "NOTHING_CHANGED",
    "STAGING_RULE",
    "BatchGate",
    "OnFailure",
    "RestoreAnswer",
    "RollbackAction",
    "RollbackChoice",
    "StagingDecision",
    "StagingRule",
    "WindowGate",
    "batch_gate",
    "batches",
    "budget_halt_detail",
    "budget_spent",
    "expected_batch_time",
    "outside_window_detail",
    "restore_halt_detail",
    "restore_test_candidate",
    "rollback_choice",
    "rollout_order",
    "snapshot_reusable",
    "staging_rule",
    "window_end",
    "window_gate",
    "window_halt_detail",
]


#: The inventory's ``rollout.on_failure``.
OnFailure = Literal["restore", "ask", "halt"]


class StagingDecision(StrEnum):
    """Whether a run may touch the production servers in its scope."""

    IN_SCOPE = "in-scope"  # every staging server of the client is in the run, patched first
    ACCEPTED_RISK = "accepted-risk"  # the client has no staging server; the inventory says why
    NO_PRODUCTION = "no-production"  # nothing of production in scope: nothing to gate
    REFUSED = "refused"  # production in scope without the client's staging servers


@dataclass(frozen=True)
class StagingRule:
    """The staging rule's decision for one run, and its sentence for the record."""

    decision: StagingDecision
    detail: str

    @property
    def allowed(self) -> bool:
        """Whether the run may go on."""
        return self.decision is not StagingDecision.REFUSED


#: The rule, as the refusal and the docs state it.
STAGING_RULE = (
    "production servers are patched only in a change whose staging servers passed"
    " verification against the same plan, in the same run"
)


def staging_rule(inventory: ClientInventory, selected: Sequence[Server]) -> StagingRule:
    """Whether a run over ``selected`` may patch its production servers (pure).

    Production is patched only in a run whose scope holds every staging server of the
    client: they are patched and verified first against this run's plan, and approval
    is asked only once they passed. A scope that names production without them
    (``production``, a list of production names) is refused, never widened: the change
    touches exactly the servers it was asked (and approved) for. Staging verified in an
    earlier run, under another change ref or the same one, does not count: the plan may
    have changed since. A client without any staging server goes ahead only on the
    inventory's ``rollout.no_staging`` reason, recorded as an accepted risk.

    Args:
        inventory: the client.
        selected: the servers the run's scope selected (``select_servers``).

    Returns:
        The decision and its sentence (the refusal names the rule, the missing staging
        servers and the scope to use instead).
    """
    production = [s.name for s in selected if s.role == "production"]
    if not production:
        return StagingRule(StagingDecision.NO_PRODUCTION, "no production server in scope")
    staging = [s.name for s in inventory.staging]
    if not staging:
        reason = inventory.rollout.no_staging
        if reason:
            return StagingRule(
                StagingDecision.ACCEPTED_RISK,
                f"no staging server (accepted risk, rollout.no_staging): {reason}",
            )
        return StagingRule(
            StagingDecision.REFUSED,
            f"refused: {STAGING_RULE}; {inventory.slug} has no staging server and its"
            " inventory records no rollout.no_staging reason",
        )
    in_scope = {s.name for s in selected}
    missing = [name for name in staging if name not in in_scope]
    if missing:
        return StagingRule(
            StagingDecision.REFUSED,
            f"refused: {STAGING_RULE}; production server(s) {', '.join(production)} are in"
            f" scope without staging server(s) {', '.join(missing)}; nothing was changed"
            f" (rerun with scope 'all' or 'staging,{','.join(production)}')",
        )
    return StagingRule(
        StagingDecision.IN_SCOPE,
        f"staging server(s) {', '.join(staging)} patched and verified first in this run",
    )


def rollout_order(production: Sequence[Server]) -> list[Server]:
    """``production`` least critical first (``criticality``: low, medium, high, critical),
    in inventory order within a criticality (pure): a change that goes wrong meets the
    servers the business can best do without first."""
    return sorted(production, key=lambda s: CRITICALITY_ORDER[s.criticality])


def batches(inventory: ClientInventory, production: Sequence[Server]) -> list[tuple[Server, ...]]:
    """``production`` in :func:`rollout_order`, in batches of ``rollout.batch_size``."""
    return inventory.rollout.batches(rollout_order(production))


def budget_spent(failed: int, tolerated: int, on_failure: OnFailure = "restore") -> bool:
    """Whether the rollout must stop: more servers failed than the client tolerates.

    As docs/inventory.md has it: ``failures_tolerated`` failed production servers are
    tolerated (the rollout goes on), one more stops it; ``on_failure: halt`` stops at the
    first failed server (the inventory refuses halt with a budget above 0).

    Args:
        failed: production servers failed so far in this run (all batches).
        tolerated: the inventory's ``rollout.failures_tolerated``.
        on_failure: the inventory's ``rollout.on_failure``.
    """
    if on_failure == "halt":
        return failed > 0
    return failed > tolerated


def budget_halt_detail(
    failed: int, tolerated: int, done: int, planned: Sequence[Sequence[Server]]
) -> str:
    """The outcome detail of a rollout halted after batch ``done`` of ``planned``."""
    left = [s.name for batch in planned[done:] for s in batch]
    return (
        f"{failed} production server(s) failed (tolerated: {tolerated}); "
        f"rollout halted after batch {done}/{len(planned)}"
        + (f"; untouched: {', '.join(left)}" if left else "")
    )


class WindowGate(StrEnum):
    """Whether production may be touched now."""

    INSIDE = "inside"  # inside the maintenance window
    OVERRIDE = "override"  # outside it (or past its end), going ahead on a recorded reason
    CLOSED = "closed"  # outside it, no override: production waits
    TOO_LATE = "too-late"  # inside, but it closes before the batch would finish


def window_gate(inventory: ClientInventory, now: datetime, override: str | None) -> WindowGate:
    """The window gate before production (pure).

    Args:
        inventory: the client (its window, read in its time zone).
        now: the moment production would start (aware).
        override: the reason given to patch outside the window; empty or None: none.
    """
    if inventory.in_window(now):
        return WindowGate.INSIDE
    return WindowGate.OVERRIDE if override else WindowGate.CLOSED


#: The expected duration of a production batch: this many times the longest phase measured.
BATCH_TIME_FACTOR = 2
#: ... and never less than this (a reboot, a slow mirror).
BATCH_TIME_FLOOR = timedelta(minutes=5)


def expected_batch_time(
    measured_s: Sequence[float],
    factor: float = BATCH_TIME_FACTOR,
    floor: timedelta = BATCH_TIME_FLOOR,
) -> timedelta:
    """How long the next production batch is expected to take (pure).

    ``max(factor x the longest measured phase, floor)``: the staging phase is measured
    before the first batch, and every finished batch is measured too, so a slow batch
    makes the next one expected slower. Without any measurement (no staging): the floor.

    Args:
        measured_s: seconds of the staging phase and of the finished batches.
        factor: the margin over the longest of them.
        floor: the least time a batch is given.
    """
    longest = max((s for s in measured_s if s >= 0), default=0.0)
    return max(timedelta(seconds=factor * longest), floor)


def window_end(inventory: ClientInventory, now: datetime) -> datetime | None:
    """When the window open at ``now`` closes; None when ``now`` is outside (pure).

    Slots that follow each other without a gap (a 24 h daily window) count as one open
    stretch: the end is where the window really closes.
    """
    if not inventory.in_window(now):
        return None
    slots = inventory.windows_between(now - timedelta(days=8), now + timedelta(days=8))
    end: datetime | None = None
    for start, stop in sorted(slots):
        if end is None:
            if start <= now < stop:
                end = stop
        elif start <= end:
            end = max(end, stop)
    return end


@dataclass(frozen=True)
class BatchGate:
    """The window gate before one production batch."""

    gate: WindowGate
    detail: str

    @property
    def allowed(self) -> bool:
        """Whether the batch may start."""
        return self.gate in (WindowGate.INSIDE, WindowGate.OVERRIDE)


def batch_gate(
    inventory: ClientInventory, now: datetime, override: str | None, expected: timedelta
) -> BatchGate:
    """The gate before a production batch: window open, and time left for the batch (pure).

    Inside the window with at least ``expected`` left: the batch starts. Inside but
    closing sooner: TOO_LATE (the batch would run past the window). Outside: CLOSED. An
    override reason lets the batch start in both cases (OVERRIDE, to be recorded with who
    gave it and when); without one the batch does not start.

    Args:
        inventory: the client (its window, in its time zone).
        now: when the batch would start (aware).
        override: the run's ``window_override`` reason; empty or None: none.
        expected: the batch's expected duration (:func:`expected_batch_time`).
    """
    end = window_end(inventory, now)
    need = _minutes(expected)
    if end is not None and end - now >= expected:
        return BatchGate(
            WindowGate.INSIDE, f"{_minutes(end - now)} left in the window, the batch needs {need}"
        )
    if end is not None:
        why = (
            f"the window closes at {end.astimezone(inventory.tz):%H:%M %Z}: {_minutes(end - now)}"
            f" left, the batch needs about {need}"
        )
        gate = WindowGate.TOO_LATE
    else:
        why = "outside the maintenance window"
        gate = WindowGate.CLOSED
    if override:
        return BatchGate(WindowGate.OVERRIDE, f"{why}; going ahead on override: {override}")
    return BatchGate(gate, why)


def _minutes(delta: timedelta) -> str:
    seconds = max(0, round(delta.total_seconds()))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def window_halt_detail(gate: BatchGate, done: int, planned: Sequence[Sequence[Server]]) -> str:
    """The outcome detail of a rollout stopped at a batch's window gate."""
    left = [s.name for batch in planned[done:] for s in batch]
    return (
        f"{gate.detail}: rollout stopped before batch {done + 1}/{len(planned)}; "
        f"untouched: {', '.join(left)} (rerun the same change_ref in the next window)"
    )


def outside_window_detail(inventory: ClientInventory, now: datetime) -> str:
    """The outcome detail of a run halted at a closed window gate."""
    nxt = inventory.next_window_start(now)
    return (
        f"outside the maintenance window: production not touched; next window starts "
        f"{nxt:%Y-%m-%d %H:%M %Z} (or rerun with window_override='<reason>')"
    )


@dataclass(frozen=True)
class RestoreAnswer:
    """An approver's answer to "restore this failed server?", or the timeout's."""

    restore: bool
    detail: str  # "alice chose to restore: ...", or "no decision within 1 day, 0:00:00"


class RollbackAction(StrEnum):
    """What happens to a production server that failed."""

    RESTORE = "restore"  # restore it from its completed snapshot, then verify it again
    ASK = "ask"  # pause and ask a listed approver, then decide again with the answer
    LEAVE = "leave"  # leave it as it is, for an operator (the reason is recorded)


@dataclass(frozen=True)
class RollbackChoice:
    """A rollback decision and, when the server is left, why."""

    action: RollbackAction
    reason: str = ""


#: Why a failed server on which nothing changed is not restored.
NOTHING_CHANGED = "nothing changed"


def rollback_choice(
    on_failure: OnFailure,
    snapshot_state: str | None,
    answer: RestoreAnswer | None = None,
    changed: bool = True,
) -> RollbackChoice:
    """What to do with one failed production server (pure).

    A server on which this change changed nothing (apt failed on the dpkg lock before
    touching anything) is never restored: the snapshot would throw away whatever
    happened on it since. Only a completed snapshot can be restored from. ``ask`` asks
    only when there is one (there is nothing to restore otherwise); the answer then
    decides, and a "no" or no answer at all leaves the server as it is.

    Args:
        on_failure: the inventory's ``rollout.on_failure``: restore, ask or halt.
        snapshot_state: the server's snapshot state this run (completed, pending, error,
            accepted-risk; the record's skipped), None when it has no snapshot at all.
        answer: the approver's answer, once asked.
        changed: whether this change changed the server (its package diff is not
            empty, or could not be read: unknown counts as changed).

    Returns:
        RESTORE, ASK, or LEAVE with the reason recorded in the rollback.
    """
    if not changed:
        return RollbackChoice(RollbackAction.LEAVE, NOTHING_CHANGED)
    if snapshot_state in (None, "accepted-risk", "skipped"):
        # provider none: no snapshot by design (the record's state is "skipped").
        return RollbackChoice(RollbackAction.LEAVE, "no snapshot (accepted risk)")
    restorable = snapshot_state == "completed"
    if on_failure == "ask" and restorable:
        if answer is None:
            return RollbackChoice(RollbackAction.ASK)
        if answer.restore:
            return RollbackChoice(RollbackAction.RESTORE)
        return RollbackChoice(RollbackAction.LEAVE, answer.detail or "on_failure is halt")
    if on_failure == "restore" and restorable:
        return RollbackChoice(RollbackAction.RESTORE)
    return RollbackChoice(RollbackAction.LEAVE, f"on_failure is {on_failure}")


def restore_halt_detail(
    failed: Sequence[str], done: int, planned: Sequence[Sequence[Server]]
) -> str:
    """The outcome detail of a rollout stopped because restores failed or did not verify."""
    left = [s.name for batch in planned[done:] for s in batch]
    return (
        f"restore of {', '.join(failed)} failed or did not verify: rollout halted after batch"
        f" {done}/{len(planned)}; {', '.join(failed)} need(s) an operator now"
        + (f"; untouched: {', '.join(left)}" if left else "")
    )


def snapshot_reusable(created_at: datetime, now: datetime, max_age: timedelta) -> bool:
    """Whether a change's existing snapshot may stand for the server's state now (pure).

    Only while younger than ``snapshots.max_age``: an older one (a rerun days later)
    would restore the server to a state it left long ago, so a fresh one is taken.
    """
    return now - created_at < max_age


def restore_test_candidate(
    servers: Sequence[Server], snapshot_states: Mapping[str, str], previous_runs: int
) -> Server | None:
    """The server whose fresh snapshot the restore test restores this run (pure).

    The servers with a completed snapshot this run take turns, one per run of the
    client, in inventory order: the ``previous_runs``-th run tests the
    ``previous_runs mod n``-th of them.

    Args:
        servers: the run's servers, in inventory order.
        snapshot_states: each snapshotted server's snapshot state this run, by name.
        previous_runs: the client's change records in the store (this run's included,
            once saved).

    Returns:
        The server, or None when no server has a completed snapshot.
    """
    candidates = [s for s in servers if snapshot_states.get(s.name) == "completed"]
    if not candidates:
        return None
    return candidates[previous_runs % len(candidates)]
