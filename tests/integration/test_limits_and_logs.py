"""Limits across workers, module logs in the run, and the operator path, on real parts.

- A health-check run and a maintenance run (a dry run: facts from all 8 hosts at once) in
  two processes against one Prefect server share the ``caretaker-ssh-sessions`` bound:
  the SSH sessions open to the sandbox hosts (counted from outside: the kernel's
  established TCP connections to port 22) never exceed the limit, which the first run
  created from its settings, and reach it; the maintenance run, on more hosts than the
  limit, plans every one of them (its sessions take one slot each and lend them to each
  other instead of waiting on themselves); every slot is free again at the end. The
  ``tasks.limits`` module logger's line about creating it reached exactly one run's logs
  in the API, and Prefect's "Finished in state Completed()" lines are there too.
- Before that, the same two processes ask EC2 (moto's server) for scheduled events
  through caretaker's provider code, both at once, and share ``caretaker-aws-api-<region>``:
  counted where the calls arrive (a proxy in front of moto that notes each request's time
  and which process's key signed it), no window holds more calls than the rate limit lets
  through, both processes' calls interleave, and together they take as long as the one
  shared rate makes them. (One test for both limits: the processes, the Prefect runs and
  moto are set up once.)
- ``caretaker-prune`` removes from the server the deployments of a client whose file is
  gone (``--dry-run`` first: nothing removed), and nothing else.
- ``prefect block register -m blocks`` on the server registers both caretaker block types.
"""

from __future__ import annotations

import http.client
import importlib.util
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
from urllib.parse import urlsplit

import pytest

from deployments.prune import main as prune
from sandbox import moto
from sandbox.estate import AwsInstanceSpec, Estate, EstateSpec
from sandbox.prefect_blocks import ssh_identity
from tasks.limits import AWS_API_PREFIX, SSH_SESSIONS, forget_limits

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LIMIT = 3  # SSH sessions at once, across both runs
HOLD_S = 0.5  # each server's http check answers after this long: its session stays open

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


def _connections(fleet: Estate) -> dict[tuple[str, str], str]:
    """The established SSH connections to the fleet's hosts: (local, remote) -> inode."""
    targets = {_tcp_address(h.address, 22) for h in fleet.spec.hosts}
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] in targets and fields[3] == ESTABLISHED:
            found[(fields[1], fields[2])] = fields[9]
    return found


def _owners(inodes: set[str]) -> dict[str, str]:
    """Which process holds each socket inode: ``pid (pgid)`` (for a failure's message)."""
    owners = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    owners[link[8:-1]] = f"{proc.name} (pgid {os.getpgid(int(proc.name))})"
        except OSError:
            continue
    return owners


def _open_now(fleet: Estate) -> dict[tuple[str, str], str]:
    """The connections open now: those in two reads of the table one after the other.

    /proc/net/tcp is read in several reads (a page or so each), so one read of it is no
    snapshot: a session closed after its line was read and another opened before its line
    was (a run handing its idle session's slot to the next one does exactly that, within a
    millisecond) are both in it, as if open at once (seen: 4 of 3, the fourth held by no
    process any more). A connection open in both of two reads was open between them; a
    real fourth session stays open for its command (here 0.5 s at least), far longer."""
    first = _connections(fleet)
    second = _connections(fleet)
    return {key: inode for key, inode in second.items() if first.get(key) == inode}


def _sessions_open(fleet: Estate) -> int:
    """SSH connections open to the fleet's hosts right now: the kernel's TCP table of the
    root network namespace (where the workers run), established ones to port 22. (Counting
    sshd's processes on the hosts lags: one lives on a moment after its client closed.)
    The table is not read atomically: a socket the kernel moves between hash buckets while
    it is read can be listed twice (seen: one sample of 4 or 5 among ~800 of 3), so
    connections are counted once each, by their local and remote address."""
    return len(_open_now(fleet))


def _delete_limit(name: str = SSH_SESSIONS) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
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


def _worker(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -c <args>`` in a process group of its own: a worker of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


REGION = "eu-west-1"
RATE = 8  # EC2 calls a second in the region, for both processes together (burst as many)
ROUNDS = 8  # scheduled-events questions per process, two EC2 calls each: 16, twice the burst
JITTER_S = 0.5  # a granted call reaches the endpoint this much later at most

#: First, each process asks EC2 for scheduled events through the provider code (in a flow
#: run), both at once: they meet at a barrier (a file each in a shared folder) inside their
#: flow runs, so that a process slower to import or start its run still overlaps the other.
ASK_EC2 = """
import os
import pathlib
import sys
import time
from prefect import flow
from inventory import Server, SnapshotPolicy
from tasks.providers import instance_events
from tasks.snapshots.factory import provider_for

server = Server.model_validate({{
    "name": "lim-web-1", "role": "production", "address": "10.0.0.1", "ssh_block": "k",
    "os_family": "debian",
    "provider": {{"type": "aws", "region": {region!r}, "instance_name": "lim-web-1",
                 "credentials_block": sys.argv[1]}},
}})

@flow
def ask_ec2(rounds: int) -> int:
    # boto3 imported, the credentials block read and the client made (no EC2 call): the
    # first call of the one process to meet the other would otherwise lag it by ~1 s
    provider_for(server, SnapshotPolicy(), client="acme")
    barrier = pathlib.Path(os.environ["LIMITS_TEST_BARRIER"])
    (barrier / sys.argv[1]).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(rounds):
        assert instance_events([server], "acme") == []
    return rounds

print("asked", ask_ec2({rounds}), flush=True)
"""

#: Then one process runs a health check.
RUN = """
from flows.health_check import health_check
state = health_check(client={slug!r}, return_state=True)
print("flow-run-id", state.state_details.flow_run_id, state.type.value, flush=True)
"""

#: And the other a maintenance run's sessions: the dry run reads every host's facts at once.
DRY_RUN = """
from flows.server_maintenance import server_maintenance
state = server_maintenance(client={slug!r}, dry_run=True, return_state=True)
print("flow-run-id", state.state_details.flow_run_id, state.type.value, flush=True)
plan = state.result(raise_on_failure=False)
print("planned", len(getattr(plan, "hosts", [])), len(getattr(plan, "unreachable", [])))
"""


class _Counting(BaseHTTPRequestHandler):
    """Forwards each request to moto; notes when it arrived and whose key signed it."""

    upstream = ""  # moto
    url = ""  # this proxy
    seen: list[tuple[float, str]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        arrived = time.monotonic()
        key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        with self.lock:
            self.seen.append((arrived, key[1] if key else "?"))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        skip = {"host", "content-length", "connection"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        conn.request("POST", self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in {"content-length", "connection", "transfer-encoding"}:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture()
def counted_ec2() -> Iterator[type[_Counting]]:
    """moto with one instance, behind a counting proxy on a free port; a credentials block
    per process (``caretaker-test-limits-aws-a``, ``-b``: access keys ``limits-a``, ``-b``)."""
    if importlib.util.find_spec("moto.server") is None:
        pytest.skip("moto[server] is not installed")
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    spec = EstateSpec(
        name="test-limits-aws",
        net=73,
        hosts=[],
        aws=[AwsInstanceSpec(name="lim-web-1", region=REGION, client="acme", data_volumes=0)],
    )
    estate = Estate(spec)
    estate.dir.mkdir(parents=True, exist_ok=True)
    handler = type("Counting", (_Counting,), {"seen": [], "lock": threading.Lock()})
    try:
        handler.upstream = moto.start(estate)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        handler.url = f"http://127.0.0.1:{server.server_address[1]}"
        for who in ("a", "b"):
            AwsCredentials(
                aws_access_key_id=f"limits-{who}",
                aws_secret_access_key=SecretStr(moto.SECRET_KEY),
                aws_client_parameters=AwsClientParameters(endpoint_url=handler.url),
            ).save(f"caretaker-test-limits-aws-{who}", overwrite=True)
        yield handler
        server.shutdown()
    finally:
        estate.down(purge=True)


def most_in_window(times: list[float], window_s: float) -> int:
    """The most calls that arrived within any ``window_s`` seconds (``times`` sorted)."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_two_workers_never_exceed_the_ssh_session_limit_nor_the_aws_rate(
    fleet: Estate,
    prefect_api: None,
    slow_url: str,
    counted_ec2: type[_Counting],
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client

    folder = tmp_path / "clients"
    folder.mkdir()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    servers = [
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'},"
        f" address: {h.address}, provider: {{type: none, reason: a test server}},"
        f" checks: [{{type: http, url: '{slow_url}', timeout: 10s}}]}}"
        for i, h in enumerate(fleet.spec.hosts)
    ]
    for slug in ("limitsa", "limitsb"):
        _client_file(folder, slug, servers)
    ssh_identity(fleet).save("test-limits-ssh", overwrite=True)
    aws_limit = f"{AWS_API_PREFIX}{REGION}"
    for name in (SSH_SESSIONS, aws_limit):
        _delete_limit(name)  # the runs create them from their settings
    env = dict(
        os.environ,
        PREFECT_API_URL=_api_url(),
        CARETAKER_INVENTORY_DIR=str(folder),
        CARETAKER_HISTORY_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        CARETAKER_SSH_SESSIONS_LIMIT=str(LIMIT),
        CARETAKER_AWS_API_CALLS_PER_S=str(RATE),
        LIMITS_TEST_BARRIER=str(barrier),
    )
    assert _sessions_open(fleet) == 0
    ask = ASK_EC2.format(region=REGION, rounds=ROUNDS)
    workers = [
        _worker([ask + script.format(slug=slug), f"caretaker-test-limits-aws-{who}"], env)
        for script, slug, who in ((RUN, "limitsa", "a"), (DRY_RUN, "limitsb", "b"))
    ]
    seen: list[int] = []
    over: list[str] = []  # whose connections they were, when more than the limit
    try:
        deadline = time.monotonic() + 120
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            connections = _open_now(fleet)
            seen.append(len(connections))
            if len(connections) > LIMIT:
                owners = _owners(set(connections.values()))
                over.append(
                    f"{time.monotonic():.3f}: "
                    + ", ".join(
                        f"{local}->{remote} {owners.get(inode, '?')}"
                        for (local, remote), inode in sorted(connections.items())
                    )
                )
            time.sleep(0.01)
        outputs = [w.communicate(timeout=30)[0] for w in workers]
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(SSH_SESSIONS)
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, 9)
        for name in (SSH_SESSIONS, aws_limit):
            _delete_limit(name)  # later tests get the defaults back
    runs = []
    for out in outputs:
        assert f"asked {ROUNDS}" in out, out[-3000:]
        found = re.search(r"flow-run-id (\S+) (\w+)", out)
        assert found, out[-3000:]
        assert found[2] == "COMPLETED", out[-3000:]
        runs.append(found[1])
    # 8 servers x 0.5 s with a session open in 3 threads, and 8 sessions at once for the
    # dry run's facts: without the shared bound 11 sessions would be open at once.
    assert max(seen) <= LIMIT, f"sessions open at once: {max(seen)} > {LIMIT}: {over[:5]}" + (
        f" workers: {[w.pid for w in workers]}"
    )
    planned = re.search(r"planned (\d+) (\d+)", outputs[1])
    assert planned and planned.groups() == (str(len(fleet.spec.hosts)), "0"), outputs[1][-3000:]
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
    within_the_aws_rate(sorted(counted_ec2.seen))


def within_the_aws_rate(seen: list[tuple[float, str]]) -> None:
    """The EC2 calls of both processes, as they reached moto, kept to the one rate."""
    times = [at for at, _ in seen]
    calls = 2 * 2 * ROUNDS  # describe_instances and describe_instance_status per round
    assert len(times) == calls and {who for _, who in seen} == {"limits-a", "limits-b"}
    # The token bucket: RATE at once, then RATE a second; a call reaches moto a little after
    # its slot was granted, so windows are widened by JITTER_S.
    for window in (0.25, 0.5, 1.0, 2.0):
        most = most_in_window(times, window)
        assert most <= RATE + RATE * (window + JITTER_S), (window, most)
    # Both processes were calling at once, and the one rate held them both back: alone
    # each would be done in (16 - 8) / 8 = 1 s; both: (32 - 8) / 8 = 3 s.
    a = [at for at, who in seen if who == "limits-a"]
    b = [at for at, who in seen if who == "limits-b"]
    assert max(a[0], b[0]) < min(a[-1], b[-1]), "the two processes never overlapped"
    span = times[-1] - times[0]
    assert span >= 0.8 * (calls - RATE) / RATE, span
    print(
        f"aws rate {RATE}/s, {calls} calls from 2 processes in {span:.2f}s"
        f" ({(calls - 1) / span:.1f}/s); most in 1 s: {most_in_window(times, 1.0)},"
        f" in 0.5 s: {most_in_window(times, 0.5)}"
    )


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
