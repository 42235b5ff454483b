"""The VM tier's disk image: a Debian root with systemd, sshd, nftables and a cloud kernel.

Built once with mmdebstrap from this machine's apt mirror (read from its apt sources,
like the namespace base image), turned into an ext4 filesystem (``mkfs.ext4 -d``, no loop
device) and converted to qcow2. The kernel and initrd are copied beside it for a direct
kernel boot. Everything lands in ``<cache>/images/vm-<codename>-<recipe hash>/`` and is
renamed into place only when complete, so an interrupted build is never reused; a
change of the recipe below changes the hash and so builds a new image.

What the image holds besides Debian: systemd-networkd for the NIC (``Name=en*``; the
address is written per VM), sshd with no host key (each VM gets its own from the
estate; ``ssh.service`` is enabled only once it has one), an nftables ruleset that drops
inbound traffic no rule accepts (ssh and icmp allowed), an ``ops`` sudo account, and the
caretaker agent: a shell on a virtio serial port through which the host (and only the
host: it is a unix socket of the QEMU process) gives a clone its identity after it
starts from a checkpoint. Timers that would burn CPU at boot (apt-daily, man-db) are
masked.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from core.errors import SandboxError
from sandbox.image import SSHD_CONFIG, host_codename, machine_mirror
from sandbox.paths import images_dir

log = logging.getLogger(__name__)

PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "nftables",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "procps",
    "sudo",
]
DISK_SIZE = "3G"

#: The name of the virtio serial port the agent listens on.
AGENT_PORT = "ctk.agent"

AGENT_SCRIPT = f"""#!/bin/sh
# caretaker sandbox VM agent: runs what the host sends on its virtio serial port.
# One line in: "<nonce> <base64 shell script>". Out: the output in base64 on one line,
# then @@caretaker-rc=<nonce>:<rc>@@. Reading EOF (the host went away): open it again.
P=/dev/virtio-ports/{AGENT_PORT}
while :; do
  while [ ! -e "$P" ]; do sleep 0.2; done
  exec 3<>"$P"
  while IFS=' ' read -r nonce data <&3; do
    printf '%s' "$data" | base64 -d > /run/caretaker-agent.sh 2>/dev/null || true
    sh /run/caretaker-agent.sh </dev/null >/run/caretaker-agent.out 2>&1
    rc=$?
    base64 -w0 /run/caretaker-agent.out >&3
    printf '\\n@@caretaker-rc=%s:%s@@\\n' "$nonce" "$rc" >&3
  done
  exec 3<&-
  sleep 0.2
done
"""

AGENT_UNIT = """[Unit]
Description=caretaker sandbox VM agent (virtio serial)
After=systemd-udev-settle.service
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/local/sbin/caretaker-agent
Restart=always
RestartSec=0.2

[Install]
WantedBy=multi-user.target
"""

NETWORK = """[Match]
Name=en*

[Network]
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

#: Inbound traffic that no rule accepts is dropped (the policy's default deny).
NFTABLES_CONF = """#!/usr/sbin/nft -f
flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		ip protocol icmp accept
		tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"""

FSTAB = "LABEL=ctkroot / ext4 defaults,errors=remount-ro 0 1\n"

MASKED = [
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "systemd-timesyncd.service",
]


class VmImage(BaseModel):
    """A built VM image: the qcow2 disk and the kernel and initrd it boots with."""

    model_config = ConfigDict(frozen=True)

    disk: Path
    kernel: Path
    initrd: Path

    @property
    def folder(self) -> Path:
        return self.disk.parent


def recipe() -> str:
    """Everything the image is built from, as text: its hash names the cached image."""
    return "\n".join(
        [
            "packages=" + ",".join(PACKAGES),
            f"size={DISK_SIZE}",
            AGENT_SCRIPT,
            AGENT_UNIT,
            NETWORK,
            NFTABLES_CONF,
            FSTAB,
            SSHD_CONFIG,
            ",".join(MASKED),
        ]
    )


def image_dir(codename: str | None = None) -> Path:
    """Where the VM image for ``codename`` lives (built or not)."""
    digest = hashlib.sha256(recipe().encode()).hexdigest()[:12]
    return images_dir() / f"vm-{codename or host_codename()}-{digest}"


def _image(folder: Path) -> VmImage:
    return VmImage(
        disk=folder / "disk.qcow2", kernel=folder / "vmlinuz", initrd=folder / "initrd.img"
    )


def ensure_vm_image(codename: str | None = None) -> VmImage:
    """Return the cached VM image, building it first when it is missing.

    Raises:
        SandboxError: a tool is missing or a build step failed (its output's tail).
    """
    codename = codename or host_codename()
    target = image_dir(codename)
    if (target / ".caretaker-image").exists():
        return _image(target)
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            raise SandboxError(f"{tool} is not installed: run `./run setup` first")
    mirror = machine_mirror(codename)
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    root = building / "root"
    started = time.monotonic()
    log.info("building the VM image %s from the machine's apt mirror", target.name)
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--format=directory",
            "--skip=cleanup/apt/lists",
            f"--include={','.join(PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            codename,
            str(root),
            mirror,
        ],
        "mmdebstrap",
    )
    _customise(root)
    boot = sorted((root / "boot").glob("vmlinuz-*"))
    initrd = sorted((root / "boot").glob("initrd.img-*"))
    if not boot or not initrd:
        raise SandboxError(f"the VM image has no kernel or initrd in {root}/boot")
    shutil.copy2(boot[-1], building / "vmlinuz")
    shutil.copy2(initrd[-1], building / "initrd.img")
    raw = building / "disk.raw"
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "ctkroot", "-d", str(root), str(raw), DISK_SIZE],
        "mkfs.ext4",
    )
    _run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(building / "disk.qcow2")],
        "qemu-img",
    )
    raw.unlink()
    shutil.rmtree(root)
    (building / ".caretaker-image").write_text(recipe())
    building.rename(target)
    log.info("VM image ready in %.0fs: %s", time.monotonic() - started, target)
    return _image(target)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SandboxError(f"{what} failed ({proc.returncode}):\n{tail}")


def _chroot(root: Path, *args: str) -> None:
    _run(["chroot", str(root), *args], " ".join(args))


def _customise(root: Path) -> None:
    """Make the debootstrapped root a VM template (no identity: each clone gets its own)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config").write_text(SSHD_CONFIG)
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text("caretaker-vm\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/apt/sources.list").write_text("")
    for extra in (root / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/10-caretaker.network").write_text(NETWORK)
    (root / "etc/nftables.conf").write_text(NFTABLES_CONF)
    agent = root / "usr/local/sbin/caretaker-agent"
    agent.write_text(AGENT_SCRIPT)
    agent.chmod(0o755)
    (root / "etc/systemd/system/caretaker-agent.service").write_text(AGENT_UNIT)
    _chroot(root, "systemctl", "enable", "systemd-networkd", "nftables", "caretaker-agent")
    _chroot(root, "systemctl", "disable", "ssh")
    _chroot(root, "systemctl", "mask", *MASKED)
    _chroot(root, "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "ops")
    _chroot(root, "usermod", "-p", "*", "ops")
    (root / "etc/sudoers.d/ops").write_text("ops ALL=(ALL) NOPASSWD:ALL\n")
    (root / "etc/sudoers.d/ops").chmod(0o440)
    # The journal is kept on disk (the log review reads it across reboots).
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
