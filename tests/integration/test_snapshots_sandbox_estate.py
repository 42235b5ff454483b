"""The sandbox provider on real sandbox hosts: frozen copies, restores, isolated restore tests.

Outcomes are read from the hosts themselves (package versions and boot ids over SSH,
process states in /proc) and from the machine (namespaces, links, folders left).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory import Server, SnapshotPolicy
from sandbox.estate import Estate, EstateSpec, HostSpec
from sandbox.repo import PackageSpec
from sandbox.system import pid_namespace_members
from tasks.snapshots.base import SnapshotRecord
from tasks.snapshots.factory import provider_for
from tasks.snapshots.sandbox import SandboxSnapshotProvider, frozen
from tasks.snapshots.tasks import apply_retention
from tests.conftest import sandbox_unavailable, ssh

pytestmark = pytest.mark.integration

ESTATE = "test-snapshots"
NET = 71
TOOLS = "dpkg-query -W -f '${Version}' caretaker-tools"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    """Two hosts, snap-a and snap-b, at 10.213.71.11-12 (fresh, removed afterwards)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    spec = EstateSpec(
        name=ESTATE,
        net=NET,
        hosts=[
            HostSpec(name="snap-a", address=f"10.213.{NET}.11"),
            HostSpec(name="snap-b", address=f"10.213.{NET}.12"),
        ],
    )
    estate = Estate(spec)
    estate.up(fresh=True)
    try:
        yield estate
    finally:
        estate.down(purge=True)


def server(name: str, address: str) -> Server:
    return Server.model_validate(
        {
            "name": name,
            "role": "production",
            "address": address,
            "ssh_block": "caretaker-sandbox-ssh",
            "os_family": "debian",
            "provider": {"type": "sandbox", "estate": ESTATE},
        }
    )


@pytest.fixture(scope="module")
def snap_a(estate: Estate) -> Server:
    return server("snap-a", estate.host("snap-a").address)


@pytest.fixture(scope="module")
def sandbox(estate: Estate, snap_a: Server) -> SandboxSnapshotProvider:
    # Built the way the flow builds it: from the inventory entry, which names the estate.
    provider = provider_for(snap_a, SnapshotPolicy(), client="globex")
    assert isinstance(provider, SandboxSnapshotProvider)
    return provider


def change() -> str:
    return f"CHG-{uuid.uuid4().hex[:6]}"


def on(estate: Estate, host: str, command: str) -> str:
    out = ssh(estate, host, command)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def states(pids: list[int]) -> set[str]:
    found = set()
    for pid in pids:
        try:
            found.add(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return found


def test_every_process_of_the_host_is_stopped_during_the_copy_and_runs_again_after(
    estate: Estate,
) -> None:
    init = estate.init_pid("snap-a")
    assert init is not None
    assert len(pid_namespace_members(init)) >= 2  # init and sshd at least
    with frozen(init) as stopped:
        # (init's `sleep 1` children come and go, so look again rather than reuse a list.)
        members = pid_namespace_members(init)
        assert set(members) <= set(stopped)
        # A child that exited just before the freeze stays a zombie (Z) until init runs
        # again: it holds no disk state, so it does not break the copy's consistency.
        assert states(members) - {"Z"} == {"T"}
    assert "T" not in states(stopped)
    assert on(estate, "snap-a", "hostname") == "snap-a"


def test_a_snapshot_is_a_consistent_copy_of_the_hosts_disk(
    estate: Estate, sandbox: SandboxSnapshotProvider, snap_a: Server
) -> None:
    on(estate, "snap-a", "echo before-snapshot > /root/marker")
    record = sandbox.create(snap_a, "globex", change())
    copy = estate.dir / "snapshots" / record.ids[0] / "upper"
    assert (copy / "root/marker").read_text() == "before-snapshot\n"
    assert (copy / "etc/ssh/ssh_host_ed25519_key").exists()
    assert record.state == "completed" and record.size_bytes and record.size_bytes > 0
    assert re.search(r"\b[1-9]\d* processes frozen", record.detail)


def test_a_restore_brings_back_the_old_package_version_after_a_fresh_boot(
    estate: Estate, sandbox: SandboxSnapshotProvider, snap_a: Server
) -> None:
    assert on(estate, "snap-a", TOOLS) == "2.3"
    record = sandbox.wait(sandbox.create(snap_a, "globex", change()), timeout_s=5, poll_s=0.1)
    estate.publish(PackageSpec(name="caretaker-tools", version="2.4"))
    on(
        estate,
        "snap-a",
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive "
        "apt-get -y install --only-upgrade caretaker-tools",
    )
    assert on(estate, "snap-a", TOOLS) == "2.4"
    boot_before = on(estate, "snap-a", BOOT_ID)

    sandbox.restore(snap_a, record)

    assert on(estate, "snap-a", TOOLS) == "2.3"
    assert on(estate, "snap-a", BOOT_ID) != boot_before
    assert on(estate, "snap-b", TOOLS) == "2.3"  # the neighbour was never touched


def _leftovers(estate: Estate, detail: str) -> list[str]:
    """Anything of the restore test that is still there: namespace, link, process, folder."""
    found = []
    match = re.search(r"10\.213\.250\.(\d+)", detail)
    assert match, f"the detail names the copy's address: {detail}"
    block = (int(match.group(1)) // 4) * 4
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if re.search(rf"^ctkiso-{block}\b", netns, re.M):
        found.append(f"netns ctkiso-{block}")
    if (
        subprocess.run(["ip", "link", "show", f"ctkiso{block}"], capture_output=True).returncode
        == 0
    ):
        found.append(f"link ctkiso{block}")
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    if f"10.213.250.{block + 1}/" in addresses:
        found.append(f"address 10.213.250.{block + 1}")
    runs = estate.dir / "restore-tests"
    found += [f"folder {p}" for p in runs.iterdir()] if runs.exists() else []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(runs) in cmdline:
            found.append(f"process {proc.name}")
    return found


def test_a_restore_test_boots_an_isolated_copy_verified_by_the_originals_host_key(
    estate: Estate, snap_a: Server
) -> None:
    # The check proves the isolation from inside the copy: no route to the estate's own
    # network nor anywhere else, yet the package database is there.
    isolation = (
        "! ip route get 10.213.71.1 >/dev/null 2>&1 && ! ip route get 192.0.2.1 >/dev/null 2>&1"
        " && hostname && dpkg-query -W caretaker-agent"
    )
    sandbox = SandboxSnapshotProvider(estate, SnapshotPolicy(), check_command=isolation)
    record = sandbox.create(snap_a, "globex", change())
    boot_before = on(estate, "snap-a", BOOT_ID)

    result = sandbox.restore_test(snap_a, record, timeout_s=60)

    assert result.ok, result.detail
    assert result.rto_s is not None and 0 < result.rto_s < 60
    assert "host key of snap-a verified" in result.detail
    assert "10.213.250." in result.detail and estate.host("snap-a").address not in result.detail
    assert result.cleaned_up
    assert _leftovers(estate, result.detail) == []
    assert on(estate, "snap-a", BOOT_ID) == boot_before  # the original kept running


def test_a_restore_test_whose_check_fails_is_torn_down_all_the_same(
    estate: Estate, snap_a: Server
) -> None:
    sandbox = SandboxSnapshotProvider(
        estate, SnapshotPolicy(), check_command="dpkg-query -W no-such-package"
    )
    record = sandbox.create(snap_a, "globex", change())

    result = sandbox.restore_test(snap_a, record, timeout_s=60)

    assert not result.ok and result.rto_s is None
    assert "check on the restored copy failed" in result.detail
    assert result.cleaned_up
    assert _leftovers(estate, result.detail) == []


def test_a_copy_presenting_another_hosts_key_fails_the_restore_test(
    estate: Estate, sandbox: SandboxSnapshotProvider
) -> None:
    snap_b = server("snap-b", estate.host("snap-b").address)
    of_b = sandbox.create(snap_b, "globex", change())
    # Claimed to be snap-a's, but the disk is snap-b's: its host key gives it away.
    mislabelled = of_b.model_copy(update={"server": "snap-a"})

    result = sandbox.restore_test(server("snap-a", estate.host("snap-a").address), mislabelled, 60)

    assert not result.ok
    assert "host key CHANGED" in result.detail
    assert result.cleaned_up and _leftovers(estate, result.detail) == []


def test_retention_removes_old_snapshot_folders_and_keeps_this_runs(
    estate: Estate, sandbox: SandboxSnapshotProvider
) -> None:
    snap_b = server("snap-b", estate.host("snap-b").address)
    records: list[SnapshotRecord] = [sandbox.create(snap_b, "globex", change()) for _ in range(3)]
    before = sandbox.list(snap_b)

    result = apply_retention(sandbox, snap_b, keep=1, protect_ids=set(records[0].ids))

    left = {r.ids[0] for r in sandbox.list(snap_b)}
    assert left == {records[0].ids[0], records[-1].ids[0]}
    assert {r.ids[0] for r in result.deleted} == {r.ids[0] for r in before} - left
    for record in result.deleted:
        assert not (estate.dir / "snapshots" / record.ids[0]).exists()
