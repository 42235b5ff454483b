"""Benchmark: one health-check cycle over 500 check targets, against the same checks bare.

The targets (default): 50 sandbox hosts (real sshd, net 5), each a server of one client
file with, as an inventory would say: SSH reachability, a ``tcp`` check of port 22 and
8 ``http`` checks of distinct URLs served on 127.0.0.1 by a threaded HTTP server in a
process of its own: 50 x (1 + 1 + 8) = 500 checks, 50 SSH + 50 TCP + 400 HTTP targets.
Most URLs answer 200; one in 40 answers 500 and one in 200 answers after 3 s, beyond its
2 s timeout: their servers are down by design (each run checks exactly those are down).
Load, memory and disks are read over SSH from every server SSH reached.
``--clients N`` lists the hosts in N client files (N x 50 servers, one SSH connection
each); ``--http K`` sets the http checks per server.

Printed: the cycle's wall time (median of ``--repeat``) and its phases (checks with
metrics, store, events, artifacts; from the flow's summary), servers and checks per
second, and the same work done with 64 bare threads (paramiko, socket, urllib: an SSH
connection per server, ``true`` and the metrics script on it, the TCP connect, the GETs)
with no Prefect server running: the difference is what orchestration costs. The history
store is a throwaway SQLite file (``CARETAKER_HISTORY_STORE_URL`` in a temp dir).

    .venv/bin/python benchmarks/health_bench.py [--hosts 50] [--http 8] [--clients 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import telemetry_off
from sandbox.estate import Estate, numbered_hosts
from tasks.checks import METRIC_FACTS
from tasks.facts import build_facts_script, parse_facts, split_facts_output

if TYPE_CHECKING:
    from flows.health_check import HealthCheckSummary

CLIENT = """\
client:
  slug: {slug}
  name: Bench {slug}
  timezone: UTC
  contact: {{name: Ops, email: ops@bench.example}}
  approvers: [{{name: alice, email: alice@bench.example}}]
schedule: {{cadence: quarterly, window: {{start: "00:00", duration: 1h}}}}
defaults: {{ssh_block: bench-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""
SLOW_S = 3.0  # the slow endpoint's answer time, beyond the checks' 2 s timeout


class _Endpoint(BaseHTTPRequestHandler):
    """``/ok/<n>`` 200, ``/err/<n>`` 500, ``/slow/<n>`` 200 after SLOW_S."""

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(SLOW_S)
        status = 500 if self.path.startswith("/err/") else 200
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # /slow: the check gave up first, as it should

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # socketserver's 5 drops SYNs when 64 checkers come at once


def _serve_http() -> int:
    """Serve the endpoints on a free loopback port (printed first) until killed."""
    http = _Server(("127.0.0.1", 0), _Endpoint)
    print(http.server_address[1], flush=True)
    http.serve_forever()
    return 0


def _path(endpoint: int) -> str:
    """The endpoint's path: ``/err/<n>`` one in 40, ``/slow/<n>`` one in 200, else ``/ok/<n>``."""
    if endpoint % 200 == 123:
        return f"/slow/{endpoint}"
    if endpoint % 40 == 7:
        return f"/err/{endpoint}"
    return f"/ok/{endpoint}"


class Target(NamedTuple):
    """One server of the benchmark's inventory."""

    client: str
    name: str
    address: str
    urls: list[str]

    @property
    def down_by_design(self) -> bool:
        return any("/ok/" not in url for url in self.urls)


def plan(estate: Estate, port: int, clients: int, http: int) -> list[Target]:
    """The servers: every client lists every host; each server gets ``http`` endpoints.

    Each client lists the hosts from another starting point, so that batches checked
    at once do not all knock at the same sandbox host's sshd.
    """
    hosts = estate.spec.hosts
    targets: list[Target] = []
    for c in range(clients):
        start = len(hosts) * c // clients
        for i in range(len(hosts)):
            host = hosts[(start + i) % len(hosts)]
            first = len(targets) * http
            urls = [f"http://127.0.0.1:{port}{_path(first + j)}" for j in range(http)]
            targets.append(Target(f"bench{c:02d}", host.name, host.address, urls))
    return targets


def _client_yaml(slug: str, targets: list[Target]) -> str:
    lines = []
    for i, t in enumerate(targets):
        role = "staging" if i == 0 else "production"
        http = "".join(f", {{type: http, url: '{url}', timeout: 2s}}" for url in t.urls)
        lines.append(
            f"  - {{name: {t.name}, role: {role}, address: {t.address},"
            f" provider: {{type: none, reason: a benchmark host}},"
            f" checks: [{{type: tcp, port: 22, timeout: 2s}}{http}]}}"
        )
    return CLIENT.format(slug=slug, servers="\n".join(lines))


def bare(estate: Estate, targets: list[Target]) -> tuple[float, int]:
    """The same checks and metrics with threads and no orchestration: (seconds, down).

    Per server, as the flow does: an SSH connection, ``true``, the metrics script
    (parsed), a TCP connect to port 22, then each HTTP GET; 64 servers at once.
    """
    pkey = paramiko.Ed25519Key.from_private_key_file(str(estate.key_path))
    script = build_facts_script(METRIC_FACTS)

    def one(target: Target) -> bool:
        ok = True
        client = paramiko.SSHClient()
        client.load_host_keys(str(estate.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            target.address,
            username="root",
            pkey=pkey,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        try:
            for command in ("true", script):
                _, stdout, _ = client.exec_command(command, timeout=20)
                out = stdout.read().decode()
                ok = ok and stdout.channel.recv_exit_status() == 0
            parse_facts(split_facts_output(out))
        finally:
            client.close()
        with socket.create_connection((target.address, 22), timeout=2):
            pass
        for url in target.urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (http://)
                    ok = ok and answer.status == 200
            except (urllib.error.URLError, TimeoutError):
                ok = False
        return ok

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, targets))
    return time.perf_counter() - started, results.count(False)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=50, help="sandbox hosts (default 50)")
    parser.add_argument(
        "--clients", type=int, default=1, help="client files, each listing every host (1)"
    )
    parser.add_argument("--http", type=int, default=8, help="http checks per server (8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve-http", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    telemetry_off()
    if args.serve_http:
        return _serve_http()

    # The endpoints run in a process of their own, as a real service would: in this
    # process they would wait for the GIL behind the flow's threads.
    http = subprocess.Popen(
        [sys.executable, __file__, "--serve-http"], stdout=subprocess.PIPE, text=True
    )
    assert http.stdout is not None
    port = int(http.stdout.readline())

    estate = Estate(numbered_hosts("bench", 5, args.hosts))
    started = time.perf_counter()
    estate.up(fresh=True)
    print(f"estate of {args.hosts} hosts up in {time.perf_counter() - started:.2f}s")

    targets = plan(estate, port, args.clients, args.http)
    work = Path(tempfile.mkdtemp(prefix="caretaker-health-bench-"))
    inventory = work / "clients"
    inventory.mkdir()
    for slug in sorted({t.client for t in targets}):
        mine = [t for t in targets if t.client == slug]
        (inventory / f"{slug}.yaml").write_text(_client_yaml(slug, mine))
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory)
    os.environ["CARETAKER_HISTORY_STORE_URL"] = f"sqlite:///{work / 'store.db'}"
    servers = len(targets)
    checks = servers * (2 + args.http)
    expected_down = sum(t.down_by_design for t in targets)

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.health_check import HealthCheckSummary, health_check
    from sandbox.prefect_blocks import ssh_identity

    flow_times: list[float] = []
    bare_times: list[float] = []
    phases: dict[str, list[float]] = {}
    changes = 0
    try:
        # The baseline first, with no Prefect server in the background.
        for _ in range(args.repeat):
            took, down = bare(estate, targets)
            assert down == expected_down, (down, expected_down)
            bare_times.append(took)
            print(f"bare threads: {took:.2f}s", flush=True)
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # type: ignore[dict-item]
            with prefect_test_harness(server_startup_timeout=60):
                ssh_identity(estate).save("bench-ssh", overwrite=True)
                health_check()  # warm-up: imports, store schema, first samples
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    summary = health_check()
                    flow_times.append(time.perf_counter() - started)
                    assert isinstance(summary, HealthCheckSummary)
                    _verify(summary, targets)
                    changes += len(summary.changes)
                    for name, seconds in summary.phase_s.items():
                        phases.setdefault(name, []).append(seconds)
                    print(
                        f"health-check cycle: {flow_times[-1]:.2f}s ("
                        + ", ".join(f"{k} {v:.2f}s" for k, v in summary.phase_s.items())
                        + f"; {len(summary.changes)} events)",
                        flush=True,
                    )
    finally:
        estate.down(purge=True)
        http.kill()
    flow_s, bare_s = statistics.median(flow_times), statistics.median(bare_times)
    print()
    print(
        f"targets: {checks} checks = {servers} servers ({args.clients} client(s) x"
        f" {args.hosts} sandbox hosts) x (SSH reachability + tcp 22 + {args.http} http GET of"
        f" distinct 127.0.0.1 URLs); + load/memory/disk over SSH per server;"
        f" {expected_down} servers down by design (an http 500, or slower than the 2 s timeout)"
    )
    print(
        f"health-check cycle (flow call, Prefect API in a local subprocess):"
        f" median {flow_s:.2f}s (runs: {', '.join(f'{t:.2f}' for t in flow_times)});"
        f" {servers / flow_s:.0f} servers/s, {checks / flow_s:.0f} checks/s"
    )
    print(
        "  median per phase: "
        + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in phases.items())
        + f"; {changes} state-change events in all (the 'down by design' confirmed once)"
    )
    print(
        f"bare threads (64, paramiko/socket/urllib), same checks and metrics:"
        f" median {bare_s:.2f}s (runs: {', '.join(f'{t:.2f}' for t in bare_times)})"
    )
    print(f"orchestration + store + events + artifacts: {flow_s - bare_s:+.2f}s")
    return 0


def _verify(summary: HealthCheckSummary, targets: list[Target]) -> None:
    """Every server has a result; only the ones down by design are down; metrics read."""
    assert not summary.crashed, summary.crashed
    assert len(summary.servers) == len(targets), len(summary.servers)
    by_design = {(t.client, t.name): t.down_by_design for t in targets}
    for h in summary.servers:
        assert h.ok != by_design[(h.client, h.server)], f"{h.client}/{h.server}: {h.error}"
        assert h.memory_used_pct is not None, f"{h.client}/{h.server}: {h.metrics_error}"


if __name__ == "__main__":
    sys.exit(main())
