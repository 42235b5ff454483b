"""Package maintenance: the exact plan of what an upgrade would change on each host.

The plan is computed by pure functions from facts collected on the host (apt's
own simulation of the upgrade, the held packages, the pending reboot) and the
client's patch policy, so that a dry run says precisely what would change.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.facts import HostFacts, PackageChange

# Packages whose upgrade needs a reboot to take effect on Debian-family hosts.
# Debian announces most of these through /var/run/reboot-required only after the
# upgrade, so the plan predicts from names and says so.
REBOOT_PACKAGES = re.compile(
    r"^(linux-image-.*|linux-modules-.*|linux-firmware|intel-microcode|amd64-microcode"
    r"|libc6|systemd|dbus|libssl3|openssl)$"
)

# Refresh the package lists first (what Patch Manager's "Scan" also does): lists
# only, no package changes. Wait for a held dpkg/apt lock rather than fail at once.
APT_REFRESH = "apt-get -q -o DPkg::Lock::Timeout=120 update"


class HostPlan(BaseModel):
    """What maintenance would do on one host."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="Server name from the inventory.")
    role: Literal["staging", "production"]
    address: str
    reachable: bool = Field(description="Facts were collected over SSH with a verified key.")
    error: str | None = Field(default=None, description="Why the host could not be planned.")
    os: str | None = None
    kernel: str | None = None
    changes: list[PackageChange] = Field(default_factory=list)
    skipped_held: list[str] = Field(
        default_factory=list, description="Upgradable packages held by the inventory or apt-mark."
    )
    skipped_policy: list[str] = Field(
        default_factory=list, description="Upgradable packages left out by a security-only policy."
    )
    removals: list[str] = Field(default_factory=list)
    reboot_expected: bool = False
    reboot_reason: str = ""


class MaintenancePlan(BaseModel):
    """The plan of one maintenance run for one client: the dry run's result."""

    model_config = ConfigDict(frozen=True)

    client: str
    change_ref: str
    dry_run: bool
    policy: Literal["all", "security"]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    hosts: list[HostPlan]

    @property
    def unreachable(self) -> list[HostPlan]:
        """Hosts that could not be planned."""
        return [h for h in self.hosts if not h.reachable]

    @property
    def change_count(self) -> int:
        """Number of package changes over all hosts."""
        return sum(len(h.changes) for h in self.hosts)


def plan_host(
    *,
    server: str,
    role: Literal["staging", "production"],
    address: str,
    facts: HostFacts,
    policy: Literal["all", "security"],
    hold: list[str],
    reboot_policy: Literal["if-required", "always", "never"],
) -> HostPlan:
    """Turn one host's facts into its plan (pure).

    Args:
        server: server name.
        role: staging or production.
        address: the address planned against.
        facts: facts collected on the host, including apt's simulation of the upgrade.
        policy: ``all`` updates or ``security`` only.
        hold: packages the inventory holds (never upgraded).
        reboot_policy: the client's reboot policy.

    Returns:
        The host's plan: the changes apt would make, minus held and out-of-policy ones.
    """
    simulation = facts.apt_simulation
    if simulation is None:
        reason = facts.errors.get("apt_simulation", "apt's simulation is missing")
        return HostPlan(
            server=server,
            role=role,
            address=address,
            reachable=True,
            error=f"cannot plan packages: {reason}",
            os=facts.os.pretty_name if facts.os else None,
            kernel=facts.kernel,
        )
    held = set(hold) | set(facts.held_packages or [])
    changes: list[PackageChange] = []
    skipped_held: list[str] = []
    skipped_policy: list[str] = []
    for change in simulation.installs:
        if change.name in held:
            skipped_held.append(change.name)
        elif policy == "security" and not change.security:
            skipped_policy.append(change.name)
        else:
            changes.append(change)
    # apt itself already keeps back packages held with apt-mark; name them too.
    for name in simulation.kept_back:
        if name in held and name not in skipped_held:
            skipped_held.append(name)
    pending = facts.reboot_required
    reason = ""
    if reboot_policy == "never":
        expected = False
        reason = "reboot policy: never"
    elif reboot_policy == "always" and changes:
        expected, reason = True, "reboot policy: always"
    elif pending is not None and pending.required:
        expected = True
        reason = "reboot already pending" + (
            f" ({', '.join(pending.packages)})" if pending.packages else ""
        )
    else:
        needing = [c.name for c in changes if REBOOT_PACKAGES.match(c.name)]
        expected = bool(needing)
        reason = f"upgrades {', '.join(needing)}" if needing else ""
    return HostPlan(
        server=server,
        role=role,
        address=address,
        reachable=True,
        os=facts.os.pretty_name if facts.os else None,
        kernel=facts.kernel,
        changes=sorted(changes, key=lambda c: c.name),
        skipped_held=sorted(skipped_held),
        skipped_policy=sorted(skipped_policy),
        removals=sorted(simulation.removals),
        reboot_expected=expected,
        reboot_reason=reason,
    )


def unreachable_host(
    *, server: str, role: Literal["staging", "production"], address: str, error: str
) -> HostPlan:
    """The plan entry of a host that could not be reached (pure)."""
    return HostPlan(server=server, role=role, address=address, reachable=False, error=error)
