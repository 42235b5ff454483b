"""Command line of the sandbox estate.

python -m sandbox up [--estate demo] [--clients clients] [--hosts N] [--fresh]
python -m sandbox status | down [--purge] | env
python -m sandbox publish caretaker-agent 1.1 [--security] [--reboot] [--broken]
python -m sandbox fault KIND HOST   (KIND: stop-sshd start-sshd cut-link restore-link
                                         hold-lock release-lock no-boot boot)
python -m sandbox reboot HOST
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.errors import CaretakerError
from core.settings import telemetry_off
from sandbox import faults, moto
from sandbox.estate import Estate, load, numbered_hosts
from sandbox.repo import PackageSpec

FAULTS = {
    "stop-sshd": faults.stop_sshd,
    "start-sshd": faults.start_sshd,
    "cut-link": faults.cut_link,
    "restore-link": faults.restore_link,
    "hold-lock": faults.hold_dpkg_lock,
    "release-lock": faults.release_dpkg_lock,
    "no-boot": lambda e, h: faults.no_boot(e, h, on=True),
    "boot": lambda e, h: faults.no_boot(e, h, on=False),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--estate", default="demo", help="estate name (default: demo)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the estate up (idempotent)")
    up.add_argument(
        "--clients",
        type=Path,
        default=None,
        help="build the estate from this inventory folder (default for demo: clients/)",
    )
    up.add_argument("--hosts", type=int, default=None, help="or: this many plain hosts h01..")
    up.add_argument("--net", type=int, default=None, help="N in 10.213.N.0/24 (with --hosts)")
    up.add_argument("--fresh", action="store_true", help="reset disks and repository first")
    down = sub.add_parser("down", help="stop everything; leaves nothing running")
    down.add_argument("--purge", action="store_true", help="also delete the estate's files")
    sub.add_parser("status", help="one line per host")
    sub.add_parser("env", help="paths and endpoints, as JSON")
    pub = sub.add_parser("publish", help="publish a package version in the estate's repository")
    pub.add_argument("name")
    pub.add_argument("version")
    pub.add_argument("--security", action="store_true")
    pub.add_argument("--reboot", action="store_true", help="its postinst asks for a reboot")
    pub.add_argument("--broken", action="store_true", help="its postinst fails")
    fault = sub.add_parser("fault", help="inject or clear a fault on a host")
    fault.add_argument("kind", choices=sorted(FAULTS))
    fault.add_argument("host")
    reboot = sub.add_parser("reboot", help="reboot a host")
    reboot.add_argument("host")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox command line; returns the exit code."""
    telemetry_off()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            if args.hosts:
                spec = numbered_hosts(args.estate, args.net or 2, args.hosts)
            else:
                from sandbox.inventory import spec_from_inventory

                spec = spec_from_inventory(args.estate, args.clients or Path("clients"))
            estate = Estate(spec)
            estate.up(fresh=args.fresh)
            url = moto.start(estate) if spec.aws else None
            print(
                f"estate {spec.name}: {len(spec.hosts)} hosts up on {spec.bridge} "
                f"(10.213.{spec.net}.0/24)" + (f", AWS endpoint {url}" if url else "")
            )
            return 0
        estate = load(args.estate)
        if args.command == "down":
            estate.down(purge=args.purge)
            print(f"estate {args.estate}: down")
        elif args.command == "status":
            for row in estate.status():
                state = (
                    "ssh ok" if row["ssh"] else ("running, no ssh" if row["running"] else "down")
                )
                print(f"{row['host']:<16} {row['address']:<15} {state}")
        elif args.command == "env":
            print(
                json.dumps(
                    {
                        "estate": estate.spec.name,
                        "key": str(estate.key_path),
                        "known_hosts": str(estate.known_hosts_path),
                        "aws_endpoint": moto.endpoint(estate),
                        "repository": str(estate.repo.root),
                    },
                    indent=2,
                )
            )
        elif args.command == "publish":
            estate.publish(
                PackageSpec(
                    name=args.name,
                    version=args.version,
                    security=args.security,
                    reboot=args.reboot,
                    broken=args.broken,
                )
            )
            print(f"published {args.name} {args.version}")
        elif args.command == "fault":
            FAULTS[args.kind](estate, args.host)
            print(f"{args.host}: {args.kind}")
        elif args.command == "reboot":
            estate.reboot(args.host)
            print(f"{args.host}: rebooting")
    except CaretakerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
