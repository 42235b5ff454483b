"""The README's main command: the example clients' maintenance on the sandbox estate.

1. brings up the sandbox estate the example inventory describes (and its AWS endpoint);
2. starts a local Prefect server (SQLite) unless one already runs;
3. saves the sandbox's SSH identity and AWS credentials as Prefect blocks;
4. publishes new package versions in the estate's apt repository;
5. runs ``server-maintenance`` with ``dry_run=true`` for every example client;
6. prints the plans and where to look in the Prefect UI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from blocks.settings import settings
from deployments.server import ensure_server
from sandbox import moto
from sandbox.estate import Estate
from sandbox.inventory import spec_from_inventory
from sandbox.repo import PackageSpec

# What the demo publishes: a feature update, a security update that asks for a
# reboot, and a new version of the package the globex client holds.
DEMO_UPDATES = [
    PackageSpec(name="caretaker-agent", version="1.1"),
    PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True),
    PackageSpec(name="caretaker-legacy", version="1.0"),
]


def say(text: str) -> None:
    """Progress line, bold on a terminal."""
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fresh", action="store_true", help="reset the estate's disks first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.monotonic()

    inventory_dir = settings().inventory_dir
    say(f"sandbox estate from {inventory_dir}")
    estate = Estate(spec_from_inventory("demo", inventory_dir))
    estate.up(fresh=args.fresh)
    endpoint = moto.start(estate) if estate.spec.aws else None
    print(
        f"    {len(estate.spec.hosts)} hosts with real sshd on {estate.spec.bridge}"
        + (f"; AWS endpoint (moto) at {endpoint}" if endpoint else "")
    )

    say("local Prefect server")
    url = ensure_server()
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    print(f"    {url}")

    # Imported only now, so Prefect reads the API URL above.
    from flows.server_maintenance import server_maintenance
    from sandbox.prefect_blocks import register_blocks

    say("Prefect blocks for the sandbox")
    print("    saved: " + ", ".join(register_blocks(estate, endpoint)))

    say("publishing new package versions in the estate's apt repository")
    published = estate.repo.versions()
    for spec in DEMO_UPDATES:
        if spec.version not in " ".join(published.get(spec.name, [])):
            estate.publish(spec)
        print(
            f"    {spec.name} {spec.version}"
            + (" (security, asks for a reboot)" if spec.reboot else "")
        )

    failures = 0
    for client in sorted(p.stem for p in inventory_dir.glob("*.yaml")):
        say(f"server-maintenance for {client} (dry run)")
        state = server_maintenance(client=client, dry_run=True, return_state=True)
        run_id = state.state_details.flow_run_id
        if not state.is_completed():
            failures += 1
            print(f"    FAILED: {state.message}")
            continue
        plan = state.result()
        for host in plan.hosts:
            if not host.reachable or host.error:
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
        print(f"    run:       {url}/runs/flow-run/{run_id}")
    print(f"    artifacts: {url}/artifacts")
    say(
        f"done in {time.monotonic() - started:.0f}s. The estate keeps running: "
        "`.venv/bin/python -m sandbox status`, `... down` to stop it"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
