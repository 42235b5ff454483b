"""The VM tier on real Debian VMs (QEMU/TCG, systemd): what the namespace hosts cannot show.

On the session's ``vm_estate`` (three VMs from one checkpoint, tests/integration/vm_world.py):
the facts know systemd's failed units and the nftables default deny; the security audit
(the verification suite on real facts) passes a clean VM and finds a firewall flushed,
a unit made to fail and a service listening on a port the inventory does not allow; a
reboot through tasks/reboot.py really reboots the kernel (new boot id); and the VM
snapshot provider saves a real disk, rolls a change back and proves the snapshot in a
restore test on an isolated copy started from it. Every test leaves the VMs as it
found them (``rollback``: the ``ready`` state loaded back, ~0.2 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from flows.security_audit import SecurityAuditSummary
from inventory import SnapshotPolicy
from sandbox.prefect_blocks import ssh_identity
from tasks.facts.collect import collect_facts
from tasks.reboot import reboot_host
from tasks.remote import SshRemoteHost
from tasks.sessions import ssh_target
from tasks.snapshots.factory import provider_for
from tasks.snapshots.sandbox_vm import VmSnapshotProvider
from tests.integration.vm_world import SLUG, VmEstate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def audit_env(vm_estate: VmEstate, prefect_api: None) -> Iterator[VmEstate]:
    """The VM client's inventory, its SSH block and a history store of the module's own."""
    vm_estate.save_ssh_block()
    mp = pytest.MonkeyPatch()
    mp.setenv("CARETAKER_INVENTORY_DIR", str(vm_estate.client_dir))
    mp.setenv("CARETAKER_HISTORY_STORE_URL", f"sqlite:///{vm_estate.client_dir / 'caretaker.db'}")
    yield vm_estate
    mp.undo()


def _host(world: VmEstate, name: str) -> SshRemoteHost:
    return SshRemoteHost(ssh_target(world.servers[name]), ssh_identity(world.estate))


def test_facts_know_systemd_and_the_firewall(vm_estate: VmEstate) -> None:
    with _host(vm_estate, "vm1") as host:
        facts = collect_facts.fn(
            host, ["firewall", "failed_services", "listening_ports", "boot_id"], refresh=False
        )
    assert facts.errors == {}
    assert facts.failed_services is not None and facts.failed_services.known
    assert facts.failed_services.units == []
    assert facts.firewall is not None
    assert (facts.firewall.tool, facts.firewall.known, facts.firewall.default_deny) == (
        "nft",
        True,
        True,
    )
    assert {p.port for p in facts.listening_ports or [] if p.proto == "tcp"} == {22}


def test_security_audit_finds_what_is_really_wrong(audit_env: VmEstate) -> None:
    """vm1 clean; vm2 without its ruleset; vm3 with a failed unit and a socket on 8080."""
    from flows.security_audit import security_audit

    world = audit_env
    world.ssh("vm2", "nft flush ruleset")
    world.ssh("vm3", "systemd-run --unit=ctk-broken --quiet /bin/false; sleep 1")
    world.ssh(
        "vm3",
        "systemd-run --unit=ctk-listen --quiet --socket-property=ListenStream=8080 /bin/true",
    )
    try:
        state = security_audit(client=SLUG, refresh=False, return_state=True)
        summary = state.result(raise_on_failure=False)
    finally:
        world.rollback("vm2", "vm3")
    assert isinstance(summary, SecurityAuditSummary), summary
    rows = {r.server: r for r in summary.servers}
    assert state.name == "Failed"
    assert rows["vm1"].status == "passed", rows["vm1"]
    assert rows["vm1"].findings == []
    everything = " ".join(w for r in summary.servers for w in [*r.findings, *r.warnings])
    assert "unknown" not in everything, everything
    assert any(
        f.startswith("inbound traffic is not denied by default") for f in rows["vm2"].findings
    ), rows["vm2"]
    assert any("ctk-broken.service" in f for f in rows["vm3"].findings), rows["vm3"]
    assert any("8080" in f for f in rows["vm3"].findings), rows["vm3"]
    # The rollback put the ruleset back: the facts see the default deny again.
    with _host(world, "vm2") as host:
        facts = collect_facts.fn(host, ["firewall"], refresh=False)
    assert facts.firewall is not None and facts.firewall.default_deny is True


def test_reboot_really_reboots(vm_estate: VmEstate) -> None:
    before = vm_estate.ssh("vm1", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    try:
        with _host(vm_estate, "vm1") as host:
            result = reboot_host.fn(host, "vm1", timeout_s=240, poll_s=0.5)
        assert result.old_boot_id == before
        assert result.new_boot_id != before
        after = vm_estate.ssh("vm1", "cat /proc/sys/kernel/random/boot_id; cat /proc/uptime")
        boot_id, uptime = after.stdout.split()[:2]
        assert boot_id == result.new_boot_id
        assert float(uptime) < result.seconds + 30
        # The VM came back as itself: same host key (ssh verified it), address, firewall.
        with _host(vm_estate, "vm1") as host:
            facts = collect_facts.fn(host, ["firewall", "failed_services"], refresh=False)
        assert facts.firewall is not None and facts.firewall.default_deny is True
        assert facts.failed_services is not None
        assert (facts.failed_services.known, facts.failed_services.units) == (True, [])
    finally:
        vm_estate.rollback("vm1")


def test_snapshot_rollback_and_restore_test_on_a_real_disk(vm_estate: VmEstate) -> None:
    server = vm_estate.servers["vm2"]
    provider = provider_for(server, SnapshotPolicy(), client=SLUG)
    assert isinstance(provider, VmSnapshotProvider)
    record = provider.create(server, SLUG, "CHG-VM-1")
    try:
        assert record.state == "completed" and record.ids[0] in vm_estate.estate.vm("vm2").tags()
        assert provider.find(server, "CHG-VM-1") == record
        # A change after the snapshot: a file written, a package removed.
        vm_estate.ssh("vm2", "echo changed > /etc/ctk-after; dpkg -r caretaker-legacy >/dev/null")
        # The restore test's copy starts from the snapshot, not from today's disk.
        provider.check_command = (
            "test ! -e /etc/ctk-after && dpkg-query -W -f '${Package} ${Version}\\n'"
            " caretaker-legacy"
        )
        tested = provider.restore_test(server, record, timeout_s=120)
        assert tested.ok, tested.detail
        assert tested.cleaned_up and tested.rto_s is not None
        # Isolated: the original still answers at its own address with today's disk.
        assert vm_estate.ssh("vm2", "cat /etc/ctk-after").stdout.strip() == "changed"
        provider.restore(server, record)
        back = vm_estate.ssh(
            "vm2",
            "test -e /etc/ctk-after && echo present || echo gone;"
            " dpkg-query -W -f '${Version}\\n' caretaker-legacy; date +%s",
        ).stdout.split()
        assert back[:2] == ["gone", "0.9"]
        assert abs(float(back[2]) - time.time()) < 30  # the clock was set after the load
    finally:
        provider.delete(record)
        vm_estate.rollback("vm2")
    assert record.ids[0] not in vm_estate.estate.vm("vm2").tags()
    assert provider.find(server, "CHG-VM-1") is None


def test_restore_refuses_a_snapshot_that_is_gone(vm_estate: VmEstate) -> None:
    from core.errors import SnapshotError

    server = vm_estate.servers["vm3"]
    provider = provider_for(server, SnapshotPolicy(), client=SLUG)
    record = provider.create(server, SLUG, "CHG-VM-2")
    provider.delete(record)
    with pytest.raises(SnapshotError, match="does not exist"):
        provider.restore(server, record)
    result = provider.restore_test(server, record, timeout_s=30)
    assert not result.ok and "does not exist" in result.detail and result.cleaned_up
