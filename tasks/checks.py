"""Checks and facts: what a host is and how it is doing, read over SSH.

The commands and parsers live in ``tasks.facts`` (pure, tested from recorded
output); the tasks here only run them on a host.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.facts import HostFacts, build_facts_script, parse_facts, split_facts_output
from tasks.packages import APT_REFRESH
from tasks.remote import RemoteHost

# Everything the plan and the verification need, gathered in one SSH round trip.
PLAN_FACTS = (
    "os",
    "kernel",
    "boot_id",
    "uptime",
    "load",
    "memory",
    "disks",
    "apt_simulation",
    "reboot_required",
    "listening_ports",
    "failed_services",
    "held_packages",
)


@task(name="collect-facts", cache_policy=NO_CACHE, task_run_name="collect-facts-{host.name}")
def collect_facts(host: RemoteHost, refresh: bool = True) -> HostFacts:
    """Collect a host's facts, apt's simulation of an upgrade included.

    Read-only on the host, except that ``refresh`` updates apt's package lists
    (never packages) so the simulation sees newly published versions. Connection
    failures are retried by the remote layer; a host-key mismatch never is.

    Args:
        host: an open (or lazily opening) session to the host.
        refresh: run ``apt-get update`` first.

    Returns:
        The host's facts; a fact that could not be read is named in ``errors``.
    """
    if refresh:
        host.run(APT_REFRESH, sudo=True, timeout=300, check=True)
    result = host.run(build_facts_script(PLAN_FACTS), sudo=True, timeout=120)
    return parse_facts(split_facts_output(result.stdout))
