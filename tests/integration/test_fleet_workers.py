"""Worker mode on "several machines", end to end, following docs/deployments.md literally.

A Prefect server on PostgreSQL (a database of its own on 127.0.0.1:5432, started by
``deployments.server``; its scheduler off so only the test's runs exist), the history
store in another PostgreSQL database, and the MSP's git server as a local bare repository
of this working tree whose ``clients/`` are two test clients on the sandbox estate.
The deploy block of docs/deployments.md runs in a clone of it (the deploying machine);
its worker block runs twice, in two folders (two machines), each as its own process group,
with an environment holding no ``CARETAKER_*`` setting: whatever the runs know of the
fleet comes through the work pool's job variables.

Then: both clients' full maintenance at once (one run on each worker), each approved with
alice's signature through ``deployments.approve`` while it waits; ``fleeta`` completes.
``fleetb``'s production host h05 has its dpkg lock held, so its batch stays running;
its worker's whole process group is killed with SIGKILL. The dead run is marked Crashed
as the zombie-run automation does, and a rerun of the same change runs on the surviving
worker: it takes the run lock over from the dead run (the lock lives in the shared store,
so the worker on the other machine sees it) and finishes the change without asking again.

The workers are ``caretaker-worker`` (docs' worker block): each machine's runs are forked
from its fork server. The deployed commit carries one line more than the working tree
(``tasks/__init__.py`` prints where it was imported from, the run's id and a setting of
the pool), so the worker logs show that every run imported the DEPLOYED commit from its
clone (not the code the fork server and the workers' venv were started from), in a
process forked by the fork server, with the job's environment; killing fleetb's job
command (the client) with SIGKILL kills that process at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deployments.server import ensure_server, stop_server
from sandbox import faults
from sandbox.estate import Estate
from sandbox.git_server import GitServer, git, publish_repository
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from sandbox.webhook import WebhookReceiver
from tests.conftest import ssh
from tests.integration.maintenance_world import (
    CLIENT,
    ESTATE,
    agent,
    eventually,
    private_key,
    public_key,
)
from tests.integration.test_store_postgres import ADMIN_URL, postgres_unreachable

_UNREACHABLE = postgres_unreachable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.skipif(_UNREACHABLE is not None, reason=_UNREACHABLE or ""),
]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "deployments.md"
BIN = Path(sys.executable).parent
#: fleeta: h01 staging, h02 production; fleetb: h03 staging, h04 + h05 production (one batch).
HOSTS = {"fleeta": ("h01", "h02"), "fleetb": ("h03", "h04", "h05")}
#: Appended to the deployed commit's tasks/__init__.py (only there): what each run prints.
MARKER = """
import os as _os
print(
    "fleet-marker", _os.environ.get("PREFECT__FLOW_RUN_ID"), _os.getpid(), __file__,
    _os.environ.get("CARETAKER_REBOOT_TIMEOUT_S"),
    open(f"/proc/{_os.getppid()}/cmdline").read().replace("\\0", " ").strip(),
    sep="|", flush=True,
)
"""


def deployed_commit(git_server: GitServer) -> GitServer:
    """The deploying checkout one commit ahead of the working tree (the marker), pushed."""
    init = git_server.checkout / "tasks" / "__init__.py"
    init.write_text(init.read_text() + MARKER)
    git(git_server.checkout, "commit", "-q", "-am", "the deployed commit prints a marker")
    git(git_server.checkout, "push", "-q", "origin", "HEAD")
    return replace(git_server, commit=git(git_server.checkout, "rev-parse", "HEAD"))


def markers(root: Path, machine: str = "machine-*") -> dict[str, list[list[str]]]:
    """The markers the runs' processes printed (a resumed run prints again), by flow run
    id: [pid, tasks' file, the pool's setting, the parent's command line] each; in the
    order printed within one machine's log (``machine``), not across machines' logs."""
    found: dict[str, list[list[str]]] = {}
    for log in sorted(root.glob(f"{machine}.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("fleet-marker|"):
                _, run_id, *rest = line.split("|")
                found.setdefault(run_id, []).append(rest)
    return found


def process_gone(pid: int, within: float) -> bool:
    """Whether ``pid`` is gone (or dead and not yet reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def docs_block(name: str) -> str:
    """The shell lines of the fenced block under ``<!-- fleet:<name> ... -->``."""
    found = re.search(rf"<!-- fleet:{name}\b[^>]*-->\n```sh\n(.*?)```", DOCS.read_text(), re.S)
    assert found, f"docs/deployments.md has no fleet:{name} block"
    return found.group(1)


def client_file(estate: Estate, slug: str) -> str:
    lines = []
    for i, name in enumerate(HOSTS[slug]):
        host = next(h for h in estate.spec.hosts if h.name == name)
        lines.append(
            f"  - {{name: {name}, role: {'staging' if i == 0 else 'production'},"
            f" address: {host.address}, provider: {{type: sandbox, estate: {ESTATE}}},"
            " checks: [{type: tcp, port: 22}]}"
        )
    return CLIENT.format(
        slug=slug,
        quorum=1,
        start="00:00",
        duration="24h",
        approval_timeout="10m",
        servers="\n".join(lines),
        alice_key=public_key("alice"),
        bob_key=public_key("bob"),
    )


@contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database (its name), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@dataclass
class Fleet:
    api: str
    store_url: str
    git: GitServer
    workers: dict[str, subprocess.Popen[bytes]]
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A machine's environment: PATH, HOME, Prefect's API; no CARETAKER_* setting."""
        return {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            **extra,
        }

    def worker_of(self, flow_run: Any) -> str | None:
        """Which worker started the process running ``flow_run`` (its infrastructure pid:
        the job command, the fork server's client, a child of the worker)."""
        pid = int(str(flow_run.infrastructure_pid or "0").rsplit(":", 1)[-1])
        while pid > 1:
            found = next((n for n, w in self.workers.items() if w.pid == pid), None)
            if found:
                return found
            pid = parent(pid)
        return None


def parent(pid: int) -> int:
    """The parent of ``pid`` (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill_machine(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and everything it started, as a machine's loss would: its process
    group and the session of each flow run it started."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    tree = {worker.pid}
    grew = True
    while grew:
        more = {pid for pid in pids if parent(pid) in tree} - tree
        grew, tree = bool(more), tree | more
    groups = set()
    for pid in tree:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(10)


@pytest.fixture(scope="module")
def fleet(estate: Estate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.notify import save_demo_webhook

    root = tmp_path_factory.mktemp("fleet")
    git_server = deployed_commit(
        publish_repository(root, {s: client_file(estate, s) for s in HOSTS})
    )
    with database("caretaker_fleet_prefect") as prefect_db, database("caretaker_fleet") as db:
        pg = make_url(ADMIN_URL)
        home = root / "prefect-home"
        url = ensure_server(
            timeout=90,
            home=home,
            database_url=pg.set(
                drivername="postgresql+asyncpg", database=prefect_db
            ).render_as_string(hide_password=False),
            # One API process: the multi-process server with Redis messaging holds this test
            # as well (76 s instead of 56 s, measured); benchmarks/fleet_scale.py runs on it.
            env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
        )
        store_url = pg.set(database=db).render_as_string(hide_password=False)
        fleet = Fleet(api=f"{url}/api", store_url=store_url, git=git_server, workers={}, root=root)
        inbox = WebhookReceiver().__enter__()
        try:
            with temporary_settings({PREFECT_API_URL: fleet.api}):
                ssh_identity(estate).save("test-maint-ssh", overwrite=True)
                save_demo_webhook(inbox.url, name="test-maint-hook")
            settings = {
                "CARETAKER_APPROVAL_POLL_S": "1",
                "CARETAKER_REBOOT_TIMEOUT_S": "8",
                # h05's apt waits for its held dpkg lock: fleetb's batch stays running.
                "CARETAKER_DPKG_LOCK_TIMEOUT_S": "120",
                "CARETAKER_DATA_DIR": str(root / "data"),
            }
            if os.environ.get("CARETAKER_CACHE"):  # where the sandbox estate lives
                settings["CARETAKER_CACHE"] = os.environ["CARETAKER_CACHE"]
            sets = " ".join(f"--set {k}={v}" for k, v in settings.items())
            deploy = docs_block("deploy").replace(
                '--store-url "$CARETAKER_HISTORY_STORE_URL"',
                f'--store-url "$CARETAKER_HISTORY_STORE_URL" {sets}',
            )
            done = subprocess.run(
                ["sh", "-ec", deploy],
                cwd=git_server.checkout,
                env=fleet.env(
                    CARETAKER_GIT_REPOSITORY=git_server.url,
                    CARETAKER_HISTORY_STORE_URL=store_url,
                    PREFECT_CLI_PROMPT="false",
                ),
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            for name in ("machine-1", "machine-2"):
                machine = root / name
                machine.mkdir()
                log = (root / f"{name}.log").open("wb")
                fleet.workers[name] = subprocess.Popen(
                    ["sh", "-ec", docs_block("worker")],
                    cwd=machine,
                    env=fleet.env(
                        CARETAKER_GIT_REPOSITORY=git_server.url,
                        RUNS_AT_ONCE="1",
                        PREFECT_WORKER_QUERY_SECONDS="1",
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: a machine of its own
                )
            yield fleet
        finally:
            for worker in fleet.workers.values():
                if worker.poll() is None:
                    kill_machine(worker)
            inbox.__exit__(None, None, None)
            stop_server(home=home)


def run_deployment(
    fleet: Fleet, slug: str, *params: str, job_env: dict[str, str] | None = None
) -> str:
    args = [p for param in params for p in ("--param", param)]
    if job_env:  # this run's own job variables, merged over the deployment's and the pool's
        args += ["--job-variable", f"env={json.dumps(job_env)}"]
    done = subprocess.run(
        ["prefect", "deployment", "run", f"server-maintenance/{slug}", *args],
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout + done.stderr
    return found.group(1)


def read_run(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def logs(fleet: Fleet) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in fleet.root.glob("*.log")
    )


@pytest.mark.fault
def test_two_workers_run_two_clients_then_one_is_killed_and_its_change_recovered(
    fleet: Fleet, estate: Estate
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    from deployments.approve import answer_run
    from history.store import open_store

    estate.repo.reset()
    for host in estate.spec.hosts:
        ssh(
            estate,
            host.name,
            "apt-get -q update >/dev/null && apt-get -y -q --allow-downgrades "
            "install caretaker-agent=1.0 >/dev/null 2>&1; rm -f /var/run/reboot-required*",
        )
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))

    with temporary_settings({PREFECT_API_URL: fleet.api}):
        # What was deployed names the git server and the commit, nothing of the deployer.
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("server-maintenance/fleetb")
        assert deployment.pull_steps == [
            {
                "prefect.deployments.steps.git_clone": {
                    "repository": fleet.git.url,
                    "commit_sha": fleet.git.commit,
                }
            }
        ]
        stored = deployment.model_dump_json()
        assert str(fleet.git.checkout) not in stored and str(REPO) not in stored

        faults.hold_dpkg_lock(estate, "h05")
        try:
            runs = {slug: run_deployment(fleet, slug) for slug in HOSTS}

            # Both run at once, one on each machine, and wait for approval suspended (their
            # processes gone: a waiting run holds no worker slot and no SSH session).
            machines: dict[str, list[str]] = {slug: [] for slug in HOSTS}

            def seen(slug: str) -> Any:
                run = read_run(runs[slug])
                machine = fleet.worker_of(run)
                if machine and machine not in machines[slug][-1:]:
                    machines[slug].append(machine)
                return run

            def all_waiting() -> dict[str, Any] | None:
                seen_now = {slug: seen(slug) for slug in HOSTS}  # both watched at once
                paused = all(
                    r.state and r.state.type == StateType.PAUSED for r in seen_now.values()
                )
                return seen_now if paused else None

            waited = eventually(all_waiting, 150, f"both runs to wait:\n{logs(fleet)}")
            for slug, run in waited.items():
                assert run.state.name == "Suspended", run.state
                eventually(
                    lambda s=slug: True if fleet.worker_of(read_run(runs[s])) is None else None,
                    30,
                    f"{slug}'s process to end",
                )
            assert sorted(m[0] for m in machines.values()) == sorted(fleet.workers), machines
            for slug in HOSTS:
                answer_run(
                    UUID(runs[slug]),
                    approver="alice",
                    key=private_key("alice"),
                    decision="approve",
                    ticket="CAB-FLEET",
                    show=False,
                )

            def final(run_id: str) -> Any:
                run = read_run(run_id)
                return run if run.state and run.state.is_final() else None

            def resumed_and_final(slug: str) -> Any:
                run = seen(slug)
                return run if run.state and run.state.is_final() else None

            done_a = eventually(lambda: resumed_and_final("fleeta"), 120, f"fleeta:\n{logs(fleet)}")
            assert done_a.state.is_completed(), f"{done_a.state!r}\n{logs(fleet)}"

            # fleetb's batch runs: h04 patched, h05 waiting for its lock. Its job command
            # (the fork server's client) is killed: the run's process goes at once. Then
            # its whole machine.
            eventually(lambda: True if agent(estate, "h04") == "1.1" else None, 90, "h04")
            running_b = seen("fleetb")
            machine = fleet.worker_of(running_b)
            assert machine, f"fleetb runs on no worker:\n{logs(fleet)}"
            doomed = fleet.workers[machine]
            # the process of this execution: the last marker of the machine running it (a
            # resumed run may run on the other machine, whose log sorts first or last)
            run_pid = int(markers(fleet.root, machine)[runs["fleetb"]][-1][0])
            assert not process_gone(run_pid, 0), "fleetb's run process is not running"
            os.kill(int(str(running_b.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)
            assert process_gone(run_pid, 10), "the run outlived its killed client"
            kill_machine(doomed)
            ssh(estate, "h05", "pkill -KILL -x apt-get; pkill -KILL -x dpkg; true")
        finally:
            faults.release_dpkg_lock(estate, "h05")
        assert agent(estate, "h05") == "1.0"

        with open_store(fleet.store_url) as store:
            held = store.run_lock("fleetb")
        assert held is not None and held.holder_flow_run_id == runs["fleetb"]
        # What the zombie-run automation does once the heartbeats stop (test_crash_safety).
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                UUID(runs["fleetb"]), Crashed(message="No heartbeat (set by the test)"), force=True
            )
        rerun = run_deployment(fleet, "fleetb", f"change_ref={held.change_ref}")
        done_b = eventually(lambda: final(rerun), 150, f"the rerun:\n{logs(fleet)}")
        assert done_b.state.is_completed(), f"{done_b.state!r}\n{logs(fleet)}"

    assert [n for n, w in fleet.workers.items() if w.poll() is None] == [
        n for n, w in fleet.workers.items() if w is not doomed
    ]  # the rerun ran on the machine left
    assert {h: agent(estate, h) for h in ("h02", "h04", "h05")} == dict.fromkeys(
        ("h02", "h04", "h05"), "1.1"
    )
    with open_store(fleet.store_url) as store:
        events = [
            (e.event, e.holder_flow_run_id, e.previous_holder) for e in store.lock_events("fleetb")
        ]
        record = store.change_record("fleetb", held.change_ref)
        record_a = store.change_records("fleeta")
    assert events == [
        ("acquired", runs["fleetb"], None),
        ("taken-over", rerun, runs["fleetb"]),
        ("released", rerun, None),
    ]
    assert record is not None and record.outcome is not None
    assert record.outcome.value == "completed"
    assert [r.outcome.value for r in record_a if r.outcome] == ["completed"]
    # The runs used the shared store the pool named; no machine made a store of its own.
    assert not (fleet.root / "data" / "caretaker.db").exists()

    # Every run process was forked by its machine's fork server (none fell back to Prefect's
    # own command), took the pool's settings, and imported caretaker from its clone of the
    # deployed commit (the marker is only there), not from the code the workers run.
    printed = markers(fleet.root)
    assert {runs["fleeta"], runs["fleetb"], rerun} <= set(printed), printed
    for run_id in (runs["fleeta"], runs["fleetb"], rerun):
        for _pid, tasks_file, setting, parent in printed[run_id]:
            assert tasks_file.endswith("/tasks/__init__.py"), tasks_file
            assert not tasks_file.startswith((str(REPO), str(fleet.root))), tasks_file
            assert setting == "8"  # CARETAKER_REBOOT_TIMEOUT_S, from the pool's job variables
            assert "-m deployments.forkserver" in parent, parent
    assert "starting python -m prefect.engine" not in logs(fleet)

    # A machine that does not get the fleet's store (the URL emptied for this one run): the
    # run refuses before it touches anything, and makes no store of its own.
    with temporary_settings({PREFECT_API_URL: fleet.api}):
        local = run_deployment(fleet, "fleeta", job_env={"CARETAKER_HISTORY_STORE_URL": ""})
        refused = eventually(lambda: final(local), 90, f"the refused run:\n{logs(fleet)}")
    assert refused.state.is_failed(), refused.state
    assert "must be shared by every worker" in (refused.state.message or "")
    assert not (fleet.root / "data" / "caretaker.db").exists()
    with open_store(fleet.store_url) as store:
        assert local not in {e.holder_flow_run_id for e in store.lock_events("fleeta")}
