"""What the sandbox asks of the machine: commands, processes, PID namespaces, TCP probes.

Shared by the estate (its hosts) and the isolated restore-test hosts: running a command
and turning a failure into :class:`~core.errors.SandboxError`, telling whether a PID is
alive (a zombie is not), listing and outliving the members of a PID namespace, and
sealing a host's network namespace so nothing it does can leave the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from core.errors import SandboxError

#: Every private range is ``unreachable`` inside a host's namespace (and there is no
#: default route): a host can talk to us and to its estate, nothing else.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; with ``check``, a non-zero exit is a SandboxError with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    state = process_state(pid)
    return state is not None and state != "Z"


def process_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/<pid>/stat`` (R, S, D, T, Z, ...), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def read_pid(path: Path) -> int | None:
    """The PID written in ``path``, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def first_child(pid: int) -> int | None:
    """The first child of ``pid`` (a host's init under its ``unshare``), or None."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def tcp_open(address: str, port: int, timeout: float = 0.3) -> bool:
    """Something accepts TCP connections at ``address:port``."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_namespace_members(pid: int) -> list[int]:
    """Every process (by root-namespace PID) in the PID namespace of ``pid``."""
    try:
        target = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") == target:
                members.append(int(entry.name))
        except OSError:
            continue  # exited while we looked
    return sorted(members)


def process_group_members(pgid: int) -> list[int]:
    """Every live process (zombies not counted) of the process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return sorted(members)


def wait_gone(pids: Iterable[int], wait: float, what: str) -> None:
    """Wait until none of ``pids`` is alive; SandboxError naming them after ``wait`` s."""
    pending = list(pids)
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if alive(pid)]
        if pending:
            time.sleep(0.05)
    if pending:
        raise SandboxError(f"{what}: processes {pending} still alive after {wait:g}s")


def configure_inside(netns: str, interface: str) -> None:
    """Inside ``netns``: loopback up, ``eth0`` at ``interface`` (address/prefix) and up,
    and every private range unreachable."""
    inside = ["ip", "netns", "exec", netns]
    run([*inside, "ip", "link", "set", "lo", "up"])
    run([*inside, "ip", "addr", "replace", interface, "dev", "eth0"])
    run([*inside, "ip", "link", "set", "eth0", "up"])
    for net in PRIVATE_RANGES:
        run([*inside, "ip", "route", "replace", "unreachable", net])
