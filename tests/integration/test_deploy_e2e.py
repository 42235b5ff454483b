"""prefect.yaml deployed for real: a local Prefect server, a process work pool, a worker.

What a user does, step by step, against a real `prefect server` (SQLite, its own
PREFECT_HOME, a free loopback port): create the work pool, `prefect deploy --all` from
a checkout of the git server (a local bare repository of this working tree), `prefect
deployment run 'server-maintenance/<client>' --param dry_run=true`, and a worker started
elsewhere runs it to completion on a sandbox host, from a clone of the deployed commit.
(Several workers on a PostgreSQL-backed server: test_fleet_workers.py.)
The report deployment likewise: `prefect deployment run 'maintenance-report/acme-monthly'`
run by a worker stores the report through the client's S3 storage block (moto's server),
links it and sends the contact the link.
Then the serve mode: what starting and stopping `python -m deployments.serve` does to
the same deployments.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from deployments.generate import WORK_POOL, WORK_POOL_TYPE, DeploymentSpec, deployment_specs
from deployments.server import ensure_server, stop_server
from inventory import load_inventory
from sandbox.git_server import GitServer, publish_repository
from tests.conftest import sandbox_unavailable
from tests.integration.test_store_postgres import (  # noqa: F401 (fixtures)
    database,
    fresh_database,
    postgres_unreachable,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SPECS: list[DeploymentSpec] = deployment_specs(load_inventory(REPO / "clients"))

# The client whose deployment is run: one of prefect.yaml's, with sandbox-style servers.
CLIENT = "globex"
SSH_BLOCK = "test-deploy-ssh"

CLIENT_FILE = """\
client:
  slug: {slug}
  name: Deploy Test Co
  timezone: America/New_York
  contact: {{name: Ops, email: ops@test.example}}
  approvers: [{{name: alice, email: alice@test.example}}]
schedule: {{cadence: monthly, window: {{start: "22:00", duration: 3h}}}}
patch: {{policy: all, reboot: if-required}}
defaults: {{ssh_block: {block}, user: root, port: 22, os_family: debian}}
servers:
  - {{name: {host}, role: staging, address: {address}, provider: {{type: sandbox}},
     checks: [{{type: tcp, port: 22}}]}}
"""


@dataclass(frozen=True)
class LocalServer:
    """A running `prefect server` and the environment its clients need."""

    url: str
    home: Path
    git: GitServer | None = None

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `prefect` command talking to this server."""
        env = dict(
            os.environ,
            PREFECT_API_URL=self.api,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_CLI_PROMPT="false",
        )
        env.update(extra)
        return env


def prefect(server: LocalServer, *args: str, timeout: float = 60) -> str:
    """Run the `prefect` CLI against ``server`` in the deploying checkout (the repository
    root when there is none); return its output, fail with it on error."""
    proc = subprocess.run(
        [PREFECT, *args],
        cwd=server.git.checkout if server.git else REPO,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"prefect {' '.join(args)} exited {proc.returncode}:\n{output}"
    return output


@contextmanager
def api(server: LocalServer) -> Iterator[Any]:
    """A sync Prefect client of ``server`` (whatever API this test process uses otherwise)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api}):
        with get_client(sync_client=True) as client:
            yield client


def wait_for_final_state(server: LocalServer, run_id: str, timeout: float) -> Any:
    """The flow run once its state is final (or as it is when ``timeout`` runs out)."""
    with api(server) as client:
        deadline = time.monotonic() + timeout
        flow_run = client.read_flow_run(run_id)
        while not (flow_run.state and flow_run.state.is_final()) and time.monotonic() < deadline:
            time.sleep(0.5)
            flow_run = client.read_flow_run(run_id)
    return flow_run


def work_once(
    server: LocalServer, cwd: Path, inventory: Path, data: Path, timeout: float, **env: str
) -> str:
    """`prefect worker start --run-once` in ``cwd`` with the caretaker folders (and ``env``);
    its output."""
    worker = subprocess.run(
        [PREFECT, "worker", "start", "--pool", WORK_POOL, "--run-once"],
        cwd=cwd,
        env=server.env(CARETAKER_INVENTORY_DIR=str(inventory), CARETAKER_DATA_DIR=str(data), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return worker.stdout + worker.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A real `prefect server` of its own: SQLite in a temporary PREFECT_HOME, a free port."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = ensure_server(timeout=60, home=home)
    try:
        yield LocalServer(url=url, home=home)
    finally:
        stop_server(home=home)


@pytest.fixture(scope="module")
def deployed(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    """The process work pool, and `prefect deploy --all` run in a checkout of the git
    server (whose ``origin`` names the repository the pull step clones)."""
    deploying = LocalServer(
        url=server.url,
        home=server.home,
        git=publish_repository(tmp_path_factory.mktemp("git-server")),
    )
    prefect(deploying, "work-pool", "create", WORK_POOL, "--type", WORK_POOL_TYPE)
    prefect(deploying, "--no-prompt", "deploy", "--all", timeout=120)
    return deploying


@pytest.fixture(scope="module")
def estate() -> Iterator[Any]:
    """One fresh sandbox host with a newer caretaker-agent published."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    from sandbox.estate import Estate, numbered_hosts
    from sandbox.repo import PackageSpec

    estate = Estate(numbered_hosts("test-deploy", 67, 1))
    estate.up(fresh=True)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    try:
        yield estate
    finally:
        estate.down(purge=True)


@pytest.fixture()
def inventory(estate: Any, server: LocalServer, tmp_path: Path) -> Path:
    """A client file naming the sandbox host, and its SSH block saved on the server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.prefect_blocks import ssh_identity

    with temporary_settings({PREFECT_API_URL: server.api}):
        ssh_identity(estate).save(SSH_BLOCK, overwrite=True)
    directory = tmp_path / "clients"
    directory.mkdir()
    (host,) = estate.spec.hosts
    (directory / f"{CLIENT}.yaml").write_text(
        CLIENT_FILE.format(slug=CLIENT, block=SSH_BLOCK, host=host.name, address=host.address)
    )
    return directory


def test_prefect_deploy_registers_one_scheduled_deployment_per_client(
    deployed: LocalServer,
) -> None:
    with api(deployed) as client:
        for spec in SPECS:
            deployment = client.read_deployment_by_name(spec.full_name)
            assert deployment.work_pool_name == WORK_POOL
            assert deployment.parameters == dict(spec.parameters)
            assert deployment.tags == list(spec.tags)
            assert not deployment.paused
            # The build steps named the checkout's origin and commit; nothing of its path.
            assert deployed.git is not None
            assert deployment.pull_steps == [
                {
                    "prefect.deployments.steps.git_clone": {
                        "repository": deployed.git.url,
                        "commit_sha": deployed.git.commit,
                    }
                }
            ]
            assert str(deployed.git.checkout) not in deployment.model_dump_json()
            (schedule,) = deployment.schedules
            assert schedule.active
            assert (schedule.schedule.cron, schedule.schedule.timezone) == (
                spec.cron,
                spec.timezone,
            )
            assert schedule.schedule.day_or == spec.day_or


def test_a_worker_runs_a_client_deployment_to_completion_with_its_plan_artifact(
    deployed: LocalServer, inventory: Path, tmp_path: Path
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    started = time.monotonic()
    output = prefect(
        deployed, "deployment", "run", f"server-maintenance/{CLIENT}", "--param", "dry_run=true"
    )
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    run_id = match.group(1)

    # Started outside any checkout: the run clones the deployed commit.
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    worker_log = work_once(deployed, worker_dir, inventory, tmp_path / "data", timeout=90)

    flow_run = wait_for_final_state(deployed, run_id, timeout=30)
    with api(deployed) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )

    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"{flow_run.state!r}\n{worker_log}"
    )
    assert flow_run.parameters == {"client": CLIENT, "dry_run": True}
    assert flow_run.work_pool_name == WORK_POOL
    tables = [a for a in artifacts if a.type == "table"]
    assert [a.key for a in tables] == [f"plan-{CLIENT}"]
    assert "caretaker-agent" in str(tables[0].data)
    assert time.monotonic() - started < 90


REPORT_CLIENT_FILE = """\
client:
  slug: acme
  name: ACME Delivery Test
  timezone: Europe/London
  contact: {name: ACME IT Operations, email: it-ops@acme.example}
  approvers: [{name: alice, email: alice@acme.example}]
  notify: [test-report-hook]
schedule: {cadence: monthly, window: {start: "02:00", duration: 2h}}
reports: {storage: test-report-s3, link_expiry: 1h}
defaults: {ssh_block: test-deploy-ssh, user: root, port: 22, os_family: debian}
servers:
  - {name: acme-web-1, role: staging, address: 10.213.99.11, provider: {type: sandbox}}
"""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto on a free loopback port with the reports bucket (test_report_storage_s3.py)."""
    from tests.integration.test_report_storage_s3 import reports_bucket

    with reports_bucket("test-deploy-s3", 74) as url:
        yield url


def test_the_monthly_report_deployment_stores_through_the_s3_block_links_and_notifies(
    deployed: LocalServer,
    s3_endpoint: str,
    fresh_database: str,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """`prefect deployment run 'maintenance-report/acme-monthly'`, a worker runs it: the
    files land in the S3Bucket block the inventory names, report.html's presigned link is a
    link artifact and opens the report over HTTP, and the contact's notice carries it.
    (Deployments insist on a shared history store: a fresh PostgreSQL schema.)"""
    import urllib.request

    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.webhook import WebhookReceiver
    from tasks.notify import save_demo_webhook
    from tests.integration.test_report_storage_s3 import BUCKET, bucket_block, s3_client

    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "acme.yaml").write_text(REPORT_CLIENT_FILE)
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    with WebhookReceiver() as inbox:
        with temporary_settings({PREFECT_API_URL: deployed.api}):
            bucket_block(s3_endpoint).save("test-report-s3", overwrite=True)
            save_demo_webhook(inbox.url, name="test-report-hook")
        output = prefect(
            deployed,
            "deployment",
            "run",
            "maintenance-report/acme-monthly",
            "--param",
            "period=2026-10",
        )
        match = re.search(r"UUID: ([0-9a-f-]{36})", output)
        assert match, output
        run_id = match.group(1)
        worker_log = work_once(
            deployed,
            tmp_path,
            clients,
            tmp_path / "data",
            timeout=120,
            CARETAKER_HISTORY_STORE_URL=fresh_database,
        )
        flow_run = wait_for_final_state(deployed, run_id, timeout=30)
        assert flow_run.state is not None and flow_run.state.is_completed(), (
            f"{flow_run.state!r}\n{worker_log}"
        )
        (notice,) = inbox.wait_for(1)

    assert flow_run.parameters == {"client": "acme", "period": "2026-10"}
    objects = s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="reports/acme/2026-10/")
    stored = {o["Key"].rsplit("/", 1)[1] for o in objects.get("Contents", [])}
    assert {"report.html", "uptime.csv", "incidents.csv", "activity.csv"} <= stored
    with api(deployed) as client:
        link = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                key=ArtifactFilterKey(any_=["report-link-acme-2026-10"]),
            )
        )
    (artifact,) = link
    url = re.search(r"\((http://127\.0\.0\.1:\d+/[^)]+)\)$", str(artifact.data))
    assert url and "X-Amz-Signature=" in url.group(1), artifact.data
    with urllib.request.urlopen(url.group(1), timeout=10) as response:  # noqa: S310 (loopback)
        page = response.read().decode("utf-8")
    assert "ACME Delivery Test: maintenance report 2026-10" in page
    assert notice["subject"] == "[caretaker] ACME Delivery Test: maintenance report 2026-10"
    assert "For ACME IT Operations <it-ops@acme.example>." in notice["body"]
    assert f"report.html: {url.group(1)}" in notice["body"]


def test_serve_unpauses_on_start_pauses_on_stop_and_deploy_hands_back_to_the_worker(
    deployed: LocalServer, tmp_path: Path
) -> None:
    def read_all() -> dict[str, Any]:
        with api(deployed) as client:
            return {s.full_name: client.read_deployment_by_name(s.full_name) for s in SPECS}

    def serve_until_polling() -> subprocess.Popen[str]:
        since = datetime.now(UTC)
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve"],
            # Outside the repository: served flows are imported by module path.
            cwd=tmp_path,
            # Poll every second, not every ten: the test waits for a served run.
            env=deployed.env(PREFECT_RUNNER_POLL_FREQUENCY="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Polled since start: registered, and the runner's signal handlers are in place.
            polled = [d.last_polled for d in read_all().values()]
            if all(p is not None and p > since for p in polled):
                return proc
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.5)
        proc.kill()
        raise AssertionError(f"serve never polled:\n{proc.communicate()[0]}")

    def stop(proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        return output

    # As serve's last stop leaves them (shown below): paused. Starting must resume them.
    with api(deployed) as client:
        for deployment in read_all().values():
            client.pause_deployment(deployment.id)
    assert all(d.paused for d in read_all().values())

    served = serve_until_polling()
    try:
        deployments = read_all()
        # A served run executes the flow itself (imported by module path): it gets as far
        # as refusing a scope that selects no server, without needing any host.
        output = prefect(
            deployed,
            "deployment",
            "run",
            SPECS[0].full_name,
            "--param",
            "dry_run=true",
            "--param",
            "scope=no-such-server",
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)
        assert run_id, output
        served_run = wait_for_final_state(deployed, run_id.group(1), timeout=45)
    finally:
        output = stop(served)
    assert served_run.state is not None and served_run.state.is_failed(), output
    assert "no-such-server" in (served_run.state.message or ""), served_run.state.message
    assert all(not d.paused for d in deployments.values()), "serve did not resume its schedules"
    # Taken over from the work pool: a worker of caretaker-process no longer gets these runs.
    assert all(d.work_pool_name is None for d in deployments.values()), output
    assert all(d.paused for d in read_all().values()), "stopping serve left a schedule running"

    prefect(deployed, "--no-prompt", "deploy", "--all", timeout=120)
    for deployment in read_all().values():
        assert deployment.work_pool_name == WORK_POOL and not deployment.paused
        assert deployment.pull_steps
