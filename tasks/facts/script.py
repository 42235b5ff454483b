"""The fact registry and the one-round-trip facts script.

``FACTS`` names every fact (its command, parser and OS families). ``build_facts_script``
turns fact names into one POSIX ``sh`` script that runs each command in a subshell and
ends each output with a delimiter line carrying the command's exit code;
``split_facts_output`` cuts the script's stdout back into sections and ``parse_facts``
parses each one into a ``HostFacts``. A fact whose command failed or whose output could
not be parsed is named in ``HostFacts.errors``: it never hides the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from core.errors import FactParseError
from tasks.facts import apt, dnf, security, server
from tasks.facts.base import Fact, PackageUpdate, RebootRequired, _Frozen


class HostFacts(_Frozen):
    """Everything one facts script learnt about a host.

    A fact that was not asked for is None; one that was asked for but could not be
    read is None too and named in ``errors`` with the reason.
    """

    os: server.OsInfo | None = None
    kernel: str | None = None
    boot_id: str | None = None
    uptime: float | None = Field(default=None, description="Seconds since boot.")
    load: server.LoadAvg | None = None
    memory: server.Memory | None = None
    disks: list[server.DiskUsage] | None = None
    apt_upgradable: list[PackageUpdate] | None = None
    apt_simulation: apt.AptSimulation | None = Field(default=None, description="dist-upgrade plan.")
    apt_simulation_upgrade: apt.AptSimulation | None = Field(
        default=None, description="upgrade plan."
    )
    reboot_required: RebootRequired | None = None
    listening_ports: list[security.ListeningPort] | None = None
    failed_services: security.FailedServices | None = None
    held_packages: list[str] | None = None
    dnf_updates: list[PackageUpdate] | None = None
    dnf_reboot_required: RebootRequired | None = None
    sshd: security.SshdSettings | None = None
    firewall: security.Firewall | None = None
    log_review: security.LogReview | None = None
    errors: dict[str, str] = Field(default_factory=dict, description="Fact name -> why missing.")

    @property
    def updates(self) -> list[PackageUpdate] | None:
        """Pending updates whichever the package manager (apt, else dnf)."""
        return self.apt_upgradable if self.apt_upgradable is not None else self.dnf_updates

    @property
    def reboot(self) -> RebootRequired | None:
        """Pending reboot whichever the family (Debian's flag file, else needs-restarting)."""
        if self.reboot_required is not None:
            return self.reboot_required
        return self.dnf_reboot_required


_DEBIAN = frozenset({"debian"})
_RHEL = frozenset({"rhel"})

FACTS: dict[str, Fact[Any]] = {
    f.name: f
    for f in (
        Fact("os", server.OS_RELEASE, server.parse_os_release),
        Fact("kernel", server.KERNEL_RELEASE, server.parse_kernel_release),
        Fact("boot_id", server.BOOT_ID, server.parse_boot_id),
        Fact("uptime", server.UPTIME, server.parse_uptime),
        Fact("load", server.LOADAVG, server.parse_loadavg),
        Fact("memory", server.MEMINFO, server.parse_meminfo),
        # df exits 1 when one filesystem could not be read (stale NFS, permission);
        # the others are still listed and worth having.
        Fact("disks", server.DF, server.parse_df, ok_exit_codes=frozenset({0, 1})),
        Fact("apt_upgradable", apt.APT_UPGRADABLE, apt.parse_apt_upgradable, _DEBIAN),
        Fact("apt_simulation", apt.APT_SIMULATE_DIST_UPGRADE, apt.parse_apt_simulation, _DEBIAN),
        Fact(
            "apt_simulation_upgrade",
            apt.APT_SIMULATE_UPGRADE,
            apt.parse_apt_simulation_upgrade,
            _DEBIAN,
        ),
        Fact("reboot_required", apt.REBOOT_REQUIRED, apt.parse_reboot_required, _DEBIAN),
        Fact("listening_ports", security.LISTENING_PORTS, security.parse_ss_listening),
        Fact("failed_services", security.FAILED_SERVICES, security.parse_failed_services),
        Fact("held_packages", apt.APT_HELD, apt.parse_apt_held, _DEBIAN),
        Fact("sshd", security.SSHD_EFFECTIVE, security.parse_sshd_effective),
        Fact("firewall", security.FIREWALL, security.parse_firewall),
        Fact("log_review", security.LOG_REVIEW, security.parse_log_review),
        Fact("dnf_updates", dnf.DNF_CHECK_UPDATE, dnf.parse_dnf_check_update, _RHEL),
        Fact(
            "dnf_reboot_required", dnf.DNF_NEEDS_RESTARTING, dnf.parse_dnf_needs_restarting, _RHEL
        ),
    )
}


def facts_for_family(family: str) -> list[str]:
    """Names of the facts that apply to an OS family, in registry order."""
    return [name for name, fact in FACTS.items() if family in fact.families]


# ------------------------------------------------------------------------- collector

_MARK_BEGIN = "@@caretaker:begin@@"
_SECTION_NAME = re.compile(r"[a-z0-9_]+")
_SECTION_END = re.compile(r"\n@@caretaker:(?P<name>[a-z0-9_]+):(?P<rc>\d+)@@(?:\n|$)")


def build_facts_script(names: Sequence[str], extra: Mapping[str, str] | None = None) -> str:
    """Build one POSIX sh script that reads the named facts in one round trip.

    Each command runs in a subshell with stdin from /dev/null (so a command cannot
    swallow the rest of a script fed on stdin) under ``LC_ALL=C``; after it the
    script prints ``\\n@@caretaker:<name>:<exit code>@@``. The leading newline
    ends a last line that has none; ``split_facts_output`` removes exactly that
    newline. The script itself always exits 0: failures are per fact.

    A caller's own read-only commands can ride in the same round trip: ``extra`` names
    them, each gets its section the same way and ``split_facts_output`` returns it beside
    the facts (the caller parses it; ``parse_facts`` is given the facts' sections only).

    Args:
        names: fact names (keys of ``FACTS``); duplicates are run once.
        extra: section name -> command, run after the facts; a name is not a fact's.

    Returns:
        The script text.

    Raises:
        KeyError: an unknown fact name.
        ValueError: an extra section's name is a fact's, or not ``[a-z0-9_]+``.
    """
    unknown = [n for n in names if n not in FACTS]
    if unknown:
        raise KeyError(f"unknown facts: {', '.join(unknown)} (known: {', '.join(FACTS)})")
    sections = {name: FACTS[name].command for name in dict.fromkeys(names)}
    for name, command in (extra or {}).items():
        if name in FACTS or not _SECTION_NAME.fullmatch(name):
            raise ValueError(f"extra section {name!r}: a fact's name, or not [a-z0-9_]+")
        sections[name] = command
    parts = [
        "LC_ALL=C",
        "export LC_ALL",
        # Anything a login script printed before this line is dropped by the splitter.
        f"printf '%s\\n' '{_MARK_BEGIN}'",
    ]
    for name, command in sections.items():
        parts.append(f"(\n{command}\n) </dev/null")
        parts.append(f"printf '\\n@@caretaker:%s:%s@@\\n' '{name}' \"$?\"")
    parts.append("exit 0")
    return "\n".join(parts) + "\n"


def split_facts_output(stdout: str) -> dict[str, tuple[int, str]]:
    """Cut the facts script's stdout into ``{name: (exit code, output)}`` (pure).

    A section cut short (the connection dropped) has no end marker and is absent.

    Args:
        stdout: everything the script printed.

    Returns:
        Each completed fact's exit code and exact output.
    """
    begin = stdout.find(_MARK_BEGIN + "\n")
    pos = 0 if begin < 0 else begin + len(_MARK_BEGIN) + 1
    sections: dict[str, tuple[int, str]] = {}
    for match in _SECTION_END.finditer(stdout, pos):
        sections[match.group("name")] = (int(match.group("rc")), stdout[pos : match.start()])
        pos = match.end()
    return sections


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def parse_facts(
    sections: Mapping[str, tuple[int, str]], expected: Sequence[str] | None = None
) -> HostFacts:
    """Parse every section into ``HostFacts``; failures go to ``errors``, never raise.

    Args:
        sections: ``split_facts_output``'s result.
        expected: the names the script was built for; any without a section (the
            output was cut short) is recorded in ``errors``.

    Returns:
        The host's facts. When both are present, ``apt_simulation*.held_back`` is
        filled from ``held_packages``.
    """
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, (rc, text) in sections.items():
        fact = FACTS.get(name)
        if fact is None:
            errors[name] = "unknown fact"
            continue
        if rc not in fact.ok_exit_codes:
            hint = " (command not found)" if rc == 127 else ""
            tail = _tail(text)
            errors[name] = f"exit {rc}{hint}" + (f": {tail}" if tail else "")
            continue
        try:
            values[name] = fact.parse(text)
        except FactParseError as exc:
            errors[name] = str(exc)
        except Exception as exc:
            # A parser bug on one host's odd output must not cost the other facts; it
            # is recorded (not swallowed) and the fact stays None.
            errors[name] = f"parser failed: {type(exc).__name__}: {exc}"
    for name in expected or ():
        if name not in sections and name not in errors:
            errors[name] = "no output section (script cut short?)"
    held = values.get("held_packages")
    if held is not None:
        for name in ("apt_simulation", "apt_simulation_upgrade"):
            if name in values:
                values[name] = values[name].with_holds(held)
    return HostFacts(**values, errors=errors)
