"""Limits across workers, module logs in the run, and the operator path, on real parts.

- Two health-check runs in two processes against one Prefect server share the
  ``caretaker-ssh-sessions`` bound: the SSH sessions open to the sandbox hosts (counted
  from outside: the kernel's established TCP connections to port 22) never exceed the
  limit, which the first run created from its settings, and reach it; every slot is free
  again at the end. The ``tasks.limits`` module logger's line about creating it reached
  exactly one run's logs in the API, and Prefect's "Finished in state Completed()" lines
  are there too.
- ``caretaker-prune`` removes from the server the deployments of a client whose file is
  gone (``--dry-run`` first: nothing removed), and nothing else.
- ``prefect block register -m blocks`` on the server registers both caretaker block types.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments.prune import main as prune
from sandbox.estate import Estate
from sandbox.prefect_blocks import ssh_identity
from tasks.limits import SSH_SESSIONS, forget_limits

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LIMIT = 3  # SSH sessions at once, across both runs
HOLD_S = 1.0  # each server's http check answers after this long: its session stays open

CLIENT = """\
client:
  slug: {slug}
  name: {slug}
  timezone: UTC
  contact: {{name: Ops, email: ops@test.example}}
  approvers: [{{name: alice, email: alice@test.example}}]
schedule: {{cadence: quarterly, window: {{start: "01:00", duration: 4h}}}}
defaults: {{ssh_block: test-limits-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""
ESTABLISHED = "01"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(HOLD_S)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture()
def slow_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    server.shutdown()


def _client_file(folder: Path, slug: str, servers: list[str]) -> None:
    (folder / f"{slug}.yaml").write_text(CLIENT.format(slug=slug, servers="\n".join(servers)))


def _tcp_address(address: str, port: int) -> str:
    """``address:port`` as /proc/net/tcp writes it (little-endian hex)."""
    return f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"


def _sessions_open(fleet: Estate) -> int:
    """SSH connections open to the fleet's hosts right now: the kernel's TCP table of the
    root network namespace (where the workers run), established ones to port 22. (Counting
    sshd's processes on the hosts lags: one lives on a moment after its client closed.)
    The table is not read atomically: a socket the kernel moves between hash buckets while
    it is read can be listed twice (seen: one sample of 4 or 5 among ~800 of 3), so
    connections are counted once each, by their local and remote address."""
    targets = {_tcp_address(h.address, 22) for h in fleet.spec.hosts}
    connections = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] in targets and fields[3] == ESTABLISHED:
            connections.add((fields[1], fields[2]))
    return len(connections)


def _delete_limit() -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(SSH_SESSIONS)
        except ObjectNotFound:
            pass
    forget_limits()


def _logs(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return list(
            client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
            )
        )


RUN = """
from flows.health_check import health_check
state = health_check(client={slug!r}, return_state=True)
print("flow-run-id", state.state_details.flow_run_id, state.type.value, flush=True)
"""


def test_two_workers_never_open_more_ssh_sessions_than_the_limit(
    fleet: Estate, prefect_api: None, slow_url: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    folder = tmp_path / "clients"
    folder.mkdir()
    servers = [
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'},"
        f" address: {h.address}, provider: {{type: none, reason: a test server}},"
        f" checks: [{{type: http, url: '{slow_url}', timeout: 10s}}]}}"
        for i, h in enumerate(fleet.spec.hosts)
    ]
    for slug in ("limitsa", "limitsb"):
        _client_file(folder, slug, servers)
    ssh_identity(fleet).save("test-limits-ssh", overwrite=True)
    _delete_limit()  # the runs create it from their settings
    env = dict(
        os.environ,
        PREFECT_API_URL=_api_url(),
        CARETAKER_INVENTORY_DIR=str(folder),
        CARETAKER_HISTORY_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        CARETAKER_SSH_SESSIONS_LIMIT=str(LIMIT),
    )
    assert _sessions_open(fleet) == 0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RUN.format(slug=slug)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for slug in ("limitsa", "limitsb")
    ]
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            seen.append(_sessions_open(fleet))
            time.sleep(0.01)
        outputs = [w.communicate(timeout=30)[0] for w in workers]
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(SSH_SESSIONS)
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, 9)
        _delete_limit()  # later tests get the default back
    runs = []
    for out in outputs:
        found = re.search(r"flow-run-id (\S+) (\w+)", out)
        assert found, out[-3000:]
        assert found[2] == "COMPLETED", out[-3000:]
        runs.append(found[1])
    # 16 servers x 1 s with a session open, two processes of 3 threads each: without the
    # shared bound 6 sessions would be open at once.
    assert max(seen) <= LIMIT, f"sessions open at once: {max(seen)} > {LIMIT}"
    assert max(seen) == LIMIT, f"the bound was never reached: {max(seen)}"
    assert (limit.limit, limit.active_slots) == (LIMIT, 0)
    logs = [log for run in runs for log in _logs(run)]
    created = [log for log in logs if log.name == "tasks.limits" and "was missing" in log.message]
    assert len(created) == 1, [log.message for log in created]
    assert f"{SSH_SESSIONS} was missing: created it from the settings ({LIMIT} slot" in (
        created[0].message
    )
    finished = [log for log in logs if log.message.startswith("Finished in state Completed(")]
    assert len([log for log in finished if log.task_run_id]) >= 2  # a batch task per run


def test_prune_removes_only_the_deployments_of_a_gone_client(
    prefect_api: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
    from prefect.exceptions import ObjectNotFound

    made = {
        "server-maintenance/prunekept": ["caretaker", "client:prunekept"],
        "server-maintenance/prunegone": ["caretaker", "client:prunegone"],
        "maintenance-report/prunegone-monthly": ["caretaker", "report", "client:prunegone"],
        "health-check/prune-all": ["caretaker", "health"],
        "elsewhere/prunegone": ["client:prunegone"],  # not caretaker's
    }
    with get_client(sync_client=True) as client:
        for full, tags in made.items():
            flow, name = full.split("/")
            flow_id = client.create_flow_from_name(flow)
            client.create_deployment(flow_id=flow_id, name=name, tags=tags)
        # Other tests' deployments on this shared server keep their clients.
        others = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["caretaker"]))
        )
    folder = tmp_path / "clients"
    folder.mkdir()
    server = (
        "  - {name: s1, role: staging, address: 127.0.0.1,"
        " provider: {type: none, reason: a test server}}"
    )
    slugs = {t.removeprefix("client:") for d in others for t in d.tags if t.startswith("client:")}
    for slug in (slugs - {"prunegone"}) | {"prunekept"}:
        _client_file(folder, slug, [server])

    def present() -> set[str]:
        left = set()
        with get_client(sync_client=True) as client:
            for full in made:
                try:
                    client.read_deployment_by_name(full)
                except ObjectNotFound:
                    continue
                left.add(full)
        return left

    assert prune(["--dry-run", "--inventory", str(folder)]) == 0
    said = capsys.readouterr().out
    assert "would remove server-maintenance/prunegone (client:prunegone)" in said
    assert "would remove maintenance-report/prunegone-monthly" in said
    assert present() == set(made)
    assert prune(["--inventory", str(folder)]) == 0
    assert present() == {
        "server-maintenance/prunekept",
        "health-check/prune-all",
        "elsewhere/prunegone",
    }
    # An empty inventory folder (a wrong path) removes nothing.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prune(["--inventory", str(empty)]) == 2
    assert "server-maintenance/prunekept" in present()


def test_block_register_on_the_server(prefect_api: None) -> None:
    from prefect.client.orchestration import get_client

    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "block", "register", "-m", "blocks"],
        cwd=REPO,
        env=dict(os.environ, PREFECT_API_URL=_api_url()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        for slug in ("caretaker-ssh-identity", "caretaker-rackspace-credentials"):
            assert client.read_block_type_by_slug(slug).slug == slug
