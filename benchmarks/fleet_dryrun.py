"""Benchmark: a dry run over 20 sandbox hosts, against the same work done bare.

Prints the wall time of ``server-maintenance`` (dry run) over an estate of N hosts,
run against a real Prefect API, beside the same fact collection (apt refresh +
one facts script per host, parsed with the same parsers) done with bare paramiko
threads in one process. The difference is the orchestration overhead.

    .venv/bin/python benchmarks/fleet_dryrun.py [--hosts 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import telemetry_off
from sandbox.estate import Estate, numbered_hosts
from sandbox.repo import PackageSpec
from tasks.facts import build_facts_script, parse_facts, split_facts_output
from tasks.facts.collect import PLAN_FACTS
from tasks.packages import APT_REFRESH

CLIENT = """\
client:
  slug: bench
  name: Benchmark Ltd
  timezone: UTC
  contact: {{name: Ops, email: ops@bench.example}}
  approvers: [{{name: alice, email: alice@bench.example}}]
  notify: []
schedule: {{cadence: quarterly, window: {{start: "00:00", duration: 24h}}}}
rollout: {{batch_size: 5, failures_tolerated: 0, on_failure: restore}}
patch: {{policy: all, hold: [], reboot: if-required}}
defaults: {{ssh_block: bench-ssh, user: root, port: 22}}
servers:
{servers}
"""


def _client_yaml(estate: Estate) -> str:
    lines = []
    for i, host in enumerate(estate.spec.hosts):
        role = "staging" if i == 0 else "production"
        lines.append(
            f"  - {{name: {host.name}, role: {role}, address: {host.address}, os_family: debian,"
            f" provider: {{type: sandbox}}}}"
        )
    return CLIENT.format(servers="\n".join(lines))


def bare(estate: Estate) -> float:
    """The same collection with paramiko threads and no orchestration; seconds."""
    pkey = paramiko.Ed25519Key.from_private_key_file(str(estate.key_path))
    script = build_facts_script(PLAN_FACTS)

    def one(address: str) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(estate.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(address, username="root", pkey=pkey, look_for_keys=False, allow_agent=False)
        try:
            for command in (APT_REFRESH, script):
                _, stdout, _ = client.exec_command(command)
                out = stdout.read().decode()
                if stdout.channel.recv_exit_status() != 0:
                    raise RuntimeError(f"{address}: {command[:40]} failed")
            parse_facts(split_facts_output(out))
        finally:
            client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(estate.spec.hosts)) as pool:
        list(pool.map(one, [h.address for h in estate.spec.hosts]))
    return time.perf_counter() - started


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    telemetry_off()

    estate = Estate(numbered_hosts("bench", 5, args.hosts))
    started = time.perf_counter()
    estate.up(fresh=True)
    print(f"estate of {args.hosts} hosts up in {time.perf_counter() - started:.2f}s")
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))

    inventory = Path(tempfile.mkdtemp(prefix="caretaker-bench-"))
    (inventory / "bench.yaml").write_text(_client_yaml(estate))
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory)

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.server_maintenance import server_maintenance
    from sandbox.prefect_blocks import ssh_identity

    flow_times, bare_times = [], []
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # type: ignore[dict-item]
            with prefect_test_harness(server_startup_timeout=60):
                ssh_identity(estate).save("bench-ssh", overwrite=True)
                server_maintenance(client="bench", dry_run=True)  # warm-up
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    plan = server_maintenance(client="bench", dry_run=True)
                    flow_times.append(time.perf_counter() - started)
                    assert plan.change_count == args.hosts, plan.change_count
                    bare_times.append(bare(estate))
    finally:
        estate.down(purge=True)
    flow_s, bare_s = statistics.median(flow_times), statistics.median(bare_times)
    print(
        f"server-maintenance dry run, {args.hosts} hosts: median {flow_s:.2f}s "
        f"(runs: {', '.join(f'{t:.2f}' for t in flow_times)})"
    )
    print(
        f"bare paramiko threads, same work:    median {bare_s:.2f}s "
        f"(runs: {', '.join(f'{t:.2f}' for t in bare_times)})"
    )
    print(f"orchestration overhead: {flow_s - bare_s:+.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
