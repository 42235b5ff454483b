"""The snapshot tasks' own logic: one snapshot per change, bounded waits, retry policy, factory."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from core.errors import ConfigError, SnapshotError
from inventory import Server, SnapshotPolicy
from tasks.snapshots.base import (
    SnapshotRecord,
    TransientSnapshotError,
    caretaker_tags,
    poll_until,
)
from tasks.snapshots.factory import provider_for
from tasks.snapshots.tasks import (
    _only_transient,
    create_snapshot,
    restore_from_snapshot,
    take_snapshot,
    wait_for_snapshot,
)


def server(provider: dict[str, object]) -> Server:
    return Server.model_validate(
        {
            "name": "web-1",
            "role": "production",
            "address": "10.213.71.11",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": provider,
        }
    )


class CountingProvider:
    """Remembers the snapshots it took, by change ref."""

    name = "sandbox"

    def __init__(self) -> None:
        self.taken: dict[str, SnapshotRecord] = {}
        self.creates = 0

    def find(self, server: Server, change_ref: str) -> SnapshotRecord | None:
        return self.taken.get(change_ref)

    def create(self, server: Server, client: str, change_ref: str) -> SnapshotRecord:
        self.creates += 1
        record = SnapshotRecord(
            provider="sandbox",
            kind="disk",
            server=server.name,
            client=client,
            change_ref=change_ref,
            ids=[f"sbx-{self.creates}"],
            state="pending",
            created_at=datetime.now(UTC),
        )
        self.taken[change_ref] = record
        return record


def test_a_rerun_with_the_same_change_ref_takes_no_second_snapshot() -> None:
    provider = CountingProvider()
    web = server({"type": "sandbox"})
    first = take_snapshot(provider, web, "globex", "CHG-1")  # type: ignore[arg-type]
    again = take_snapshot(provider, web, "globex", "CHG-1")  # type: ignore[arg-type]
    assert provider.creates == 1
    assert again.ids == first.ids
    assert again.reused and not first.reused


def test_another_change_takes_its_own_snapshot() -> None:
    provider = CountingProvider()
    web = server({"type": "sandbox"})
    take_snapshot(provider, web, "globex", "CHG-1")  # type: ignore[arg-type]
    take_snapshot(provider, web, "globex", "CHG-2")  # type: ignore[arg-type]
    assert provider.creates == 2


def test_every_snapshot_carries_the_four_caretaker_tags() -> None:
    assert caretaker_tags("acme", "CHG-1", "web-1") == {
        "caretaker:client": "acme",
        "caretaker:change-ref": "CHG-1",
        "caretaker:server": "web-1",
        "caretaker:managed": "true",
    }


def test_creating_a_snapshot_is_never_retried_and_waiting_only_after_transient_errors() -> None:
    assert create_snapshot.retries == 0
    assert restore_from_snapshot.retries == 0
    assert wait_for_snapshot.retries and wait_for_snapshot.retries > 0
    transient = SimpleNamespace(data=TransientSnapshotError("endpoint unreachable"))
    failed = SimpleNamespace(data=SnapshotError("snapshot snap-1 is in state error"))
    assert _only_transient(None, None, transient) is True
    assert _only_transient(None, None, failed) is False


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_wait_that_never_finishes_stops_at_its_bound_naming_the_last_state() -> None:
    clock = FakeClock()
    with pytest.raises(
        SnapshotError, match=r"snap-1: not done after 10s \(last state: pending 40%\)"
    ):
        poll_until(
            lambda: (False, "pending 40%"),
            timeout_s=10,
            poll_s=3,
            what="snap-1",
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.sleeps == [3, 3, 3, 1]  # never sleeps past the bound


def test_a_wait_with_no_time_left_still_looks_once() -> None:
    looks: list[int] = []

    def probe() -> tuple[bool, str]:
        looks.append(1)
        return True, "completed"

    assert poll_until(probe, timeout_s=0, poll_s=1, what="x") == "completed"
    assert looks == [1]


def test_a_sandbox_server_of_an_unknown_estate_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("CARETAKER_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="sandbox estate 'nowhere'"):
        provider_for(server({"type": "sandbox", "estate": "nowhere"}), SnapshotPolicy())
