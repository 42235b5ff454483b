"""Host facts: one shell command plus one pure parser per fact, with a typed result.

Each fact is a module-level command string (what runs on the host) beside a pure
``parse_*`` function (what its output means), in the style of pyinfra's facts. The
parsers never touch the network or the filesystem, so they are tested from output
recorded on real hosts (``tests/fixtures/facts/*.json``); the thin Prefect tasks that
run the commands over SSH live elsewhere (``tasks/checks.py``).

All the facts a caller wants are gathered in one SSH round trip: ``build_facts_script``
turns fact names into one POSIX ``sh`` script that runs each command in a subshell and
ends each output with a delimiter line carrying the command's exit code;
``split_facts_output`` cuts the script's stdout back into sections and ``parse_facts``
parses each one into a ``HostFacts``. A fact whose command failed or whose output
could not be parsed is named in ``HostFacts.errors``: it never hides the others.

Parsers raise ``FactParseError`` (a ``ValueError``) naming the fact and the line they
could not read. Output is expected in the C locale (the facts script sets
``LC_ALL=C``); run the commands the same way when using them one by one.

See ``docs/facts.md`` for every fact, what it returns and how to add one.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.errors import FactParseError

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

T = TypeVar("T")

Family = Literal["debian", "rhel", "unknown"]
ALL_FAMILIES: frozenset[str] = frozenset({"debian", "rhel", "unknown"})

# --------------------------------------------------------------------------- commands

OS_RELEASE = "cat /etc/os-release"
KERNEL_RELEASE = "uname -r"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
UPTIME = "cat /proc/uptime"
LOADAVG = "cat /proc/loadavg"
MEMINFO = "cat /proc/meminfo"
# -P keeps one line per filesystem on GNU df and makes the columns fixed; -B1 gives
# bytes so nothing depends on df's rounding to K/M/G.
DF = "df -PT -B1"
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
LISTENING_PORTS = "ss -Htlnu"
# systemctl's exit code and its stderr are part of the answer ("no systemd here"), so
# both are folded into stdout.
FAILED_SERVICES = (
    'systemctl list-units --state=failed --plain --no-legend --no-pager 2>&1; echo "rc=$?"'
)
APT_HELD = "apt-mark showhold"
# The SSH daemon's effective settings (its config files as sshd reads them), as root.
SSHD_EFFECTIVE = "/usr/sbin/sshd -T 2>&1"
# What the logs hold for review, counted, never copied (a log line can hold anything, a
# password typed as a user name included): error lines and failed SSH logins, from the
# journal over 7 days when it has entries, else from the current log files.
_AUTH_FAILED = (
    "Failed password|Failed publickey|Invalid user|authentication failure"
    "|Connection closed by authenticating user|maximum authentication attempts"
)
_LOG_ERRORS = "error|panic|segfault|oom-killer|Out of memory"
LOG_REVIEW = (
    "if command -v journalctl >/dev/null 2>&1"
    ' && [ -n "$(journalctl -q -n 1 --no-pager 2>/dev/null)" ]; then'
    " echo source=journal;"
    ' echo "errors=$(journalctl -q -p err --since "7 days ago" --no-pager 2>/dev/null'
    ' | wc -l)";'
    ' echo "auth_failures=$(journalctl -q --since "7 days ago" --no-pager 2>/dev/null'
    f" | grep -cE '{_AUTH_FAILED}')\";"
    " else echo source=files;"
    " for f in /var/log/auth.log /var/log/secure /var/log/sshd.log /var/log/syslog"
    ' /var/log/messages; do [ -r "$f" ] || continue;'
    f' echo "file=$f errors=$(grep -ciE \'{_LOG_ERRORS}\' "$f")'
    f' auth_failures=$(grep -cE \'{_AUTH_FAILED}\' "$f")"; done; fi; true'
)
# The inbound filter: nftables' ruleset, else iptables' INPUT chain, else no tool. The tool
# and the exit code are printed, so "no firewall tool" and "not allowed" are answers.
FIREWALL = (
    "if command -v nft >/dev/null 2>&1; then echo tool=nft; nft list ruleset 2>&1;"
    ' echo "rc=$?"; elif command -v iptables >/dev/null 2>&1; then echo tool=iptables;'
    ' iptables -S INPUT 2>&1; echo "rc=$?"; else echo tool=none; fi'
)
# dnf check-update exits 100 when updates exist, so the exit code is printed rather
# than treated as a failure.
DNF_CHECK_UPDATE = 'dnf -q check-update; echo "rc=$?"'
DNF_NEEDS_RESTARTING = 'needs-restarting -r; echo "rc=$?"'

# Filesystems that hold no data worth alerting on. overlay is deliberately absent: the
# sandbox hosts' root (and many container hosts') is an overlay.
PSEUDO_FILESYSTEMS: frozenset[str] = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "fuse.gvfsd-fuse",
        "fuse.lxcfs",
        "fuse.portal",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)


# ----------------------------------------------------------------------------- errors


# ----------------------------------------------------------------------------- models


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OsInfo(_Frozen):
    """What ``/etc/os-release`` says the host is."""

    family: Family = Field(description="Package family, from ID then ID_LIKE.")
    id: str = Field(description="os-release ID, e.g. debian, ubuntu, rocky.")
    id_like: list[str] = Field(default_factory=list, description="os-release ID_LIKE.")
    version_id: str | None = Field(default=None, description="e.g. 12; absent on testing/sid.")
    pretty_name: str | None = None
    codename: str | None = Field(default=None, description="VERSION_CODENAME, e.g. bookworm.")


class LoadAvg(_Frozen):
    """``/proc/loadavg``: load averages and scheduling entities."""

    l1: float
    l5: float
    l15: float
    running: int = Field(description="Runnable scheduling entities now.")
    total: int = Field(description="Scheduling entities that exist.")


class Memory(_Frozen):
    """``/proc/meminfo`` in bytes."""

    total_b: int
    available_b: int
    swap_total_b: int
    swap_free_b: int
    used_pct: float = Field(description="100 * (total - available) / total, one decimal.")


class DiskUsage(_Frozen):
    """One mounted filesystem from ``df``."""

    device: str
    mount: str
    fstype: str
    size_b: int
    used_b: int
    avail_b: int
    used_pct: float = Field(description="df's own Capacity column (reserved blocks counted).")


class PackageUpdate(_Frozen):
    """An installed package that has a newer candidate version."""

    name: str
    current: str | None = Field(description="Installed version; None where unknown (dnf).")
    candidate: str
    suites: list[str] = Field(description="Archives/suites (apt) or repositories (dnf).")
    arch: str
    security: bool = Field(description="Any suite ends with '-security'.")


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


class RebootRequired(_Frozen):
    """Whether the OS asks for a reboot, and because of which packages."""

    required: bool
    packages: list[str] = Field(default_factory=list)


class ListeningPort(_Frozen):
    """A listening TCP socket or a bound UDP socket from ``ss``."""

    proto: Literal["tcp", "udp"]
    address: str = Field(description="IP without brackets, or '*' for every address.")
    port: int
    interface: str | None = Field(default=None, description="Bound device / scope (%lo).")


class FailedServices(_Frozen):
    """Failed systemd units, or why they cannot be known."""

    known: bool = Field(description="False when systemd is not running: never 'none failed'.")
    units: list[str] = Field(default_factory=list)
    reason: str | None = Field(default=None, description="Why not known.")


class SshdSettings(_Frozen):
    """The SSH daemon settings a security audit reads (``sshd -T``, lower-case values)."""

    permit_root_login: str = Field(description="yes, prohibit-password, forced-commands-only, no.")
    password_authentication: bool
    kbd_interactive_authentication: bool = Field(
        description="Keyboard-interactive: passwords by another route (PAM)."
    )
    permit_empty_passwords: bool

    def weaknesses(self) -> list[str]:
        """What lets someone in with a password or as root by password, as sshd spells it."""
        out: list[str] = []
        if self.permit_root_login == "yes":
            out.append("PermitRootLogin yes")
        if self.password_authentication:
            out.append("PasswordAuthentication yes")
        if self.kbd_interactive_authentication:
            out.append("KbdInteractiveAuthentication yes")
        if self.permit_empty_passwords:
            out.append("PermitEmptyPasswords yes")
        return out


class Firewall(_Frozen):
    """Whether inbound traffic the rules do not allow is dropped, or why it is not known."""

    tool: Literal["nft", "iptables"] | None = Field(description="None: neither is installed.")
    known: bool = Field(description="False: the tool is missing or could not answer.")
    default_deny: bool | None = Field(
        default=None, description="Inbound traffic no rule accepts is dropped or rejected."
    )
    detail: str | None = Field(default=None, description="Why unknown, or what was found.")


class LogReview(_Frozen):
    """Counts of what the logs hold for a person to review (never the lines)."""

    source: Literal["journal", "files"]
    files: list[str] = Field(default_factory=list, description="The files read (source files).")
    errors: int = Field(description="Error lines (journal priority err and worse, or matched).")
    auth_failures: int = Field(description="Failed SSH logins (wrong password, key, user).")

    @property
    def where(self) -> str:
        """Where the counts come from, for a sentence."""
        return "the journal, 7 days" if self.source == "journal" else ", ".join(self.files)


class HostFacts(_Frozen):
    """Everything one facts script learnt about a host.

    A fact that was not asked for is None; one that was asked for but could not be
    read is None too and named in ``errors`` with the reason.
    """

    os: OsInfo | None = None
    kernel: str | None = None
    boot_id: str | None = None
    uptime: float | None = Field(default=None, description="Seconds since boot.")
    load: LoadAvg | None = None
    memory: Memory | None = None
    disks: list[DiskUsage] | None = None
    apt_upgradable: list[PackageUpdate] | None = None
    apt_simulation: AptSimulation | None = Field(default=None, description="dist-upgrade plan.")
    apt_simulation_upgrade: AptSimulation | None = Field(default=None, description="upgrade plan.")
    reboot_required: RebootRequired | None = None
    listening_ports: list[ListeningPort] | None = None
    failed_services: FailedServices | None = None
    held_packages: list[str] | None = None
    dnf_updates: list[PackageUpdate] | None = None
    dnf_reboot_required: RebootRequired | None = None
    sshd: SshdSettings | None = None
    firewall: Firewall | None = None
    log_review: LogReview | None = None
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


# ---------------------------------------------------------------------------- helpers

_RC_LINE = re.compile(r"^rc=(\d+)$")
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(?::[a-z0-9\-]+)?$")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _is_security(suites: Iterable[str]) -> bool:
    return any(s.endswith("-security") for s in suites)


def _split_rc(fact: str, text: str) -> tuple[int, list[str]]:
    """Split off the trailing ``rc=N`` line that some commands print."""
    lines = _lines(text)
    if not lines:
        raise FactParseError(fact, text, "empty output, expected a final rc=N line")
    match = _RC_LINE.match(lines[-1].strip())
    if match is None:
        raise FactParseError(fact, lines[-1], "expected a final rc=N line")
    return int(match.group(1)), lines[:-1]


def _single_line(fact: str, text: str) -> str:
    lines = _lines(text)
    if len(lines) != 1:
        raise FactParseError(
            fact, lines[1] if lines else text, f"expected one line, got {len(lines)}"
        )
    return lines[0].strip()


def _int(fact: str, value: str, line: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FactParseError(fact, line, f"not an integer: {value!r}") from None


def _float(fact: str, value: str, line: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FactParseError(fact, line, f"not a number: {value!r}") from None


# ---------------------------------------------------------------------------- parsers

_DEBIAN_IDS = frozenset({"debian", "ubuntu"})
_RHEL_IDS = frozenset({"rhel", "centos", "fedora", "rocky", "almalinux", "ol"})


def parse_os_release(text: str) -> OsInfo:
    """Parse ``/etc/os-release`` (``OS_RELEASE``).

    The family comes from ID, then from ID_LIKE in order: ``debian`` for Debian and
    Ubuntu derivatives (apt), ``rhel`` for the RHEL/Fedora family (dnf), else
    ``unknown``.

    Args:
        text: the file's content.

    Returns:
        The OS identity.

    Raises:
        FactParseError: a line is not ``KEY=value`` or its quoting is broken.
    """
    fields: dict[str, str] = {}
    for line in _lines(text):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        key, sep, raw = stripped.partition("=")
        if not sep or not re.fullmatch(r"[A-Z0-9_]+", key):
            raise FactParseError("os", line, "expected KEY=value")
        try:
            # os-release values use shell quoting rules (no expansion).
            fields[key] = " ".join(shlex.split(raw))
        except ValueError as exc:
            raise FactParseError("os", line, f"bad quoting ({exc})") from None
    if not fields:
        raise FactParseError("os", text, "no KEY=value lines")
    # The os-release spec's default when ID is absent.
    os_id = fields.get("ID", "linux")
    id_like = fields.get("ID_LIKE", "").split()
    family: Family = "unknown"
    for token in (os_id, *id_like):
        if token in _DEBIAN_IDS:
            family = "debian"
            break
        if token in _RHEL_IDS:
            family = "rhel"
            break
    return OsInfo(
        family=family,
        id=os_id,
        id_like=id_like,
        version_id=fields.get("VERSION_ID"),
        pretty_name=fields.get("PRETTY_NAME"),
        codename=fields.get("VERSION_CODENAME") or fields.get("UBUNTU_CODENAME"),
    )


def parse_kernel_release(text: str) -> str:
    """Parse ``uname -r`` (``KERNEL_RELEASE``) into the kernel release string.

    Raises:
        FactParseError: not exactly one word on one line.
    """
    line = _single_line("kernel", text)
    if len(line.split()) != 1:
        raise FactParseError("kernel", line, "expected a single word")
    return line


def parse_boot_id(text: str) -> str:
    """Parse the kernel's boot id (``BOOT_ID``): a UUID, new at every boot.

    Raises:
        FactParseError: not one UUID.
    """
    line = _single_line("boot_id", text)
    try:
        return str(uuid.UUID(line))
    except ValueError:
        raise FactParseError("boot_id", line, "not a UUID") from None


def parse_uptime(text: str) -> float:
    """Parse ``/proc/uptime`` (``UPTIME``) into seconds since boot.

    Raises:
        FactParseError: not two numbers.
    """
    line = _single_line("uptime", text)
    parts = line.split()
    if len(parts) != 2:
        raise FactParseError("uptime", line, "expected two numbers")
    return _float("uptime", parts[0], line)


def parse_loadavg(text: str) -> LoadAvg:
    """Parse ``/proc/loadavg`` (``LOADAVG``).

    Raises:
        FactParseError: not ``l1 l5 l15 running/total lastpid``.
    """
    line = _single_line("load", text)
    parts = line.split()
    if len(parts) != 5 or parts[3].count("/") != 1:
        raise FactParseError("load", line, "expected 'l1 l5 l15 running/total lastpid'")
    running, total = parts[3].split("/")
    return LoadAvg(
        l1=_float("load", parts[0], line),
        l5=_float("load", parts[1], line),
        l15=_float("load", parts[2], line),
        running=_int("load", running, line),
        total=_int("load", total, line),
    )


def parse_meminfo(text: str) -> Memory:
    """Parse ``/proc/meminfo`` (``MEMINFO``) into bytes and a used percentage.

    "Used" is total minus MemAvailable (the kernel's estimate of what can be given to
    new work without swapping); kernels older than 3.14 lack MemAvailable, where
    MemFree + Buffers + Cached stands in for it.

    Raises:
        FactParseError: a line is not ``Key: value [kB]``, or MemTotal/Swap lines are missing.
    """
    values: dict[str, int] = {}
    for line in _lines(text):
        match = re.fullmatch(r"\s*([A-Za-z0-9_()]+):\s+(\d+)(?:\s+(kB))?\s*", line)
        if match is None:
            raise FactParseError("memory", line, "expected 'Key: value [kB]'")
        number = int(match.group(2))
        values[match.group(1)] = number * 1024 if match.group(3) else number
    for key in ("MemTotal", "SwapTotal", "SwapFree"):
        if key not in values:
            raise FactParseError("memory", text[:200], f"{key} is missing")
    total = values["MemTotal"]
    if total <= 0:
        raise FactParseError("memory", f"MemTotal: {total}", "MemTotal must be positive")
    available = values.get("MemAvailable")
    if available is None:
        available = values.get("MemFree", 0) + values.get("Buffers", 0) + values.get("Cached", 0)
    return Memory(
        total_b=total,
        available_b=available,
        swap_total_b=values["SwapTotal"],
        swap_free_b=values["SwapFree"],
        used_pct=round(100.0 * (total - available) / total, 1),
    )


def parse_df(text: str) -> list[DiskUsage]:
    """Parse ``df -PT -B1`` (``DF``), leaving out pseudo filesystems.

    Pseudo filesystems (``PSEUDO_FILESYSTEMS``, and ``cgroup*``) are left out;
    ``overlay`` is kept. A device name printed alone on its line (df's wrapped layout
    for long names) is joined with the line that follows. Mount points may contain
    spaces: the mount point is everything after the sixth column.

    Raises:
        FactParseError: the header is missing or a row does not have seven columns.
    """
    lines = _lines(text)
    if not lines or not lines[0].startswith("Filesystem"):
        raise FactParseError("disks", lines[0] if lines else text, "expected df's header")
    disks: list[DiskUsage] = []
    pending = ""
    for raw in lines[1:]:
        line = f"{pending} {raw.strip()}" if pending else raw
        if len(line.split()) == 1:
            pending = line.strip()
            continue
        pending = ""
        parts = line.split(None, 6)
        if len(parts) != 7:
            raise FactParseError("disks", line, "expected 7 columns")
        device, fstype, size, used, avail, capacity, mount = parts
        if fstype in PSEUDO_FILESYSTEMS or fstype.startswith("cgroup"):
            continue
        if capacity == "-":
            # df prints '-' when the size is 0; nothing is used of nothing.
            used_pct = 0.0
        elif capacity.endswith("%"):
            used_pct = float(_int("disks", capacity[:-1], line))
        else:
            raise FactParseError("disks", line, f"bad capacity {capacity!r}")
        disks.append(
            DiskUsage(
                device=device,
                mount=mount.rstrip(),
                fstype=fstype,
                size_b=_int("disks", size, line),
                used_b=_int("disks", used, line),
                avail_b=_int("disks", avail, line),
                used_pct=used_pct,
            )
        )
    if pending:
        raise FactParseError("disks", pending, "device line without its columns")
    return disks


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


def _split_endpoint(fact: str, endpoint: str, line: str) -> tuple[str, int, str | None]:
    """``[::1]:22``, ``[fe80::1]%eth0:546``, ``127.0.0.53%lo:53``, ``*:80`` -> parts."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise FactParseError(fact, line, f"bad local address {endpoint!r}")
    interface: str | None = None
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith("%")):
            raise FactParseError(fact, line, f"bad IPv6 address {endpoint!r}")
        interface = rest[1:] or None
    else:
        address, _, scope = host.partition("%")
        interface = scope or None
    return address, _int(fact, port, line), interface


def parse_ss_listening(text: str) -> list[ListeningPort]:
    """Parse ``ss -Htlnu`` (``LISTENING_PORTS``): listening TCP and bound UDP sockets.

    Addresses lose their brackets (``[::]`` -> ``::``), a ``%dev`` scope becomes
    ``interface``, and ``*`` (every IPv4 and IPv6 address) stays ``*``. Identical
    sockets (SO_REUSEPORT workers) are listed once.

    Raises:
        FactParseError: a line is not ``proto state recvq sendq local peer``.
    """
    ports: list[ListeningPort] = []
    for line in _lines(text):
        parts = line.split()
        if len(parts) < 6 or parts[0] not in ("tcp", "udp"):
            raise FactParseError("listening_ports", line, "expected 'tcp|udp state q q local peer'")
        address, port, interface = _split_endpoint("listening_ports", parts[4], line)
        entry = ListeningPort(
            proto="tcp" if parts[0] == "tcp" else "udp",
            address=address,
            port=port,
            interface=interface,
        )
        if entry not in ports:
            ports.append(entry)
    return ports


_NO_SYSTEMD_MARKERS = (
    "System has not been booted with systemd",
    "Failed to connect to bus",
    "Failed to connect to system scope bus",
    "systemctl: not found",
    "systemctl: command not found",
)


def parse_failed_services(text: str) -> FailedServices:
    """Parse ``FAILED_SERVICES``: failed units, or unknown when systemd is not running.

    On a host without systemd (containers, our sandbox hosts) systemctl cannot
    answer; that is reported as ``known=False`` with systemctl's own words, never as
    "no failed units".

    Raises:
        FactParseError: no ``rc=`` line, an unexpected non-zero exit, or a line that
            is not a unit.
    """
    rc, body = _split_rc("failed_services", text)
    for line in body:
        if any(marker in line for marker in _NO_SYSTEMD_MARKERS):
            return FailedServices(known=False, reason=body[0].strip())
    if rc == 127:
        return FailedServices(known=False, reason="systemctl is not installed")
    if rc != 0:
        raise FactParseError("failed_services", body[-1] if body else f"rc={rc}", f"exit {rc}")
    units: list[str] = []
    for line in body:
        # --plain drops the status bullet, but older systemd printed one anyway.
        words = line.strip().lstrip("●*").split()
        if not words or "." not in words[0]:
            raise FactParseError("failed_services", line, "not a unit line")
        units.append(words[0])
    return FailedServices(known=True, units=units)


_SSHD_YES_NO = {"yes": True, "no": False}


def parse_sshd_effective(text: str) -> SshdSettings:
    """Parse ``sshd -T`` (``SSHD_EFFECTIVE``): one ``keyword value`` per line.

    Raises:
        FactParseError: sshd refused its configuration (its message is the line), or a
            keyword the audit reads is missing or has a value sshd does not print.
    """
    values: dict[str, str] = {}
    for line in _lines(text):
        keyword, _, value = line.strip().partition(" ")
        if not keyword.isalnum() or keyword.lower() != keyword:
            raise FactParseError("sshd", line, "not a 'keyword value' line of sshd -T")
        values.setdefault(keyword, value.strip())

    def flag(keyword: str) -> bool:
        value = values.get(keyword)
        if value not in _SSHD_YES_NO:
            raise FactParseError("sshd", f"{keyword} {value or ''}".strip(), "expected yes or no")
        return _SSHD_YES_NO[value]

    root = values.get("permitrootlogin")
    # sshd -T prints prohibit-password under its old name.
    root = "prohibit-password" if root == "without-password" else root
    if root not in ("yes", "prohibit-password", "forced-commands-only", "no"):
        raise FactParseError("sshd", f"permitrootlogin {root or ''}".strip(), "unknown value")
    return SshdSettings(
        permit_root_login=root,
        password_authentication=flag("passwordauthentication"),
        # OpenSSH 8.7 renamed challengeresponseauthentication; older ones print that.
        kbd_interactive_authentication=(
            flag("kbdinteractiveauthentication")
            if "kbdinteractiveauthentication" in values
            else flag("challengeresponseauthentication")
        ),
        permit_empty_passwords=flag("permitemptypasswords"),
    )


_NFT_INPUT_CHAIN = re.compile(
    r"type\s+filter\s+hook\s+input\b[^;]*;(?:\s*device[^;]*;)?\s*policy\s+(accept|drop)\s*;"
)


def _drops_all(rule: str) -> bool:
    """``-A INPUT -j DROP`` / ``-j REJECT [--reject-with ...]``: no match before the jump."""
    words = rule.split()
    return words[:3] == ["-A", "INPUT", "-j"] and len(words) > 3 and words[3] in ("DROP", "REJECT")


def parse_firewall(text: str) -> Firewall:
    """Parse ``FIREWALL``: is inbound traffic that no rule accepts dropped?

    nftables: yes when a base chain on the ``input`` hook has ``policy drop`` (a packet
    must pass every base chain of the hook). iptables: yes when the INPUT chain's policy
    is DROP, or its last rule drops or rejects everything (``-A INPUT -j DROP``).

    Raises:
        FactParseError: no ``tool=`` line, or no ``rc=`` line after a tool's output.
    """
    lines = _lines(text)
    if not lines or not lines[0].startswith("tool="):
        raise FactParseError("firewall", lines[0] if lines else text, "expected tool=...")
    tool = lines[0].removeprefix("tool=").strip()
    if tool == "none":
        return Firewall(tool=None, known=False, detail="neither nft nor iptables is installed")
    if tool not in ("nft", "iptables"):
        raise FactParseError("firewall", lines[0], "expected tool=nft, iptables or none")
    rc, body = _split_rc("firewall", "\n".join(lines[1:]))
    if rc != 0:
        said = body[0].strip() if body else f"exit {rc}"
        return Firewall(tool=tool, known=False, detail=f"{tool} could not answer: {said}")
    if tool == "nft":
        policies = _NFT_INPUT_CHAIN.findall("\n".join(body))
        if not policies:
            return Firewall(tool="nft", known=True, default_deny=False, detail="no input chain")
        deny = "drop" in policies
        return Firewall(
            tool="nft",
            known=True,
            default_deny=deny,
            detail="an input chain drops by default" if deny else "input chains accept by default",
        )
    rules = [" ".join(line.split()) for line in body]
    policy = next((r.split()[2] for r in rules if r.startswith("-P INPUT ")), None)
    if policy is None:
        raise FactParseError("firewall", body[0] if body else "", "no -P INPUT line")
    last_drops = _drops_all(rules[-1])
    return Firewall(
        tool="iptables",
        known=True,
        default_deny=policy == "DROP" or last_drops,
        detail=f"INPUT policy {policy}" + (", last rule drops all" if last_drops else ""),
    )


_LOG_FILE_LINE = re.compile(r"^file=(\S+) errors=(\d+) auth_failures=(\d+)$")


def parse_log_review(text: str) -> LogReview:
    """Parse ``LOG_REVIEW``: counts from the journal, or per log file (added up).

    Raises:
        FactParseError: no ``source=`` line, or a line that is not a count.
    """
    lines = [line.strip() for line in _lines(text)]
    if not lines or lines[0] not in ("source=journal", "source=files"):
        raise FactParseError("log_review", lines[0] if lines else text, "expected source=...")
    if lines[0] == "source=journal":
        values = dict(line.partition("=")[::2] for line in lines[1:])
        try:
            return LogReview(
                source="journal",
                errors=int(values["errors"]),
                auth_failures=int(values["auth_failures"]),
            )
        except (KeyError, ValueError):
            raise FactParseError(
                "log_review", text, "expected errors=N and auth_failures=N"
            ) from None
    files: list[str] = []
    errors = failures = 0
    for line in lines[1:]:
        match = _LOG_FILE_LINE.match(line)
        if match is None:
            raise FactParseError("log_review", line, "expected file=... errors=N auth_failures=N")
        files.append(match.group(1))
        errors += int(match.group(2))
        failures += int(match.group(3))
    return LogReview(source="files", files=files, errors=errors, auth_failures=failures)


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


def parse_dnf_check_update(text: str) -> list[PackageUpdate]:
    """Parse ``DNF_CHECK_UPDATE``: ``name.arch  version  repo`` lines and ``rc=``.

    ``dnf check-update`` exits 100 when updates exist, 0 when none, 1 on error. It
    does not print the installed version (``current`` is None) and cannot tell
    security updates apart, so ``security`` is only true for a repository whose id
    ends in ``-security``. The "Obsoleting Packages" section is not read. A long
    ``name.arch`` that dnf wraps onto its own line is joined with the next.

    Raises:
        FactParseError: rc is neither 0 nor 100, or a line has not three columns.
    """
    rc, body = _split_rc("dnf_updates", text)
    if rc not in (0, 100):
        raise FactParseError("dnf_updates", body[-1] if body else f"rc={rc}", f"exit {rc}")
    updates: list[PackageUpdate] = []
    pending = ""
    for raw in body:
        if raw.startswith("Obsoleting Packages"):
            break
        line = f"{pending} {raw.strip()}" if pending else raw.strip()
        parts = line.split()
        if len(parts) == 1:
            pending = line
            continue
        pending = ""
        if len(parts) != 3 or "." not in parts[0]:
            raise FactParseError("dnf_updates", raw, "expected 'name.arch version repo'")
        name, arch = parts[0].rsplit(".", 1)
        updates.append(
            PackageUpdate(
                name=name,
                current=None,
                candidate=parts[1],
                suites=[parts[2]],
                arch=arch,
                security=_is_security([parts[2]]),
            )
        )
    if pending:
        raise FactParseError("dnf_updates", pending, "package line without its columns")
    if rc == 100 and not updates:
        raise FactParseError("dnf_updates", "rc=100", "exit 100 but no package listed")
    return updates


def parse_dnf_needs_restarting(text: str) -> RebootRequired:
    """Parse ``DNF_NEEDS_RESTARTING`` (``needs-restarting -r``).

    Exit 1 with "Reboot is required" means a reboot is needed (the ``  * name``
    lines say which packages); exit 0 with "Reboot should not be necessary" means
    not. Anything else (dnf failing with exit 1 and no verdict, the tool missing) is
    an error, never a guess.

    Raises:
        FactParseError: exit code and verdict do not agree, or there is no verdict.
    """
    rc, body = _split_rc("dnf_reboot_required", text)
    joined = "\n".join(body)
    if rc == 1 and "Reboot is required" in joined:
        packages = [m.group(1) for line in body if (m := re.match(r"^\s+\*\s+(\S+)", line))]
        return RebootRequired(required=True, packages=packages)
    if rc == 0 and "Reboot should not be necessary" in joined:
        return RebootRequired(required=False)
    raise FactParseError(
        "dnf_reboot_required", body[-1] if body else f"rc={rc}", f"no verdict (exit {rc})"
    )


# -------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One fact: its name, the command that reads it and the parser of its output.

    Attributes:
        name: key in ``FACTS`` and field of ``HostFacts``.
        command: POSIX shell command run on the host.
        parse: pure parser of the command's stdout.
        families: OS families the fact applies to.
        ok_exit_codes: exit codes whose output is parsed; any other is an error.
    """

    name: str
    command: str
    parse: Callable[[str], T]
    families: frozenset[str] = ALL_FAMILIES
    ok_exit_codes: frozenset[int] = frozenset({0})


_DEBIAN = frozenset({"debian"})
_RHEL = frozenset({"rhel"})

FACTS: dict[str, Fact[Any]] = {
    f.name: f
    for f in (
        Fact("os", OS_RELEASE, parse_os_release),
        Fact("kernel", KERNEL_RELEASE, parse_kernel_release),
        Fact("boot_id", BOOT_ID, parse_boot_id),
        Fact("uptime", UPTIME, parse_uptime),
        Fact("load", LOADAVG, parse_loadavg),
        Fact("memory", MEMINFO, parse_meminfo),
        # df exits 1 when one filesystem could not be read (stale NFS, permission);
        # the others are still listed and worth having.
        Fact("disks", DF, parse_df, ok_exit_codes=frozenset({0, 1})),
        Fact("apt_upgradable", APT_UPGRADABLE, parse_apt_upgradable, _DEBIAN),
        Fact("apt_simulation", APT_SIMULATE_DIST_UPGRADE, parse_apt_simulation, _DEBIAN),
        Fact("apt_simulation_upgrade", APT_SIMULATE_UPGRADE, parse_apt_simulation_upgrade, _DEBIAN),
        Fact("reboot_required", REBOOT_REQUIRED, parse_reboot_required, _DEBIAN),
        Fact("listening_ports", LISTENING_PORTS, parse_ss_listening),
        Fact("failed_services", FAILED_SERVICES, parse_failed_services),
        Fact("held_packages", APT_HELD, parse_apt_held, _DEBIAN),
        Fact("sshd", SSHD_EFFECTIVE, parse_sshd_effective),
        Fact("firewall", FIREWALL, parse_firewall),
        Fact("log_review", LOG_REVIEW, parse_log_review),
        Fact("dnf_updates", DNF_CHECK_UPDATE, parse_dnf_check_update, _RHEL),
        Fact("dnf_reboot_required", DNF_NEEDS_RESTARTING, parse_dnf_needs_restarting, _RHEL),
    )
}


def facts_for_family(family: str) -> list[str]:
    """Names of the facts that apply to an OS family, in registry order."""
    return [name for name, fact in FACTS.items() if family in fact.families]


# ------------------------------------------------------------------------- collector

_MARK_BEGIN = "@@caretaker:begin@@"
_SECTION_END = re.compile(r"\n@@caretaker:(?P<name>[a-z0-9_]+):(?P<rc>\d+)@@(?:\n|$)")


def build_facts_script(names: Sequence[str]) -> str:
    """Build one POSIX sh script that reads the named facts in one round trip.

    Each command runs in a subshell with stdin from /dev/null (so a command cannot
    swallow the rest of a script fed on stdin) under ``LC_ALL=C``; after it the
    script prints ``\\n@@caretaker:<name>:<exit code>@@``. The leading newline
    ends a last line that has none; ``split_facts_output`` removes exactly that
    newline. The script itself always exits 0: failures are per fact.

    Args:
        names: fact names (keys of ``FACTS``); duplicates are run once.

    Returns:
        The script text.

    Raises:
        KeyError: an unknown fact name.
    """
    unknown = [n for n in names if n not in FACTS]
    if unknown:
        raise KeyError(f"unknown facts: {', '.join(unknown)} (known: {', '.join(FACTS)})")
    parts = [
        "LC_ALL=C",
        "export LC_ALL",
        # Anything a login script printed before this line is dropped by the splitter.
        f"printf '%s\\n' '{_MARK_BEGIN}'",
    ]
    for name in dict.fromkeys(names):
        parts.append(f"(\n{FACTS[name].command}\n) </dev/null")
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
