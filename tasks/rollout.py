"""The production rollout's decisions: batches, failure budget, window gate, rollback, restore test.

Every function here is pure: inputs in, a decision out, no IO and no Prefect. The
procedure (:mod:`tasks.maintenance`) does the IO and asks these functions what to do;
``tests/unit/test_rollout.py`` lists every case as a table, including the ones an
operator would try to get around the rule.

- :func:`batches`: production servers split into the inventory's ``batch_size``.
- :func:`budget_spent`: more servers failed than ``failures_tolerated`` (Ansible's
  ``max_fail_percentage`` semantics with a count: equal to the budget still goes on).
- :func:`window_gate` / :func:`window_allows`: production only inside the maintenance
  window, or outside it with a recorded override reason.
- :func:`rollback_choice`: what to do with a failed production server: restore it from
  its snapshot, ask an approver first, or leave it (and why).
- :func:`restore_test_candidate`: which server's fresh snapshot the restore test
  restores this run (a rotation over the runs of the client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from inventory import ClientInventory, Server

__all__ = [
    "OnFailure",
    "RestoreAnswer",
    "RollbackAction",
    "RollbackChoice",
    "WindowGate",
    "batches",
    "budget_halt_detail",
    "budget_spent",
    "outside_window_detail",
    "restore_test_candidate",
    "rollback_choice",
    "window_allows",
    "window_gate",
]


#: The inventory's ``rollout.on_failure``.
OnFailure = Literal["restore", "ask", "halt"]


def batches(inventory: ClientInventory, production: Sequence[Server]) -> list[tuple[Server, ...]]:
    """``production`` in consecutive batches of the client's ``rollout.batch_size``."""
    return inventory.rollout.batches(production)


def budget_spent(failed: int, tolerated: int) -> bool:
    """Whether the rollout must stop: more servers failed than the client tolerates.

    Args:
        failed: production servers failed so far in this run (all batches).
        tolerated: the inventory's ``rollout.failures_tolerated``.
    """
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
    OVERRIDE = "override"  # outside it, going ahead on a recorded reason
    CLOSED = "closed"  # outside it, no override: production waits


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


def window_allows(inventory: ClientInventory, now: datetime, override: str | None) -> bool:
    """Whether production may be touched at ``now`` (inside the window, or overridden)."""
    return window_gate(inventory, now, override) is not WindowGate.CLOSED


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


def rollback_choice(
    on_failure: OnFailure, snapshot_state: str | None, answer: RestoreAnswer | None = None
) -> RollbackChoice:
    """What to do with one failed production server (pure).

    Only a completed snapshot can be restored from. ``ask`` asks only when there is one
    (there is nothing to restore otherwise); the answer then decides, and a "no" or no
    answer at all leaves the server as it is.

    Args:
        on_failure: the inventory's ``rollout.on_failure``: restore, ask or halt.
        snapshot_state: the server's snapshot state this run (completed, pending, error,
            accepted-risk), None when it has no snapshot at all.
        answer: the approver's answer, once asked.

    Returns:
        RESTORE, ASK, or LEAVE with the reason recorded in the rollback.
    """
    if snapshot_state is None:
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
