"""The fault matrix (docs/faults.md): what a real failure leaves behind, on real components.

Each test is one row of the matrix, marked ``fault`` (``./run faults`` runs every such test
and prints "faults survived / faults tried"). Each injects a failure a real estate has into
a real run (sandbox sshd hosts, a real Prefect API, moto in server mode) and asserts that
nothing is lost: every production host ends patched and verified, restored and verified,
or untouched (read on the host over SSH), and the change record and the end notice say
which.

Rows covered elsewhere are named in docs/faults.md with their tests.
"""

from __future__ import annotations

import contextvars
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import faults
from sandbox.estate import Estate
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from sandbox.webhook import WebhookReceiver
from tasks.notify import save_demo_webhook
from tests.conftest import ssh
from tests.integration.maintenance_world import (
    APPROVE,
    Approver,
    agent,
    reset_hosts,
    run,
    stored_records,
    write_client,
)

pytestmark = pytest.mark.fault

# Markers on one host that make caretaker-agent 1.1's postinst misbehave there only.
SLOW = "/etc/caretaker-fault-slow-postinst"
BROKEN = "/etc/caretaker-fault-broken-postinst"
AGENT_1_1 = PackageSpec(
    name="caretaker-agent",
    version="1.1",
    postinst_script=(
        f"if [ -e {SLOW} ]; then sleep 60; fi\n"
        f"if [ -e {BROKEN} ]; then echo 'caretaker-agent: postinst failed (fault)' >&2; exit 1; fi"
    ),
)
NONE_REASON = "legacy box, the client accepts the risk (CAB-77)"


def dpkg_status(estate: Estate, host: str) -> str:
    """caretaker-agent as dpkg has it on ``host``: '<status> <version>', e.g. 'ii  1.0'."""
    return ssh(
        estate, host, "dpkg-query -W -f '${db:Status-Abbrev} ${Version}' caretaker-agent"
    ).stdout


def results(record: Any) -> dict[str, str]:
    """Production server -> what the record says became of it."""
    return {server: str(result) for server, result in record.production_results.items()}


# ---------------------------------------------------------------- one bad night
# Three faults in one production run, so the matrix costs one flow run, not three:
# h02 loses its SSH connection while dpkg configures caretaker-agent, h03's postinst
# fails, h04 (provider none: no snapshot, risk accepted) has the same broken postinst,
# h05 is fine. Three failures are tolerated, so every batch runs and each host's fate
# is the fault's own, not the budget's.


class SshDrop(threading.Thread):
    """Kills a host's sshd, and the session's apt/dpkg with it, once its postinst runs."""

    def __init__(self, estate: Estate, host: str) -> None:
        super().__init__(daemon=True)
        self.estate, self.host = estate, host
        self.dropped = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            probe = faults.in_host(self.estate, self.host, "pgrep -f '[c]aretaker-agent.postinst'")
            if probe.returncode == 0:
                faults.stop_sshd(self.estate, self.host)
                # The session's processes die with the connection, as on a hang-up.
                faults.in_host(
                    self.estate,
                    self.host,
                    "pkill -KILL -x apt-get; pkill -KILL -x dpkg; "
                    "pkill -KILL -f '[c]aretaker-agent.postinst'; true",
                )
                self.dropped.set()
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def night(
    estate: Estate, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The bad night's run: its state, record, notices and the host versions after it."""
    reset_hosts(estate, SLOW, BROKEN)  # as ``world`` does, fault markers gone too
    estate.publish(AGENT_1_1)
    ssh_identity(estate).save("test-maint-ssh", overwrite=True)
    ssh(estate, "h02", f"touch {SLOW}")
    ssh(estate, "h03", f"touch {BROKEN}")
    ssh(estate, "h04", f"touch {BROKEN}")
    base = tmp_path_factory.mktemp("night")
    inventory = base / "clients"
    inventory.mkdir()
    write_client(inventory, estate, "night")
    path = inventory / "night.yaml"
    text = path.read_text().replace("failures_tolerated: 0", "failures_tolerated: 3")
    text = text.replace(
        "address: 10.213.68.14, provider: {type: sandbox, estate: test-maint}",
        f'address: 10.213.68.14, provider: {{type: none, reason: "{NONE_REASON}"}}',
    )
    assert "type: none" in text and "failures_tolerated: 3" in text
    path.write_text(text)
    drop = SshDrop(estate, "h02")
    with WebhookReceiver() as inbox, pytest.MonkeyPatch.context() as env:
        save_demo_webhook(inbox.url, name="test-maint-hook")
        env.setenv("CARETAKER_INVENTORY_DIR", str(inventory))
        env.setenv("CARETAKER_DATA_DIR", str(base / "data"))
        env.setenv("CARETAKER_APPROVAL_POLL_S", "0.2")
        env.setenv("CARETAKER_REBOOT_TIMEOUT_S", "8")
        env.setenv("CARETAKER_DPKG_LOCK_TIMEOUT_S", "3")
        drop.start()
        try:
            state, record, _ = run("night", [APPROVE], change_ref="CHG-NIGHT")
        finally:
            drop.stop.set()
            drop.join(5)
            # Whatever caretaker did, give h02 its sshd back for the assertions.
            if ssh(estate, "h02", "true").returncode != 0:
                faults.start_sshd(estate, "h02")
        notices = inbox.wait_for(3)
        yield {
            "state": state,
            "record": record,
            "stored": stored_records("night"),
            "notices": notices,
            "dropped": drop.dropped.is_set(),
            "status": {h.name: dpkg_status(estate, h.name) for h in estate.spec.hosts},
        }
    for host in ("h02", "h03", "h04"):
        ssh(estate, host, f"rm -f {SLOW} {BROKEN}")


def end_notice(night: dict[str, Any]) -> str:
    last = night["notices"][-1]
    return f"{last['subject']}\n{last['body']}"


@pytest.mark.integration
def test_ssh_dropped_during_apt_leaves_dpkg_half_configured_and_the_host_is_restored(
    estate: Estate, night: dict[str, Any]
) -> None:
    record = night["record"]
    assert night["dropped"], "the postinst never ran on h02: the fault was not injected"
    # dpkg was killed while configuring: unknown what changed, so h02 counts as changed
    # and comes back from its snapshot, configured at 1.0.
    assert night["status"]["h02"] == "ii  1.0"
    (rollback,) = [r for r in record.rollbacks if r.server == "h02"]
    assert rollback.restored_ok and rollback.verified_ok, rollback
    assert results(record)["h02"] == "restored"
    assert "h02" in end_notice(night) and "restored" in end_notice(night)


@pytest.mark.integration
def test_a_broken_postinst_on_a_production_host_is_restored_and_verified(
    estate: Estate, night: dict[str, Any]
) -> None:
    record = night["record"]
    assert night["status"]["h03"] == "ii  1.0"
    (rollback,) = [r for r in record.rollbacks if r.server == "h03"]
    assert rollback.changed and rollback.restored_ok and rollback.verified_ok, rollback
    assert "postinst" in rollback.detail or "dpkg" in rollback.detail, rollback.detail
    assert results(record)["h03"] == "restored"
    # What changed before it failed is recorded: 1.1 unpacked, not configured.
    assert ("h03", "caretaker-agent", "1.0", "1.1") in {
        (c.server, c.name, c.from_version, c.to_version) for c in record.package_changes
    }


@pytest.mark.integration
def test_provider_none_is_a_recorded_risk_and_a_failed_host_is_left_not_restored(
    estate: Estate, night: dict[str, Any]
) -> None:
    record = night["record"]
    (snapshot,) = [s for s in record.snapshots if s.server == "h04"]
    assert snapshot.state == "skipped" and snapshot.ids == ()
    assert snapshot.accepted_risk and NONE_REASON in snapshot.accepted_risk
    # Nothing to restore from: the half-configured package stays, and says so.
    assert night["status"]["h04"].startswith("iF") and night["status"]["h04"].endswith("1.1")
    (rollback,) = [r for r in record.rollbacks if r.server == "h04"]
    assert not rollback.restored_ok
    assert results(record)["h04"] == "failed"
    assert "h04" in end_notice(night)


@pytest.mark.integration
def test_a_bad_night_accounts_for_every_production_host_in_record_store_and_notice(
    estate: Estate, night: dict[str, Any]
) -> None:
    record, state = night["record"], night["state"]
    assert state.is_failed()
    assert record.outcome.value == "completed-with-failures"
    assert "failed, not restored: h04" in record.outcome_detail
    assert night["status"]["h05"] == "ii  1.1"  # the host without a fault was patched
    assert results(record) == {
        "h02": "restored",
        "h03": "restored",
        "h04": "failed",
        "h05": "patched",
    }
    (stored,) = night["stored"]
    assert stored.outcome == record.outcome and stored.change_ref == "CHG-NIGHT"
    assert results(stored) == results(record)
    assert record.outcome.value in end_notice(night)


# ---------------------------------------------------------------- preflight refusals


@pytest.mark.integration
def test_a_full_disk_on_one_host_is_refused_in_preflight_before_anything_changes(
    estate: Estate, world: dict[str, Any]
) -> None:
    write_client(world["dir"], estate, "diskfull")
    faults.fill_disk(estate, "h04", free_mb=10)
    try:
        df = ssh(estate, "h04", "df -P -BM /var | tail -1").stdout.split()
        state, record, approver = run("diskfull", [APPROVE])
    finally:
        faults.free_disk(estate, "h04")
    assert int(df[3].rstrip("M")) <= 12, df  # a real filesystem, really (nearly) full
    assert state.is_failed()
    assert record.outcome.value == "failed"
    assert "h04: only" in record.outcome_detail and "free on /var" in record.outcome_detail
    assert approver.paused_seen == 0 and record.snapshots == []
    assert record.package_changes == []
    assert {agent(estate, h.name) for h in estate.spec.hosts} == {"1.0"}
    notice = world["inbox"].wait_for(1)[-1]
    assert "failed" in (notice["subject"] + notice["body"]).lower()


# ---------------------------------------------------------------- Prefect restarted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrefectServer:
    """``prefect server start`` on a free port with its own SQLite file; restartable."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(
            os.environ,
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home}/prefect.db",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=open(self.home / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import httpx

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prefect server did not start: see {self.home}/server.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.mark.integration
def test_a_prefect_server_restarted_while_the_run_waits_for_approval_loses_nothing(
    estate: Estate, world: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server_maintenance import server_maintenance

    write_client(world["dir"], estate, "restart")
    server = PrefectServer(tmp_path)
    server.start()
    seen: dict[str, Any] = {}

    def restart_then_approve() -> None:
        """Wait for the pause, restart the server, then answer as the approver would."""
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and "paused" not in seen:
                if any(r.state and r.state.is_paused() for r in client.read_flow_runs()):
                    seen["paused"] = time.monotonic()
                time.sleep(0.3)
        if "paused" not in seen:
            return
        server.stop()
        time.sleep(3)  # the paused run polls a server that is not there
        server.start()
        seen["restarted"] = True
        approver = Approver("restart", [APPROVE])
        approver.run()  # in this thread: it answers the one pause, then returns
        seen["answered"] = approver.paused_seen

    try:
        with temporary_settings({PREFECT_API_URL: server.url}):
            ssh_identity(estate).save("test-maint-ssh", overwrite=True)
            save_demo_webhook(world["inbox"].url, name="test-maint-hook")
            # Threads start without the settings context: hand the helper this one.
            helper = threading.Thread(
                target=contextvars.copy_context().run, args=(restart_then_approve,), daemon=True
            )
            helper.start()
            state = server_maintenance(
                client="restart", change_ref="CHG-RESTART", return_state=True
            )
            helper.join(10)
            record = state.result(raise_on_failure=False)
            # Send this server its last logs and events now: once it is stopped they
            # would be retried against nothing until the session ends.
            APILogWorker.drain_all(timeout=15)
            EventsWorker.drain_all(timeout=15)
    finally:
        server.stop()
    assert seen.get("restarted") and seen.get("answered") == 1, seen
    assert state.is_completed(), state.message
    assert [a.approver for a in record.counted_approvals] == ["alice"]
    assert {agent(estate, h.name) for h in estate.spec.hosts} == {"1.1"}
    assert set(results(record).values()) == {"patched"}
    (stored,) = stored_records("restart")
    assert stored.outcome.value == "completed"


# ---------------------------------------------------------------- AWS restore mid-swap


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    """moto on a free loopback port, knowing one instance (root + data volume)."""
    if importlib.util.find_spec("moto.server") is None:
        pytest.skip("moto[server] is not installed")
    from sandbox import moto
    from sandbox.estate import AwsInstanceSpec, EstateSpec

    spec = EstateSpec(
        name="test-faults-aws",
        net=75,
        hosts=[],
        aws=[AwsInstanceSpec(name="swap-web-1", region="eu-west-1", client="acme")],
    )
    aws_estate = Estate(spec)
    aws_estate.dir.mkdir(parents=True, exist_ok=True)
    try:
        yield moto.start(aws_estate)
    finally:
        aws_estate.down(purge=True)


def test_a_restore_failing_mid_swap_on_aws_leaves_every_volume_and_says_where(
    aws_endpoint: str,
) -> None:
    from botocore.exceptions import ClientError

    from core.errors import SnapshotError
    from inventory import AwsProvider, Server, SnapshotPolicy
    from sandbox import moto
    from tasks.snapshots.aws.provider import AwsSnapshotProvider
    from tasks.snapshots.base import Pace

    ec2 = moto.client(aws_endpoint, "eu-west-1")
    server = Server.model_validate(
        {
            "name": "swap-web-1",
            "role": "production",
            "address": "10.213.75.11",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {
                "type": "aws",
                "region": "eu-west-1",
                "instance_name": "swap-web-1",
                "credentials_block": "caretaker-sandbox-aws",
            },
        }
    )
    assert isinstance(server.provider, AwsProvider)
    aws = AwsSnapshotProvider(
        ec2, server.provider, SnapshotPolicy(), client="acme", pace=Pace(poll_s=0.05)
    )
    record = aws.wait(aws.create(server, "acme", "CHG-SWAP"), timeout_s=30, poll_s=0.05)

    def instance() -> dict[str, Any]:
        found = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["swap-web-1"]}])
        (only,) = [i for r in found["Reservations"] for i in r["Instances"]]
        return only

    before = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance()["BlockDeviceMappings"]}
    attaches: list[str] = []

    def refuse_second_attach(params: dict[str, Any], **_: Any) -> None:
        # EC2 refuses the second device's attach: the first device is swapped, the second
        # device's old volume is detached and its new one is not attached.
        attaches.append(params["Device"])
        if len(attaches) == 2:
            raise ClientError(
                {"Error": {"Code": "IncorrectState", "Message": "fault: attach refused"}},
                "AttachVolume",
            )

    ec2.meta.events.register("before-parameter-build.ec2.AttachVolume", refuse_second_attach)
    with pytest.raises(SnapshotError) as failed:
        aws.restore(server, record)
    message = str(failed.value)

    after = instance()
    volumes = {v["VolumeId"]: v for v in ec2.describe_volumes()["Volumes"]}
    first, second = sorted(before)
    # Left stopped, never started on a half-swapped set of disks: recoverable by hand.
    assert after["State"]["Name"] == "stopped"
    # Nothing deleted: every pre-restore volume still exists.
    assert set(before.values()) <= set(volumes)
    # The message says what was swapped and where the second device's disks are.
    assert f"{first}: {before[first]} ->" in message
    assert f"in progress: {second}: {before[second]} detached" in message, message
    assert "no volume was deleted" in message and "left stopped" in message
