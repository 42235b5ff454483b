"""The rollout's decisions as tables: batches, failure budget, window gate, rollback, restore test.

Pure functions, no Prefect, no SSH: every row is a case of the policy, including the ones
an operator would try to get around it (an empty override, a budget of exactly the
failures, a snapshot that is not completed, an answer that says nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from inventory import ClientInventory, Server, load_client
from tasks.rollout import (
    RestoreAnswer,
    RollbackAction,
    RollbackChoice,
    WindowGate,
    batches,
    budget_halt_detail,
    budget_spent,
    outside_window_detail,
    restore_test_candidate,
    rollback_choice,
    window_allows,
    window_gate,
)

CLIENTS = Path(__file__).resolve().parents[2] / "clients"


@pytest.fixture(scope="module")
def acme() -> ClientInventory:
    """ACME: window 02:00 Europe/London for 4 h, daily; three production servers."""
    return load_client(CLIENTS / "acme.yaml")


def with_batch_size(inventory: ClientInventory, size: int) -> ClientInventory:
    rollout = inventory.rollout.model_copy(update={"batch_size": size})
    return inventory.model_copy(update={"rollout": rollout})


def production(inventory: ClientInventory) -> list[Server]:
    return [s for s in inventory.servers if s.role == "production"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- batches -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, [["acme-web-1"], ["acme-web-2"], ["acme-db-1"]]),
        (2, [["acme-web-1", "acme-web-2"], ["acme-db-1"]]),
        (3, [["acme-web-1", "acme-web-2", "acme-db-1"]]),
        (1000, [["acme-web-1", "acme-web-2", "acme-db-1"]]),
    ],
)
def test_production_is_split_into_batches_in_inventory_order(
    acme: ClientInventory, size: int, expected: list[list[str]]
) -> None:
    planned = batches(with_batch_size(acme, size), production(acme))
    assert [[s.name for s in batch] for batch in planned] == expected


def test_no_production_server_makes_no_batch(acme: ClientInventory) -> None:
    assert batches(acme, []) == []


# --- failure budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "tolerated", "spent"),
    [
        (0, 0, False),  # nothing failed
        (1, 0, True),  # the default: the first failure halts
        (1, 1, False),  # exactly the budget still goes on
        (2, 1, True),
        (5, 5, False),
        (6, 5, True),
        (0, 1000, False),
    ],
)
def test_the_rollout_halts_only_when_more_servers_failed_than_tolerated(
    failed: int, tolerated: int, spent: bool
) -> None:
    assert budget_spent(failed, tolerated) is spent


def test_a_halted_rollout_names_the_untouched_servers(acme: ClientInventory) -> None:
    planned = batches(with_batch_size(acme, 1), production(acme))
    assert budget_halt_detail(1, 0, 1, planned) == (
        "1 production server(s) failed (tolerated: 0); rollout halted after batch 1/3"
        "; untouched: acme-web-2, acme-db-1"
    )
    assert budget_halt_detail(2, 1, 3, planned) == (
        "2 production server(s) failed (tolerated: 1); rollout halted after batch 3/3"
    )


# --- window gate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "override", "gate"),
    [
        ("2026-01-10T03:00:00", None, WindowGate.INSIDE),
        ("2026-01-10T02:00:00", None, WindowGate.INSIDE),  # the window's first second
        ("2026-01-10T05:59:59", None, WindowGate.INSIDE),  # its last second
        ("2026-01-10T06:00:00", None, WindowGate.CLOSED),  # the end is not inside
        ("2026-01-10T01:59:59", None, WindowGate.CLOSED),
        ("2026-01-10T12:00:00", None, WindowGate.CLOSED),
        ("2026-01-10T12:00:00", "CAB-7: emergency openssl fix", WindowGate.OVERRIDE),
        ("2026-01-10T03:00:00", "not needed", WindowGate.INSIDE),  # inside: no override used
        ("2026-01-10T12:00:00", "", WindowGate.CLOSED),  # an empty reason is no override
        # today's semantics: any non-empty text is a reason (it is recorded as given)
        ("2026-01-10T12:00:00", " ", WindowGate.OVERRIDE),
        # DST, Europe/London: 02:00 local is 01:00 UTC in summer time, 02:00 UTC in winter
        ("2026-03-29T00:59:59", None, WindowGate.CLOSED),  # spring forward: 00:59 GMT
        ("2026-03-29T01:00:00", None, WindowGate.INSIDE),  # 02:00 BST
        ("2026-03-29T04:59:59", None, WindowGate.INSIDE),  # 4 h of elapsed time
        ("2026-03-29T05:00:00", None, WindowGate.CLOSED),
        ("2026-07-01T01:30:00", None, WindowGate.INSIDE),  # 02:30 BST
        ("2026-10-25T01:30:00", None, WindowGate.CLOSED),  # fall back: 01:30 GMT
        ("2026-10-25T02:00:00", None, WindowGate.INSIDE),  # 02:00 GMT
        ("2026-10-25T06:00:00", None, WindowGate.CLOSED),
    ],
)
def test_production_is_touched_only_inside_the_window_or_on_a_recorded_reason(
    acme: ClientInventory, now: str, override: str | None, gate: WindowGate
) -> None:
    assert window_gate(acme, utc(now), override) is gate
    assert window_allows(acme, utc(now), override) is (gate is not WindowGate.CLOSED)


@pytest.mark.parametrize(
    ("now", "next_start"),
    [
        ("2026-01-10T12:00:00", "2026-01-11 02:00 GMT"),
        ("2026-01-10T01:00:00", "2026-01-10 02:00 GMT"),
        ("2026-03-28T12:00:00", "2026-03-29 02:00 BST"),
    ],
)
def test_a_closed_gate_says_when_the_next_window_starts(
    acme: ClientInventory, now: str, next_start: str
) -> None:
    detail = outside_window_detail(acme, utc(now))
    assert detail.startswith("outside the maintenance window: production not touched;")
    assert f"next window starts {next_start}" in detail
    assert "window_override='<reason>'" in detail


# --- rollback choice -------------------------------------------------------------------------

RESTORE = RollbackChoice(RollbackAction.RESTORE)
ASK = RollbackChoice(RollbackAction.ASK)
YES = RestoreAnswer(True, "alice chose to restore: go")
NO = RestoreAnswer(False, "alice chose to leave it: I will look")
TIMEOUT = RestoreAnswer(False, "no decision within 1 day, 0:00:00")


def leave(reason: str) -> RollbackChoice:
    return RollbackChoice(RollbackAction.LEAVE, reason)


@pytest.mark.parametrize(
    ("on_failure", "snapshot", "answer", "choice"),
    [
        # restore: only from a completed snapshot
        ("restore", "completed", None, RESTORE),
        ("restore", "pending", None, leave("on_failure is restore")),
        ("restore", "error", None, leave("on_failure is restore")),
        ("restore", "accepted-risk", None, leave("on_failure is restore")),
        ("restore", None, None, leave("no snapshot (accepted risk)")),
        # halt: never restores, whatever the snapshot or an answer says
        ("halt", "completed", None, leave("on_failure is halt")),
        ("halt", "completed", YES, leave("on_failure is halt")),
        ("halt", None, None, leave("no snapshot (accepted risk)")),
        # ask: asks only when there is something to restore from
        ("ask", "completed", None, ASK),
        ("ask", "completed", YES, RESTORE),
        ("ask", "completed", NO, leave("alice chose to leave it: I will look")),
        ("ask", "completed", TIMEOUT, leave("no decision within 1 day, 0:00:00")),
        ("ask", "completed", RestoreAnswer(False, ""), leave("on_failure is halt")),
        ("ask", "pending", None, leave("on_failure is ask")),
        ("ask", "error", YES, leave("on_failure is ask")),  # a yes cannot restore nothing
        ("ask", "accepted-risk", None, leave("on_failure is ask")),
        ("ask", None, YES, leave("no snapshot (accepted risk)")),
    ],
)
def test_a_failed_server_is_restored_asked_about_or_left_as_the_policy_says(
    on_failure: str, snapshot: str | None, answer: RestoreAnswer | None, choice: RollbackChoice
) -> None:
    assert rollback_choice(on_failure, snapshot, answer) == choice  # type: ignore[arg-type]


# --- restore-test rotation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "previous_runs", "expected"),
    [
        ({"a": "completed", "b": "completed", "c": "completed"}, 0, "a"),
        ({"a": "completed", "b": "completed", "c": "completed"}, 1, "b"),
        ({"a": "completed", "b": "completed", "c": "completed"}, 2, "c"),
        ({"a": "completed", "b": "completed", "c": "completed"}, 3, "a"),  # wraps round
        ({"a": "completed", "b": "accepted-risk", "c": "completed"}, 1, "c"),  # b has nothing
        ({"a": "pending", "b": "error", "c": "completed"}, 7, "c"),
        ({"b": "completed"}, 4, "b"),  # a and c were not snapshotted
        ({"a": "accepted-risk", "b": "accepted-risk", "c": "pending"}, 0, None),
        ({}, 0, None),
    ],
)
def test_the_restore_test_rotates_over_servers_with_a_completed_snapshot(
    acme: ClientInventory, states: dict[str, str], previous_runs: int, expected: str | None
) -> None:
    template = acme.servers[0]
    servers = [template.model_copy(update={"name": name}) for name in ("a", "b", "c")]
    chosen = restore_test_candidate(servers, states, previous_runs)
    assert (chosen.name if chosen else None) == expected
