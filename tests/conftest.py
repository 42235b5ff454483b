"""Shared fixtures: one Prefect test API and one sandbox fleet per session.

The fleet is real: network namespaces, overlay roots, OpenSSH sshd, a local apt
repository. Tests that need it skip (with the reason) where it cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def sandbox_unavailable() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the sandbox estate needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "nsenter", "debootstrap", "ssh-keygen", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run setup installs it)"
    return None


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API (the test harness: a temporary server on SQLite)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # type: ignore[dict-item]
        with prefect_test_harness(server_startup_timeout=60):
            yield


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Eight sandbox hosts (h01..h08 at 10.213.61.11-18), fresh, shared by the session."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    from sandbox.estate import Estate, numbered_hosts

    estate = Estate(numbered_hosts("test-fleet", 61, 8))
    estate.up(fresh=True)
    try:
        yield estate
    finally:
        estate.down(purge=True)


def ssh(
    estate: object, host: str, command: str, user: str = "root", timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on a sandbox host with the OpenSSH client (independent of our layer)."""
    from sandbox.estate import Estate

    assert isinstance(estate, Estate)
    address = estate.host(host).address
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(estate.key_path),
            "-o",
            f"UserKnownHostsFile={estate.known_hosts_path}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            f"{user}@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture()
def repo_root() -> Path:
    """The repository's root folder."""
    return Path(__file__).resolve().parent.parent
