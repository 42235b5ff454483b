"""The VM tier of the sandbox: real Debian servers (systemd, journal, nftables, a kernel).

Each VM host is a QEMU process (TCG; KVM only when a timed probe boot shows it works,
never because ``/dev/kvm`` exists) booting the cached VM image's kernel directly, with
its own qcow2 overlay as its disk, a tap device on the estate's bridge as its NIC (the
same network as the namespace hosts: nothing else is routed to it), a QMP socket and
the agent's virtio serial socket in ``<estate>/vms/<name>/``.

Booting is slow under TCG (~30 s), so a VM is not booted: it is *started from a
checkpoint*. One template VM is booted once per image and saved (RAM and disk,
``snapshot-save`` over QMP) into ``<image>/checkpoint/``; every VM host starts from a
copy of that overlay with ``-loadvm`` in a few seconds. A clone then shares its
template's boot id, machine id, MAC address and frozen clock, so the agent (a shell on
a virtio serial port, reachable only through the QEMU process's unix socket) gives it
its own identity first: clock, entropy, MAC, address, hostname, machine id, SSH host key
(made here, per VM, and written to the estate's known_hosts like every host's),
authorised keys and apt sources (the estate's repository served over HTTP on the
bridge's address). The host is then saved again as ``ready``: the per-test rollback
(``load(tag)``, ~0.2 s) and the snapshot provider's restores load such saved states.

Everything is killed with SIGKILL by process group on ``stop``; nothing survives
``Estate.down``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import SandboxError
from sandbox.system import alive, read_pid, run, tcp_open
from sandbox.vm_image import AGENT_PORT, VmImage, ensure_vm_image

log = logging.getLogger(__name__)

MEMORY_MB = 512
TEMPLATE_TAG = "ctk-template"
READY_TAG = "ready"


# ----------------------------------------------------------------------------- QMP


class Qmp:
    """A minimal QMP client on a unix socket (one command at a time, events skipped)."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise SandboxError(f"QMP {path}: {exc}") from exc
        self._buf = b""
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise SandboxError(f"QMP: {exc}") from exc
            if not chunk:
                raise SandboxError("QMP: QEMU closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises:
            SandboxError: QEMU answered with an error.
        """
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise SandboxError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def run_job(self, command: str, job_id: str, timeout: float = 300.0, **arguments: Any) -> None:
        """Start a job command (snapshot-save/-load/-delete) and wait until it concludes.

        Raises:
            SandboxError: the job failed (its error) or did not conclude in ``timeout`` s.
        """
        self.execute(command, **{"job-id": job_id, **arguments})
        deadline = time.monotonic() + timeout
        while True:
            jobs = {j["id"]: j for j in self.execute("query-jobs")}
            job = jobs.get(job_id)
            if job is None:
                raise SandboxError(f"QMP {command}: job {job_id} vanished")
            if job["status"] == "concluded":
                self.execute("job-dismiss", id=job_id)
                if job.get("error"):
                    raise SandboxError(f"QMP {command}: {job['error']}")
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"QMP {command}: not concluded after {timeout:g}s")
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- accel


def accelerator(image: VmImage) -> str:
    """``kvm`` when a probe boot under KVM reaches the kernel's console in time, else ``tcg``.

    The answer is cached beside the image (``accel``); ``/dev/kvm`` existing proves nothing
    (a PVM host has it, and a stock kernel never boots there).
    """
    cached = image.folder / "accel"
    if cached.exists():
        return cached.read_text().strip()
    answer = "tcg"
    if os.path.exists("/dev/kvm"):
        answer = "kvm" if _probe_kvm(image) else "tcg"
    cached.write_text(answer + "\n")
    log.info("VM accelerator: %s", answer)
    return answer


def _probe_kvm(image: VmImage, timeout: float = 8.0) -> bool:
    console = image.folder / "kvm-probe.log"
    console.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(image.kernel),
            "-append",
            "console=ttyS0 panic=-1 init=/bin/false",
            "-serial",
            f"file:{console}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    booted = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if console.exists() and b"Kernel command line" in console.read_bytes():
                booted = True
                break
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return booted


# ----------------------------------------------------------------------------- machine


def mac_for(name: str, address: str) -> str:
    """A stable locally administered MAC for a VM (52:54:00 is QEMU's prefix)."""
    digest = hashlib.sha256(f"{name}/{address}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def qemu_command(
    image: VmImage,
    folder: Path,
    *,
    accel: str,
    netdev: str,
    mac: str,
    loadvm: str | None = None,
) -> list[str]:
    """The QEMU command line of a VM: the same machine for the template and every clone
    (``-loadvm`` needs the same devices in the same order), only the netdev and MAC differ."""
    cmd = [
        "qemu-system-x86_64",
        "-name",
        folder.name,
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi,tb-size=64" if accel == "tcg" else "kvm",
        "-cpu",
        "qemu64" if accel == "tcg" else "host",
        "-m",
        str(MEMORY_MB),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        "root=LABEL=ctkroot ro console=ttyS0 quiet net.ifnames=1 systemd.show_status=0",
        "-serial",
        f"file:{folder / 'console.log'}",
        "-blockdev",
        f"driver=file,node-name=file0,filename={folder / 'disk.qcow2'}",
        "-blockdev",
        "driver=qcow2,node-name=disk0,file=file0",
        "-device",
        "virtio-blk-pci,drive=disk0",
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        "-device",
        "virtio-serial-pci",
        # A pipe (two FIFOs), not a socket: the guest's side of the port stays connected,
        # so the agent blocks in read() instead of seeing EOF between two calls.
        "-chardev",
        f"pipe,id=agent,path={folder / 'agent'}",
        "-device",
        f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-device",
        "virtio-rng-pci",
        "-qmp",
        f"unix:{folder / 'qmp.sock'},server=on,wait=off",
        "-pidfile",
        str(folder / "qemu.pid"),
    ]
    if loadvm:
        cmd += ["-loadvm", loadvm]
    return cmd


class Vm:
    """One QEMU machine, driven from its folder (disk, sockets, pid, console)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def pid(self) -> int | None:
        pid = read_pid(self.folder / "qemu.pid")
        return pid if alive(pid) else None

    def start(self, cmd: list[str], wait: float = 30.0) -> None:
        """Start QEMU (its own session, so stop() kills the whole group) and wait for QMP."""
        for stale in ("qmp.sock", "qemu.pid"):
            (self.folder / stale).unlink(missing_ok=True)
        for fifo in ("agent.in", "agent.out"):
            if not (self.folder / fifo).exists():
                os.mkfifo(self.folder / fifo, 0o600)
        with open(self.folder / "qemu.log", "a") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        (self.folder / "qemu.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + wait
        while not (self.folder / "qmp.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "qemu.log").read_text()[-1500:]
                self.stop()
                raise SandboxError(f"QEMU for {self.folder.name} did not start:\n{tail}")
            time.sleep(0.05)
        # -loadvm is done before the monitor answers: QMP answering means the VM runs.
        try:
            with self.qmp(timeout=wait) as qmp:
                status = qmp.execute("query-status")
        except SandboxError as exc:
            time.sleep(0.2)
            tail = (self.folder / "qemu.log").read_text()[-1500:]
            self.stop()
            raise SandboxError(f"QEMU for {self.folder.name}: {exc}:\n{tail}") from exc
        if status.get("status") != "running":
            tail = (self.folder / "qemu.log").read_text()[-1500:]
            self.stop()
            raise SandboxError(f"{self.folder.name}: VM is {status.get('status')}:\n{tail}")

    def stop(self) -> None:
        """SIGKILL QEMU's process group and wait for it to go."""
        pid = read_pid(self.folder / "qemu.pid")
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        for stale in ("qemu.pid", "qmp.sock"):
            (self.folder / stale).unlink(missing_ok=True)

    def qmp(self, timeout: float = 120.0) -> Qmp:
        if self.pid is None:
            raise SandboxError(f"VM {self.folder.name} is not running")
        return Qmp(self.folder / "qmp.sock", timeout=timeout)

    # ---- saved states (internal qcow2 snapshots: RAM and disk)

    def save(self, tag: str) -> None:
        """Save the running VM (RAM and disk) as ``tag`` in its qcow2; the VM pauses meanwhile."""
        with self.qmp() as qmp:
            qmp.run_job(
                "snapshot-save",
                f"save-{secrets.token_hex(4)}",
                tag=tag,
                vmstate="disk0",
                devices=["disk0"],
            )

    def load(self, tag: str) -> None:
        """Put the running VM back to the saved state ``tag`` (RAM and disk)."""
        with self.qmp() as qmp:
            qmp.run_job(
                "snapshot-load",
                f"load-{secrets.token_hex(4)}",
                tag=tag,
                vmstate="disk0",
                devices=["disk0"],
            )

    def delete(self, tag: str) -> None:
        """Delete the saved state ``tag`` (from the running VM, else from its disk)."""
        if self.pid is not None:
            with self.qmp() as qmp:
                qmp.run_job(
                    "snapshot-delete", f"del-{secrets.token_hex(4)}", tag=tag, devices=["disk0"]
                )
        else:
            run(["qemu-img", "snapshot", "-d", tag, str(self.disk)])

    def state_size(self, tag: str) -> int | None:
        """Bytes of RAM state saved with ``tag`` (None when unknown)."""
        with self.qmp() as qmp:
            nodes = qmp.execute("query-named-block-nodes")
        for node in nodes:
            if node.get("node-name") == "disk0":
                for snap in node["image"].get("snapshots", []):
                    if snap["name"] == tag:
                        return int(snap.get("vm-state-size", 0))
        return None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Pause the VM's CPUs for the block (its disk holds still); continued afterwards."""
        with self.qmp() as qmp:
            qmp.execute("stop")
            try:
                yield
            finally:
                qmp.execute("cont")

    def tags(self) -> list[str]:
        """The saved states in the VM's disk."""
        if self.pid is not None:
            with self.qmp() as qmp:
                nodes = qmp.execute("query-named-block-nodes")
            for node in nodes:
                if node.get("node-name") == "disk0":
                    return [s["name"] for s in node["image"].get("snapshots", [])]
            return []
        proc = run(["qemu-img", "info", "--force-share", "--output=json", str(self.disk)])
        return [s["name"] for s in json.loads(proc.stdout).get("snapshots", [])]

    # ---- the agent

    def agent(self, script: str, timeout: float = 120.0, check: bool = True) -> tuple[int, str]:
        """Run ``script`` (sh) as root inside the VM through the agent; (exit code, output).

        Raises:
            SandboxError: no answer within ``timeout`` s, or (``check``) a non-zero exit.
        """
        if self.pid is None:
            raise SandboxError(f"VM {self.folder.name} is not running")
        nonce = secrets.token_hex(8)
        marker = re.compile(rf"@@caretaker-rc={nonce}:(\d+)@@")
        deadline = time.monotonic() + timeout
        line = f"{nonce} ".encode() + base64.b64encode(script.encode()) + b"\n"
        buf = ""
        # One caller at a time: the pipe is shared by every process that drives the VM.
        with open(self.folder / "agent.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            out = os.open(self.folder / "agent.out", os.O_RDONLY | os.O_NONBLOCK)
            try:
                with open(self.folder / "agent.in", "wb", buffering=0) as into:
                    into.write(line)
                while (found := marker.search(buf)) is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SandboxError(
                            f"{self.folder.name}: the agent did not answer in {timeout:g}s"
                        )
                    ready, _, _ = select.select([out], [], [], min(left, 1.0))
                    if ready:
                        with contextlib.suppress(BlockingIOError):
                            buf += os.read(out, 65536).decode(errors="replace")
            finally:
                os.close(out)
        # The output is the line before our marker (answers to older, abandoned calls
        # carry other nonces and come before it).
        rc = int(found.group(1))
        lines = [line for line in buf[: found.start()].splitlines() if line.strip()]
        output = base64.b64decode(lines[-1]).decode(errors="replace") if lines else ""
        if check and rc != 0:
            raise SandboxError(f"{self.folder.name}: agent script exited {rc}: {output[-800:]}")
        return rc, output

    def wait_agent(self, wait: float) -> None:
        """Wait until the agent answers (after a cold boot or a reboot)."""
        deadline = time.monotonic() + wait
        last = ""
        while time.monotonic() < deadline:
            try:
                self.agent("true", timeout=max(1.0, min(10.0, deadline - time.monotonic())))
                return
            except SandboxError as exc:
                last = str(exc)
                time.sleep(0.5)
        raise SandboxError(f"{self.folder.name}: no agent within {wait:g}s ({last})")


# ----------------------------------------------------------------------------- template


def ensure_checkpoint(boot_wait: float = 240.0) -> tuple[VmImage, Path]:
    """The template checkpoint: an overlay of the image holding a booted VM saved as
    ``TEMPLATE_TAG`` (built once per image: one cold boot). Returns (image, overlay)."""
    image = ensure_vm_image()
    target = image.folder / "checkpoint"
    if (target / ".caretaker-checkpoint").exists():
        return image, target / "disk.qcow2"
    accel = accelerator(image)
    building = image.folder / "checkpoint.building"
    if building.exists():
        Vm(building).stop()
        run(["rm", "-rf", str(building)])
    building.mkdir()
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(image.disk),
            str(building / "disk.qcow2"),
        ]
    )
    vm = Vm(building)
    started = time.monotonic()
    vm.start(
        qemu_command(
            image,
            building,
            accel=accel,
            # No network state in the checkpoint (slirp's would refuse a clone on a tap).
            netdev="hubport,id=n0,hubid=0",
            mac=mac_for("template", "-"),
        )
    )
    try:
        vm.wait_agent(boot_wait)
        # Settle: let boot finish, then shrink what the RAM state holds.
        vm.agent(
            "systemctl is-system-running --wait >/dev/null 2>&1; sync;"
            " echo 3 > /proc/sys/vm/drop_caches",
            timeout=boot_wait,
            check=False,
        )
        booted = time.monotonic() - started
        vm.save(TEMPLATE_TAG)
    finally:
        vm.stop()
    (building / "console.log").unlink(missing_ok=True)
    (building / ".caretaker-checkpoint").write_text(
        f"boot={booted:.1f}s saved={time.monotonic() - started - booted:.1f}s\n"
    )
    building.rename(target)
    log.info("VM checkpoint ready (boot %.0fs): %s", booted, target)
    return image, target / "disk.qcow2"


def identity_script(
    *,
    name: str,
    address: str,
    prefix: int,
    mac: str,
    host_key: str,
    host_key_pub: str,
    authorized_key: str,
    sources: str,
) -> str:
    """What a clone runs (through the agent) to become ``name``: see the module docstring."""
    q = shlex.quote
    network = (
        f"[Match]\nName=en*\n\n[Network]\nAddress={address}/{prefix}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    lines = [
        "set -e",
        f"date -s @{time.time():.3f} >/dev/null",
        f"printf '%s' {q(secrets.token_hex(64))} > /dev/urandom",
        "dev=$(ls /sys/class/net | grep '^en' | head -n1)",
        'ip link set "$dev" down',
        f'ip link set "$dev" address {q(mac)}',
        'ip link set "$dev" up',
        f'ip addr flush dev "$dev"; ip addr add {q(f"{address}/{prefix}")} dev "$dev"',
        f"printf '%s' {q(network)} > /etc/systemd/network/10-caretaker.network",
        f"hostname {q(name)}",
        f"printf '%s\\n' {q(name)} > /etc/hostname",
        f"printf '127.0.0.1 localhost\\n%s %s\\n' {q(address)} {q(name)} > /etc/hosts",
        f"printf '%s\\n' {q(secrets.token_hex(16))} > /etc/machine-id",
        "umask 077",
        f"printf '%s' {q(host_key)} > /etc/ssh/ssh_host_ed25519_key",
        f"printf '%s' {q(host_key_pub)} > /etc/ssh/ssh_host_ed25519_key.pub",
        "chmod 644 /etc/ssh/ssh_host_ed25519_key.pub",
        "for h in /root /home/ops; do mkdir -p $h/.ssh;"
        f" printf '%s' {q(authorized_key)} > $h/.ssh/authorized_keys; done",
        "chown -R ops:ops /home/ops/.ssh",
        "umask 022",
        f"printf '%s' {q(sources)} > /etc/apt/sources.list",
        # What `systemctl enable ssh` makes, made directly: systemctl enable takes 6-12 s
        # under TCG (it scans every unit file, then reloads the manager).
        "ln -sf /lib/systemd/system/ssh.service /etc/systemd/system/sshd.service",
        "ln -sf /lib/systemd/system/ssh.service"
        " /etc/systemd/system/multi-user.target.wants/ssh.service",
        "systemctl restart ssh",
        "systemctl reset-failed",
    ]
    return "\n".join(lines) + "\n"


def clock_script() -> str:
    """What a VM runs after a saved state was loaded: the clock and entropy of now."""
    return (
        f"date -s @{time.time():.3f} >/dev/null\n"
        f"printf '%s' {shlex.quote(secrets.token_hex(64))} > /dev/urandom\n"
    )


# ----------------------------------------------------------------------------- repo


class RepoServer:
    """The estate's apt repository over HTTP on the bridge's address (port chosen by the
    kernel), for the VM hosts: they cannot bind-mount it as the namespace hosts do."""

    def __init__(self, folder: Path, root: Path, address: str) -> None:
        self.folder = folder
        self.root = root
        self.address = address

    @property
    def url(self) -> str | None:
        pid = read_pid(self.folder / "repo-http.pid")
        port = self.folder / "repo-http.port"
        if not alive(pid) or not port.exists():
            return None
        return f"http://{self.address}:{port.read_text().strip()}/"

    def ensure(self, wait: float = 10.0) -> str:
        """Start the server unless it runs; its URL."""
        url = self.url
        if url and tcp_open(self.address, int(url.rsplit(":", 1)[1].rstrip("/"))):
            return url
        self.stop()
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / "repo-http.log"
        with open(log_path, "w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    "-m",
                    "http.server",
                    "--bind",
                    self.address,
                    "--directory",
                    str(self.root),
                    "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Serving HTTP on 10.213.N.1 port 41234 (...) ..."
        words = line.split()
        if "port" not in words:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise SandboxError(f"the repository's HTTP server did not start: {line!r}")
        port = int(words[words.index("port") + 1])
        (self.folder / "repo-http.pid").write_text(f"{proc.pid}\n")
        (self.folder / "repo-http.port").write_text(f"{port}\n")
        proc.stdout.close()
        deadline = time.monotonic() + wait
        while not tcp_open(self.address, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://{self.address}:{port}/"

    def stop(self) -> None:
        pid = read_pid(self.folder / "repo-http.pid")
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for name in ("repo-http.pid", "repo-http.port"):
            (self.folder / name).unlink(missing_ok=True)


def http_sources_list(url: str, suites: tuple[str, ...]) -> str:
    """The apt sources of a VM host: only the estate's repository, over HTTP."""
    return "".join(f"deb [trusted=yes] {url} {suite} main\n" for suite in suites)
