"""Benchmark: the full maintenance of a 20-host client, batch 5, against ansible-core.

Prints the wall time of one ``server-maintenance`` run (snapshots, staging, approval
answered at once through the API with alice's signature, production in batches of 5, restore test,
retention) and per phase (from the run's task runs), then the same upgrade done by
ansible-core with a playbook using ``serial: 5`` on the same hosts, after putting
them back at the old version.

ansible-core is installed for the benchmark only, into its own venv in the cache
(``<cache>/bench-ansible``, made when missing by ``benchmarks/tool_venv.py``; when it
cannot be made, the comparison is skipped with a printed line); it is not a project
dependency. The sandbox hosts have no Python (minimal images),
so the playbook uses the ``raw`` module: the same apt command caretaker runs.

    .venv/bin/python benchmarks/fleet_maintenance.py [--hosts 20] [--batch 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tool_venv import ANSIBLE, tool_venv
from core.settings import telemetry_off
from sandbox.estate import Estate, numbered_hosts
from sandbox.repo import PackageSpec

CLIENT = """\
client:
  slug: bench
  name: Benchmark Ltd
  timezone: UTC
  contact: {{name: Ops, email: ops@bench.example}}
  approvers: [{{name: alice, email: alice@bench.example, ssh_key: "{alice_key}"}}]
schedule: {{cadence: quarterly, window: {{start: "00:00", duration: 24h}}}}
rollout: {{batch_size: {batch}, failures_tolerated: 0, on_failure: restore}}
patch: {{policy: all, hold: [], reboot: if-required}}
restore_test: {{enabled: true, timeout: 5m}}
defaults: {{ssh_block: bench-ssh, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""

PLAYBOOK = """\
- hosts: fleet
  gather_facts: false
  serial: {batch}
  tasks:
    - name: refresh package lists
      raw: apt-get -q update
    - name: upgrade caretaker-agent
      raw: DEBIAN_FRONTEND=noninteractive apt-get -q -y install --only-upgrade caretaker-agent
"""


def ansible_bin() -> Path | None:
    """ansible-playbook from a benchmark-only venv in the cache (made once); None when the
    venv cannot be made."""
    bin_dir = tool_venv("bench-ansible", ANSIBLE)
    return bin_dir / "ansible-playbook" if bin_dir is not None else None


def reset_hosts(estate: Estate) -> None:
    """Put caretaker-agent back at 1.0 on every host (the state before maintenance)."""
    key, known = estate.key_path, estate.known_hosts_path
    procs = [
        subprocess.Popen(
            [
                "ssh",
                "-i",
                str(key),
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "BatchMode=yes",
                f"root@{h.address}",
                "apt-get -q -y --allow-downgrades install caretaker-agent=1.0 >/dev/null 2>&1",
            ],
        )
        for h in estate.spec.hosts
    ]
    for proc in procs:
        proc.wait()


def run_ansible(estate: Estate, playbook: Path, batch: int) -> float:
    """Seconds for ansible-playbook to upgrade the fleet with serial: batch."""
    work = Path(tempfile.mkdtemp(prefix="caretaker-ansible-"))
    hosts = "\n".join(h.address for h in estate.spec.hosts)
    (work / "inventory.ini").write_text(
        f"[fleet]\n{hosts}\n\n[fleet:vars]\nansible_user=root\n"
        f"ansible_ssh_private_key_file={estate.key_path}\n"
        f"ansible_ssh_common_args='-o UserKnownHostsFile={estate.known_hosts_path} "
        "-o StrictHostKeyChecking=yes'\n"
    )
    (work / "site.yml").write_text(PLAYBOOK.format(batch=batch))
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_FORKS=str(batch))
    started = time.perf_counter()
    subprocess.run(
        [str(playbook), "-i", str(work / "inventory.ini"), str(work / "site.yml")],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def approve(key: Path, stop: threading.Event) -> None:
    """Approve the benchmark's run as soon as it pauses, signed with alice's key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    from deployments.approve import answer_run

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                )
            )
            for run in runs:
                answer_run(run.id, approver="alice", key=key, decision="approve", show=False)
                return
            time.sleep(0.2)


def phases(flow_run_id: str) -> dict[str, float]:
    """Wall time per task name (first start to last end) of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    spans: dict[str, list[float]] = defaultdict(list)
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
                offset=offset,
            )
            for tr in page:
                if tr.start_time and tr.end_time:
                    name = tr.task_key.rsplit("-", 1)[0] if tr.task_key else tr.name
                    spans[name] += [tr.start_time.timestamp(), tr.end_time.timestamp()]
            if len(page) < 200:
                break
            offset += 200
    return {name: max(t) - min(t) for name, t in spans.items()}


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--skip-ansible", action="store_true")
    args = parser.parse_args()
    telemetry_off()

    estate = Estate(numbered_hosts("bench", 5, args.hosts))
    estate.up(fresh=True)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    inventory = Path(tempfile.mkdtemp(prefix="caretaker-bench-"))
    servers = "\n".join(
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'}, "
        f"address: {h.address}, provider: {{type: sandbox, estate: bench}}, "
        "checks: [{type: tcp, port: 22}]}"
        for i, h in enumerate(estate.spec.hosts)
    )
    key = inventory / "alice"  # the approver's key pair, for this run only
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    alice_key = key.with_suffix(".pub").read_text().strip()
    (inventory / "bench.yaml").write_text(
        CLIENT.format(batch=args.batch, servers=servers, alice_key=alice_key)
    )
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory)
    os.environ["CARETAKER_DATA_DIR"] = str(inventory / "data")
    os.environ["CARETAKER_APPROVAL_POLL_S"] = "1"

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.server_maintenance import server_maintenance
    from sandbox.prefect_blocks import ssh_identity

    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # type: ignore[dict-item]
            with prefect_test_harness(server_startup_timeout=60):
                ssh_identity(estate).save("bench-ssh", overwrite=True)
                stop = threading.Event()
                threading.Thread(target=approve, args=(key, stop), daemon=True).start()
                started = time.perf_counter()
                state = server_maintenance(client="bench", change_ref="BENCH-1", return_state=True)
                total = time.perf_counter() - started
                stop.set()
                record = state.result(raise_on_failure=False)
                print(
                    f"server-maintenance, {args.hosts} hosts, batch {args.batch}: "
                    f"{total:.1f}s, outcome {record.outcome.value}"
                )
                for name, seconds in record.phase_seconds.items():
                    print(f"    {name:<16} {seconds:6.1f}s")
                print("  busiest tasks (first start to last end over the run):")
                spans = phases(str(state.state_details.flow_run_id))
                for name, seconds in sorted(spans.items(), key=lambda kv: -kv[1])[:5]:
                    print(f"    {name:<24} {seconds:6.1f}s")
        playbook = None if args.skip_ansible else ansible_bin()
        if playbook is None and not args.skip_ansible:
            print("ansible-core comparison skipped: its venv could not be made (see above)")
        if playbook is not None:
            reset_hosts(estate)
            seconds = run_ansible(estate, playbook, args.batch)
            print(
                f"ansible-core playbook (serial: {args.batch}), the upgrade alone: {seconds:.1f}s"
            )
    finally:
        estate.down(purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
