"""The health-check flow on real sandbox hosts, its events, and concurrent ingest on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from flows.health_check import HealthCheckSummary
from history.intervals import read_intervals
from history.metrics import read_daily_metrics, read_metrics
from history.store import open_store
from sandbox import faults
from sandbox.estate import Estate, numbered_hosts
from sandbox.prefect_blocks import ssh_identity
from sandbox.webhook import WebhookReceiver
from tests.conftest import sandbox_unavailable
from tests.integration.test_store_postgres import (  # noqa: F401 (fixtures)
    database,
    fresh_database,
    postgres_unreachable,
)
from tests.unit.test_ingest import ingest_concurrently

pytestmark = pytest.mark.integration

SLUG = "testhealth"
CLIENT = """\
client:
  slug: {slug}
  name: Health Co
  timezone: Europe/Paris
  contact: {{name: Ops, email: ops@test.example}}
  approvers: [{{name: alice, email: alice@test.example}}]
schedule: {{cadence: quarterly, window: {{start: "01:00", duration: 4h}}}}
defaults: {{ssh_block: test-health-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    """Three fresh hosts (h01..h03 at 10.213.69.11-13)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    estate = Estate(numbered_hosts("test-health", 69, 3))
    estate.up(fresh=True)
    try:
        yield estate
    finally:
        estate.down(purge=True)


@pytest.fixture(scope="module")
def health_env(
    estate: Estate, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The client file, its SSH block on the Prefect API, and a store of its own (its URL)."""
    directory = tmp_path_factory.mktemp("clients")
    ssh_identity(estate).save("test-health-ssh", overwrite=True)
    servers = "\n".join(
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'}, "
        f"address: {h.address}, "
        f"provider: {{type: sandbox}}, checks: [{{type: tcp, port: 22, timeout: 3s}}]}}"
        for i, h in enumerate(estate.spec.hosts)
    )
    (directory / f"{SLUG}.yaml").write_text(CLIENT.format(slug=SLUG, servers=servers))
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'caretaker.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("CARETAKER_INVENTORY_DIR", str(directory))
    mp.setenv("CARETAKER_HISTORY_STORE_URL", url)
    yield url
    mp.undo()


def _run(client: str) -> HealthCheckSummary:
    """One health-check run; its summary."""
    from flows.health_check import health_check

    summary = health_check(client=client)
    assert isinstance(summary, HealthCheckSummary)
    return summary


def _events(name: str, resource_id: str, timeout: float = 20.0) -> list[Any]:
    """Events of ``name`` about ``resource_id`` as the Prefect API stored them."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id])
    )
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_events(filter=event_filter, limit=50).events
        if found or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.5)


def test_a_server_whose_sshd_stopped_is_recorded_down_and_its_events_are_emitted(
    estate: Estate, health_env: str
) -> None:
    from deployments.automations import create_server_down_automation
    from tasks.notify import save_demo_webhook

    with WebhookReceiver() as hook:
        save_demo_webhook(hook.url, name="test-health-hook")
        create_server_down_automation("test-health-hook", client=SLUG)

        first = _run(SLUG)
        assert first.down == [] and first.changes == []
        assert {s.server for s in first.servers if s.memory_used_pct is not None} == {
            "h01",
            "h02",
            "h03",
        }
        faults.stop_sshd(estate, "h02")
        try:
            second = _run(SLUG)
            assert second.down == [f"{SLUG}/h02"] and second.changes == []  # not confirmed yet
            third = _run(SLUG)
            assert third.changes and third.changes[0].startswith(f"{SLUG}/h02 down since")
        finally:
            faults.start_sshd(estate, "h02")
        fourth = _run(SLUG)
        assert fourth.down == [] and fourth.changes[0].startswith(f"{SLUG}/h02 up since")

        with open_store(health_env) as store:
            h02 = read_intervals(store, SLUG, "h02")
            others = read_intervals(store, SLUG, "h01") + read_intervals(store, SLUG, "h03")
        assert [(i.state, i.checks, i.failures) for i in h02] == [
            ("up", 1, 0),
            ("down", 2, 2),
            ("up", 1, 0),
        ]
        assert h02[1].start == second.checked_at and "ssh" in (h02[1].first_error or "")
        assert {(i.state, i.checks) for i in others} == {("up", 4)}

        # Load, memory and disk of every run that reached the server over SSH.
        with open_store(health_env) as store:
            metrics = {name: read_metrics(store, SLUG, server=name) for name in ("h01", "h02")}
            [daily] = read_daily_metrics(store, SLUG, server="h01")
        assert [m.ts for m in metrics["h01"]] == [
            r.checked_at for r in (first, second, third, fourth)
        ]
        assert all(
            m.memory_used_pct is not None and m.disk_used_pct is not None for m in metrics["h01"]
        )
        assert [m.ts for m in metrics["h02"]] == [first.checked_at, fourth.checked_at]
        assert daily.samples == 4 and daily.memory_used_pct_max is not None

        resource = f"caretaker.server.{SLUG}.h02"
        [down] = _events("caretaker.server.down", resource)
        assert down.payload["since"] == second.checked_at.isoformat()
        assert down.payload["checks"] == 2
        [up] = _events("caretaker.server.up", resource)
        assert up.occurred == fourth.checked_at

        # The example automation: the down event became a message through the block.
        [message] = hook.wait_for(1, timeout=30)
        assert "h02 is DOWN" in str(message)


def test_the_clients_confirm_after_setting_decides_when_a_server_is_down(
    estate: Estate, health_env: str
) -> None:
    """With ``monitoring: {confirm_after: 1}`` the first failed check is an outage."""
    from core.settings import settings

    path = settings().inventory_dir / f"{SLUG}.yaml"
    original = path.read_text()
    path.write_text(original.replace("defaults:", "monitoring: {confirm_after: 1}\ndefaults:"))
    faults.stop_sshd(estate, "h03")
    stopped = True
    try:
        down = _run(SLUG)
        assert down.down == [f"{SLUG}/h03"]
        assert [c.split(" since")[0] for c in down.changes] == [f"{SLUG}/h03 down"]
        faults.start_sshd(estate, "h03")
        stopped = False
        assert _run(SLUG).changes[0].startswith(f"{SLUG}/h03 up since")
    finally:
        if stopped:
            faults.start_sshd(estate, "h03")
        path.write_text(original)


PG_UNREACHABLE = postgres_unreachable()


@pytest.mark.postgres
@pytest.mark.skipif(PG_UNREACHABLE is not None, reason=PG_UNREACHABLE or "")
def test_two_concurrent_writers_lose_no_sample_on_postgres(fresh_database: str) -> None:  # noqa: F811
    with open_store(fresh_database) as store:
        ingest_concurrently(store)
