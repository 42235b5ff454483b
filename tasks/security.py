"""The security audit's reading of a host: every planning fact plus sshd, the firewall
and what the logs hold for review.

The audit is read-only on the host (``apt-get update`` refreshes package lists, never
packages, so pending security updates are current). What the facts mean is decided by
the verification suite (``reports/expectations.py``); this module only reads.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checks import PLAN_FACTS
from tasks.facts import HostFacts, build_facts_script, parse_facts, split_facts_output
from tasks.packages import APT_REFRESH
from tasks.remote import RemoteHost

__all__ = ["AUDIT_FACTS", "collect_audit_facts"]

#: The facts an audit reads: those of a maintenance plan, sshd's settings, the firewall,
#: and the logs' counts (error lines, failed SSH logins).
AUDIT_FACTS: tuple[str, ...] = (*PLAN_FACTS, "sshd", "firewall", "log_review")


@task(
    name="collect-audit-facts",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="audit-facts-{host.name}",
)
def collect_audit_facts(host: RemoteHost, refresh: bool = True) -> HostFacts:
    """Read a host's audit facts in one SSH round trip (after refreshing apt's lists).

    Args:
        host: an open (or lazily opening) session to the host.
        refresh: run ``apt-get update`` first, so pending security updates are current.

    Returns:
        The host's facts; a fact that could not be read is named in ``errors``.
    """
    if refresh:
        host.run(APT_REFRESH, sudo=True, timeout=300, check=True)
    result = host.run(build_facts_script(AUDIT_FACTS), sudo=True, timeout=120)
    return parse_facts(split_facts_output(result.stdout))
