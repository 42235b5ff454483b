"""Benchmark: health-check cycles over up to 1,000 sandbox servers, against bare threads.

The servers: ``--hosts`` sandbox hosts (real sshd; estates of up to 200 hosts on nets
40, 41, ...; a host is one sshd and a shell, ~10 MB resident), each a server of a client
file with, as an inventory would say: SSH reachability, a ``tcp`` check of port 22 and
``--http`` (default 8) ``http`` checks of distinct URLs served on 127.0.0.1 by a threaded
HTTP server in a process of its own. Most URLs answer 200; one in 40 answers 500 and one
in 200 answers after 3 s, beyond its 2 s timeout: their servers are down by design (each
run checks exactly those are down). Load, memory and disks are read over SSH from every
server SSH reached. ``--clients N`` lists each estate's hosts in N client files (N x the
servers, one SSH connection each).

``--sizes 250,500,1000`` times the cycle at each size (the first N servers, a client file
per estate), in one Prefect API and with the same estates, so the growth of the cost can
be read. Printed per size: the cycle's wall time (median of ``--repeat``, after a warm-up
cycle) and its phases (checks with metrics, store, events, artifacts; from the flow's
summary), servers per second, and the same work done with 64 bare threads (paramiko,
socket, urllib: an SSH connection per server, caretaker's one health script on it, the
TCP connect, the GETs) before the Prefect server starts, against the same hosts: the
difference is what orchestration costs. The history store is a throwaway SQLite file per
size.

    .venv/bin/python benchmarks/health_bench.py [--hosts 50] [--sizes N,...] [--http 8]
        [--clients 1] [--repeat 3]
    .venv/bin/python benchmarks/health_bench.py --hosts 1000 --sizes 250,500,1000 --http 1

It refuses to start hosts the machine has no memory for (``--force`` to insist).
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
from tasks.checks import build_health_script, parse_health_output

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
defaults: {{ssh_block: {block}, user: root, port: 22, os_family: debian}}
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


ESTATE_HOSTS = 200  # hosts per sandbox estate (one /24)
NET = 40  # the first estate's net: 10.213.40.0/24, then 41, ...
HOST_MB = 12  # resident memory of one sandbox host (sshd + shell), with a margin


class Target(NamedTuple):
    """One server of the benchmark's inventory."""

    client: str
    name: str
    address: str
    urls: list[str]
    estate: int  # index into the estates: its key and known_hosts

    @property
    def down_by_design(self) -> bool:
        return any("/ok/" not in url for url in self.urls)


def plan(estates: list[Estate], port: int, clients: int, http: int) -> list[Target]:
    """The servers: per estate, every client lists every host; each gets ``http`` endpoints.

    Each client lists the hosts from another starting point, so that batches checked
    at once do not all knock at the same sandbox host's sshd.
    """
    targets: list[Target] = []
    for e, estate in enumerate(estates):
        hosts = estate.spec.hosts
        for c in range(clients):
            start = len(hosts) * c // clients
            for i in range(len(hosts)):
                host = hosts[(start + i) % len(hosts)]
                first = len(targets) * http
                urls = [f"http://127.0.0.1:{port}{_path(first + j)}" for j in range(http)]
                slug = f"bench{e}x{c:02d}"
                targets.append(Target(slug, host.name, host.address, urls, e))
    return targets


def _client_yaml(slug: str, block: str, targets: list[Target]) -> str:
    lines = []
    for i, t in enumerate(targets):
        role = "staging" if i == 0 else "production"
        http = "".join(f", {{type: http, url: '{url}', timeout: 2s}}" for url in t.urls)
        lines.append(
            f"  - {{name: {t.name}, role: {role}, address: {t.address},"
            f" provider: {{type: none, reason: a benchmark host}},"
            f" checks: [{{type: tcp, port: 22, timeout: 2s}}{http}]}}"
        )
    return CLIENT.format(slug=slug, block=block, servers="\n".join(lines))


def write_inventory(folder: Path, targets: list[Target]) -> Path:
    """One client file per client slug of ``targets`` in ``folder``; returns it."""
    folder.mkdir(parents=True)
    for slug in sorted({t.client for t in targets}):
        mine = [t for t in targets if t.client == slug]
        block = f"bench-ssh-{mine[0].estate}"
        (folder / f"{slug}.yaml").write_text(_client_yaml(slug, block, mine))
    return folder


def bare(estates: list[Estate], targets: list[Target]) -> tuple[float, int]:
    """The same checks and metrics with threads and no orchestration: (seconds, down).

    Per server, as caretaker does it: an SSH connection (the host's own known_hosts
    entries trusted, from a file parsed once), its one health script (the probe and the
    metrics, parsed with caretaker's parser), a TCP connect to port 22, then each HTTP
    GET; 64 servers at once.
    """
    pkeys = [paramiko.Ed25519Key.from_private_key_file(str(e.key_path)) for e in estates]
    # As caretaker does: known_hosts parsed once, a connection trusts its host's keys only.
    known = [paramiko.HostKeys(str(e.known_hosts_path)) for e in estates]
    script = build_health_script([], metrics=True)

    def one(target: Target) -> bool:
        ok = True
        client = paramiko.SSHClient()
        for keytype, key in (known[target.estate].lookup(target.address) or {}).items():
            client.get_host_keys().add(target.address, keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            target.address,
            username="root",
            pkey=pkeys[target.estate],
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        try:
            _, stdout, stderr = client.exec_command(script, timeout=20)
            out, err = stdout.read().decode(), stderr.read().decode()
            answer = parse_health_output(
                target.name,
                target.address,
                [],
                metrics=True,
                exit_code=stdout.channel.recv_exit_status(),
                stdout=out,
                stderr=err,
            )
            ok = answer.ssh.ok
            assert answer.metrics is not None and answer.metrics.memory is not None
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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _api_server_pid() -> int:
    """The Prefect API server the test harness started (a child of this process)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                if stat[1] == me and b"uvicorn" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError("the Prefect API server process was not found")


class Cpu(NamedTuple):
    """CPU seconds used during a cycle."""

    flow: float  # the flow's process (this one)
    api: float  # the Prefect API server
    rest: float  # everything else: the hosts' sshd and shells, the HTTP endpoints, others


def _measure(api_pid: int) -> tuple[float, float, float]:
    return _cpu_s(os.getpid()), _cpu_s(api_pid), _machine_busy_s()


def _cpu_since(start: tuple[float, float, float], api_pid: int) -> Cpu:
    flow, api, busy = (b - a for a, b in zip(start, _measure(api_pid), strict=True))
    return Cpu(flow, api, busy - flow - api)


_NEIGH = Path("/proc/sys/net/ipv4/neigh/default")


def _grow_neighbour_table(hosts: int) -> dict[str, str]:
    """Make room for ``hosts`` ARP entries; returns the old thresholds (to put back).

    Linux's defaults (gc_thresh3 = 1024 entries for the whole root namespace) are reached
    by a thousand sandbox hosts: connections then fail with "Unable to connect".
    """
    old = {n: (_NEIGH / n).read_text().strip() for n in ("gc_thresh1", "gc_thresh2", "gc_thresh3")}
    want = {"gc_thresh1": hosts, "gc_thresh2": 2 * hosts, "gc_thresh3": 4 * hosts}
    for name, value in want.items():
        if int(old[name]) < value:
            (_NEIGH / name).write_text(str(value))
    return old


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


class Figures(NamedTuple):
    """One size's figures."""

    servers: int
    checks: int
    down: int
    flow: list[float]
    bare: list[float]
    phases: dict[str, list[float]]
    changes: int
    cpu: list[Cpu]
    bare_cpu: list[tuple[float, float]]  # the bare threads' process, the rest


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hosts", type=int, default=50, help="sandbox hosts (default 50; 200 per estate)"
    )
    parser.add_argument(
        "--sizes", default="", help="servers per timed cycle, comma-separated (default: all)"
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="client files per estate, each listing its hosts"
    )
    parser.add_argument("--http", type=int, default=8, help="http checks per server (8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-threads baseline")
    parser.add_argument("--force", action="store_true", help="start hosts even when memory is low")
    parser.add_argument("--serve-http", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    telemetry_off()
    if args.serve_http:
        return _serve_http()
    need_mb = args.hosts * HOST_MB + 2048
    if not args.force and _available_mb() < need_mb:
        print(
            f"{args.hosts} hosts need about {need_mb} MB and {_available_mb()} MB are"
            " available: not starting them (--force to insist)",
            file=sys.stderr,
        )
        return 2

    # The endpoints run in a process of their own, as a real service would: in this
    # process they would wait for the GIL behind the flow's threads.
    http = subprocess.Popen(
        [sys.executable, __file__, "--serve-http"], stdout=subprocess.PIPE, text=True
    )
    assert http.stdout is not None
    port = int(http.stdout.readline())

    count = -(-args.hosts // ESTATE_HOSTS)
    estates = [
        Estate(
            numbered_hosts(
                f"hbench{e}", NET + e, args.hosts * (e + 1) // count - args.hosts * e // count
            )
        )
        for e in range(count)
    ]
    figures: list[Figures] = []
    neighbours = _grow_neighbour_table(args.hosts + 256)
    try:
        started = time.perf_counter()
        for estate in estates:
            estate.up(fresh=True, wait=120)
        print(
            f"{count} estate(s), {args.hosts} hosts up in {time.perf_counter() - started:.2f}s",
            flush=True,
        )
        everything = plan(estates, port, args.clients, args.http)
        sizes = [int(n) for n in args.sizes.split(",") if n] or [len(everything)]
        work = Path(tempfile.mkdtemp(prefix="caretaker-health-bench-"))
        # The baseline first, with no Prefect server in the background.
        bare_times: dict[int, list[float]] = {}
        bare_cpu: dict[int, list[tuple[float, float]]] = {}
        for size in sizes:
            targets = everything[:size]
            expected_down = sum(t.down_by_design for t in targets)
            for _ in range(0 if args.no_bare else args.repeat):
                mine, busy = _cpu_s(os.getpid()), _machine_busy_s()
                took, down = bare(estates, targets)
                mine, busy = _cpu_s(os.getpid()) - mine, _machine_busy_s() - busy
                assert down == expected_down, (down, expected_down)
                bare_times.setdefault(size, []).append(took)
                bare_cpu.setdefault(size, []).append((mine, busy - mine))
                print(
                    f"{size} servers, bare threads: {took:.2f}s (CPU s: bare process {mine:.1f},"
                    f" rest {busy - mine:.1f})",
                    flush=True,
                )

        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        from flows.health_check import HealthCheckSummary, health_check
        from sandbox.prefect_blocks import ssh_identity

        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # type: ignore[dict-item]
            with prefect_test_harness(server_startup_timeout=60):
                for e, estate in enumerate(estates):
                    ssh_identity(estate).save(f"bench-ssh-{e}", overwrite=True)
                api_pid = _api_server_pid()
                for size in sizes:
                    targets = everything[:size]
                    inventory = write_inventory(work / f"clients-{size}", targets)
                    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory)
                    store = work / f"store-{size}.db"
                    os.environ["CARETAKER_HISTORY_STORE_URL"] = f"sqlite:///{store}"
                    health_check()  # warm-up: imports, store schema, first samples
                    flow_times: list[float] = []
                    cpu: list[Cpu] = []
                    phases: dict[str, list[float]] = {}
                    changes = 0
                    for _ in range(args.repeat):
                        started, before = time.perf_counter(), _measure(api_pid)
                        summary = health_check()
                        flow_times.append(time.perf_counter() - started)
                        cpu.append(_cpu_since(before, api_pid))
                        assert isinstance(summary, HealthCheckSummary)
                        _verify(summary, targets)
                        changes += len(summary.changes)
                        for name, seconds in summary.phase_s.items():
                            phases.setdefault(name, []).append(seconds)
                        print(
                            f"{size} servers, health-check cycle: {flow_times[-1]:.2f}s ("
                            + ", ".join(f"{k} {v:.2f}s" for k, v in summary.phase_s.items())
                            + f"; {len(summary.changes)} events; CPU s: flow {cpu[-1].flow:.1f},"
                            f" API {cpu[-1].api:.1f}, rest {cpu[-1].rest:.1f})",
                            flush=True,
                        )
                    figures.append(
                        Figures(
                            servers=size,
                            checks=size * (2 + args.http),
                            down=sum(t.down_by_design for t in targets),
                            flow=flow_times,
                            bare=bare_times.get(size, [float("nan")]),
                            bare_cpu=bare_cpu.get(size, [(float("nan"), float("nan"))]),
                            phases=phases,
                            changes=changes,
                            cpu=cpu,
                        )
                    )
    finally:
        for estate in estates:
            estate.down(purge=True)
        http.kill()
        for name, value in neighbours.items():
            (_NEIGH / name).write_text(value)
    print()
    print(
        f"per server: SSH reachability + tcp 22 + {args.http} http GET of distinct 127.0.0.1"
        f" URLs, + load/memory/disk over SSH; {args.clients} client file(s) per estate of up"
        f" to {ESTATE_HOSTS} sandbox hosts; one flow run per cycle, one process"
    )
    for f in figures:
        flow_s, bare_s = statistics.median(f.flow), statistics.median(f.bare)
        print(
            f"{f.servers:>5} servers ({f.checks} checks, {f.down} down by design):"
            f" health-check cycle median {flow_s:.2f}s"
            f" (runs: {', '.join(f'{t:.2f}' for t in f.flow)}),"
            f" {f.servers / flow_s:.0f} servers/s;"
            f" bare threads median {bare_s:.2f}s (runs: {', '.join(f'{t:.2f}' for t in f.bare)});"
            f" overhead {flow_s - bare_s:+.2f}s ({(flow_s / bare_s - 1) * 100:+.0f} %)"
        )
        print(
            "       median per phase: "
            + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in f.phases.items())
            + f"; {f.changes} state-change events"
        )
        print(
            "       median CPU per cycle: "
            f"flow process {statistics.median(c.flow for c in f.cpu):.1f}s,"
            f" Prefect API server {statistics.median(c.api for c in f.cpu):.1f}s,"
            f" the rest (sshd and shells on the hosts, HTTP endpoints, other work on the"
            f" machine) {statistics.median(c.rest for c in f.cpu):.1f}s; bare threads:"
            f" their process {statistics.median(c[0] for c in f.bare_cpu):.1f}s,"
            f" the rest {statistics.median(c[1] for c in f.bare_cpu):.1f}s"
        )
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
