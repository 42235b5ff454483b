"""The verification frame: hosts' facts as one pandas row per server, a column per check.

:func:`facts_frame` turns ``{server: HostFacts}`` and the inventory's allowed ports into
the frame the verification suite (``tasks.verify.suite``) validates: failed units, the
fullest disk, a pending reboot, pending security updates, unexpected listening ports,
sshd's weaknesses, the firewall, the logs' counts, facts that could not be read. A fact
that was not collected leaves its column empty (NA): unknown is never healthy.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tasks.facts.script import HostFacts
from tasks.facts.security import ListeningPort

if TYPE_CHECKING:  # pandas is imported when a frame is made: 0.35 s off every flow's import
    import pandas as pd

__all__ = ["FRAME_COLUMNS", "facts_frame"]

# The columns the suite reads; facts_frame adds the evidence columns below them.
FRAME_COLUMNS: tuple[str, ...] = (
    "server",
    "failed_units",
    "systemd_known",
    "max_disk_used_pct",
    "reboot_pending",
    "pending_security_updates",
    "unexpected_ports",
    "missing_ports",
    "ssh_weaknesses",
    "firewall_default_deny",
    "auth_failures",
    "log_errors",
    "facts_errors",
)
# Evidence for the sentences: not checked by the suite, optional in a hand-made frame.
_EVIDENCE_COLUMNS: tuple[str, ...] = (
    "failed_unit_names",
    "systemd_reason",
    "fullest_mount",
    "firewall_detail",
    "log_source",
    "facts_error_detail",
)

# Explicit dtypes: nullable ones where "unknown" is a real answer (NA, not 0 or False), and
# pandas' "string" so that NA stays pd.NA whatever the pandas version's default str dtype.
_DTYPES: dict[str, str] = {
    "server": "string",
    "failed_units": "Int64",
    "systemd_known": "bool",
    "max_disk_used_pct": "float64",
    "reboot_pending": "boolean",
    "pending_security_updates": "Int64",
    "unexpected_ports": "string",
    "missing_ports": "string",
    "ssh_weaknesses": "string",
    "firewall_default_deny": "boolean",
    "auth_failures": "Int64",
    "log_errors": "Int64",
    "facts_errors": "int64",
    "failed_unit_names": "string",
    "systemd_reason": "string",
    "fullest_mount": "string",
    "firewall_detail": "string",
    "log_source": "string",
    "facts_error_detail": "string",
}


def _is_loopback(port: ListeningPort) -> bool:
    """Whether a listener can only be reached from the host itself."""
    if port.interface == "lo":
        return True
    try:
        address = ipaddress.ip_address(port.address)
    except ValueError:
        # "*" and anything unexpected: assume reachable, so it is checked, not excused.
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _join(ports: Sequence[int]) -> str:
    return ",".join(str(p) for p in sorted(ports))


def _row(name: str, facts: HostFacts, allowed: Sequence[int]) -> dict[str, Any]:
    import pandas as pd

    failed = facts.failed_services
    if failed is None:
        failed_units: Any = pd.NA
        systemd_known = False
        systemd_reason: Any = "failed_services fact not collected"
        unit_names = ""
    elif failed.known:
        failed_units, systemd_known, systemd_reason = len(failed.units), True, pd.NA
        unit_names = ", ".join(failed.units)
    else:
        failed_units, systemd_known = pd.NA, False
        systemd_reason = failed.reason or "systemd not running"
        unit_names = ""

    max_disk: float = math.nan
    fullest: Any = pd.NA
    if facts.disks:
        top = max(facts.disks, key=lambda d: d.used_pct)
        max_disk, fullest = float(top.used_pct), top.mount

    reboot = facts.reboot
    reboot_pending: Any = pd.NA if reboot is None else reboot.required

    # The simulation is the exact plan of the upgrade (what would still be installed);
    # the upgradable list (apt, else dnf) stands in where no simulation was asked for.
    security: Any = pd.NA
    if facts.apt_simulation is not None:
        security = len(facts.apt_simulation.security_installs)
    elif facts.updates is not None:
        security = sum(1 for u in facts.updates if u.security)

    unexpected: Any = pd.NA
    missing: Any = pd.NA
    if facts.listening_ports is not None:
        exposed = {
            p.port for p in facts.listening_ports if p.proto == "tcp" and not _is_loopback(p)
        }
        allowed_set = set(allowed)
        # An empty allowed_ports is the inventory's "no port policy", not "allow nothing".
        unexpected = _join(list(exposed - allowed_set)) if allowed_set else ""
        missing = _join(list(allowed_set - exposed))

    # sshd and the firewall are read by the security audit, not after patching: NA there.
    weaknesses: Any = pd.NA if facts.sshd is None else ", ".join(facts.sshd.weaknesses())
    firewall = facts.firewall
    default_deny: Any = pd.NA
    firewall_detail: Any = pd.NA
    if firewall is not None:
        default_deny = firewall.default_deny if firewall.known else pd.NA
        firewall_detail = firewall.detail or ""

    logs = facts.log_review
    auth_failures: Any = pd.NA if logs is None else logs.auth_failures
    log_errors: Any = pd.NA if logs is None else logs.errors
    log_source: Any = pd.NA if logs is None else logs.where

    return {
        "server": name,
        "failed_units": failed_units,
        "systemd_known": systemd_known,
        "max_disk_used_pct": max_disk,
        "reboot_pending": reboot_pending,
        "pending_security_updates": security,
        "unexpected_ports": unexpected,
        "missing_ports": missing,
        "ssh_weaknesses": weaknesses,
        "firewall_default_deny": default_deny,
        "auth_failures": auth_failures,
        "log_errors": log_errors,
        "facts_errors": len(facts.errors),
        "failed_unit_names": unit_names,
        "systemd_reason": systemd_reason,
        "fullest_mount": fullest,
        "firewall_detail": firewall_detail,
        "log_source": log_source,
        "facts_error_detail": "; ".join(f"{k}: {v}" for k, v in sorted(facts.errors.items())),
    }


def facts_frame(
    facts: Mapping[str, HostFacts], allowed_ports: Mapping[str, Sequence[int]]
) -> pd.DataFrame:
    """One row per server with the values the verification suite checks.

    Args:
        facts: facts by server name.
        allowed_ports: each server's allowed listening TCP ports (``Server.allowed_ports``);
            a server that is absent or has an empty list has no port policy.

    Returns:
        A frame in the order of ``facts`` with the columns of :data:`FRAME_COLUMNS`:

        * ``server`` (string);
        * ``failed_units`` (Int64): failed systemd units, NA when systemd state is unknown;
        * ``systemd_known`` (bool);
        * ``max_disk_used_pct`` (float): the fullest filesystem's use, NaN without disks;
        * ``reboot_pending`` (boolean): NA when the reboot fact was not collected;
        * ``pending_security_updates`` (Int64): security installs in apt's simulation, else
          security entries of the upgradable list (apt, else dnf); NA when neither;
        * ``unexpected_ports`` (string): comma-joined listening TCP ports, reachable from
          outside the host (not loopback-only), that are not allowed; ``""`` if none, NA
          when listening ports were not collected;
        * ``missing_ports`` (string): allowed ports nothing listens on from outside (info);
        * ``ssh_weaknesses`` (string): what sshd allows that lets a password or root by
          password in (``"PasswordAuthentication yes, ..."``), ``""`` if nothing, NA when
          the sshd fact was not read;
        * ``firewall_default_deny`` (boolean): inbound traffic no rule accepts is dropped;
          NA when the firewall fact was not read or could not be known;
        * ``auth_failures``, ``log_errors`` (Int64): failed SSH logins and error lines in
          the logs (``log_review``), NA when not read;
        * ``facts_errors`` (int): facts that were asked for and could not be read;

        and the evidence the report's sentences quote: ``failed_unit_names``,
        ``systemd_reason``, ``fullest_mount``, ``firewall_detail`` (NA when the firewall
        fact was not read), ``log_source`` (where the log counts come from),
        ``facts_error_detail``.
    """
    rows = [_row(name, host, allowed_ports.get(name, ())) for name, host in facts.items()]
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(_DTYPES))
    return frame.astype(_DTYPES)
