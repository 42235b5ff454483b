"""The rollout's decisions as tables: batches, failure budget, window gate, rollback, restore test.

Pure functions, no Prefect, no SSH: every row is a case of the policy, including the ones
an operator would try to get around it (an empty override, a budget of exactly the
failures, a snapshot that is not completed, an answer that says nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import InventoryError
from inventory import ClientInventory, Server, load_client, select_servers
from tasks.rollout import (
    NOTHING_CHANGED,
    RestoreAnswer,
    RollbackAction,
    RollbackChoice,
    StagingDecision,
    WindowGate,
    batch_gate,
    batches,
    budget_halt_detail,
    budget_spent,
    expected_batch_time,
    outside_window_detail,
    restore_halt_detail,
    restore_test_candidate,
    rollback_choice,
    snapshot_reusable,
    staging_rule,
    window_end,
    window_gate,
    window_halt_detail,
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


# --- staging rule ----------------------------------------------------------------------------


def without_staging(inventory: ClientInventory, reason: str | None) -> ClientInventory:
    """The client with its staging server removed, and ``rollout.no_staging`` as given."""
    data = inventory.model_dump(mode="json")
    data["servers"] = [s for s in data["servers"] if s["role"] != "staging"]
    data["rollout"]["no_staging"] = reason
    return ClientInventory.model_validate(data)


def decide(inventory: ClientInventory, scope: str) -> StagingDecision:
    """The rule as a run meets it: the scope is selected first, then judged."""
    try:
        selected = select_servers(inventory, scope)
    except InventoryError:
        return StagingDecision.REFUSED  # an unknown name is refused before the rule
    return staging_rule(inventory, selected).decision


@pytest.mark.parametrize(
    ("scope", "decision"),
    [
        ("all", StagingDecision.IN_SCOPE),
        ("staging,production", StagingDecision.IN_SCOPE),
        ("acme-stg-1,acme-web-1", StagingDecision.IN_SCOPE),
        ("staging", StagingDecision.NO_PRODUCTION),
        ("acme-stg-1", StagingDecision.NO_PRODUCTION),
        # the ways around it
        ("production", StagingDecision.REFUSED),  # production alone
        ("acme-web-1,acme-web-2,acme-db-1", StagingDecision.REFUSED),  # production by name
        ("acme-web-1", StagingDecision.REFUSED),
        ("acme-stg-9,acme-web-1", StagingDecision.REFUSED),  # a staging name that does not exist
        ("stagingx,production", StagingDecision.REFUSED),  # a role typo
        # "staging" in one run, then "production" in another (any change ref): the second
        # run is judged on its own scope; staging verified elsewhere does not count
        ("production", StagingDecision.REFUSED),
    ],
)
def test_production_is_patched_only_with_the_clients_staging_servers_in_the_same_run(
    acme: ClientInventory, scope: str, decision: StagingDecision
) -> None:
    assert decide(acme, scope) is decision


def test_a_refusal_names_the_rule_the_missing_staging_servers_and_the_scope_to_use(
    acme: ClientInventory,
) -> None:
    rule = staging_rule(acme, select_servers(acme, "production"))
    assert not rule.allowed
    assert rule.detail.startswith(
        "refused: production servers are patched only in a change whose staging servers"
        " passed verification against the same plan, in the same run;"
    )
    assert "without staging server(s) acme-stg-1; nothing was changed" in rule.detail
    assert "rerun with scope 'all'" in rule.detail


def test_a_client_without_staging_goes_ahead_only_on_its_recorded_reason(
    acme: ClientInventory,
) -> None:
    single = without_staging(acme, "single-server client, accepted by ACME CAB-12")
    rule = staging_rule(single, select_servers(single, "production"))
    assert rule.decision is StagingDecision.ACCEPTED_RISK
    assert "accepted by ACME CAB-12" in rule.detail


def test_an_inventory_cannot_hide_a_staging_server_behind_a_no_staging_reason(
    acme: ClientInventory,
) -> None:
    data = acme.model_dump(mode="json")
    data["rollout"]["no_staging"] = "we are in a hurry this quarter"
    with pytest.raises(ValidationError, match="no_staging is set but the client has staging"):
        ClientInventory.model_validate(data)
    with pytest.raises(ValidationError, match="production without staging"):
        without_staging(acme, None)


# --- failure budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "tolerated", "on_failure", "spent"),
    [
        (0, 0, "restore", False),  # nothing failed
        (1, 0, "restore", True),  # the default: the first failure halts
        (1, 1, "restore", False),  # exactly the budget still goes on
        (2, 1, "restore", True),
        (5, 5, "ask", False),
        (6, 5, "ask", True),
        (0, 1000, "restore", False),
        # halt: "stop and change nothing more" at the first failed server
        (0, 0, "halt", False),
        (1, 0, "halt", True),
        (1, 3, "halt", True),  # (the inventory refuses this pair; the rule holds anyway)
    ],
)
def test_the_rollout_halts_when_more_servers_failed_than_tolerated_or_at_once_on_halt(
    failed: int, tolerated: int, on_failure: str, spent: bool
) -> None:
    assert budget_spent(failed, tolerated, on_failure) is spent  # type: ignore[arg-type]


def test_halt_with_a_failure_budget_is_refused_by_the_inventory(acme: ClientInventory) -> None:
    data = acme.model_dump(mode="json")
    data["rollout"] |= {"on_failure": "halt", "failures_tolerated": 1}
    with pytest.raises(ValidationError, match="on_failure is halt, which stops the rollout"):
        ClientInventory.model_validate(data)


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


# --- the window and the time left, per batch ----------------------------------------------------

FIVE = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        ([], FIVE),  # nothing measured (no staging): the floor
        ([20.0], FIVE),  # 2 x 20 s is under the floor
        ([200.0], timedelta(seconds=400)),  # 2 x the staging time
        ([200.0, 400.0], timedelta(seconds=800)),  # a slow batch makes the next one slower
        ([-1.0], FIVE),
    ],
)
def test_a_batch_is_expected_to_take_twice_the_longest_phase_measured_or_the_floor(
    measured: list[float], expected: timedelta
) -> None:
    assert expected_batch_time(measured) == expected


@pytest.mark.parametrize(
    ("now", "override", "expected", "gate"),
    [
        ("2026-01-10T03:00:00", None, FIVE, WindowGate.INSIDE),  # 3 h left
        ("2026-01-10T05:55:00", None, FIVE, WindowGate.INSIDE),  # exactly 5 min left
        ("2026-01-10T05:55:01", None, FIVE, WindowGate.TOO_LATE),  # a second short
        ("2026-01-10T05:00:00", None, timedelta(hours=2), WindowGate.TOO_LATE),
        ("2026-01-10T05:59:59", None, FIVE, WindowGate.TOO_LATE),
        ("2026-01-10T06:00:00", None, FIVE, WindowGate.CLOSED),
        ("2026-01-10T12:00:00", None, FIVE, WindowGate.CLOSED),
        # an override carries a batch past the window's end, and is recorded as used
        ("2026-01-10T05:58:00", "CAB-9 emergency fix", FIVE, WindowGate.OVERRIDE),
        ("2026-01-10T12:00:00", "CAB-9 emergency fix", FIVE, WindowGate.OVERRIDE),
        ("2026-01-10T05:58:00", "", FIVE, WindowGate.TOO_LATE),  # an empty reason is none
        ("2026-01-10T03:00:00", "not needed", FIVE, WindowGate.INSIDE),  # not used inside
        # DST: the spring-forward window still lasts 4 h of real time (01:00-05:00 UTC)
        ("2026-03-29T04:54:00", None, FIVE, WindowGate.INSIDE),
        ("2026-03-29T04:56:00", None, FIVE, WindowGate.TOO_LATE),
    ],
)
def test_a_batch_starts_only_with_enough_window_left_or_on_a_recorded_override(
    acme: ClientInventory, now: str, override: str | None, expected: timedelta, gate: WindowGate
) -> None:
    decision = batch_gate(acme, utc(now), override, expected)
    assert decision.gate is gate
    assert decision.allowed is (gate in (WindowGate.INSIDE, WindowGate.OVERRIDE))


def test_a_window_that_never_closes_leaves_time_for_any_batch(acme: ClientInventory) -> None:
    data = acme.model_dump(mode="json")
    data["schedule"]["window"] = {"start": "00:00", "duration": "24h"}
    always = ClientInventory.model_validate(data)
    now = utc("2026-01-10T23:59:00")
    assert window_end(always, now) is not None and window_end(always, now) > now + FIVE  # type: ignore[operator]
    assert batch_gate(always, now, None, FIVE).gate is WindowGate.INSIDE


def test_a_batch_stopped_by_the_window_names_the_hosts_left_untouched(
    acme: ClientInventory,
) -> None:
    planned = batches(with_batch_size(acme, 1), production(acme))
    gate = batch_gate(acme, utc("2026-01-10T05:58:00"), None, FIVE)
    assert window_halt_detail(gate, 1, planned) == (
        "the window closes at 06:00 GMT: 2m00s left, the batch needs about 5m00s:"
        " rollout stopped before batch 2/3; untouched: acme-web-2, acme-db-1"
        " (rerun the same change_ref in the next window)"
    )


def test_a_failed_restore_names_the_server_and_the_untouched_ones(acme: ClientInventory) -> None:
    planned = batches(with_batch_size(acme, 1), production(acme))
    assert restore_halt_detail(["acme-web-1"], 1, planned) == (
        "restore of acme-web-1 failed or did not verify: rollout halted after batch 1/3;"
        " acme-web-1 need(s) an operator now; untouched: acme-web-2, acme-db-1"
    )


# --- snapshot age ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "max_age", "reusable"),
    [
        (timedelta(minutes=5), timedelta(hours=6), True),
        (timedelta(hours=6) - timedelta(seconds=1), timedelta(hours=6), True),
        (timedelta(hours=6), timedelta(hours=6), False),  # the bound itself is too old
        (timedelta(days=3), timedelta(hours=6), False),  # a rerun after the approval wait
    ],
)
def test_a_changes_snapshot_is_reused_only_while_younger_than_max_age(
    age: timedelta, max_age: timedelta, reusable: bool
) -> None:
    now = utc("2026-01-10T03:00:00")
    assert snapshot_reusable(now - age, now, max_age) is reusable


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
        ("restore", "accepted-risk", None, leave("no snapshot (accepted risk)")),
        ("restore", "skipped", None, leave("no snapshot (accepted risk)")),  # as recorded
        ("restore", None, None, leave("no snapshot (accepted risk)")),
        # halt: never restores, whatever the snapshot or an answer says
        ("halt", "completed", None, leave("on_failure is halt")),
        ("halt", "completed", YES, leave("on_failure is halt")),
        ("halt", None, None, leave("no snapshot (accepted risk)")),
        ("halt", "accepted-risk", None, leave("no snapshot (accepted risk)")),
        # ask: asks only when there is something to restore from
        ("ask", "completed", None, ASK),
        ("ask", "completed", YES, RESTORE),
        ("ask", "completed", NO, leave("alice chose to leave it: I will look")),
        ("ask", "completed", TIMEOUT, leave("no decision within 1 day, 0:00:00")),
        ("ask", "completed", RestoreAnswer(False, ""), leave("on_failure is halt")),
        ("ask", "pending", None, leave("on_failure is ask")),
        ("ask", "error", YES, leave("on_failure is ask")),  # a yes cannot restore nothing
        ("ask", "accepted-risk", YES, leave("no snapshot (accepted risk)")),
        ("ask", None, YES, leave("no snapshot (accepted risk)")),
    ],
)
def test_a_failed_server_is_restored_asked_about_or_left_as_the_policy_says(
    on_failure: str, snapshot: str | None, answer: RestoreAnswer | None, choice: RollbackChoice
) -> None:
    assert rollback_choice(on_failure, snapshot, answer) == choice  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("on_failure", "snapshot", "answer"),
    [
        ("restore", "completed", None),
        ("ask", "completed", None),  # nobody is even asked
        ("ask", "completed", YES),  # a yes cannot make it changed
        ("halt", "completed", None),
        ("restore", None, None),
    ],
)
def test_a_failed_server_on_which_nothing_changed_is_never_restored(
    on_failure: str, snapshot: str | None, answer: RestoreAnswer | None
) -> None:
    choice = rollback_choice(on_failure, snapshot, answer, changed=False)  # type: ignore[arg-type]
    assert choice == leave(NOTHING_CHANGED)


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
