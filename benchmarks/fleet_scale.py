"""Benchmark: 40 clients x 5 sandbox hosts (200 hosts) in one window, one worker vs two.

The production set-up of docs/deployments.md ("Worker mode: several machines"), on this
machine: a Prefect server on PostgreSQL (two API processes, a services process, Redis
messaging: ``deployments.server.ensure_server(workers=2)``; ``--server-workers 1`` for
one process), the history store in another PostgreSQL database, the code in a local bare
git repository (``sandbox/git_server.py``) whose ``clients/`` are the 40 benchmark
clients, the work pool made by ``python -m deployments.fleet pool`` and the 40
``server-maintenance/<client>`` deployments by ``prefect deploy --name
'server-maintenance/*'`` (the other deployments of ``--all``, reports, audits and the
health check, are not run here: deploying them cost ~70 s of set-up). Every run clones
the deployed commit, as on a real fleet, from the repository packed as a git server keeps
it.

Each round starts its workers, each in its own folder and process group, as the docs say:
``caretaker-worker --pool caretaker-process --limit L`` (a fork server and ``prefect
worker start``; ``--plain``: ``prefect worker start`` and Prefect's own job command, a new
Python process per run). Once every worker has polled and every fork server has its
imports, it schedules one run per client, all due at the same instant ``--lead`` seconds
later (the start of their common window: a maintenance window is known in advance), the
workers taking runs due within ``lead + 15`` s (``PREFECT_WORKER_PREFETCH_SECONDS``), so
a run can be started before its window and goes Running when it opens (Prefect's server
holds a run in Pending until its scheduled time). It waits for every run to end. Each
worker is pinned to a CPU core of its own (``taskset``; worker 1 to core 0, worker 2 to
core 1: its fork server and runs with it), so that a "machine" is one core and the second
machine brings one; ``--shared-cores`` lets both use both. ``--limit`` (default 20) is
how many runs a machine takes at once; a comma list runs both rounds for each. Round 1
has one worker, round 2 two. Printed per round, from each run's Prefect state history:

* wall time: the window's start to the last run's end, and the throughput over it (what
  a worker did before the window, with runs taken ahead, is free: the window is known),
  and the time from the first run taken (Pending) to the last run's end;
* scheduling lag: Running minus the scheduled start, p50 / p95, min and max (not clipped:
  Prefect lets a run start up to half a second early, rounding its wait to seconds);
* orchestration overhead per run: from when the run could start (the later of its worker
  taking it and the window's start) to its end, minus the time in apt (the union of the
  run's ``collect-facts`` task runs: ``apt-get update`` and apt's simulation on each host
  over SSH), p50 / p95 / mean; and the CPU seconds per run of the machines' processes
  (worker, job commands, fork server and runs; the fork server's imports are before the
  round and not counted).

``--repeat N`` runs N rounds of each worker count per limit, alternating which goes
first (1 2, 2 1, ...), and prints the median of the paired ratios (each repetition's two
rounds) with its range, and the ratio of the median throughputs. ``--cpu-by-class``
prints where the CPU of each round's window went (from scheduling to the last run's end):
every process on the machine, the live ones from /proc at both ends and those that ended
in between from BSD process accounting (on for the window only), by class: the machines'
flow runs, their git clones, the fork servers, the workers and job commands; the Prefect
API processes and services process; PostgreSQL; Redis; the hosts' sshd, apt and dpkg and
other commands; the kernel's threads; the benchmark itself; anything else. The benchmark
asks the server for its 40 runs' states in one request per poll (it was one per run: 20
requests a second on the API the window shares the cores with).

The runs are dry runs (``dry_run=true``): the exact plan of each host, with real apt on
all 200 hosts, and the whole orchestration path (deployment, worker, git clone, flow run
process, SSH sessions, artifact) without the approval round trip. The full procedure's own
costs (snapshots, staging, approval, batches, restore test) are measured per run by
``benchmarks/fleet_maintenance.py``; 40 of them twice over would take most of an hour on a
2-core machine and measure apt and snapshots, not the fleet's orchestration.

    .venv/bin/python benchmarks/fleet_scale.py [--limit 20] [--lead 60] [--shared-cores]
        [--repeat 3] [--cpu-by-class] [--server-workers 2] [--plain]

Needs root (the sandbox), PostgreSQL at 127.0.0.1:5432 (``CARETAKER_TEST_PG_URL``
overrides the administrative URL) and Redis at 127.0.0.1:6379 for the multi-process
server. Everything it makes (estate, databases, server, workers) is removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.settings import telemetry_off
from deployments.server import ensure_server, redis_env, stop_server
from sandbox.estate import Estate, numbered_hosts
from sandbox.git_server import GitServer, publish_repository
from sandbox.repo import PackageSpec

ADMIN_URL = os.environ.get(
    "CARETAKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BIN = Path(sys.executable).parent
REDIS_DB = 9

CLIENT = """\
client:
  slug: {slug}
  name: Fleet Bench {slug}
  timezone: UTC
  contact: {{name: Ops, email: ops@fleet.example}}
  approvers: [{{name: alice, email: alice@fleet.example}}]
schedule: {{cadence: monthly, window: {{start: "00:00", duration: 24h}}}}
rollout: {{batch_size: 2, failures_tolerated: 0, on_failure: restore}}
patch: {{policy: all, hold: [], reboot: if-required}}
defaults: {{ssh_block: fleet-bench-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""


def client_files(estate: Estate, clients: int, per_client: int) -> dict[str, str]:
    files = {}
    for c in range(clients):
        hosts = estate.spec.hosts[c * per_client : (c + 1) * per_client]
        servers = "\n".join(
            f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'},"
            f" address: {h.address}, provider: {{type: sandbox, estate: fleet-bench}}}}"
            for i, h in enumerate(hosts)
        )
        slug = f"bench{c + 1:02d}"
        files[slug] = CLIENT.format(slug=slug, servers=servers)
    return files


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


def machine_env(api: str, **extra: str) -> dict[str, str]:
    """A worker machine's environment: no CARETAKER_* setting (the pool carries them)."""
    return {
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **extra,
    }


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root``'s process tree: each live process's own time and that of
    the children it has reaped (a finished flow run's time is in its reaper's)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, f in stats.items() if int(f[1]) in tree} - tree
        grew, tree = bool(more), tree | more
    return sum(sum(int(x) for x in stats[pid][11:15]) for pid in tree if pid in stats) / _TICK


# ---- where a window's CPU goes, by process class (``--cpu-by-class``) ----------------------

#: struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid, btime,
#: etime, then utime, stime, mem, io, rw, minflt, majflt, swaps (comp_t), comm[16].
ACCT_V3 = "<BBHIIIIIIf8H16s"
ACCT_HZ = 100  # the v3 record's time unit (AHZ)
APT_COMMANDS = frozenset(
    "apt apt-get apt-mark apt-config apt-cache dpkg dpkg-query gpgv sqv file store copy"
    " http".split()
)


def comp_t(value: int) -> int:
    """A ``comp_t`` of a process accounting record: 13-bit mantissa, base-8 exponent (pure)."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def acct_records(data: bytes) -> list[dict[str, Any]]:
    """The exited processes of a BSD process accounting (v3) file: pid, ppid, comm and
    CPU seconds (user + system) of each (pure)."""
    size = struct.calcsize(ACCT_V3)
    found = []
    for offset in range(0, len(data) - size + 1, size):
        f = struct.unpack_from(ACCT_V3, data, offset)
        if f[1] & 0x7F != 3:
            continue
        found.append(
            {
                "pid": f[6],
                "ppid": f[7],
                "comm": f[18].split(b"\0", 1)[0].decode(errors="replace"),
                "cpu": (comp_t(f[10]) + comp_t(f[11])) / ACCT_HZ,
            }
        )
    return found


def cpu_class(pid: int, procs: dict[int, dict[str, Any]], roots: dict[int, str]) -> str:
    """The class of process ``pid`` for the CPU breakdown of a window (pure).

    ``procs``: pid -> ``comm``, ``cmd`` (empty for an exited process) and ``ppid``;
    ``roots``: the benchmark's known processes (``machine``: a worker's process group
    root; ``api``, ``services``: the Prefect server's; ``bench``: this one). A process
    belongs to its nearest known root; in a machine, the fork server, the flow runs
    (forked children of it, the git clone with them) and the rest (``prefect worker``,
    the job commands); outside, PostgreSQL and Redis by name, the sandbox hosts as what
    runs under an ``sshd`` (apt and dpkg, sshd itself, the rest; the estate's hosts are this
    process's children), the kernel's threads (the bridge's softirqs among them)."""
    chain: list[int] = []
    cursor = pid
    while cursor in procs and cursor not in chain and len(chain) < 64:
        chain.append(cursor)
        if cursor in roots:
            break
        cursor = procs[cursor]["ppid"]
    me = procs.get(pid, {"comm": "?", "cmd": "", "ppid": 0})
    comm = me["comm"]
    if pid == 2 or me["ppid"] == 2:  # kthreadd's: softirqs (the bridge's traffic), kworkers
        return "kernel threads"
    if any(procs[p]["comm"].startswith("sshd") for p in chain):  # (started by this process)
        if comm.startswith("sshd"):
            return "hosts: sshd"
        if comm in APT_COMMANDS or comm.startswith(("apt", "dpkg")):
            return "hosts: apt, dpkg"
        return "hosts: other commands"
    if comm.startswith("postgres") or me["cmd"].startswith("postgres"):
        return "PostgreSQL"
    if comm.startswith("redis"):
        return "Redis"
    root = next((roots[p] for p in chain if p in roots), None)
    if root == "machine":
        server = next((p for p in chain if "deployments.forkserver" in procs[p]["cmd"]), None)
        if server is not None:
            parent = procs.get(procs[server]["ppid"], {"cmd": ""})
            if server == pid and "deployments.forkserver" not in parent["cmd"]:
                return "machines: fork servers"
            return (
                "machines: git clones of runs" if comm.startswith("git") else "machines: flow runs"
            )
        if "prefect.engine" in " ".join(procs[p]["cmd"] for p in chain):
            return "machines: flow runs"
        return "machines: workers, job commands"
    if root in ("api", "services"):
        return "Prefect API processes" if root == "api" else "Prefect services process"
    if root == "bench":
        return "benchmark driver"
    return "other (not the benchmark's)"


def proc_table() -> dict[int, dict[str, Any]]:
    """Every live process: comm, command line, parent, start time and CPU seconds."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        head, tail = stat.rsplit(")", 1)
        f = tail.split()
        table[int(entry.name)] = {
            "comm": head.split("(", 1)[1],
            "cmd": cmd.strip(),
            "ppid": int(f[1]),
            "start": int(f[19]),
            "cpu": (int(f[11]) + int(f[12])) / _TICK,
        }
    return table


class ClassCpu:
    """The CPU of every process on the machine over a window, by :func:`cpu_class`: the
    live ones from /proc at both ends, those that exited in between from BSD process
    accounting (``acct(2)``, on for the window only: root)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "window.acct"
        self.before: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        self.path.write_bytes(b"")
        self.before = proc_table()
        self._acct(str(self.path))

    def stop(self, roots: dict[int, str]) -> dict[str, float]:
        after = proc_table()
        self._acct(None)
        exited = acct_records(self.path.read_bytes())
        procs: dict[int, dict[str, Any]] = {
            r["pid"]: {"comm": r["comm"], "cmd": "", "ppid": r["ppid"]} for r in exited
        }
        procs.update(self.before)
        procs.update(after)
        sums: dict[str, float] = {}
        spent = [
            (pid, p["cpu"] - (b["cpu"] if b and b["start"] == p["start"] else 0.0))
            for pid, p in after.items()
            for b in [self.before.get(pid)]
        ]
        spent += [
            (r["pid"], r["cpu"] - (self.before[r["pid"]]["cpu"] if r["pid"] in self.before else 0))
            for r in exited
        ]
        for pid, seconds in spent:
            if seconds > 0:
                name = cpu_class(pid, procs, roots)
                sums[name] = sums.get(name, 0.0) + seconds
        return dict(sorted(sums.items(), key=lambda kv: -kv[1]))

    @staticmethod
    def _acct(path: str | None) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.acct(path.encode() if path else None) != 0:
            raise OSError(ctypes.get_errno(), f"acct({path})")


def stop_machine(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and every process it started (flow runs have sessions of their own)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    tree, grew = {worker.pid}, True
    while grew:
        more = {pid for pid in pids if _parent(pid) in tree} - tree
        grew, tree = bool(more), tree | more
    for pid in tree:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(10)


def deploy(
    git: GitServer, api: str, store_url: str, log: Path, plain: bool, sessions: int
) -> float:
    """The work pool and the deployments, as docs/deployments.md says (``plain``: the
    pool with Prefect's own job command). The estate's SSH-session limit is sized for the
    window (``sessions``: every host at once), as an operator running it would size it."""
    started = time.perf_counter()
    pool = [sys.executable, "-m", "deployments.fleet", "pool", "--store-url", store_url]
    pool += ["--set", f"CARETAKER_SSH_SESSIONS_LIMIT={sessions}"]
    with log.open("ab") as sink:
        for command in (
            [*pool, "--command", ""] if plain else pool,
            # Only what the benchmark runs: the 40 server-maintenance deployments, by the
            # same `prefect deploy` (the other 121 of `--all` only cost ~70 s of set-up).
            ["prefect", "--no-prompt", "deploy", "--name", "server-maintenance/*"],
        ):
            subprocess.run(
                command,
                cwd=git.checkout,
                env=machine_env(api, CARETAKER_GIT_REPOSITORY=git.url, PREFECT_CLI_PROMPT="false"),
                stdout=sink,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=900,
            )
    return time.perf_counter() - started


def schedule_all(slugs: Sequence[str], at: datetime) -> list[UUID]:
    """One dry run per client, all scheduled at ``at``; their ids."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        return [
            client.create_flow_run_from_deployment(
                client.read_deployment_by_name(f"server-maintenance/{slug}").id,
                parameters={"client": slug, "dry_run": True},
                state=Scheduled(scheduled_time=at),
            ).id
            for slug in slugs
        ]


def read_runs(client: Any, run_ids: Sequence[UUID]) -> list[Any]:
    """The flow runs of ``run_ids``, in one request."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return list(
        client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids))),
            limit=len(run_ids),
        )
    )


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of time intervals (pure)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def run_figures(run_id: UUID) -> dict[str, Any]:
    """A finished run's times: scheduled, Pending, Running, end, and its time in apt."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        states = client.read_flow_run_states(run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), limit=200
        )
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp.timestamp())
    apt = [
        (t.start_time.timestamp(), t.end_time.timestamp())
        for t in tasks
        if t.name.startswith("collect-facts") and t.start_time and t.end_time
    ]
    return {
        "ok": bool(run.state and run.state.is_completed()),
        "scheduled": (run.expected_start_time or run.created or datetime.now(UTC)).timestamp(),
        "pending": first.get("PENDING", first["RUNNING"]),
        "running": first["RUNNING"],
        "end": (run.end_time or datetime.now(UTC)).timestamp(),
        "apt": union_seconds(apt),
    }


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def answering(estate: Estate) -> list[str]:
    """The hosts whose sshd does not send its banner within 5 s."""

    def silent(address: str) -> bool:
        try:
            with socket.create_connection((address, 22), timeout=5) as sock:
                sock.settimeout(5)
                return not sock.recv(4).startswith(b"SSH")
        except OSError:
            return True

    with ThreadPoolExecutor(max_workers=50) as pool:
        quiet = pool.map(silent, [h.address for h in estate.spec.hosts])
        return [h.name for h, q in zip(estate.spec.hosts, quiet, strict=True) if q]


def not_planned(run_ids: Sequence[UUID]) -> int:
    """How many hosts the runs could not plan (their "N host(s) not planned" log lines)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    total = 0
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
            )
            for log in logs:
                found = re.search(r"(\d+) host\(s\) not planned", log.message)
                if found:
                    total += int(found.group(1))
    return total


def one_round(
    workers: int,
    limit: int,
    slugs: Sequence[str],
    git: GitServer,
    api: str,
    root: Path,
    estate: Estate,
    pin: bool,
    lead: float,
    plain: bool,
    server_home: Path | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Start ``workers`` workers, schedule every client's run at one instant ``lead``
    seconds ahead (the window's start), wait for all runs. With ``server_home`` (the
    Prefect server's PREFECT_HOME), the window's CPU by process class too (``classes``)."""
    from prefect.client.orchestration import get_client

    estate.up()  # idempotent: the bridge and every host, as they should be
    quiet = answering(estate)
    if quiet:
        raise RuntimeError(f"{len(quiet)} sandbox host(s) do not answer: {quiet[:10]}")
    procs = []
    for n in range(workers):
        machine = root / f"round{workers}-limit{limit}{tag}-machine-{n + 1}"
        machine.mkdir()
        log = (machine.parent / f"{machine.name}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    *(["taskset", "-c", str(n % (os.cpu_count() or 1))] if pin else []),
                    "sh",
                    "-ec",
                    'git clone -q "$CARETAKER_GIT_REPOSITORY" caretaker && cd caretaker\n'
                    f"{'prefect worker start' if plain else 'caretaker-worker'}"
                    f" --pool caretaker-process --limit {limit}",
                ],
                cwd=machine,
                env=machine_env(
                    api,
                    CARETAKER_GIT_REPOSITORY=git.url,
                    # Take runs due within the lead (and a poll) so they start on time.
                    PREFECT_WORKER_PREFETCH_SECONDS=str(int(lead) + 15),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        # The fleet is up before the window opens: every worker has polled the pool.
        since = datetime.now(UTC)
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                polled = [
                    w
                    for w in client.read_workers_for_work_pool("caretaker-process")
                    if w.last_heartbeat_time and w.last_heartbeat_time > since
                ]
                ready = plain or all(
                    "serving on" in log.read_text(errors="replace")
                    for log in root.glob(f"round{workers}-limit{limit}{tag}-machine-*.log")
                )
                if len(polled) >= workers and ready:  # and each fork server has its imports
                    break
                time.sleep(1)
            else:
                raise RuntimeError(
                    f"workers did not poll: see {root}/round{workers}-limit{limit}{tag}-*.log"
                )
        meter = ClassCpu(root) if server_home is not None else None
        if meter is not None:
            meter.start()
        cpu_before = sum(tree_cpu(p.pid) for p in procs)
        at = datetime.now(UTC) + timedelta(seconds=lead)
        run_ids = schedule_all(slugs, at)
        deadline = time.monotonic() + 3600
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                # One request for all 40 (it was one per run: 20 a second on the API
                # processes the window shares the cores with).
                states = [r.state for r in read_runs(client, run_ids)]
                if len(states) == len(run_ids) and all(s and s.is_final() for s in states):
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(
                        f"a worker exited: see {root}/round{workers}-limit{limit}{tag}-*.log"
                    )
                time.sleep(2)
        time.sleep(3)  # the last runs' processes exit (and are reaped) after their end state
        cpu = sum(tree_cpu(p.pid) for p in procs) - cpu_before
        classes: dict[str, float] = {}
        if meter is not None and server_home is not None:
            server_pids = json.loads((server_home / "server.json").read_text())["pids"]
            roots = {p.pid: "machine" for p in procs}
            roots.update(zip(server_pids, ("api", "services"), strict=False))
            roots[os.getpid()] = "bench"
            classes = meter.stop(roots)
        fallbacks = sum(
            log.read_text(errors="replace").count("starting python -m prefect.engine")
            for log in root.glob(f"round{workers}-limit{limit}{tag}-machine-*.log")
        )
    finally:
        for proc in procs:
            stop_machine(proc)
    runs = [run_figures(r) for r in run_ids]
    failed = sum(1 for r in runs if not r["ok"])
    unplanned = not_planned(run_ids)
    lags = [r["running"] - r["scheduled"] for r in runs]  # not clipped: min is printed
    first_wave = sorted(lags)[: workers * limit]
    # From when the run could start (its worker took it, the window opened: the later) to
    # its end, minus apt: a prefetched run waiting for the window is not overhead.
    overheads = [r["end"] - max(r["pending"], r["scheduled"]) - r["apt"] for r in runs]
    wall = max(r["end"] for r in runs) - at.timestamp()
    busy = max(r["end"] for r in runs) - min(r["pending"] for r in runs)
    return {
        "failed": failed,
        "unplanned": unplanned,
        "fallbacks": fallbacks,
        "wall": wall,
        "busy": busy,
        "throughput": len(runs) / wall * 60,
        "wall_per_run": wall / len(runs),
        "lag_min": min(lags),
        "lag_p50": pct(lags, 0.5),
        "lag_p95": pct(lags, 0.95),
        "lag_max": max(lags),
        "wave_p95": pct(first_wave, 0.95),
        "ready_before": statistics.fmean(r["scheduled"] - r["pending"] for r in runs),
        "overhead_p50": pct(overheads, 0.5),
        "overhead_p95": pct(overheads, 0.95),
        "overhead_mean": statistics.fmean(overheads),
        "apt_mean": statistics.fmean(r["apt"] for r in runs),
        "run_mean": statistics.fmean(r["end"] - r["running"] for r in runs),
        "cpu_per_run": cpu / len(runs),
        "classes": classes,
    }


def round_order(rep: int) -> tuple[int, int]:
    """The worker counts of repetition ``rep`` (from 0), alternating so that neither
    count always runs first on a machine whose load drifts (pure)."""
    return (1, 2) if rep % 2 == 0 else (2, 1)


def ratios(one: Sequence[float], two: Sequence[float]) -> dict[str, float]:
    """Two workers against one from each round's throughput (pure): the ratio of the
    medians, the median of the ratios of the rounds run together (repetition by
    repetition), and the lowest and highest of those."""
    paired = [b / a for a, b in zip(one, two, strict=True)]
    return {
        "of_medians": statistics.median(two) / statistics.median(one),
        "median": statistics.median(paired),
        "min": min(paired),
        "max": max(paired),
    }


def round_text(
    r: dict[str, Any],
    workers: int,
    limit: int,
    starter: str,
    args: argparse.Namespace,
    runs: int,
    rep: int,
) -> str:
    """One round's figures, as printed."""
    text = (
        f"{workers} worker(s) ({starter}), --limit {limit},"
        f" {'all cores shared' if args.shared_cores else 'one core each'},"
        f"{f' repetition {rep + 1},' if args.repeat > 1 else ''}"
        f" {runs} runs due {args.lead:.0f}s after they were scheduled"
        f" ({r['failed']} not completed, {r['unplanned']} host(s) not planned,"
        f" {r['fallbacks']} without the fork server):\n"
        f"    wall {r['wall']:.1f}s from the window's start"
        f" ({r['busy']:.1f}s from the first run taken),"
        f" {r['throughput']:.1f} runs/min\n"
        f"    scheduling lag p50 {r['lag_p50']:.1f}s p95 {r['lag_p95']:.1f}s"
        f" (min {r['lag_min']:.1f}s, max {r['lag_max']:.1f}s; first wave of"
        f" {min(runs, workers * limit)}: p95 {r['wave_p95']:.1f}s);"
        f" taken {r['ready_before']:.1f}s before the window on average\n"
        f"    overhead per run (each run's own wall time, taken or window"
        f" start to end, minus apt) p50 {r['overhead_p50']:.2f}s"
        f" p95 {r['overhead_p95']:.2f}s mean {r['overhead_mean']:.2f}s"
        f" (run {r['run_mean']:.1f}s, of it apt {r['apt_mean']:.1f}s)\n"
        f"    machine wall time per run (the window's wall / runs)"
        f" {r['wall_per_run']:.2f}s;"
        f" CPU per run {r['cpu_per_run']:.2f}s (worker, job command, run)"
    )
    if r["classes"]:
        total = sum(r["classes"].values())
        text += (
            f"\n    CPU of the window (scheduling to the last run's end + 3 s) by process"
            f" class: {total:.1f}s in all, {total / runs:.2f}s per run\n"
        )
        text += "\n".join(
            f"      {seconds:7.1f}s {seconds / runs:6.2f}s/run"
            f" {100 * seconds / total:5.1f}%  {name}"
            for name, seconds in r["classes"].items()
        )
    return text


def verdict(limit: int, one: Sequence[dict[str, Any]], two: Sequence[dict[str, Any]]) -> str:
    """The two-workers-against-one line of a limit (the medians when repeated)."""
    load = f"(machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    r = ratios([x["throughput"] for x in one], [x["throughput"] for x in two])
    if len(one) == 1:
        return f"--limit {limit}: two workers / one worker throughput: {r['median']:.2f}x {load}"
    return (
        f"--limit {limit}, {len(one)} rounds each: two workers / one worker throughput:"
        f" median of the paired rounds {r['median']:.2f}x (min {r['min']:.2f}x,"
        f" max {r['max']:.2f}x); medians {statistics.median(x['throughput'] for x in two):.1f}"
        f" / {statistics.median(x['throughput'] for x in one):.1f} runs/min ="
        f" {r['of_medians']:.2f}x; wall medians"
        f" {statistics.median(x['wall'] for x in one):.1f}s (one) and"
        f" {statistics.median(x['wall'] for x in two):.1f}s (two) {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--hosts", type=int, default=5, help="hosts per client")
    parser.add_argument(
        "--limit",
        default="20",
        help="flow runs at once per worker; a comma list runs both rounds for each",
    )
    parser.add_argument(
        "--lead",
        type=float,
        default=60,
        help="seconds between scheduling the runs and the window's start (their start time)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="workers started with `prefect worker start` (no fork server: each run a new"
        " Python process) instead of caretaker-worker",
    )
    parser.add_argument("--server-workers", type=int, default=2, help="Prefect API processes")
    parser.add_argument(
        "--shared-cores",
        action="store_true",
        help="let every worker use every core (default: worker N is pinned to core N)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of each worker count per limit, alternating (1 2, 2 1, ...); medians printed",
    )
    parser.add_argument(
        "--cpu-by-class",
        action="store_true",
        help="print each window's CPU by process class (machines, Prefect server,"
        " PostgreSQL, Redis, the hosts' sshd and apt), with process accounting on for the"
        " window",
    )
    args = parser.parse_args()
    telemetry_off()
    if args.clients * args.hosts > 200:
        parser.error("the sandbox estate holds 200 hosts at most")

    root = Path(tempfile.mkdtemp(prefix="caretaker-fleet-bench-"))
    estate = Estate(numbered_hosts("fleet-bench", 91, args.clients * args.hosts))
    slugs = [f"bench{c + 1:02d}" for c in range(args.clients)]
    pg = make_url(ADMIN_URL)
    home = root / "prefect-home"
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    limits = [int(n) for n in args.limit.split(",")]
    try:
        started = time.perf_counter()
        estate.up(fresh=True)
        estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
        print(
            f"estate of {len(estate.spec.hosts)} hosts up in {time.perf_counter() - started:.1f}s"
        )
        git = publish_repository(root, client_files(estate, args.clients, args.hosts))
        # The repository packed, as a git server keeps it (a push arrives as a pack; servers
        # repack): the bare clone of a local folder holds loose objects, which made every
        # run's clone compress each object anew (0.44-0.49 s of CPU per clone against
        # 0.15-0.16 s packed, measured with Prefect's clone and checkout of the commit).
        subprocess.run(
            ["git", "-C", git.url.removeprefix("file://"), "repack", "-a", "-d", "-q"],
            check=True,
        )
        with database("caretaker_bench_prefect") as prefect_db, database("caretaker_bench") as db:
            extra = {
                "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                # Every SSH session takes a slot of one concurrency limit: 200 sessions
                # asking at once queue on that limit's row, and on two busy cores an
                # UPDATE waited past Prefect's 10 s statement timeout (HTTP 500).
                "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
            }
            if args.server_workers > 1:
                extra.update(redis_env(db=REDIS_DB))
            started = time.perf_counter()
            url = ensure_server(
                timeout=180,
                home=home,
                database_url=pg.set(
                    drivername="postgresql+asyncpg", database=prefect_db
                ).render_as_string(hide_password=False),
                env=extra,
                workers=args.server_workers,
            )
            api = f"{url}/api"
            print(
                f"Prefect server on PostgreSQL, {args.server_workers} API process(es)"
                f"{' + services, Redis messaging' if args.server_workers > 1 else ''}:"
                f" answering in {time.perf_counter() - started:.1f}s"
            )
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from sandbox.prefect_blocks import ssh_identity

            with temporary_settings({PREFECT_API_URL: api}):
                ssh_identity(estate).save("fleet-bench-ssh", overwrite=True)
            store_url = pg.set(database=db).render_as_string(hide_password=False)
            seconds = deploy(
                git, api, store_url, root / "deploy.log", args.plain, args.clients * args.hosts
            )
            print(
                f"work pool + deployments of {len(slugs)} clients (prefect deploy): {seconds:.1f}s"
            )
            starter = "prefect worker start" if args.plain else "caretaker-worker"
            for limit in limits:
                for rep in range(args.repeat):
                    tag = f"-rep{rep + 1}" if args.repeat > 1 else ""
                    for workers in round_order(rep):
                        with temporary_settings({PREFECT_API_URL: api}):
                            r = one_round(
                                workers,
                                limit,
                                slugs,
                                git,
                                api,
                                root,
                                estate,
                                not args.shared_cores,
                                args.lead,
                                args.plain,
                                home if args.cpu_by_class else None,
                                tag,
                            )
                        results.setdefault((limit, workers), []).append(r)
                        print(
                            round_text(r, workers, limit, starter, args, len(slugs), rep),
                            flush=True,
                        )
                print(verdict(limit, results[limit, 1], results[limit, 2]), flush=True)
    finally:
        stop_server(home=home)
        estate.down(purge=True)
    bad = sum(
        r["failed"] + r["unplanned"] + r["fallbacks"] for rounds in results.values() for r in rounds
    )
    # (--plain: the pool has Prefect's own command, which never asks a fork server)
    if bad:
        print(
            f"not valid: {bad} run(s) not completed, host(s) not planned or run(s) without"
            " the fork server",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
