"""Server facts: what the host is and how it is doing (os-release, kernel, boot id,
uptime, load, memory, filesystems), each command beside its model and parser.
"""

from __future__ import annotations

import re
import shlex
import uuid

from pydantic import Field

from core.errors import FactParseError
from tasks.facts.base import Family, _float, _Frozen, _int, _lines, _single_line

OS_RELEASE = "cat /etc/os-release"
KERNEL_RELEASE = "uname -r"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
UPTIME = "cat /proc/uptime"
LOADAVG = "cat /proc/loadavg"
MEMINFO = "cat /proc/meminfo"
# -P keeps one line per filesystem on GNU df and makes the columns fixed; -B1 gives
# bytes so nothing depends on df's rounding to K/M/G.
DF = "df -PT -B1"


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
