"""Unnecessary software: what ``apt-get autoremove`` would remove and the inventory's
``unwanted`` packages, planned exactly, removed only in the approved change.

The plan is apt's own simulation (``apt-get -s remove --autoremove <unwanted installed>``,
or ``apt-get -s autoremove``), so it names every package that would go, dependents
included. Removal happens after the production rollout, on a server of a change that got
that far, and only when apt's simulation at that moment removes exactly what the plan
showed (:func:`removal_check`); anything else is a finding and nothing is removed. The
server's pre-change snapshot holds the packages, so a removal is undone by restoring it
(or by ``apt-get install <name>=<version>`` from the change record).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import CommandFailed, FactParseError
from inventory.hygiene import SoftwarePolicy
from tasks.facts.collect import read_facts
from tasks.facts.script import HostFacts, build_facts_script, split_facts_output
from tasks.hygiene.base import sections
from tasks.remote import RemoteHost, sh_join

_REMV = re.compile(r"^Remv (\S+)(?: \[([^\]]+)\])?")


def survey_command(policy: SoftwarePolicy) -> str:
    """The read-only script that plans removals for ``policy`` (pure)."""
    names = " ".join(sh_join([n]) for n in policy.unwanted)
    autoremove = "--autoremove " if policy.autoremove else ""
    return (
        "echo '=== unwanted'; set --;"
        f" for p in {names}; do"
        " dpkg-query -W -f '${db:Status-Abbrev}' \"$p\" 2>/dev/null | grep -q '^ii'"
        ' && set -- "$@" "$p"; done; echo "$@"; echo rc=0; echo \'=== removal\';'
        f' if [ "$#" -gt 0 ]; then apt-get -s -q {autoremove}remove "$@" 2>&1;'
        + (" else apt-get -s -q autoremove 2>&1;" if policy.autoremove else " else true;")
        + ' fi; echo "rc=$?"'
    )


class Removal(BaseModel):
    """One package the plan removes."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str | None = None
    why: str = Field(description="unwanted (the inventory) or no longer needed (autoremove).")


class SoftwarePlan(BaseModel):
    """What would be removed from one server, or why it could not be planned."""

    model_config = ConfigDict(frozen=True)

    removals: list[Removal] = Field(default_factory=list)
    error: str | None = Field(default=None, description="apt could not simulate the removal.")

    @property
    def names(self) -> list[str]:
        """The package names, sorted."""
        return sorted(r.name for r in self.removals)

    def line(self) -> str:
        """``remove a 1.0 (unwanted), b 2.1 (no longer needed)`` for the plan."""
        if self.error:
            return f"removal not planned: {self.error}"
        return "remove " + ", ".join(
            f"{r.name} {r.version or ''} ({r.why})".replace("  ", " ") for r in self.removals
        )


def parse_removals(text: str) -> list[tuple[str, str | None]]:
    """The ``Remv name [version]`` lines of an apt simulation (pure)."""
    out: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        match = _REMV.match(line)
        if match:
            out.append((match.group(1).split(":")[0], match.group(2)))
    return out


def parse_survey(text: str, policy: SoftwarePolicy) -> SoftwarePlan:
    """Parse :func:`survey_command`'s output into the plan (pure).

    Raises:
        FactParseError: a section is missing.
    """
    parts = sections("software", text)
    if "unwanted" not in parts or "removal" not in parts:
        raise FactParseError("software", text[:200], "expected unwanted and removal sections")
    installed = set(" ".join(parts["unwanted"].lines).split())
    removal = parts["removal"]
    if removal.rc not in (0, None):
        said = next((x for x in removal.lines if x.startswith("E: ")), f"exit {removal.rc}")
        return SoftwarePlan(error=f"apt-get -s remove: {said}")
    wanted_gone = set(policy.unwanted)
    return SoftwarePlan(
        removals=[
            Removal(
                name=name,
                version=version,
                why="unwanted" if name in wanted_gone and name in installed else "no longer needed",
            )
            for name, version in parse_removals(removal.text)
        ]
    )


def removal_check(planned: list[str], simulated: list[str]) -> str | None:
    """Why the removal must not run now, or None when apt removes exactly the plan (pure)."""
    extra = sorted(set(simulated) - set(planned))
    missing = sorted(set(planned) - set(simulated))
    if extra:
        return f"apt would now also remove {', '.join(extra)}, which the plan did not show"
    if missing:
        return f"no longer installed or no longer removable: {', '.join(missing)}"
    return None


def remove_command(names: list[str], lock_timeout_s: int, simulate: bool) -> str:
    """``apt-get remove`` of exactly ``names`` (pure); ``simulate`` adds ``-s``."""
    args = ["apt-get", "-q", "-y", "-o", f"DPkg::Lock::Timeout={lock_timeout_s}"]
    if simulate:
        args.append("-s")
    return "DEBIAN_FRONTEND=noninteractive " + sh_join([*args, "remove", *names])


class PlanFacts(BaseModel):
    """A host's facts and its removal plan, read in one SSH round trip."""

    model_config = ConfigDict(frozen=True)

    facts: HostFacts
    software: SoftwarePlan


#: The removal survey's section in the facts script.
SURVEY_SECTION = "software_survey"


def surveyed(policy: SoftwarePolicy) -> bool:
    """Whether ``policy`` can remove anything, so that hosts are surveyed at all (pure)."""
    return policy.autoremove or bool(policy.unwanted)


def survey_plan(section: tuple[int, str] | None, policy: SoftwarePolicy) -> SoftwarePlan:
    """The removal plan from the survey's section of the facts script (pure).

    Args:
        section: its ``(exit code, output)``; None when the script was cut short before it.
        policy: the inventory's software policy.
    """
    if not surveyed(policy):
        return SoftwarePlan()
    if section is None:
        return SoftwarePlan(error="no survey output (script cut short?)")
    try:
        return parse_survey(section[1], policy)
    except FactParseError as exc:
        return SoftwarePlan(error=str(exc))


@task(name="plan-removals", cache_policy=NO_CACHE, task_run_name="plan-removals-{host.name}")
def plan_removals(host: RemoteHost, policy: SoftwarePolicy) -> SoftwarePlan:
    """What removing unnecessary software would remove on the host (read-only), for a
    server whose facts are not read (:func:`collect_plan_facts` reads both at once)."""
    if not surveyed(policy):
        return SoftwarePlan()
    script = build_facts_script((), {SURVEY_SECTION: survey_command(policy)})
    result = host.run(script, sudo=True, timeout=120)
    return survey_plan(split_facts_output(result.stdout).get(SURVEY_SECTION), policy)


@task(name="collect-facts", cache_policy=NO_CACHE, task_run_name="collect-facts-{host.name}")
def collect_plan_facts(
    host: RemoteHost, names: Sequence[str], policy: SoftwarePolicy, refresh: bool = True
) -> PlanFacts:
    """A host's facts (:func:`tasks.facts.collect.collect_facts`) and what removing
    unnecessary software would remove, in the same round trip (read-only; ``refresh``
    updates apt's package lists first, never packages).

    One task run and one SSH command per host instead of two of each: the survey is
    :func:`survey_command` as a section of the facts script (decision 90).
    """
    extra = {SURVEY_SECTION: survey_command(policy)} if surveyed(policy) else {}
    facts, own = read_facts(host, names, refresh, extra, timeout=240)
    return PlanFacts(facts=facts, software=survey_plan(own.get(SURVEY_SECTION), policy))


@task(name="remove-packages", cache_policy=NO_CACHE, task_run_name="remove-packages-{host.name}")
def remove_packages(host: RemoteHost, planned: list[str], lock_timeout_s: int = 120) -> list[str]:
    """Remove exactly the planned packages, after apt's simulation says it removes no other.

    Returns:
        The packages removed.

    Raises:
        CommandFailed: apt's simulation differs from the plan (nothing removed), or apt failed.
    """
    if not planned:
        return []
    simulation = host.run(remove_command(planned, lock_timeout_s, True), sudo=True, timeout=120)
    simulation.check()
    why = removal_check(planned, [n for n, _ in parse_removals(simulation.stdout)])
    if why is not None:
        raise CommandFailed(host.name, simulation.command, 0, why, "")
    host.run(remove_command(planned, lock_timeout_s, False), sudo=True, timeout=900, check=True)
    return sorted(planned)
