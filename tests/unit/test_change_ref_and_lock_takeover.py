"""Crash safety without a server: the change ref a rerun gets, and who may take a run lock over.

Both are pure decisions (STYLE 12), tested as tables; the real crash (a SIGKILLed worker,
its run marked Crashed by Prefect's heartbeat automation) is
``tests/integration/test_crash_safety.py``.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from core.errors import MaintenanceInProgress
from flows.server_maintenance import derive_change_ref
from history.store import open_store
from tasks.preflight import (
    HolderObservation,
    HolderUnreadable,
    holder_takeover,
    lock_takeover,
    read_holder,
)

RUN = "0b6f6c1e-5d1a-4f57-9f0e-3c1f0e7d2a11"
OTHER_RUN = "7d4e2c0a-1111-4a2b-8c3d-9e8f7a6b5c4d"
SLOT = datetime(2026, 1, 10, 3, 0, tzinfo=UTC)
SLOT_IN_BERLIN = SLOT.astimezone(timezone(timedelta(hours=1)))


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("a given reference is kept", ("CHG-4711", RUN, SLOT, True), "CHG-4711"),
        ("a given reference is kept ad hoc", ("CHG-4711", RUN, None, False), "CHG-4711"),
        ("an empty reference is not a reference", ("", RUN, None, False), f"CHG-acme-run-{RUN}"),
        ("a scheduled run is named by its slot", (None, RUN, SLOT, True), "CHG-acme-20260110-0300"),
        (
            "the slot is written in UTC whatever zone it came in",
            (None, RUN, SLOT_IN_BERLIN, True),
            "CHG-acme-20260110-0300",
        ),
        (
            "another run of the same slot is the same change",
            (None, OTHER_RUN, SLOT, True),
            "CHG-acme-20260110-0300",
        ),
        ("an ad-hoc run is named by its flow run", (None, RUN, SLOT, False), f"CHG-acme-run-{RUN}"),
        ("an ad-hoc run with no expected start", (None, RUN, None, False), f"CHG-acme-run-{RUN}"),
        (
            "a scheduled run whose start is unknown falls back to the run",
            (None, RUN, None, True),
            f"CHG-acme-run-{RUN}",
        ),
    ],
)
def test_a_run_without_a_change_ref_gets_one_from_the_flow_run(
    case: str, args: tuple[str | None, str, datetime | None, bool], expected: str
) -> None:
    assert derive_change_ref("acme", *args) == expected, case


def test_a_retried_run_gets_the_same_change_ref_whenever_it_retries() -> None:
    # A Prefect retry keeps the flow run (its id and expected start); the clock moves on.
    first = derive_change_ref("acme", None, RUN, SLOT, True)
    retries = {derive_change_ref("acme", None, RUN, SLOT, True) for _ in range(3)}
    assert retries == {first}
    assert {derive_change_ref("acme", None, RUN, SLOT, False) for _ in range(3)} == {
        f"CHG-acme-run-{RUN}"
    }


def test_two_ad_hoc_runs_are_two_changes() -> None:
    assert derive_change_ref("acme", None, RUN) != derive_change_ref("acme", None, OTHER_RUN)


# ---- who may take a run lock over


@pytest.mark.parametrize(
    ("observed", "take", "says"),
    [
        ("not-found", True, "does not know"),
        (StateType.COMPLETED, True, "Completed"),
        (StateType.FAILED, True, "Failed"),
        (StateType.CANCELLED, True, "Cancelled"),
        (StateType.CRASHED, True, "Crashed"),  # a SIGKILLed worker, marked by the heartbeat
        (StateType.RUNNING, False, "Running"),
        (StateType.PAUSED, False, "Paused"),  # waiting for approval: it still holds the change
        (StateType.SCHEDULED, False, "Scheduled"),  # AwaitingRetry: it will run again
        (StateType.PENDING, False, "Pending"),
        (StateType.CANCELLING, False, "Cancelling"),  # not over until Cancelled
        (None, False, "no state"),
        (HolderUnreadable("ConnectError: refused"), False, "could not be read"),
        (HolderUnreadable("HTTPStatusError: 503"), False, "lock stays held"),
    ],
)
def test_only_a_run_that_is_over_or_unknown_gives_up_its_lock(
    observed: HolderObservation, take: bool, says: str
) -> None:
    decision = lock_takeover(observed)

    assert decision.take is take
    assert says in decision.reason


def test_a_holder_prefect_cannot_be_asked_about_keeps_its_lock() -> None:
    # A real client against a port nobody listens on: the read fails, and fails closed.
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        decision = holder_takeover(RUN)

    assert decision.take is False
    assert "could not be read" in decision.reason


def test_a_holder_id_that_is_no_flow_run_is_unknown_to_prefect() -> None:
    assert read_holder("not-a-uuid") == "not-found"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.fault
def test_a_run_is_refused_when_the_lock_holders_state_cannot_be_read(tmp_path: Path) -> None:
    # The fault "lock holder's API read fails": a real store, a real Prefect client, no API.
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.acquire_run_lock("acme", RUN, "CHG-1")
        with (
            temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}),
            pytest.raises(MaintenanceInProgress) as refused,
        ):
            store.acquire_run_lock("acme", OTHER_RUN, "CHG-2", holder_check=holder_takeover)

        assert refused.value.holder_flow_run_id == RUN
        assert "could not be read" in str(refused.value)
        held = store.run_lock("acme")
        assert held is not None and held.holder_flow_run_id == RUN
        assert [e.event for e in store.lock_events("acme")] == ["acquired"]
