"""Host facts: one shell command plus one pure parser per fact, with a typed result.

Each fact is a module-level command string (what runs on the host) beside its model and a
pure ``parse_*`` function (what its output means), in the style of pyinfra's facts,
grouped by domain:

- ``tasks.facts.server``: os-release, kernel, boot id, uptime, load, memory, filesystems;
- ``tasks.facts.apt`` and ``tasks.facts.dnf``: pending updates, the upgrade plan, a
  pending reboot, held packages;
- ``tasks.facts.security``: listening ports, failed units, sshd's effective settings, the
  inbound firewall, the logs' counts;
- ``tasks.facts.base``: the ``Fact`` record and what the domains share;
- ``tasks.facts.script``: the ``FACTS`` registry, ``HostFacts``, and the one-round-trip
  script (``build_facts_script`` / ``split_facts_output`` / ``parse_facts``);
- ``tasks.facts.collect``: the ``collect_facts`` task, which runs that script over SSH
  (import it from there: it is not re-exported here).

The parsers never touch the network or the filesystem, so they are tested from output
recorded on real hosts (``tests/fixtures/facts/*.json``).

Parsers raise ``FactParseError`` (a ``ValueError``) naming the fact and the line they
could not read. Output is expected in the C locale (the facts script sets
``LC_ALL=C``); run the commands the same way when using them one by one.

This package re-exports the public names of its modules, so ``from tasks.facts import
HostFacts`` keeps working; new code may import from the precise module. See
``docs/facts.md`` for every fact, what it returns and how to add one.
"""

from __future__ import annotations

from core.errors import FactParseError
from tasks.facts.apt import (
    APT_HELD,
    APT_SIMULATE_DIST_UPGRADE,
    APT_SIMULATE_UPGRADE,
    APT_UPGRADABLE,
    REBOOT_REQUIRED,
    AptSimulation,
    PackageChange,
    parse_apt_held,
    parse_apt_simulation,
    parse_apt_simulation_upgrade,
    parse_apt_upgradable,
    parse_reboot_required,
)
from tasks.facts.base import (
    ALL_FAMILIES,
    Fact,
    Family,
    PackageUpdate,
    RebootRequired,
)
from tasks.facts.dnf import (
    DNF_CHECK_UPDATE,
    DNF_NEEDS_RESTARTING,
    parse_dnf_check_update,
    parse_dnf_needs_restarting,
)
from tasks.facts.script import (
    FACTS,
    HostFacts,
    build_facts_script,
    facts_for_family,
    parse_facts,
    split_facts_output,
)
from tasks.facts.security import (
    FAILED_SERVICES,
    FIREWALL,
    LISTENING_PORTS,
    LOG_REVIEW,
    SSHD_EFFECTIVE,
    FailedServices,
    Firewall,
    ListeningPort,
    LogReview,
    SshdSettings,
    parse_failed_services,
    parse_firewall,
    parse_log_review,
    parse_ss_listening,
    parse_sshd_effective,
)
from tasks.facts.server import (
    BOOT_ID,
    DF,
    KERNEL_RELEASE,
    LOADAVG,
    MEMINFO,
    OS_RELEASE,
    PSEUDO_FILESYSTEMS,
    UPTIME,
    DiskUsage,
    LoadAvg,
    Memory,
    OsInfo,
    parse_boot_id,
    parse_df,
    parse_kernel_release,
    parse_loadavg,
    parse_meminfo,
    parse_os_release,
    parse_uptime,
)

__all__ = [
    "ALL_FAMILIES",
    "APT_HELD",
    "APT_SIMULATE_DIST_UPGRADE",
    "APT_SIMULATE_UPGRADE",
    "APT_UPGRADABLE",
    "BOOT_ID",
    "DF",
    "DNF_CHECK_UPDATE",
    "DNF_NEEDS_RESTARTING",
    "FACTS",
    "FAILED_SERVICES",
    "FIREWALL",
    "KERNEL_RELEASE",
    "LISTENING_PORTS",
    "LOADAVG",
    "LOG_REVIEW",
    "MEMINFO",
    "OS_RELEASE",
    "PSEUDO_FILESYSTEMS",
    "REBOOT_REQUIRED",
    "SSHD_EFFECTIVE",
    "UPTIME",
    "AptSimulation",
    "DiskUsage",
    "Fact",
    "FactParseError",
    "FailedServices",
    "Family",
    "Firewall",
    "HostFacts",
    "ListeningPort",
    "LoadAvg",
    "LogReview",
    "Memory",
    "OsInfo",
    "PackageChange",
    "PackageUpdate",
    "RebootRequired",
    "SshdSettings",
    "build_facts_script",
    "facts_for_family",
    "parse_apt_held",
    "parse_apt_simulation",
    "parse_apt_simulation_upgrade",
    "parse_apt_upgradable",
    "parse_boot_id",
    "parse_df",
    "parse_dnf_check_update",
    "parse_dnf_needs_restarting",
    "parse_facts",
    "parse_failed_services",
    "parse_firewall",
    "parse_kernel_release",
    "parse_loadavg",
    "parse_log_review",
    "parse_meminfo",
    "parse_os_release",
    "parse_reboot_required",
    "parse_ss_listening",
    "parse_sshd_effective",
    "parse_uptime",
    "split_facts_output",
]
