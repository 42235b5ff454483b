"""The sandbox base image: a Debian root built once with debootstrap and cached.

The mirror is read from this machine's apt sources (deb822 ``*.sources`` or
one-line ``sources.list``), never written into the code. Every sandbox host
mounts this root read-only as the lower layer of its own overlay.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

from core.errors import SandboxError
from sandbox.paths import images_dir
from sandbox.signatures import write_signatures

log = logging.getLogger(__name__)

# Bump when the recipe below changes, so that a stale cached image is rebuilt.
IMAGE_RECIPE = 5
# clamav and stress-ng: the hygiene steps (malware scan, stress test) run for real.
PACKAGES = ["openssh-server", "iproute2", "procps", "sudo", "clamav", "stress-ng"]

# The sandbox's own "reboot": the host supervisor restarts a host whose init exits.
REBOOT_SHIM = """#!/bin/sh
# caretaker sandbox: rebooting a sandbox host ends its init; the estate boots it again.
echo "caretaker sandbox: rebooting $(hostname)" >&2
sync
kill -TERM 1
"""

SSHD_CONFIG = """# caretaker sandbox host
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
MaxStartups 200
MaxSessions 50
"""


def host_codename() -> str:
    """The Debian codename of this machine (the sandbox matches it)."""
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.M)
    if not match:
        raise SandboxError("cannot read VERSION_CODENAME from /etc/os-release")
    return match.group(1)


def parse_apt_sources(texts: dict[str, str], codename: str) -> str | None:
    """Find the Debian archive URI that serves ``codename`` in apt source files.

    Args:
        texts: file name -> content, for ``*.sources`` (deb822) and ``*.list`` files.
        codename: the suite wanted, e.g. ``bookworm``.

    Returns:
        The first URI serving exactly that suite, or None.
    """
    for name, text in texts.items():
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                if codename in fields.get("suites", "").split():
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^\]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                    return parts[1]
    return None


def machine_mirror(codename: str) -> str:
    """The Debian mirror this machine's apt is configured with, for ``codename``."""
    texts: dict[str, str] = {}
    main = Path("/etc/apt/sources.list")
    if main.exists():
        texts[str(main)] = main.read_text()
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if path.suffix in (".list", ".sources"):
            texts[str(path)] = path.read_text()
    uri = parse_apt_sources(texts, codename)
    if uri is None:
        raise SandboxError(
            f"no apt source for suite {codename!r} in /etc/apt/sources.list(.d): "
            "the sandbox builds its image from the mirror this machine uses"
        )
    return uri


def image_path(codename: str | None = None) -> Path:
    """Where the cached base image for ``codename`` lives (built or not)."""
    return images_dir() / f"debian-{codename or host_codename()}-r{IMAGE_RECIPE}"


def ensure_image(codename: str | None = None) -> Path:
    """Return the cached base image, building it first if it is missing.

    Building runs debootstrap (minbase) into a temporary folder and renames it
    into place only when complete, so an interrupted build is never reused.
    """
    codename = codename or host_codename()
    target = image_path(codename)
    if (target / ".caretaker-image").exists():
        return target
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = machine_mirror(codename)
    building = target.with_name(target.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    started = time.monotonic()
    log.info("building sandbox base image %s from the machine's apt mirror", target.name)
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        codename,
        str(building),
        mirror,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SandboxError(f"debootstrap failed ({proc.returncode}):\n{tail}")
    _customise(building)
    (building / ".caretaker-image").write_text(f"recipe={IMAGE_RECIPE}\ncodename={codename}\n")
    building.rename(target)
    log.info("base image ready in %.0fs: %s", time.monotonic() - started, target)
    return target


def _customise(root: Path) -> None:
    """Make the debootstrapped root a sandbox host template."""
    # Host keys are per host, generated by the estate; none may be shared.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config").write_text(SSHD_CONFIG)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    # Hosts only ever see the estate's local repository.
    # Each host's sources list is written by the estate: only its local repository.
    (root / "etc/apt/sources.list").write_text("")
    for extra in (root / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    (root / "srv/caretaker-repo").mkdir(parents=True, exist_ok=True)
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    reboot = root / "usr/local/sbin/reboot"
    reboot.write_text(REBOOT_SHIM)
    reboot.chmod(0o755)
    # A non-root operator account, for the sudo path of the remote layer.
    subprocess.run(
        ["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "ops"],
        check=True,
        capture_output=True,
    )
    # "*" (no password, not locked): sshd refuses key logins to a locked account.
    subprocess.run(
        ["chroot", str(root), "usermod", "-p", "*", "ops"], check=True, capture_output=True
    )
    (root / "etc/sudoers.d/ops").write_text("ops ALL=(ALL) NOPASSWD:ALL\n")
    (root / "etc/sudoers.d/ops").chmod(0o440)
    (root / "etc/machine-id").write_text("")
    # No internet for freshclam: the sandbox's own signatures, where ClamAV looks.
    write_signatures(root / "var/lib/clamav")
