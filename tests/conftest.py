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
from typing import Any

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


def artifacts_of(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts one flow run published, by key: never "the latest N" of the shared
    Prefect server, so what ran on it before cannot change the answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


@pytest.fixture()
def repo_root() -> Path:
    """The repository's root folder."""
    return Path(__file__).resolve().parent.parent


# ------------------------------------------------------------- the fault matrix's figure
# Tests marked ``fault`` are the rows of docs/faults.md. Their outcomes are counted here and
# `./run faults` (pytest -m fault) ends with "faults survived / faults tried: N/M". A fault
# is tried when its test ran (passed or failed); one that was skipped is counted apart.
_fault_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note the outcome of each ``fault``-marked test: failed wins over every other phase."""
    if "fault" not in report.keywords:
        return
    seen = _fault_outcomes.get(report.nodeid)
    if report.failed:
        _fault_outcomes[report.nodeid] = "failed"
    elif report.skipped and seen is None:
        _fault_outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and seen is None:
        _fault_outcomes[report.nodeid] = "passed"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault matrix's figure when fault-marked tests ran."""
    if not _fault_outcomes:
        return
    outcomes = list(_fault_outcomes.values())
    survived, failed = outcomes.count("passed"), outcomes.count("failed")
    skipped = outcomes.count("skipped")
    line = f"faults survived / faults tried: {survived}/{survived + failed}"
    if skipped:
        line += f" ({skipped} not tried: skipped)"
    terminalreporter.write_sep("=", line, bold=True, red=bool(failed), green=not failed)
