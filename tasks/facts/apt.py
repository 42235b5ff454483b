"""apt facts (Debian family): pending updates, apt's simulation of an upgrade, the
reboot flag file and held packages, each command beside its model and parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import Field

from core.errors import FactParseError
from tasks.facts.base import (
    _PKG_NAME,
    PackageUpdate,
    RebootRequired,
    _Frozen,
    _is_security,
    _lines,
)

# apt warns on stderr that its CLI is unstable; that warning is noise here.
APT_UPGRADABLE = "apt list --upgradable 2>/dev/null"
# Simulation needs no root and no lock (NoLocking), so it can run during maintenance.
APT_SIMULATE_DIST_UPGRADE = "apt-get -s -o Debug::NoLocking=1 dist-upgrade"
APT_SIMULATE_UPGRADE = "apt-get -s -o Debug::NoLocking=1 upgrade"
# "|| true": the .pkgs file is optional, and without it cat's exit 1 would otherwise
# become the command's and turn "reboot required" into a failed fact.
REBOOT_REQUIRED = (
    "if [ -f /var/run/reboot-required ]; then echo yes; "
    "cat /var/run/reboot-required.pkgs 2>/dev/null || true; else echo no; fi"
)


APT_HELD = "apt-mark showhold"


class PackageChange(_Frozen):
    """One package apt's simulation would install or upgrade (an ``Inst`` line)."""

    name: str
    from_version: str | None = Field(description="None for a newly installed package.")
    to_version: str
    suites: list[str]
    arch: str | None
    security: bool = Field(description="Any suite ends with '-security'.")


class AptSimulation(_Frozen):
    """The exact plan of an upgrade, from ``apt-get -s``."""

    installs: list[PackageChange] = Field(default_factory=list)
    removals: list[str] = Field(default_factory=list)
    kept_back: list[str] = Field(
        default_factory=list,
        description="Upgradable but not upgraded (held, needs new/removed packages, phased).",
    )
    held_back: list[str] = Field(
        default_factory=list,
        description=(
            "The kept-back packages that are on hold. apt's output does not say which are "
            "held, so this is filled from held_packages by parse_facts (or with_holds)."
        ),
    )
    held_changed: list[str] = Field(
        default_factory=list,
        description="Held packages the plan would change anyway (apt's own warning section).",
    )

    @property
    def upgrades(self) -> list[PackageChange]:
        """Installs that replace an installed version."""
        return [c for c in self.installs if c.from_version is not None]

    @property
    def new_packages(self) -> list[PackageChange]:
        """Installs of packages not installed before."""
        return [c for c in self.installs if c.from_version is None]

    @property
    def security_installs(self) -> list[PackageChange]:
        """Installs coming from a security suite."""
        return [c for c in self.installs if c.security]

    def with_holds(self, held: Iterable[str]) -> AptSimulation:
        """Return a copy whose ``held_back`` names the kept-back packages that are held."""
        held_set = set(held)
        return self.model_copy(update={"held_back": [p for p in self.kept_back if p in held_set]})


_APT_LIST_LINE = re.compile(
    r"^(?P<name>[^/\s]+)/(?P<suites>\S+) (?P<candidate>\S+) (?P<arch>\S+)"
    r" \[upgradable from: (?P<current>[^\]]+)\]$"
)


def parse_apt_upgradable(text: str) -> list[PackageUpdate]:
    """Parse ``apt list --upgradable`` (``APT_UPGRADABLE``).

    Lines look like ``openssl/bookworm-security 3.0.15-1~deb12u1 amd64 [upgradable
    from: 3.0.14-1~deb12u2]``; ``Listing...``, warnings and notes are skipped.

    Raises:
        FactParseError: an ``E:`` error line or any other line that is not a package.
    """
    updates: list[PackageUpdate] = []
    for line in _lines(text):
        stripped = line.strip()
        if stripped.startswith(("Listing...", "WARNING:", "W: ", "N: ")):
            continue
        if stripped.startswith("E: "):
            raise FactParseError("apt_upgradable", line, "apt reported an error")
        match = _APT_LIST_LINE.match(stripped)
        if match is None:
            raise FactParseError("apt_upgradable", line, "not an 'apt list' package line")
        suites = match.group("suites").split(",")
        updates.append(
            PackageUpdate(
                name=match.group("name"),
                current=match.group("current"),
                candidate=match.group("candidate"),
                suites=suites,
                arch=match.group("arch"),
                security=_is_security(suites),
            )
        )
    return updates


# Inst name [old] (new rel1, rel2 [arch]) then zero or more [dependency notes], which
# apt prints while it orders packages (e.g. "[libpam-modules:amd64 on ...]").
_INST = re.compile(
    r"^Inst (?P<name>\S+)(?: \[(?P<old>[^\]]*)\])? \((?P<new>\S+)(?: (?P<rel>[^)]*))?\)"
    r"(?: \[[^\]]*\])*$"
)
_REMV = re.compile(r"^(?:Remv|Purg) (?P<name>\S+)(?: \[[^\]]*\])?$")
_REL_ARCH = re.compile(r"^(?P<origins>.*?)\s*(?:\[(?P<arch>[^\]]+)\])?$")
_SUMMARY_ITEM = re.compile(
    r"(\d+) (upgraded|newly installed|reinstalled|downgraded|to remove|not upgraded)"
)
# apt >= 3.0 prints "Summary:" then "  Upgrading: 2, Installing: 1, Removing: 0, ...".
_SUMMARY3_ITEM = re.compile(
    r"(Upgrading|Installing|Reinstalling|Downgrading|Removing|Not Upgrading): (\d+)"
)
_SUMMARY3_KEYS = {
    "Upgrading": "upgraded",
    "Installing": "newly installed",
    "Reinstalling": "reinstalled",
    "Downgrading": "downgraded",
    "Removing": "to remove",
    "Not Upgrading": "not upgraded",
}
# Section headers whose package lists we keep; other "The following ..." lists only
# repeat what the Inst/Remv lines say exactly.
_KEPT_HEADERS = (
    "The following packages have been kept back:",
    "The following upgrades have been deferred due to phasing:",
    "Not upgrading:",  # apt >= 3.0
    "Not upgrading yet due to phasing:",  # apt >= 3.0
)
_HELD_CHANGED_HEADERS = ("The following held packages will be changed:", "Changing held packages:")


def _summary_counts(line: str) -> dict[str, int] | None:
    """apt's summary line as ``{"upgraded": n, "newly installed": n, ...}``, or None."""
    stripped = line.strip()
    if stripped.endswith("not upgraded.") and "newly installed" in stripped:
        return {key: int(n) for n, key in _SUMMARY_ITEM.findall(stripped)}
    if stripped.startswith("Upgrading: ") and "Removing: " in stripped:
        return {_SUMMARY3_KEYS[key]: int(n) for key, n in _SUMMARY3_ITEM.findall(stripped)}
    return None


def _suite_of(release: str) -> str:
    """The archive of one apt release string: ``Label:Version/Archive`` -> ``Archive``."""
    release = release.strip()
    if "/" in release:
        return release.rsplit("/", 1)[1]
    if ":" in release:
        return release.split(":", 1)[1]
    return release


def parse_apt_simulation(text: str, *, fact: str = "apt_simulation") -> AptSimulation:
    """Parse ``apt-get -s ... dist-upgrade`` / ``upgrade`` (the exact plan).

    The ``Inst``/``Remv`` lines are the plan; ``Conf`` lines and the human lists
    ("will be upgraded", "NEW packages", "REMOVED") are ignored because they repeat
    them. The kept-back list is read from its section. The summary line
    (``N upgraded, N newly installed, N to remove and N not upgraded.``) must be
    present and agree with the lines counted, so a truncated output is an error
    rather than a shorter plan.

    Args:
        text: apt-get's stdout.
        fact: the fact name to report in errors.

    Returns:
        The plan; ``held_back`` is empty (see ``AptSimulation.with_holds``).

    Raises:
        FactParseError: an ``E:`` line, a malformed ``Inst``/``Remv`` line, or a missing
            or disagreeing summary line.
    """
    installs: list[PackageChange] = []
    removals: list[str] = []
    kept_back: list[str] = []
    held_changed: list[str] = []
    section: list[str] | None = None
    summary: dict[str, int] | None = None
    for line in _lines(text):
        counts = _summary_counts(line)
        if counts is not None:
            summary = counts
            section = None
            continue
        if line.startswith(" "):
            if section is not None:
                section.extend(line.split())
            continue
        section = None
        if line.startswith("E: "):
            raise FactParseError(fact, line, "apt reported an error")
        if line.startswith("Inst "):
            match = _INST.match(line)
            if match is None:
                raise FactParseError(fact, line, "malformed Inst line")
            rel = _REL_ARCH.match(match.group("rel") or "")
            origins = rel.group("origins") if rel else ""
            suites = [_suite_of(o) for o in origins.split(",") if o.strip()]
            installs.append(
                PackageChange(
                    name=match.group("name"),
                    from_version=match.group("old"),
                    to_version=match.group("new"),
                    suites=suites,
                    arch=rel.group("arch") if rel else None,
                    security=_is_security(suites),
                )
            )
        elif line.startswith(("Remv ", "Purg ")):
            match = _REMV.match(line)
            if match is None:
                raise FactParseError(fact, line, "malformed Remv line")
            removals.append(match.group("name"))
        elif line.startswith(_KEPT_HEADERS):
            section = kept_back
        elif line.startswith(_HELD_CHANGED_HEADERS):
            section = held_changed
    if summary is None:
        raise FactParseError(fact, text[-200:], "no summary line (output cut short?)")
    planned = sum(summary.get(k, 0) for k in ("upgraded", "newly installed", "reinstalled"))
    planned += summary.get("downgraded", 0)
    if planned != len(installs) or summary.get("to remove", 0) != len(removals):
        raise FactParseError(
            fact,
            f"{len(installs)} Inst / {len(removals)} Remv lines",
            f"disagrees with apt's summary {summary}",
        )
    return AptSimulation(
        installs=installs, removals=removals, kept_back=kept_back, held_changed=held_changed
    )


def parse_apt_simulation_upgrade(text: str) -> AptSimulation:
    """Parse ``apt-get -s ... upgrade`` (``APT_SIMULATE_UPGRADE``); see ``parse_apt_simulation``."""
    return parse_apt_simulation(text, fact="apt_simulation_upgrade")


def parse_reboot_required(text: str) -> RebootRequired:
    """Parse ``REBOOT_REQUIRED``: ``yes`` plus the packages that asked, or ``no``.

    The packages file often repeats a name (one line per trigger); they are kept once,
    in order.

    Raises:
        FactParseError: the first line is neither ``yes`` nor ``no``.
    """
    lines = [line.strip() for line in _lines(text)]
    if not lines or lines[0] not in ("yes", "no"):
        raise FactParseError("reboot_required", lines[0] if lines else text, "expected yes/no")
    if lines[0] == "no":
        if len(lines) > 1:
            raise FactParseError("reboot_required", lines[1], "unexpected line after 'no'")
        return RebootRequired(required=False)
    return RebootRequired(required=True, packages=list(dict.fromkeys(lines[1:])))


def parse_apt_held(text: str) -> list[str]:
    """Parse ``apt-mark showhold`` (``APT_HELD``): one held package per line.

    Raises:
        FactParseError: a line that is not a package name.
    """
    held: list[str] = []
    for line in _lines(text):
        name = line.strip()
        if not _PKG_NAME.match(name):
            raise FactParseError("held_packages", line, "not a package name")
        held.append(name)
    return held
