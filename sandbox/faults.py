"""Faults on demand for the sandbox estate: the failures a real estate has.

- ``stop_sshd`` / ``start_sshd``: the host is up but SSH refuses connections.
- ``cut_link`` / ``restore_link``: the host's network link is down (timeouts).
- ``hold_dpkg_lock`` / ``release_dpkg_lock``: another process holds dpkg's lock.
- ``no_boot``: the next reboot never comes back.
- ``publish_broken``: a package version whose postinst fails.
- ``fill_disk`` / ``free_disk``: the host's ``/var`` is a small filesystem of its own,
  nearly full (a loop-mounted ext4 image holding a copy of ``/var``).
- ``in_host``: a shell command run inside a host (as its PID 1 sees it), e.g. to kill
  the processes an SSH session left running when its sshd was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import SandboxError
from sandbox.repo import PackageSpec

if TYPE_CHECKING:
    from sandbox.estate import Estate

# Holds an fcntl lock (the kind dpkg and apt take) on a file until killed.
_LOCK_HOLDER = """
import fcntl, os, sys, time
fds = []
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("locked", flush=True)
time.sleep(86400)
"""


def _init_pid(estate: Estate, host: str) -> int:
    """The host's init; a VM host (sandbox.vm) has no namespaces to enter."""
    if estate.host(host).kind == "vm":
        raise SandboxError(f"{host} is a VM host: this fault is for namespace hosts only")
    pid = estate.init_pid(host)
    if pid is None:
        raise SandboxError(f"{host} is not running")
    return pid


def _nsenter(estate: Estate, host: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    pid = _init_pid(estate, host)
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "-r", "-w", *cmd],
        capture_output=True,
        text=True,
        check=False,
    )


def stop_sshd(estate: Estate, host: str) -> None:
    """Kill the host's sshd; the host stays up, connections are refused."""
    _nsenter(estate, host, "sh", "-c", "kill $(cat /run/sshd.pid) 2>/dev/null; pkill -x sshd; true")


def start_sshd(estate: Estate, host: str) -> None:
    """Start sshd again on a host where it was stopped (``-r`` as the host's init starts it)."""
    proc = _nsenter(estate, host, "/usr/sbin/sshd", "-r")
    if proc.returncode != 0:
        raise SandboxError(f"{host}: sshd did not start: {proc.stderr.strip()}")


def cut_link(estate: Estate, host: str) -> None:
    """Take the host's link down: packets to it vanish (connections time out)."""
    spec = estate.host(host)
    subprocess.run(["ip", "link", "set", estate.spec.veth(spec), "down"], check=True)


def restore_link(estate: Estate, host: str) -> None:
    """Bring the host's link back."""
    spec = estate.host(host)
    subprocess.run(["ip", "link", "set", estate.spec.veth(spec), "up"], check=True)


def _lock_pid_file(estate: Estate, host: str) -> Path:
    return estate.host_dir(host) / "dpkg-lock.pid"


def hold_dpkg_lock(estate: Estate, host: str) -> int:
    """Hold dpkg's frontend and database locks on ``host`` until released.

    The lock is taken through ``/proc/<init>/root``, on the very inode apt sees
    inside the host, so apt-get on the host finds it held.
    """
    pid = _init_pid(estate, host)
    root = f"/proc/{pid}/root/var/lib/dpkg"
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, f"{root}/lock-frontend", f"{root}/lock"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "locked":
        raise SandboxError(f"{host}: could not take the dpkg lock")
    _lock_pid_file(estate, host).write_text(f"{proc.pid}\n")
    return proc.pid


def release_dpkg_lock(estate: Estate, host: str) -> None:
    """Release a lock taken by ``hold_dpkg_lock``."""
    path = _lock_pid_file(estate, host)
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    path.unlink(missing_ok=True)


def no_boot(estate: Estate, host: str, on: bool = True) -> None:
    """While on, a rebooted host does not come back."""
    flag = estate.host_dir(host) / "no-boot"
    if on:
        flag.write_text("")
    else:
        flag.unlink(missing_ok=True)


def publish_broken(estate: Estate, name: str, version: str) -> None:
    """Publish a version of ``name`` whose postinst fails."""
    estate.publish(PackageSpec(name=name, version=version, broken=True))


def in_host(estate: Estate, host: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c script`` inside ``host`` (its namespaces and root), not over SSH."""
    return _nsenter(estate, host, "sh", "-c", script)


def _disk_image(estate: Estate, host: str) -> Path:
    return estate.host_dir(host) / "var-full.img"


def fill_disk(estate: Estate, host: str, free_mb: int = 10, size_mb: int = 128) -> None:
    """Give ``host`` a ``/var`` of its own, ``size_mb`` large with ``free_mb`` left free.

    A real filesystem (ext4 on a loop device), so ``df`` on the host reports it as it
    would a full disk; it holds a copy of the host's ``/var``, so the host keeps working.
    Writes to it are lost at ``free_disk``.
    """
    pid = estate.init_pid(host)
    if pid is None:
        raise SandboxError(f"{host} is not running")
    image = _disk_image(estate, host)
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    (estate.host_dir(host) / "var-full.dev").write_text(device + "\n")
    work = estate.host_dir(host) / "var-full.mnt"
    work.mkdir(exist_ok=True)
    subprocess.run(["mount", device, str(work)], check=True)
    try:
        subprocess.run(["cp", "-a", f"/proc/{pid}/root/var/.", str(work)], check=True)
        stat = os.statvfs(work)
        fill = stat.f_bavail * stat.f_frsize - free_mb * 2**20
        if fill > 0:
            subprocess.run(["fallocate", "-l", str(fill), str(work / "fill")], check=True)
    finally:
        subprocess.run(["umount", str(work)], check=True)
    proc = in_host(estate, host, f"mount {device} /var")
    if proc.returncode != 0:
        free_disk(estate, host)
        raise SandboxError(f"{host}: could not mount the full /var: {proc.stderr.strip()}")


def free_disk(estate: Estate, host: str) -> None:
    """Undo ``fill_disk``: the host's own ``/var`` is back, the image is gone."""
    marker = estate.host_dir(host) / "var-full.dev"
    if not marker.exists():
        return
    if estate.init_pid(host) is not None:
        in_host(estate, host, "umount /var")
    subprocess.run(["losetup", "-d", marker.read_text().strip()], check=False)
    marker.unlink()
    _disk_image(estate, host).unlink(missing_ok=True)
    (estate.host_dir(host) / "var-full.mnt").rmdir()


def release_all(estate: Estate) -> None:
    """Undo every fault that leaves a process or a down link behind."""
    for host in estate.spec.hosts:
        release_dpkg_lock(estate, host.name)
        no_boot(estate, host.name, on=False)
        free_disk(estate, host.name)
