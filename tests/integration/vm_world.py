"""The VM estate the integration tests share: real Debian VMs with systemd (a pytest plugin).

``vm_estate`` (session-scoped) is an estate ``test-vm`` on net 90 holding three QEMU VM
hosts, ``vm1``..``vm3`` at 10.213.90.21-23, started from one checkpoint (sandbox.vm): real
systemd, journal, nftables with an inbound default deny, sshd on port 22 only, and the
estate's initial packages installed. It yields a :class:`VmEstate`:

* ``estate``: the :class:`~sandbox.estate.Estate` (``estate.vm(name)`` is the QEMU machine);
* ``client_dir`` / ``servers``: an inventory folder with one client ``testvm`` (vm1
  staging, vm2 and vm3 production, provider ``{type: sandbox, estate: test-vm, machine:
  vm}``, ssh block ``test-vm-ssh``, ``allowed_ports: [22]``) and its servers by name;
* ``save_ssh_block()``: saves the estate's key and known_hosts as ``test-vm-ssh`` on the
  current Prefect API (call it under ``prefect_api``);
* ``ssh(name, command)``: a command as root over OpenSSH (host key verified);
* ``rollback(*names)``: every named VM (default all) back to its ``ready`` state, disk and
  RAM, in ~0.2 s each, clock set to now. A test that changes a VM rolls it back when it
  is done (``try/finally``), so the next test finds the estate as it was.

For the "policy clauses" tests (journal, systemd units, services): take ``vm_estate``,
change what you need over ``ssh``, read it through the flow or the facts, and call
``rollback`` in ``finally``. At most these three VMs run (~360 MB each); a reboot costs
~40 s under TCG, so prefer a rollback to a reboot. On a machine without QEMU or root
the fixture skips.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inventory import Server, load_inventory
from sandbox import vm as vm_mod
from sandbox.estate import Estate, EstateSpec, HostSpec
from sandbox.prefect_blocks import ssh_identity
from tests.conftest import sandbox_unavailable, ssh

ESTATE = "test-vm"
NET = 90
SLUG = "testvm"
SSH_BLOCK = "test-vm-ssh"
CLIENT = """\
client:
  slug: {slug}
  name: VM Co
  timezone: Europe/Paris
  contact: {{name: Ops, email: ops@vm.example}}
  approvers: [{{name: alice, email: alice@vm.example}}]
schedule: {{cadence: quarterly, window: {{start: "01:00", duration: 4h}}}}
defaults: {{ssh_block: {block}, user: root, port: 22, os_family: debian}}
servers:
{servers}
"""

__all__ = ["ESTATE", "SLUG", "SSH_BLOCK", "VmEstate", "vm_estate"]


@dataclass
class VmEstate:
    """What ``vm_estate`` yields (see the module docstring)."""

    estate: Estate
    client_dir: Path
    servers: dict[str, Server] = field(default_factory=dict)
    #: Seconds the fixture took to bring the VMs up (image and checkpoint included).
    up_seconds: float = 0.0

    def save_ssh_block(self) -> None:
        ssh_identity(self.estate).save(SSH_BLOCK, overwrite=True)

    def ssh(self, name: str, command: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        return ssh(self.estate, name, command, timeout=timeout)

    def rollback(self, *names: str) -> None:
        for name in names or tuple(self.servers):
            machine = self.estate.vm(name)
            if machine.pid is None:
                self.estate.start_vm(name, loadvm=vm_mod.READY_TAG)
            else:
                machine.load(vm_mod.READY_TAG)
                machine.agent(vm_mod.clock_script())


def vm_unavailable() -> str | None:
    """Why the VM tier cannot run here, or None."""
    reason = sandbox_unavailable()
    if reason:
        return reason
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run setup installs it)"
    return None


@pytest.fixture(scope="session")
def vm_estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmEstate]:
    """Three VM hosts from one checkpoint, shared by the session (module docstring)."""
    reason = vm_unavailable()
    if reason:
        pytest.skip(reason)
    hosts = [
        HostSpec(name=f"vm{i}", address=f"10.213.{NET}.{20 + i}", kind="vm") for i in (1, 2, 3)
    ]
    estate = Estate(EstateSpec(name=ESTATE, net=NET, hosts=hosts))
    directory = tmp_path_factory.mktemp("vm-clients")
    servers = "\n".join(
        f"  - {{name: {h.name}, role: {'staging' if i == 0 else 'production'},"
        f" address: {h.address}, allowed_ports: [22],"
        f" provider: {{type: sandbox, estate: {ESTATE}, machine: vm}}}}"
        for i, h in enumerate(hosts)
    )
    (directory / f"{SLUG}.yaml").write_text(
        CLIENT.format(slug=SLUG, block=SSH_BLOCK, servers=servers)
    )
    started = time.monotonic()
    try:
        estate.up(fresh=True, wait=120)
        world = VmEstate(
            estate=estate,
            client_dir=directory,
            servers={s.name: s for s in load_inventory(directory)[SLUG].servers},
            up_seconds=round(time.monotonic() - started, 1),
        )
        yield world
    finally:
        estate.down(purge=True)
