"""The one task that reads a host's facts over SSH, and the fact lists its callers pass.

``collect_facts(host, names)`` runs the named facts' commands in one SSH round trip
(``tasks.facts.script``) and parses them into ``HostFacts``. The maintenance plan passes
``PLAN_FACTS``; the security audit passes ``AUDIT_FACTS`` (the plan's facts plus sshd,
the firewall and the logs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.facts.script import HostFacts, build_facts_script, parse_facts, split_facts_output
from tasks.packages import APT_REFRESH
from tasks.remote.base import RemoteHost

__all__ = ["AUDIT_FACTS", "PLAN_FACTS", "collect_facts", "read_facts"]

#: Everything the plan and the verification need, gathered in one SSH round trip.
PLAN_FACTS: tuple[str, ...] = (
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

#: The facts a security audit reads: those of a maintenance plan, sshd's settings, the
#: firewall, and the logs' counts (error lines, failed SSH logins).
AUDIT_FACTS: tuple[str, ...] = (*PLAN_FACTS, "sshd", "firewall", "log_review")


@task(name="collect-facts", cache_policy=NO_CACHE, task_run_name="collect-facts-{host.name}")
def collect_facts(host: RemoteHost, names: Sequence[str], refresh: bool = True) -> HostFacts:
    """Read the named facts of a host in one SSH round trip.

    Read-only on the host, except that ``refresh`` updates apt's package lists (never
    packages) so apt's simulation and pending security updates see newly published
    versions. Connection failures are retried by the remote layer; a host-key mismatch
    never is. The security audit submits it with one task retry
    (``collect_facts.with_options(retries=1, retry_delay_seconds=5)``).

    Args:
        host: an open (or lazily opening) session to the host.
        names: fact names (keys of ``tasks.facts.FACTS``), e.g. ``PLAN_FACTS``.
        refresh: run ``apt-get update`` first.

    Returns:
        The host's facts; a fact that could not be read is named in ``errors``.
    """
    return read_facts(host, names, refresh)[0]


def read_facts(
    host: RemoteHost,
    names: Sequence[str],
    refresh: bool = True,
    extra: Mapping[str, str] | None = None,
    timeout: int = 120,
) -> tuple[HostFacts, dict[str, tuple[int, str]]]:
    """:func:`collect_facts`' work, with ``extra`` commands in the same round trip.

    Returns:
        The facts, and each extra section's ``(exit code, output)`` (absent: the script
        was cut short before it).
    """
    if refresh:
        host.run(APT_REFRESH, sudo=True, timeout=300, check=True)
    result = host.run(build_facts_script(names, extra), sudo=True, timeout=timeout)
    sections = split_facts_output(result.stdout)
    own = {n: sections.pop(n) for n in list(sections) if n in (extra or {})}
    return parse_facts(sections), own
