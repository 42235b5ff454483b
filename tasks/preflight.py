"""Preflight: what must hold before a maintenance run changes anything.

Pure checks of the collected facts (disk space), and the two reads of the Prefect
API the run needs first: which blocks exist (so a missing one fails before any
snapshot) and whether the holder of a client's run lock is over (:func:`lock_takeover`
decides from what was read; :func:`holder_takeover` reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TERMINAL_STATES, StateType
from prefect.exceptions import ObjectNotFound

from core.redact import redact
from core.settings import settings
from history.lock import Takeover
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


class HolderUnreadable(NamedTuple):
    """The holder's flow run could not be read (the API failed); ``error`` says how."""

    error: str


#: What reading a lock holder's flow run gave: its state type (None: a run without a
#: state), ``"not-found"`` (Prefect does not know the run), or the read failing.
HolderObservation = StateType | None | Literal["not-found"] | HolderUnreadable


def lock_takeover(observed: HolderObservation) -> Takeover:
    """Whether another run's lock may be taken over, from what its flow run reads as (pure).

    Only a run that is over releases a lock: one in a final state (Completed, Failed,
    Cancelled, Crashed; a worker killed mid-run is marked Crashed by the heartbeat
    automation, ``deployments/automations.py``), or one Prefect does not know. Anything
    else keeps it held, a failed read above all: the lock never fails open.

    Args:
        observed: the holder's state type, ``"not-found"``, or :class:`HolderUnreadable`.

    Returns:
        Take, or refuse, with the reason in words.
    """
    if observed == "not-found":
        return Takeover(True, "Prefect does not know its flow run")
    if isinstance(observed, HolderUnreadable):
        return Takeover(
            False,
            f"its state could not be read ({observed.error}), so the lock stays held;"
            " try again when the Prefect API answers",
        )
    if observed is None:
        return Takeover(False, "its flow run has no state yet")
    if observed in TERMINAL_STATES:
        return Takeover(True, f"its flow run is {observed.value.title()}")
    return Takeover(False, f"its flow run is {observed.value.title()}")


def read_holder(flow_run_id: str) -> HolderObservation:
    """Read a lock holder's flow run from the Prefect API: its state, not found, or the error."""
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return "not-found"  # not a flow run id: no Prefect run can hold it
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
    except ObjectNotFound:
        return "not-found"
    except Exception as exc:  # any other failure is a read that did not happen
        return HolderUnreadable(redact(f"{type(exc).__name__}: {exc}")[:300])
    return run.state.type if run.state is not None else None


def holder_takeover(flow_run_id: str) -> Takeover:
    """The run lock's holder check: read the holder's flow run, decide (:func:`lock_takeover`)."""
    return lock_takeover(read_holder(flow_run_id))
