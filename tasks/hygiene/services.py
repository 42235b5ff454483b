"""Unused services: enabled and listening services against the server's ``allowed_services``.

Read: the enabled service units (``systemctl list-unit-files``), the listening TCP
sockets with their processes (``ss -Htlnp``) and each listening process's unit (from its
cgroup). The operating system's own units (:data:`BASE_SERVICES`: systemd's, getty, ssh,
cron...) are always allowed. With ``allowed_services`` empty the server has no service
policy and nothing is a finding. A service outside it is a finding in the audit; it is
disabled (``systemctl disable --now``) only in the approved change, when the inventory
says ``hygiene.services.disable_unused`` and the plan showed it, and never the unit that
serves the SSH port the change itself came in by.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from core.errors import FactParseError
from history.change import Finding
from tasks.hygiene.base import finding, sections
from tasks.remote import RemoteHost, sh_join

#: Units of the operating system itself, never "unused" (fnmatch patterns).
BASE_SERVICES: tuple[str, ...] = (
    "systemd-*",
    "getty@.service",
    "serial-getty@.service",
    "autovt@.service",
    "e2scrub*",
    "ssh.service",
    "sshd.service",
    "cron.service",
    "rsyslog.service",
    "dbus*.service",
    "apparmor.service",
    "networking.service",
    "ifup@.service",
    "console-setup.service",
    "keyboard-setup.service",
    "cloud-*.service",
    "unattended-upgrades.service",
    "nftables.service",
    "netfilter-persistent.service",
    "chrony.service",
    "qemu-guest-agent.service",
    "amazon-ssm-agent.service",
    "snap.amazon-ssm-agent.*",
)

_NO_SYSTEMD = (
    "System has not been booted with systemd",
    "Failed to connect to bus",
    "systemctl: not found",
    "systemctl: command not found",
)

SURVEY = (
    "echo '=== enabled'; systemctl list-unit-files --type=service --state=enabled"
    ' --no-legend --no-pager --plain 2>&1; echo "rc=$?";'
    " echo '=== listening'; ss -Htlnp 2>&1; echo \"rc=$?\";"
    " echo '=== units'; for pid in $(ss -Htlnp 2>/dev/null | grep -o 'pid=[0-9]*'"
    " | cut -d= -f2 | sort -un); do echo \"$pid $(grep -o '[^/]*\\.service$' /proc/$pid/cgroup"
    ' 2>/dev/null | head -n 1)"; done; echo rc=0'
)


class Listener(BaseModel):
    """A listening TCP socket and who holds it."""

    model_config = ConfigDict(frozen=True)

    port: int
    process: str | None = None
    pid: int | None = None
    unit: str | None = Field(default=None, description="The process's service unit, if any.")


class ServiceSurvey(BaseModel):
    """Enabled services and listening sockets of one server."""

    model_config = ConfigDict(frozen=True)

    known: bool = Field(description="False: no systemd to ask (enabled services unknown).")
    reason: str | None = None
    enabled: list[str] = Field(default_factory=list)
    listening: list[Listener] = Field(default_factory=list)


_USERS = re.compile(r'\("([^"]+)",pid=(\d+)')


def parse_services(text: str) -> ServiceSurvey:
    """Parse :data:`SURVEY`'s output (pure).

    Raises:
        FactParseError: a section is missing or a line is not what the command prints.
    """
    parts = sections("services", text)
    for name in ("enabled", "listening", "units"):
        if name not in parts:
            raise FactParseError("services", text[:200], f"no {name} section")
    units: dict[int, str] = {}
    for line in parts["units"].lines:
        number, _, unit = line.strip().partition(" ")
        if number.isdigit() and unit:
            units[int(number)] = unit.strip()
    listening: list[Listener] = []
    if parts["listening"].rc == 0:
        for line in parts["listening"].lines:
            fields = line.split()
            if len(fields) < 5:
                raise FactParseError("services", line, "not an ss -Htlnp line")
            local = fields[3]
            port = local.rpartition(":")[2]
            if not port.isdigit():
                raise FactParseError("services", line, f"bad local address {local!r}")
            user = _USERS.search(line)
            pid = int(user.group(2)) if user else None
            entry = Listener(
                port=int(port),
                process=user.group(1) if user else None,
                pid=pid,
                unit=units.get(pid) if pid is not None else None,
            )
            if entry not in listening:
                listening.append(entry)
    enabled = parts["enabled"]
    said = enabled.lines[0].strip() if enabled.lines else ""
    if any(m in line for line in enabled.lines for m in _NO_SYSTEMD) or enabled.rc == 127:
        return ServiceSurvey(
            known=False, reason=said or "systemctl is not installed", listening=listening
        )
    if enabled.rc not in (0, 1):  # 1: no unit matched the filter
        raise FactParseError("services", said, f"systemctl exit {enabled.rc}")
    names = []
    for line in enabled.lines:
        words = line.split()
        if not words or not words[0].endswith(".service"):
            raise FactParseError("services", line, "not a unit file line")
        names.append(words[0])
    return ServiceSurvey(known=True, enabled=sorted(names), listening=listening)


def _allowed(unit: str, allowed: Sequence[str]) -> bool:
    return unit in allowed or any(fnmatch.fnmatchcase(unit, p) for p in BASE_SERVICES)


def unused_services(survey: ServiceSurvey, allowed: Sequence[str]) -> list[str]:
    """Enabled services outside ``allowed`` and the OS's own (pure); none without a policy."""
    if not allowed or not survey.known:
        return []
    return [u for u in survey.enabled if not _allowed(u, allowed)]


def services_to_disable(
    survey: ServiceSurvey, allowed: Sequence[str], disable_unused: bool, ssh_port: int
) -> list[str]:
    """What the approved change disables (pure): the unused services when the inventory
    says so, never the unit listening on the SSH port."""
    if not disable_unused:
        return []
    keep = {x.unit for x in survey.listening if x.port == ssh_port and x.unit}
    return [u for u in unused_services(survey, allowed) if u not in keep]


def service_findings(server: str, survey: ServiceSurvey, allowed: Sequence[str]) -> list[Finding]:
    """Enabled or listening services outside the policy (pure)."""
    if not allowed:
        return []
    if not survey.known:
        return [finding("services", server, f"services not checked: {survey.reason}", "info")]
    out = [
        finding("services", server, f"service {unit} is enabled but not in allowed_services")
        for unit in unused_services(survey, allowed)
    ]
    for listener in survey.listening:
        if listener.unit and not _allowed(listener.unit, allowed):
            out.append(
                finding(
                    "services",
                    server,
                    f"{listener.unit} ({listener.process}) listens on port {listener.port}"
                    " but is not in allowed_services",
                )
            )
    return out


@task(name="survey-services", cache_policy=NO_CACHE, task_run_name="survey-services-{host.name}")
def survey_services(host: RemoteHost) -> ServiceSurvey:
    """Read the host's enabled services and listening sockets (read-only)."""
    result = host.run("LC_ALL=C; export LC_ALL; " + SURVEY, sudo=True, timeout=60)
    return parse_services(result.stdout)


@task(name="disable-services", cache_policy=NO_CACHE, task_run_name="disable-services-{host.name}")
def disable_services(host: RemoteHost, units: list[str]) -> list[str]:
    """``systemctl disable --now`` the units (the approved change only); returns them."""
    if units:
        host.run(
            sh_join(["systemctl", "disable", "--now", *units]), sudo=True, timeout=120, check=True
        )
    return units
