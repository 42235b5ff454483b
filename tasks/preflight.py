"""Preflight: what must hold before a maintenance run changes anything.

Pure checks of the collected facts (disk space), and the two reads of the Prefect
API the run needs first: which blocks exist (so a missing one fails before any
snapshot) and whether the holder of a client's run lock is still running.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from core.settings import settings
from tasks.facts.script import HostFacts

# Block type slugs of each kind of credentials block the inventory names; notification
# blocks are recognised by their "notify" capability, whatever their type.
BLOCK_TYPES = {
    "ssh": ("caretaker-ssh-identity",),
    "aws": ("aws-credentials",),
    "rackspace": ("caretaker-rackspace-credentials",),
}


def preflight_problems(facts: Mapping[str, HostFacts], min_free_mb: int | None = None) -> list[str]:
    """What stops a run from starting, one sentence per problem (pure).

    Args:
        facts: facts per server, collected during preflight.
        min_free_mb: free space needed on ``/`` and ``/var``; default from settings.

    Returns:
        Problems; empty when the run may go ahead.
    """
    need = (settings().min_free_disk_mb if min_free_mb is None else min_free_mb) * 1024 * 1024
    problems = []
    for server, fact in sorted(facts.items()):
        if fact.disks is None:
            problems.append(f"{server}: disk use unknown ({fact.errors.get('disks', 'not read')})")
            continue
        for disk in fact.disks:
            if disk.mount in ("/", "/var") and disk.avail_b < need:
                problems.append(
                    f"{server}: only {disk.avail_b // 2**20} MiB free on {disk.mount} "
                    f"(need {need // 2**20} MiB for the upgrade)"
                )
        if fact.apt_simulation is None and "apt_simulation" in fact.errors:
            problems.append(f"{server}: apt cannot plan: {fact.errors['apt_simulation']}")
    return problems


@task(name="read-block-names", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def read_block_names() -> dict[str, set[str]]:
    """Names of the blocks on the Prefect API, by the inventory's kinds.

    Returns:
        kind (ssh, aws, rackspace, notify) -> block document names.
    """
    names: dict[str, set[str]] = {kind: set() for kind in (*BLOCK_TYPES, "notify")}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_block_documents(offset=offset, limit=200, include_secrets=False)
            for doc in page:
                if not doc.name:
                    continue
                slug = doc.block_type.slug if doc.block_type else ""
                for kind, slugs in BLOCK_TYPES.items():
                    if slug in slugs:
                        names[kind].add(doc.name)
                if doc.block_schema and "notify" in (doc.block_schema.capabilities or []):
                    names["notify"].add(doc.name)
            if len(page) < 200:
                break
            offset += 200
    return names


def run_is_finished(flow_run_id: str) -> bool:
    """Whether a flow run is over (or unknown): its lock may be taken over."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except Exception:  # a run the API does not know (or cannot read) holds nothing
            return True
    return run.state is None or run.state.is_final()
