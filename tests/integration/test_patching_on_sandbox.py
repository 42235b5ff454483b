"""Patching, rebooting and health checks on real sandbox hosts.

A fresh estate of four hosts (net 65) with new versions published: caretaker-agent 1.1,
a security update of caretaker-libsec that asks for a reboot, and a caretaker-tools
2.4 whose postinst fails. Every outcome is read back from the hosts themselves with
the OpenSSH client, independent of the code under test.

    h01  patched from a real plan, re-run (no-op), rebooted into its new boot id
    h02  a held dpkg lock; health checks, then sshd stopped
    h03  a broken postinst, through a Prefect flow
    h04  a reboot that never comes back (no-boot)
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import PatchFailed, RebootTimeout
from inventory import Server
from sandbox import faults
from sandbox.estate import Estate, numbered_hosts
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from tasks.checks import run_health_checks, summarize_checks
from tasks.facts import PackageChange
from tasks.facts.collect import PLAN_FACTS, collect_facts
from tasks.packages import HostPlan, PackageDiff, apply_updates, plan_host
from tasks.reboot import reboot_host, reboot_needed
from tasks.remote import SshRemoteHost, SshTarget
from tests.conftest import sandbox_unavailable, ssh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    estate = Estate(numbered_hosts("test-patch", 65, 4))
    estate.up(fresh=True)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    estate.publish(
        PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True)
    )
    faults.publish_broken(estate, "caretaker-tools", "2.4")
    try:
        yield estate
    finally:
        estate.down(purge=True)


def connect(estate: Estate, name: str, **options: Any) -> SshRemoteHost:
    spec = estate.host(name)
    return SshRemoteHost(
        SshTarget(name=name, address=spec.address), ssh_identity(estate), **options
    )


@pytest.fixture()
def hosts(estate: Estate) -> Iterator[dict[str, SshRemoteHost]]:
    opened = {h.name: connect(estate, h.name) for h in estate.spec.hosts}
    yield opened
    for host in opened.values():
        host.close()


def version(estate: Estate, host: str, package: str) -> str:
    """The installed version, read with the OpenSSH client."""
    return ssh(estate, host, f"dpkg-query -W -f '${{Version}}' {package}").stdout


def status(estate: Estate, host: str, package: str) -> str:
    return ssh(estate, host, f"dpkg-query -W -f '${{db:Status-Abbrev}}' {package}").stdout


def boot_id(estate: Estate, host: str) -> str:
    return ssh(estate, host, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def apt_history_lines(estate: Estate, host: str) -> int:
    out = ssh(estate, host, "cat /var/log/apt/history.log 2>/dev/null | wc -l").stdout
    return int(out.strip())


def manual_plan(server: str, *changes: tuple[str, str, str]) -> HostPlan:
    return HostPlan(
        server=server,
        role="staging",
        address="-",
        reachable=True,
        changes=[
            PackageChange(
                name=name,
                from_version=old,
                to_version=new,
                suites=["caretaker"],
                arch="all",
                security=False,
            )
            for name, old, new in changes
        ],
    )


def wait_for_ssh(address: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


# ------------------------------------------------------------------------ patching


@pytest.fixture(scope="module")
def patched_h01(estate: Estate) -> tuple[HostPlan, PackageDiff]:
    """h01 planned from its real facts (tools held by the inventory) and patched once."""
    with connect(estate, "h01") as host:
        facts = collect_facts.fn(host, PLAN_FACTS)
        plan = plan_host(
            server="h01",
            role="staging",
            address=estate.host("h01").address,
            facts=facts,
            policy="all",
            hold=["caretaker-tools", "caretaker-legacy"],
            reboot_policy="if-required",
        )
        return plan, apply_updates.fn(host, plan, lock_timeout_s=10, timeout_s=300)


def test_patching_a_host_changes_its_packages_and_no_other_host(
    estate: Estate, patched_h01: tuple[HostPlan, PackageDiff]
) -> None:
    plan, diff = patched_h01
    assert {(c.name, c.to_version) for c in plan.changes} == {
        ("caretaker-agent", "1.1"),
        ("caretaker-libsec", "1.0+sec1"),
    }
    assert [(c.name, c.from_version, c.to_version, c.configured) for c in diff.changes] == [
        ("caretaker-agent", "1.0", "1.1", True),
        ("caretaker-libsec", "1.0", "1.0+sec1", True),
    ]
    assert not diff.noop and diff.reboot_required_after
    assert diff.reboot_packages == ["caretaker-libsec"]
    assert version(estate, "h01", "caretaker-agent") == "1.1"
    assert version(estate, "h01", "caretaker-libsec") == "1.0+sec1"
    # Published but held by the inventory, so not in the plan, so not installed.
    assert version(estate, "h01", "caretaker-tools") == "2.3"
    assert version(estate, "h02", "caretaker-agent") == "1.0"


def test_a_rerun_of_the_same_plan_is_a_noop_and_runs_no_apt(
    estate: Estate, patched_h01: tuple[HostPlan, PackageDiff], hosts: dict[str, SshRemoteHost]
) -> None:
    plan, _ = patched_h01
    history = apt_history_lines(estate, "h01")
    again = apply_updates.fn(hosts["h01"], plan)
    assert again.noop and again.changes == [] and again.command is None
    assert apt_history_lines(estate, "h01") == history, "apt ran on a no-op"


def test_a_reboot_after_patching_comes_back_with_a_new_boot_id(
    estate: Estate, patched_h01: tuple[HostPlan, PackageDiff], hosts: dict[str, SshRemoteHost]
) -> None:
    _, diff = patched_h01
    assert reboot_needed("if-required", diff)
    before = boot_id(estate, "h01")
    result = reboot_host.fn(hosts["h01"], "h01", timeout_s=60, poll_s=0.5)
    assert result.old_boot_id == before
    assert result.new_boot_id != before
    assert result.new_boot_id == boot_id(estate, "h01")
    assert 0 < result.seconds < 60
    # The packages are on the host's disk; the reboot flag lived in /run.
    assert version(estate, "h01", "caretaker-agent") == "1.1"
    assert ssh(estate, "h01", "test -e /var/run/reboot-required").returncode == 1


def test_a_held_dpkg_lock_fails_within_the_bound_with_a_lock_message(
    estate: Estate, hosts: dict[str, SshRemoteHost]
) -> None:
    faults.hold_dpkg_lock(estate, "h02")
    try:
        started = time.monotonic()
        with pytest.raises(PatchFailed) as info:
            apply_updates.fn(
                hosts["h02"],
                manual_plan("h02", ("caretaker-agent", "1.0", "1.1")),
                lock_timeout_s=3,
                timeout_s=60,
            )
        elapsed = time.monotonic() - started
    finally:
        faults.release_dpkg_lock(estate, "h02")
    assert 3 <= elapsed < 15
    error = info.value
    assert error.kind == "lock"
    assert "dpkg lock (/var/lib/dpkg/lock-frontend) was held" in str(error)
    assert "more than 3 s" in str(error) and "no package was changed" in str(error)
    assert isinstance(error.diff, PackageDiff) and error.diff.changes == []
    assert version(estate, "h02", "caretaker-agent") == "1.0"


def test_a_broken_postinst_fails_the_task_with_evidence_and_the_diff(
    estate: Estate, prefect_api: None
) -> None:
    from prefect import flow

    @flow
    def patch_h03(plan: HostPlan) -> dict[str, Any]:
        """What the maintenance flow sees of a failed apply_updates: its state and error."""
        with connect(estate, "h03") as host:
            future = apply_updates.submit(host, plan)
            future.wait()
            error = future.state.result(raise_on_failure=False)
            return {
                "failed": future.state.is_failed(),
                "error": type(error).__name__,
                "kind": getattr(error, "kind", None),
                "exit_code": getattr(error, "exit_code", None),
                "message": str(error),
                "diff": getattr(error, "diff", None),
            }

    plan = manual_plan("h03", ("caretaker-agent", "1.0", "1.1"), ("caretaker-tools", "2.3", "2.4"))
    outcome = patch_h03(plan)
    assert outcome["failed"]
    assert (outcome["error"], outcome["kind"], outcome["exit_code"]) == (
        "PatchFailed",
        "postinst",
        100,
    )
    assert "caretaker-tools" in outcome["message"]
    assert "post-installation script" in outcome["message"]
    diff = outcome["diff"]
    assert isinstance(diff, PackageDiff)
    assert [(c.name, c.to_version, c.configured) for c in diff.changes] == [
        ("caretaker-agent", "1.1", True),
        ("caretaker-tools", "2.4", False),
    ]
    # The host agrees: the agent upgraded, tools unpacked but not configured.
    assert version(estate, "h03", "caretaker-agent") == "1.1"
    assert version(estate, "h03", "caretaker-tools") == "2.4"
    assert status(estate, "h03", "caretaker-tools").startswith("iF")


def test_a_reboot_that_never_returns_times_out_within_its_bound(
    estate: Estate, hosts: dict[str, SshRemoteHost]
) -> None:
    bound = 4  # seconds: the host goes down 1 s after the reboot is issued
    before = boot_id(estate, "h04")
    faults.no_boot(estate, "h04")
    try:
        started = time.monotonic()
        with pytest.raises(RebootTimeout) as info:
            reboot_host.fn(hosts["h04"], "h04", timeout_s=bound, poll_s=1)
        elapsed = time.monotonic() - started
    finally:
        faults.no_boot(estate, "h04", on=False)
    assert bound <= elapsed < bound + 4
    assert info.value.old_boot_id == before and info.value.host == "h04"
    assert bound <= info.value.waited_s < bound + 4
    assert wait_for_ssh(estate.host("h04").address, 20), "h04 did not boot once allowed"
    assert boot_id(estate, "h04") not in ("", before)


# ------------------------------------------------------------------- health checks


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[str]:
    """A local web server on 127.0.0.1 (a free port) serving /health."""
    (tmp_path / "health").write_text("ok\n")

    def handler(*args: Any) -> _Quiet:
        return _Quiet(*args, directory=str(tmp_path))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def inventory_server(estate: Estate, name: str, web: str) -> Server:
    return Server.model_validate(
        {
            "name": name,
            "role": "production",
            "address": estate.host(name).address,
            "ssh_block": "test-patch-ssh",
            "os_family": "debian",
            "provider": {"type": "sandbox"},
            "checks": [
                {"type": "tcp", "port": 22, "timeout": "2s"},
                {"type": "tcp", "port": 2222, "timeout": "2s"},
                {"type": "http", "url": f"{web}/health", "timeout": "2s"},
                {"type": "http", "url": f"{web}/missing", "timeout": "2s"},
                {"type": "systemd", "unit": "ssh.service"},
            ],
        }
    )


def test_health_checks_see_open_and_refused_ports_http_status_and_unknown_systemd(
    estate: Estate, web: str
) -> None:
    server = inventory_server(estate, "h02", web)
    with connect(estate, "h02") as host:
        results = run_health_checks.fn(server, host)
    by_target = {(r.kind, r.target): r for r in results}
    address = estate.host("h02").address
    assert by_target[("ssh", f"{address}:22")].ok
    assert by_target[("tcp", f"{address}:22")].ok
    assert by_target[("tcp", f"{address}:2222")].detail == "connection refused"
    health = by_target[("http", f"{web}/health")]
    assert health.ok and health.detail == "HTTP 200"
    assert health.latency_ms is not None and 0 < health.latency_ms < 2000
    assert by_target[("http", f"{web}/missing")].detail == "HTTP 404 (expected 200)"
    systemd = by_target[("systemd", "ssh.service")]
    assert not systemd.ok and systemd.unknown
    assert systemd.detail.startswith("unknown: systemd not running")
    passed, failures = summarize_checks(results)
    assert not passed and len(failures) == 3


def test_a_host_whose_sshd_is_stopped_fails_its_ssh_check_as_refused(
    estate: Estate, web: str
) -> None:
    server = inventory_server(estate, "h02", web)
    faults.stop_sshd(estate, "h02")
    try:
        with connect(estate, "h02", connect_retries=0) as host:
            results = run_health_checks.fn(server, host)
    finally:
        faults.start_sshd(estate, "h02")
    ssh_result, tcp22 = results[0], results[1]
    assert ssh_result.kind == "ssh" and not ssh_result.ok
    assert "refused" in ssh_result.detail
    assert tcp22.detail == "connection refused"
    systemd = results[-1]
    assert systemd.unknown and not systemd.ok
