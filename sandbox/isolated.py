"""Isolated hosts: a throwaway host booted from a disk, reachable only from the root namespace.

What a sandbox restore test boots its copy on (``Estate.boot_isolated``). The host gets
its own network namespace joined to the root namespace by a veth pair on a /30 of
:data:`ISOLATED_NET` (no bridge), ``unreachable`` routes for every private range and no
default route: it can talk to us and to nothing else. :meth:`IsolatedHost.teardown`
removes every process, link and namespace of it and says what it could not.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.errors import SandboxError
from sandbox.paths import estates_dir
from sandbox.system import (
    alive,
    configure_inside,
    first_child,
    pid_namespace_members,
    run,
    wait_gone,
)

# The /24 isolated hosts take their /30s from; estates use 10.213.N.0/24 with N < 250.
ISOLATED_NET = ipaddress.IPv4Network("10.213.250.0/24")


class IsolatedHost:
    """A throwaway host booted by :func:`boot`; ``teardown`` removes all of it."""

    def __init__(
        self, *, name: str, disk: Path, netns: str, veth: str, address: str, peer: str
    ) -> None:
        self.name = name
        self.disk = disk
        self.netns = netns
        self.veth = veth
        #: The host's address; ``peer`` is ours on the other end of the veth pair.
        self.address = address
        self.peer = peer
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def init_pid(self) -> int | None:
        """PID (root namespace) of the host's init, or None before it started."""
        if self.process is None:
            return None
        return first_child(self.process.pid)

    def teardown(self, wait: float = 10.0) -> list[str]:
        """Kill every process of the host, delete its veth pair and namespace.

        The disk folder is the caller's. Returns what is still there afterwards (empty
        when everything is gone), never raises for leftovers.
        """
        init = self.init_pid
        members = pid_namespace_members(init) if init else []
        if self.process is not None:
            # unshare ignores SIGTERM; SIGKILL takes its init (--kill-child) and the namespace.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
        with contextlib.suppress(SandboxError):
            wait_gone(members, wait, f"isolated host {self.name}")
        run(["ip", "link", "del", self.veth], check=False)
        run(["ip", "netns", "del", self.netns], check=False)
        return self.leftovers(members)

    def leftovers(self, members: Iterable[int] = ()) -> list[str]:
        """What of the host still exists: processes, the veth, the namespace."""
        found = [f"process {pid}" for pid in members if alive(pid)]
        if self.process is not None and self.process.poll() is None:
            found.append(f"process {self.process.pid} (unshare)")
        if run(["ip", "link", "show", self.veth], check=False).returncode == 0:
            found.append(f"link {self.veth}")
        netns = run(["ip", "netns", "list"], check=False).stdout.split()
        if self.netns in netns:
            found.append(f"netns {self.netns}")
        return found


def boot(
    hostname: str,
    disk: Path,
    *,
    init_script: Path,
    lower: str,
    repo_root: Path,
    subnet: ipaddress.IPv4Network | None = None,
) -> IsolatedHost:
    """Boot a throwaway host from ``disk/upper`` that only the root namespace can reach.

    Args:
        hostname: Host name inside the copy.
        disk: A folder holding ``upper/``; ``work/``, ``root/``, ``boot_id`` and
            ``console.log`` are created beside it.
        init_script: The host init script.
        lower: The overlay lower dirs (shared read-only with the estate's hosts).
        repo_root: The estate's apt repository, mounted read-only.
        subnet: A /30 to use; default: the first free one of ``ISOLATED_NET``.

    Returns:
        The running host; call ``teardown()`` when done.
    """
    for sub in ("work", "root"):
        (disk / sub).mkdir(parents=True, exist_ok=True)
    if not (disk / "upper").is_dir():
        raise SandboxError(f"{disk}/upper does not exist")
    with _isolated_net_lock():
        net = subnet or _free_isolated_subnet()
        block = int(net.network_address) - int(ISOLATED_NET.network_address)
        ours, theirs = (str(a) for a in list(net.hosts())[:2])
        host = IsolatedHost(
            name=hostname,
            disk=disk,
            netns=f"ctkiso-{block}",
            veth=f"ctkiso{block}",
            address=theirs,
            peer=ours,
        )
        # A namespace of that name can only be a leftover of a crashed run.
        run(["ip", "netns", "del", host.netns], check=False)
        try:
            run(["ip", "netns", "add", host.netns])
            run(
                [
                    "ip", "link", "add", host.veth, "type", "veth",
                    "peer", "name", "eth0", "netns", host.netns,
                ]
            )  # fmt: skip
            run(["ip", "addr", "add", f"{ours}/{net.prefixlen}", "dev", host.veth])
            run(["ip", "link", "set", host.veth, "up"])
        except SandboxError:
            host.teardown()
            raise
    try:
        configure_inside(host.netns, f"{theirs}/{net.prefixlen}")
        with open(disk / "console.log", "a") as out:
            host.process = subprocess.Popen(
                [
                    "ip", "netns", "exec", host.netns,
                    "unshare", "--fork", "--pid", "--mount", "--uts",
                    "--kill-child=SIGKILL", "--propagation", "private",
                    "/bin/bash", str(init_script), str(disk), hostname, lower, str(repo_root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )  # fmt: skip
    except (SandboxError, OSError):
        host.teardown()
        raise
    return host


def _free_isolated_subnet() -> ipaddress.IPv4Network:
    """The first /30 of ISOLATED_NET with no address on any root-namespace interface."""
    out = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used: set[ipaddress.IPv4Network] = set()
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            interface = ipaddress.IPv4Interface(fields[fields.index("inet") + 1])
            if interface.ip in ISOLATED_NET:
                used.add(ipaddress.IPv4Network(f"{interface.ip}/30", strict=False))
    for subnet in ISOLATED_NET.subnets(new_prefix=30):
        if subnet not in used:
            return subnet
    raise SandboxError(f"no free /30 left in {ISOLATED_NET} for an isolated host")


@contextlib.contextmanager
def _isolated_net_lock() -> Iterator[None]:
    """An exclusive lock while a /30 is chosen and claimed (parallel restore tests)."""
    fd = os.open(estates_dir() / ".isolated-net.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
