"""The README's main command: the example clients' maintenance on the sandbox estate.

1. brings up the sandbox estate the example inventory describes (and its AWS endpoint);
2. starts a local Prefect server (SQLite) unless one already runs;
3. saves the sandbox's SSH identity, AWS credentials and a notice webhook as Prefect blocks;
   imports 90 days of generated check history for every example client (outages, blips,
   a monitoring gap, a maintenance window announced each month with reboots inside:
   :mod:`sandbox.history_month`) through ``python -m history announce`` and ``import``,
   once (a store that already holds a client's checks keeps them);
4. publishes new package versions in the estate's apt repository;
5. runs ``server-maintenance`` for every example client: a dry run first, then the full
   procedure, approving as the client's first listed approver with a signature made by
   that approver's key (key pairs made in the cache; the demo runs on a copy of the
   inventory that lists their public halves); on
   ``globex`` it holds the dpkg lock of one production host, so its rollback can be seen;
6. prints the outcomes, where the change records are, and how to approve in the UI;
7. runs a ``security-audit`` of every client (read-only; its results feed the reports'
   compliance section), then ``maintenance-report`` for every example client for the last
   30 days (the generated history and today's runs and audits: incidents, planned time,
   the SLA, activity, compliance) and for the current month, and prints each headline and
   where each report.html is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core.logs import quiet_console
from core.settings import settings, telemetry_off
from deployments.demo_vms import add_vm_host
from deployments.server import ensure_server
from inventory import ClientInventory, load_inventory
from sandbox import faults, moto
from sandbox.estate import Estate
from sandbox.inventory import spec_from_inventory
from sandbox.repo import PackageSpec
from sandbox.webhook import WebhookReceiver

if TYPE_CHECKING:
    from prefect.states import State

# What the demo publishes: a feature update, a security update that asks for a
# reboot, and a new version of the package the globex client holds.
DEMO_UPDATES = [
    PackageSpec(name="caretaker-agent", version="1.1"),
    PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True),
    PackageSpec(name="caretaker-legacy", version="1.0"),
]
# The production host whose patching fails (its dpkg lock is held), to show a rollback.
FAILING_HOST = ("globex", "glx-app-1")


def say(text: str) -> None:
    """Progress line, bold on a terminal."""
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def demo_approvers(source: Path, cache: Path) -> tuple[Path, dict[str, Path]]:
    """Key pairs for the example approvers, and an inventory copy that lists their keys.

    Each approver of every client file in ``source`` gets an ed25519 key pair under
    ``<cache>/demo/approvers`` (made once; private keys never leave the cache), and the
    client files are copied to ``<cache>/demo/clients`` with each approver's ``ssh_key``
    set to the public half, so the demo's approvals are signed with real credentials.
    Each copy also gets the client's VM host (:func:`deployments.demo_vms.add_vm_host`).

    Returns:
        (the inventory copy's folder, the private key of each approver).
    """
    import yaml

    keys_dir, clients_dir = cache / "demo" / "approvers", cache / "demo" / "clients"
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    clients_dir.mkdir(parents=True, exist_ok=True)
    for old in clients_dir.glob("*.yaml"):
        old.unlink()
    private: dict[str, Path] = {}
    for file in sorted(source.glob("*.yaml")):
        data = yaml.safe_load(file.read_text())
        for approver in data["client"]["approvers"]:
            key = keys_dir / approver["name"]
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key),
                     "-C", f"{approver['name']}@caretaker-demo"],
                    check=True,
                )  # fmt: skip
            approver["ssh_key"] = key.with_suffix(".pub").read_text().strip()
            private[approver["name"]] = key
        add_vm_host(data)  # one VM (systemd, nftables) per client: deployments/demo_vms.py
        (clients_dir / file.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return clients_dir, private


def import_demo_history(
    clients: dict[str, ClientInventory], folder: Path, end: datetime | None = None
) -> int:
    """90 days of generated checks for each client, brought in with the public commands.

    For each client whose servers have no check history in the store yet: its announced
    maintenance windows through ``python -m history announce`` (before the checks, so the
    daily rollups count them as planned), then the checks through ``python -m history
    import``. A client that already has history is left as it is (a rerun of the demo).

    Args:
        clients: the example inventory.
        folder: where the generated files are written.
        end: the end of the generated history (default now).

    Returns:
        How many commands failed.
    """
    from history.cli import main as history
    from history.intervals import open_interval
    from history.store import open_store
    from sandbox.history_month import generate_history, write_checks

    failed = 0
    end = end or datetime.now(UTC)
    for slug, inv in clients.items():
        with open_store() as store, store.engine.connect() as conn:
            known = [s.name for s in inv.servers if open_interval(conn, slug, s.name)]
        if known:
            print(f"    {slug}: the store has check history already ({', '.join(known)}): kept")
            continue
        made = generate_history(inv, end)
        for window in made.announced:
            failed += history(
                ["announce", "--client", slug, "--start", window.start.isoformat(),
                 "--end", window.end.isoformat(), "--by", "demo provider notice",
                 "--reason", window.reason, "--announced-at", window.announced_at.isoformat()]
            ) != 0  # fmt: skip
        failed += history(["import", str(write_checks(made, folder)), "--client", slug]) != 0
    return failed


def approve_when_paused(client: str, approver: str, key: Path, stop: threading.Event) -> None:
    """Answer the approval form of ``client``'s paused run, signed with ``approver``'s key.

    It does what ``python -m deployments.approve RUN_ID --approver NAME --key KEY`` does:
    read the request the run published, sign its message with ssh-keygen, resume the run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    from deployments.approve import answer_run

    with get_client(sync_client=True) as api:
        while not stop.is_set():
            paused = api.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                )
            )
            for run in paused:
                if (run.parameters or {}).get("client") != client:
                    continue
                print(f"    approval requested: run {run.id} is paused")
                print(
                    f"    (in the UI: open the run, click Resume, sign the message it shows and"
                    f" paste the signature; from a shell: python -m deployments.approve {run.id}"
                    f" --approver {approver} --key {key})"
                )
                answer_run(
                    run.id,
                    approver=approver,
                    key=key,
                    decision="approve",
                    comment="approved by the demo",
                    ticket="DEMO-1",
                    show=False,
                )
                print(f"    approved as {approver}, signed with {key} (ssh-keygen -Y sign)")
                return
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    telemetry_off()
    parser = argparse.ArgumentParser(
        prog="python -m deployments.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fresh", action="store_true", help="reset the estate's disks first")
    parser.add_argument("--dry-run-only", action="store_true", help="only plan (issue 2 demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.monotonic()
    # Demo pace: short polls and a short dpkg-lock wait, so the rollback shows quickly.
    os.environ.setdefault("CARETAKER_APPROVAL_POLL_S", "1")
    os.environ.setdefault("CARETAKER_DPKG_LOCK_TIMEOUT_S", "10")

    # The example approvers sign with key pairs made in the cache; the inventory copy the
    # demo runs on lists their public halves.
    inventory_dir, approver_keys = demo_approvers(settings().inventory_dir, settings().cache)
    os.environ["CARETAKER_INVENTORY_DIR"] = str(inventory_dir)
    clients = load_inventory(inventory_dir)
    say(f"sandbox estate from {inventory_dir}")
    estate = Estate(spec_from_inventory("demo", inventory_dir))
    estate.up(fresh=args.fresh)
    endpoint = moto.start(estate) if estate.spec.aws else None
    print(
        f"    {len(estate.spec.hosts)} hosts with real sshd on {estate.spec.bridge}"
        f" ({len(estate.spec.vm_hosts)} of them QEMU VMs with systemd)"
        + (f"; AWS endpoint (moto) at {endpoint}" if endpoint else "")
    )

    say("local Prefect server")
    url = ensure_server()
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    os.environ.setdefault("PREFECT_UI_URL", url)
    print(f"    {url}")

    # Imported only now, so Prefect reads the API URL above.
    from flows.server_maintenance import server_maintenance
    from sandbox.prefect_blocks import register_blocks
    from tasks.notify import save_demo_webhook

    # Prefect's per-task "Finished in state Completed()" lines stay in the UI, not here.
    quiet_console()

    inbox = WebhookReceiver()
    inbox.__enter__()
    say("Prefect blocks for the sandbox")
    saved = register_blocks(estate, endpoint)
    save_demo_webhook(inbox.url)
    print("    saved: " + ", ".join([*saved, "caretaker-demo-webhook"]))

    say("check history: 90 days generated per client, through python -m history")
    failures = import_demo_history(clients, settings().cache / "demo" / "history")

    say("publishing new package versions in the estate's apt repository")
    published = estate.repo.versions()
    for spec in DEMO_UPDATES:
        if spec.version not in {v.split()[0] for v in published.get(spec.name, [])}:
            estate.publish(spec)
        print(
            f"    {spec.name} {spec.version}"
            + (" (security, asks for a reboot)" if spec.reboot else "")
        )

    for slug, inv in clients.items():
        say(f"server-maintenance for {slug}: dry run")
        state: State[Any] = cast(
            "State[Any]", server_maintenance(client=slug, dry_run=True, return_state=True)
        )
        if not state.is_completed():
            failures += 1
            print(f"    FAILED: {state.message}")
            continue
        plan = state.result()
        for host in plan.hosts:
            if not host.reachable or host.error:
                failures += 1  # every demo host is meant to be planned
                print(f"    {host.server:<12} NOT PLANNED: {host.error}")
                continue
            changes = (
                ", ".join(
                    f"{c.name} {c.from_version or '(new)'} -> {c.to_version}" for c in host.changes
                )
                or "up to date"
            )
            reboot = "; reboot expected" if host.reboot_expected else ""
            print(f"    {host.server:<12} {changes}{reboot}")
        if args.dry_run_only:
            continue

        say(f"server-maintenance for {slug}: the full procedure")
        approver = inv.client.approvers[0].name
        stop = threading.Event()
        thread = threading.Thread(
            target=approve_when_paused,
            args=(slug, approver, approver_keys[approver], stop),
            daemon=True,
        )
        thread.start()
        failing = FAILING_HOST[1] if slug == FAILING_HOST[0] else None
        if failing:
            print(f"    fault: holding the dpkg lock on {failing}, so its patching fails")
            faults.hold_dpkg_lock(estate, failing)
        try:
            state = cast(
                "State[Any]",
                server_maintenance(
                    client=slug,
                    change_ref=f"DEMO-{slug}-{time.strftime('%Y%m%d-%H%M%S')}",
                    window_override="demo run: the sandbox estate has no business hours",
                    return_state=True,
                ),
            )
        finally:
            stop.set()
            if failing:
                faults.release_dpkg_lock(estate, failing)
        record: Any = state.result(raise_on_failure=False)
        outcome = getattr(record, "outcome", None)
        print(f"    outcome: {outcome.value if outcome else state.name} ({state.message})")
        for rollback in getattr(record, "rollbacks", []):
            print(
                f"    rollback: {rollback.server} restored={rollback.restored_ok} "
                f"verified={rollback.verified_ok}"
            )
        if getattr(record, "restore_test", None):
            rt = record.restore_test
            print(f"    restore test: {rt.server} ok={rt.ok} RTO {rt.rto_s or 0:.1f}s")
        print(
            f"    change record: {url}/runs/flow-run/{state.state_details.flow_run_id} "
            f"(artifact), and in {settings().data / 'caretaker.db'}"
        )
        # The demo's outcomes are known: globex's held dpkg lock fails one host before
        # anything changed on it (not restored), within its failure budget of one.
        expected = "completed-with-failures" if failing else "completed"
        if outcome is None or outcome.value != expected:
            failures += 1
            print(f"    UNEXPECTED: the demo expects {expected} here")

    from flows.health_check import health_check
    from flows.maintenance_report import maintenance_report

    say("health-check, three rounds (deployed, it runs every 5 minutes)")
    for _ in range(3):
        summary: Any = cast("State[Any]", health_check(return_state=True)).result(
            raise_on_failure=False
        )
        down = getattr(summary, "down", None)
        print(f"    {len(getattr(summary, 'servers', []))} servers checked, down: {down or 'none'}")
        time.sleep(2)

    from flows.security_audit import SecurityAuditSummary, security_audit

    for slug in clients:
        say(f"security-audit for {slug} (deployed, monthly; read-only)")
        audit = cast("State[Any]", security_audit(client=slug, return_state=True))
        found = audit.result(raise_on_failure=False)
        if not isinstance(found, SecurityAuditSummary):  # it crashed: no summary
            failures += 1
            print(f"    FAILED: {audit.message}")
            continue
        for row in found.servers:
            detail = "; ".join(row.findings) if row.findings else f"{len(row.warnings)} warning(s)"
            print(f"    {row.server:<12} {row.status}: {detail}")

    from sandbox.history_month import showcase_period

    for slug, inv in clients.items():
        # The last 30 days (the generated history, today's runs and audits: every section)
        # and the current month (the SLA not judged until 90 % of it has data).
        now = datetime.now(UTC)
        for period in (showcase_period(now, inv.tz), now.astimezone(inv.tz).strftime("%Y-%m")):
            say(f"maintenance-report for {slug}: {period}")
            report = cast(
                "State[Any]", maintenance_report(client=slug, period=period, return_state=True)
            )
            if not report.is_completed():
                failures += 1
                print(f"    FAILED: {report.message}")
                continue
            made = report.result()
            uptime = "n/a" if made.uptime_pct is None else f"{made.uptime_pct:.3f} %"
            print(
                f"    {made.period}: uptime {uptime}, SLA met: {made.sla},"
                f" {made.incidents} incident(s), {made.maintenance_runs} run(s)"
            )
            print(f"    {made.report_html}")

    time.sleep(1)
    inbox_file = settings().data / "demo-notices.jsonl"
    with inbox_file.open("a") as out:
        for message in inbox.received:
            out.write(json.dumps(message) + "\n")
    inbox.__exit__(None, None, None)
    print(f"    notices received by the demo webhook: {len(inbox.received)} (in {inbox_file})")
    print(f"    artifacts: {url}/artifacts")
    say(
        f"done in {time.monotonic() - started:.0f}s. The estate keeps running: "
        "`.venv/bin/python -m sandbox status`, `... down` to stop it"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
