"""The estate's local apt repository: versioned packages built with dpkg-deb.

Two suites, ``caretaker`` and ``caretaker-security``, each with a ``main``
component for ``all``. Every host reads the repository through a read-only
bind mount at ``/srv/caretaker-repo``, so publishing a version is visible to all
hosts at once and ``apt-get upgrade`` then really changes packages on a host.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from email.utils import formatdate
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from core.errors import SandboxError

SUITES = ("caretaker", "caretaker-security")
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")


class PackageSpec(BaseModel):
    """One version of one sandbox package."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=_NAME.pattern, description="Debian package name.")
    version: str = Field(pattern=_VERSION.pattern, description="Debian version string.")
    security: bool = Field(default=False, description="Publish in the -security suite.")
    reboot: bool = Field(default=False, description="postinst asks for a reboot.")
    broken: bool = Field(default=False, description="postinst fails (a fault).")
    postinst_script: str = Field(
        default="",
        description="Shell lines the postinst runs first (a fault aimed at one host, e.g."
        " `[ -e /etc/slow ] && sleep 60`).",
    )
    description: str = "caretaker sandbox package"


# What every fresh estate starts with, installed on every host.
INITIAL = [
    PackageSpec(name="caretaker-agent", version="1.0"),
    PackageSpec(name="caretaker-tools", version="2.3"),
    PackageSpec(name="caretaker-libsec", version="1.0"),
    PackageSpec(name="caretaker-legacy", version="0.9"),
]


def _postinst(spec: PackageSpec) -> str:
    lines = ["#!/bin/sh", "set -e"]
    if spec.postinst_script:
        lines.append(spec.postinst_script)
    if spec.broken:
        lines.append(f'echo "{spec.name} {spec.version}: postinst failed (sandbox fault)" >&2')
        lines.append("exit 1")
    if spec.reboot:
        lines.append("touch /var/run/reboot-required")
        lines.append(f"echo {spec.name} >> /var/run/reboot-required.pkgs")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def build_deb(spec: PackageSpec, out_dir: Path) -> Path:
    """Build ``spec`` with dpkg-deb into ``out_dir`` and return the .deb path."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(
            f"Package: {spec.name}\nVersion: {spec.version}\nArchitecture: all\n"
            f"Maintainer: caretaker sandbox <sandbox@caretaker.invalid>\n"
            f"Section: admin\nPriority: optional\nDescription: {spec.description}\n"
        )
        postinst = root / "DEBIAN/postinst"
        postinst.write_text(_postinst(spec))
        postinst.chmod(0o755)
        share = root / "usr/share" / spec.name
        share.mkdir(parents=True)
        (share / "VERSION").write_text(spec.version + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        deb = out_dir / f"{spec.name}_{spec.version}_all.deb"
        proc = subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SandboxError(f"dpkg-deb failed for {spec.name} {spec.version}: {proc.stderr}")
    return deb


def _control_fields(deb: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


class Repository:
    """A local apt repository in ``root`` (pool/ + dists/)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def pool(self, suite: str) -> Path:
        return self.root / "pool" / suite

    def publish(self, spec: PackageSpec) -> Path:
        """Add one package version and regenerate the indexes."""
        suite = SUITES[1] if spec.security else SUITES[0]
        deb = build_deb(spec, self.pool(suite))
        self.reindex()
        return deb

    def unpublish(self, name: str, version: str) -> None:
        """Remove one package version (to undo a fault), then reindex."""
        for suite in SUITES:
            for deb in self.pool(suite).glob(f"{name}_{version}_all.deb"):
                deb.unlink()
        self.reindex()

    def reset(self) -> None:
        """Empty the repository and publish the initial package set.

        The root folder itself stays: running hosts bind-mount it, and a new folder
        in its place would be invisible to them.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for child in self.root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        for spec in INITIAL:
            build_deb(spec, self.pool(SUITES[0]))
        self.reindex()

    def reindex(self) -> None:
        """Write Packages and Release for every suite (what apt-ftparchive would)."""
        for suite in SUITES:
            entries = []
            for deb in sorted(self.pool(suite).glob("*.deb")):
                data = deb.read_bytes()
                entries.append(
                    _control_fields(deb)
                    + f"\nFilename: {deb.relative_to(self.root)}\nSize: {len(data)}\n"
                    + f"MD5sum: {hashlib.md5(data).hexdigest()}\n"  # noqa: S324 - apt index format
                    + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
                )
            dist = self.root / "dists" / suite
            binary = dist / "main" / "binary-all"
            binary.mkdir(parents=True, exist_ok=True)
            packages = "\n".join(entries)
            (binary / "Packages").write_text(packages)
            body = packages.encode()
            (dist / "Release").write_text(
                f"Origin: caretaker\nLabel: caretaker sandbox\nSuite: {suite}\n"
                f"Codename: {suite}\nDate: {formatdate(usegmt=True)}\n"
                "Architectures: all amd64 arm64\nComponents: main\n"
                f"SHA256:\n {hashlib.sha256(body).hexdigest()} {len(body)} "
                "main/binary-all/Packages\n"
            )

    def versions(self) -> dict[str, list[str]]:
        """Package name -> published versions, for status output."""
        out: dict[str, list[str]] = {}
        for suite in SUITES:
            for deb in sorted(self.pool(suite).glob("*.deb")):
                name, version, _ = deb.name.split("_")
                out.setdefault(name, []).append(
                    version + (" (security)" if "security" in suite else "")
                )
        return out

    @staticmethod
    def sources_list() -> str:
        """The apt sources every host uses: only this repository."""
        return "".join(
            f"deb [trusted=yes] file:/srv/caretaker-repo {suite} main\n" for suite in SUITES
        )
