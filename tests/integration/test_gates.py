"""The gates hold on every path: the fault-matrix rows of the staging rule, the window per
batch, the failure budget, restores and snapshots, on sandbox hosts and a real Prefect API.

Each test ends by accounting for every production host: patched and verified, restored and
verified, unchanged (failed before anything changed, not restored), untouched, or failed and
left for an operator; the change record (``production_results``) and the end notice say
which, and the packages on the hosts agree.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sandbox import faults
from sandbox.estate import Estate
from sandbox.repo import PackageSpec
from tasks.rollout import BATCH_TIME_FLOOR
from tests.integration.maintenance_world import APPROVE, Approver, agent, run, write_client

pytestmark = pytest.mark.integration

PRODUCTION = ("h02", "h03", "h04", "h05")


def client_file(world: dict[str, Any], estate: Estate, slug: str, **replace: str) -> Path:
    """The world's client file for ``slug``, with whole lines of it replaced."""
    write_client(world["dir"], estate, slug)
    path: Path = world["dir"] / f"{slug}.yaml"
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


ROLLOUT = "rollout: {batch_size: 2, failures_tolerated: 0, on_failure: restore}"
PATCH = "patch: {policy: all, hold: [], reboot: if-required}"


def broken_service_on(host: str) -> dict[str, str]:
    """``host`` gets a health check on a port nothing listens on: it fails after patching
    (a service that does not come back), while staging passes."""
    where = (
        f"address: 10.213.68.{10 + int(host[1:])}, provider: {{type: sandbox, estate: test-maint}}"
    )
    return {
        f"{where}, checks: [{{type: tcp, port: 22}}]": (
            f"{where}, checks: [{{type: tcp, port: 22}}, {{type: tcp, port: 9, timeout: 1s}}]"
        )
    }


def versions(estate: Estate) -> dict[str, str]:
    return {host: agent(estate, host) for host in PRODUCTION}


def end_notice(world: dict[str, Any], change_ref: str) -> dict[str, Any]:
    """The end notice of the change (the last one naming it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ends = [
            n
            for n in world["inbox"].received
            if change_ref in n["subject"] and "ended" in n.get("body", "")
        ]
        if ends:
            return ends[-1]
        time.sleep(0.2)
    raise AssertionError(f"no end notice for {change_ref}: {world['inbox'].received}")


# --- scope without staging ------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("scope", ["production", "h02,h03"])
def test_a_scope_without_staging_is_refused_before_anything_changes(
    estate: Estate, world: dict[str, Any], scope: str
) -> None:
    client_file(world, estate, "nostage")
    before = versions(estate)
    state, record, approver = run(
        "nostage", [APPROVE], scope=scope, window_override="x", change_ref="CHG-NOSTAGE"
    )
    assert state.is_failed()
    assert record.outcome.value == "refused"
    assert "production servers are patched only in a change whose staging servers passed" in (
        record.outcome_detail
    )
    assert "without staging server(s) h01" in record.outcome_detail
    assert [(g.gate, g.decision) for g in record.gates] == [("staging", "refused")]
    assert approver.paused_seen == 0 and record.snapshots == [] and record.package_changes == []
    assert versions(estate) == before == dict.fromkeys(PRODUCTION, "1.0")
    assert agent(estate, "h01") == "1.0"
    named = ("h02", "h03") if scope == "h02,h03" else PRODUCTION
    assert {k: v.value for k, v in record.production_results.items()} == dict.fromkeys(
        named, "untouched"
    )
    notice = end_notice(world, "CHG-NOSTAGE")
    assert "refused" in notice["subject"] and "without staging server(s) h01" in notice["body"]
    assert f"Production: untouched: {', '.join(named)}" in notice["body"]


# --- failure budget, no-op host, stale snapshot -----------------------------------------------


def age_snapshot(estate: Estate, snapshot_id: str, hours: int) -> None:
    """Date a sandbox snapshot ``hours`` back (as if taken before a long approval wait)."""
    meta = estate.dir / "snapshots" / snapshot_id / "snapshot.json"
    data = json.loads(meta.read_text())
    data["created_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
    meta.write_text(json.dumps(data))


@pytest.mark.fault
def test_within_the_budget_a_no_op_host_is_not_restored_and_a_stale_snapshot_is_retaken(
    estate: Estate, world: dict[str, Any]
) -> None:
    from inventory import load_client
    from tasks.snapshots.sandbox import SandboxSnapshotProvider

    path = client_file(
        world, estate, "budget",
        **{ROLLOUT: "rollout: {batch_size: 2, failures_tolerated: 1, on_failure: restore}"},
    )  # fmt: skip
    inventory = load_client(path)
    # This change's snapshot of h02, taken 7 h ago (snapshots.max_age is 6 h by default).
    provider = SandboxSnapshotProvider(estate, inventory.snapshots, client="budget")
    stale = provider.create(inventory.server("h02"), "budget", "CHG-BUDGET").ids[0]
    age_snapshot(estate, stale, hours=7)
    h03_init = estate.init_pid("h03")
    faults.hold_dpkg_lock(estate, "h03")  # apt fails on h03 before changing anything
    try:
        state, record, _ = run("budget", [APPROVE], change_ref="CHG-BUDGET")
    finally:
        faults.release_dpkg_lock(estate, "h03")

    assert record.outcome.value == "completed-with-failures", record.outcome_detail
    assert state.is_failed()
    # one failure is tolerated: batch 2 ran
    assert versions(estate) == {"h02": "1.1", "h03": "1.0", "h04": "1.1", "h05": "1.1"}
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and not rollback.changed and not rollback.restored_ok
    assert rollback.detail.startswith("not restored (nothing changed)")
    # not restored: the host was never stopped and swapped to its snapshot
    assert estate.init_pid("h03") == h03_init
    assert not list(estate.host_dir("h03").glob("upper.before-*"))
    # h02's stale snapshot was taken again right before its batch, and the fresh one kept
    h02 = next(s for s in record.snapshots if s.server == "h02")
    assert h02.state == "completed" and h02.ids != (stale,) and h02.detail.startswith("re-taken")
    snapshot_gates = {(g.detail.split(":")[0], g.decision, g.batch) for g in record.gates
                      if g.gate == "snapshot"}  # fmt: skip
    assert snapshot_gates == {("h02", "retaken", 1), ("h03", "taken", 1), ("h04", "taken", 2),
                              ("h05", "taken", 2)}  # fmt: skip
    results = {"h02": "patched", "h03": "unchanged", "h04": "patched", "h05": "patched"}
    assert {k: v.value for k, v in record.production_results.items()} == results
    notice = end_notice(world, "CHG-BUDGET")
    assert "Production: patched: h02, h04, h05; unchanged: h03" in notice["body"]
    assert "h03 (not restored: nothing changed)" in notice["body"]


# --- a failed restore halts -------------------------------------------------------------------


class SnapshotSpoiler(threading.Thread):
    """Makes a host's fresh snapshot of a change unusable as soon as it is completed."""

    def __init__(self, estate: Estate, host: str, change_ref: str) -> None:
        super().__init__(daemon=True)
        self.folder = estate.dir / "snapshots"
        self.host, self.change_ref = host, change_ref
        self.spoiled: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.spoiled is None:
            for meta in self.folder.glob("sbx-*/snapshot.json"):
                try:
                    data = json.loads(meta.read_text())
                except (OSError, ValueError):
                    continue
                if (data.get("server"), data.get("change_ref"), data.get("state")) == (
                    self.host, self.change_ref, "completed",
                ):  # fmt: skip
                    shutil.rmtree(meta.parent / "upper", ignore_errors=True)
                    self.spoiled = meta.parent.name
            time.sleep(0.05)


@pytest.mark.fault
def test_a_failed_restore_halts_the_rollout_with_its_own_outcome_and_notice(
    estate: Estate, world: dict[str, Any]
) -> None:
    client_file(
        world, estate, "badrestore",
        **{ROLLOUT: "rollout: {batch_size: 2, failures_tolerated: 1, on_failure: restore}"},
        **broken_service_on("h03"),
    )  # fmt: skip
    spoiler = SnapshotSpoiler(estate, "h03", "CHG-BADRESTORE")
    spoiler.start()
    try:
        state, record, _ = run("badrestore", [APPROVE], change_ref="CHG-BADRESTORE")
    finally:
        spoiler.stop.set()
        spoiler.join(5)

    assert spoiler.spoiled is not None
    assert state.is_failed()
    assert record.outcome.value == "restore-failed", record.outcome_detail
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and not rollback.restored_ok and not rollback.verified_ok
    assert rollback.snapshot_ids == (spoiler.spoiled,) and "restore failed" in rollback.detail
    # the budget (1) would have let batch 2 start: the failed restore stopped it
    assert versions(estate) == {"h02": "1.1", "h03": "1.1", "h04": "1.0", "h05": "1.0"}
    assert "h03 need(s) an operator now; untouched: h04, h05" in record.outcome_detail
    results = {"h02": "patched", "h03": "failed", "h04": "untouched", "h05": "untouched"}
    assert {k: v.value for k, v in record.production_results.items()} == results
    notice = end_notice(world, "CHG-BADRESTORE")
    assert "restore-failed" in notice["subject"]
    assert "Production: patched: h02; untouched: h04, h05; failed: h03" in notice["body"]
    assert "h03 (restore FAILED)" in notice["body"]


# --- on_failure: halt -------------------------------------------------------------------------


@pytest.mark.fault
def test_on_failure_halt_leaves_the_failed_host_and_starts_no_further_batch(
    estate: Estate, world: dict[str, Any]
) -> None:
    client_file(
        world, estate, "halt",
        **{ROLLOUT: "rollout: {batch_size: 2, failures_tolerated: 0, on_failure: halt}"},
        **broken_service_on("h03"),
    )  # fmt: skip
    state, record, _ = run("halt", [APPROVE], change_ref="CHG-HALT")

    assert state.is_failed()
    assert record.outcome.value == "halted"
    (rollback,) = record.rollbacks
    assert rollback.server == "h03" and rollback.changed and not rollback.snapshot_ids
    assert rollback.detail.startswith("not restored (on_failure is halt)")
    assert versions(estate) == {"h02": "1.1", "h03": "1.1", "h04": "1.0", "h05": "1.0"}
    assert "untouched: h04, h05" in record.outcome_detail
    results = {"h02": "patched", "h03": "failed", "h04": "untouched", "h05": "untouched"}
    assert {k: v.value for k, v in record.production_results.items()} == results
    assert (
        "Production: patched: h02; untouched: h04, h05; failed: h03"
        in (end_notice(world, "CHG-HALT")["body"])
    )


# --- the window closes mid-rollout; reboot: never ----------------------------------------------

#: Seconds the run gets to pass batch 1's window gate (preflight, staging snapshot and patch,
#: the approval pause answered at once, batch 1's snapshots): it came 3.7 s after the run's
#: start (2026-12-05, load ~2), so 10 s leaves more than twice that; each second more is a
#: second this test waits.
LEAD_S = 10
#: Another process holds h02's dpkg lock (apt waits for it) until this long after the moment
#: the window has only a batch's time left: batch 1 ends, and batch 2's gate comes, after it.
LATE_S = 1


@pytest.mark.fault
def test_a_window_closing_mid_rollout_stops_before_the_next_batch_and_names_its_hosts(
    estate: Estate, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.server_maintenance import server_maintenance

    # The window closes LEAD_S + 5 min from now; a batch is expected to take the floor
    # (5 min: twice the measured staging time is less). Batch 1's gate comes within LEAD_S
    # (inside: a floor and more is left); batch 1 cannot end before h02's dpkg lock is let
    # go, LATE_S after the window has only the floor left, so batch 2's gate is too late.
    # Both follow from the run's own progress, not from a guess of how long it takes.
    zone = ZoneInfo("Europe/Paris")
    now = datetime.now(zone)
    start = now.replace(second=0, microsecond=0)
    close = now + BATCH_TIME_FLOOR + timedelta(seconds=LEAD_S)
    duration = int((close - start).total_seconds())
    client_file(
        world, estate, "closing",
        **{'window: {start: "00:00", duration: 24h}':
           f'window: {{start: "{start:%H:%M}", duration: {duration}}}',
           PATCH: "patch: {policy: all, hold: [], reboot: never}"},
    )  # fmt: skip
    # The upgrade asks for a reboot; under reboot: never it stays pending, as a warning.
    estate.publish(
        PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True)
    )
    release_at = (close - BATCH_TIME_FLOOR).timestamp() + LATE_S
    approver = Approver("closing", [APPROVE])
    monkeypatch.setenv("CARETAKER_DPKG_LOCK_TIMEOUT_S", "60")
    faults.hold_dpkg_lock(estate, "h02")
    release = threading.Timer(
        max(0.0, release_at - time.time()), faults.release_dpkg_lock, (estate, "h02")
    )
    approver.start()
    release.start()
    try:
        state: Any = server_maintenance(
            client="closing", change_ref="CHG-CLOSING", return_state=True
        )
    finally:
        approver.stop.set()
        release.cancel()
        faults.release_dpkg_lock(estate, "h02")
    record = state.result(raise_on_failure=False)

    windows = [(g.batch, g.decision) for g in record.gates if g.gate == "window"]
    assert windows == [(None, "inside"), (1, "inside"), (2, "too-late")], record.gates
    assert state.is_failed()
    assert record.outcome.value == "halted"
    assert "rollout stopped before batch 2/2; untouched: h04, h05" in record.outcome_detail
    assert versions(estate) == {"h02": "1.1", "h03": "1.1", "h04": "1.0", "h05": "1.0"}
    results = {"h02": "patched", "h03": "patched", "h04": "untouched", "h05": "untouched"}
    assert {k: v.value for k, v in record.production_results.items()} == results
    assert (
        "Production: patched: h02, h03; untouched: h04, h05"
        in (end_notice(world, "CHG-CLOSING")["body"])
    )
    # reboot: never: nothing rebooted, the pending reboot is a warning, verification passed
    assert record.reboots == []
    patched = [v for v in record.verifications if v.server in ("h01", "h02", "h03")]
    assert patched and all(v.passed for v in patched)
    assert all("reboot pending (allowed by the settings)" in v.warnings for v in patched)
    assert "reboot-required" in estate_ls(estate, "h02", "/var/run")


def estate_ls(estate: Estate, host: str, folder: str) -> str:
    from tests.conftest import ssh

    return str(ssh(estate, host, f"ls {folder}").stdout)
