"""Benchmark: 50 maintenance runs waiting for approval at once, and what they hold.

A deployment's ``server-maintenance`` run waits for approval *suspended*: its flow process
exits (SSH sessions closed) and nothing runs until it is answered. This starts a Prefect
API (the test harness), a sandbox estate of one host per client, 50 clients (each one
production server, ``rollout.no_staging``), and one worker (``prefect.serve`` of the flow's
deployment, in a process group of its own, at most ``--limit`` flow runs at once); it
creates one run per client and samples the worker's process group every 0.5 s until
every run is Suspended at its approval. It prints how many processes the worker had
spawned at most while the runs reached their approval, and how many are alive once all
of them wait (the figure of issue 13: 0 beyond the worker itself), and the SSH
connections still open from the worker's group.

    .venv/bin/python benchmarks/suspended_waits.py [--runs 50] [--limit 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import telemetry_off
from sandbox.estate import Estate, numbered_hosts
from sandbox.repo import PackageSpec
from sandbox.system import process_group_members

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT = "bench-suspend"

CLIENT = """\
client:
  slug: {slug}
  name: Waiting Co {slug}
  timezone: UTC
  contact: {{name: Ops, email: ops@wait.example}}
  approvers: [{{name: alice, email: alice@wait.example, ssh_key: "{alice_key}"}}]
schedule:
  cadence: quarterly
  window: {{start: "00:00", duration: 24h}}
  approval_timeout: 2h
rollout: {{batch_size: 1, failures_tolerated: 0, on_failure: restore,
          no_staging: "benchmark of waits: no staging server"}}
patch: {{policy: all, hold: [], reboot: never}}
restore_test: {{enabled: false}}
defaults: {{ssh_block: bench-wait-ssh, user: root, port: 22, os_family: debian}}
servers:
  - {{name: {host}, role: production, address: {address},
     provider: {{type: sandbox, estate: bench-wait}}, checks: [{{type: tcp, port: 22}}]}}
"""

WORKER = """
import sys
from prefect import serve
from flows.server_maintenance import server_maintenance
serve(server_maintenance.to_deployment(name=sys.argv[1]), limit=int(sys.argv[2]))
"""


def ssh_connections(pids: list[int]) -> int:
    """TCP connections to port 22 held by ``pids`` (their sockets in /proc/net/tcp)."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(":0016") and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


def states(run_ids: list[str]) -> dict[str, int]:
    """How many of the runs are in each state name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    counts: dict[str, int] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)), limit=200
        )
    for run in runs:
        name = run.state.name if run.state else "?"
        counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--limit", type=int, default=10, help="the worker's flow runs at once")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    telemetry_off()

    estate = Estate(numbered_hosts("bench-wait", 9, args.runs))
    estate.up(fresh=True)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    inventory = Path(tempfile.mkdtemp(prefix="caretaker-bench-wait-"))
    key = inventory / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    alice_key = key.with_suffix(".pub").read_text().strip()
    slugs = []
    for i, host in enumerate(estate.spec.hosts, start=1):
        slug = f"wait{i:02d}"
        slugs.append(slug)
        (inventory / f"{slug}.yaml").write_text(
            CLIENT.format(slug=slug, alice_key=alice_key, host=host.name, address=host.address)
        )
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory)
    os.environ["CARETAKER_DATA_DIR"] = str(inventory / "data")

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from sandbox.prefect_blocks import ssh_identity

    worker: subprocess.Popen[bytes] | None = None
    try:
        with prefect_test_harness(server_startup_timeout=60):
            ssh_identity(estate).save("bench-wait-ssh", overwrite=True)
            env = dict(
                os.environ,
                PREFECT_API_URL=str(PREFECT_API_URL.value()),
                PREFECT_RUNNER_POLL_FREQUENCY="1",
            )
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, DEPLOYMENT, str(args.limit)],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            name = f"server-maintenance/{DEPLOYMENT}"
            run_ids = []
            deadline = time.monotonic() + 120
            while not run_ids:
                try:
                    first = run_deployment(name, parameters={"client": slugs[0]}, timeout=0)
                except Exception:  # the worker has not registered the deployment yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
                    continue
                run_ids.append(str(first.id))
            started = time.perf_counter()
            for slug in slugs[1:]:
                run_ids.append(str(run_deployment(name, parameters={"client": slug}, timeout=0).id))
            peak = 0
            deadline = time.monotonic() + args.timeout
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                peak = max(peak, len(process_group_members(worker.pid)) - 1)
                counts = states(run_ids)
                if counts.get("Suspended", 0) + counts.get("Failed", 0) >= len(run_ids):
                    break
                time.sleep(0.5)
            took = time.perf_counter() - started
            time.sleep(2)  # a flow process that just suspended has exited by now
            alive = [p for p in process_group_members(worker.pid) if p != worker.pid]
            sessions = ssh_connections(process_group_members(worker.pid))
            print(f"runs: {len(run_ids)}, states: {counts}, worker limit {args.limit} at once")
            print(f"  all waiting after {took:.1f}s; worker-spawned processes at most: {peak}")
            print(
                f"  {counts.get('Suspended', 0)} runs waiting for approval at once:"
                f" worker-spawned processes alive: {len(alive)},"
                f" SSH connections open from the worker's group: {sessions}"
            )
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        estate.down(purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
