"""The demo's inventory copy gets one VM host per client (deployments/demo_vms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.demo_vms import add_vm_host
from inventory import SandboxProvider, load_inventory

CLIENTS = Path(__file__).resolve().parents[2] / "clients"


@pytest.mark.parametrize(
    ("slug", "addresses", "expected"),
    [
        ("acme", ["10.213.1.11", "10.213.1.14", "10.213.1.12"], ("acme-vm-1", "10.213.1.15")),
        ("globex", ["10.213.1.21"], ("globex-vm-1", "10.213.1.22")),
        ("x1", ["10.213.7.9", "10.213.7.10"], ("x1-vm-1", "10.213.7.11")),
    ],
)
def test_the_vm_host_takes_the_next_address(
    slug: str, addresses: list[str], expected: tuple[str, str]
) -> None:
    data = {
        "client": {"slug": slug},
        "servers": [{"name": f"s{i}", "address": a} for i, a in enumerate(addresses)],
    }
    assert add_vm_host(data) == expected[0]
    assert add_vm_host(data) == expected[0]  # idempotent: still one VM host
    vms = [s for s in data["servers"] if s["name"] == expected[0]]
    assert [(s["address"], s["provider"]["machine"], s["role"]) for s in vms] == [
        (expected[1], "vm", "production")
    ]


def test_the_example_clients_with_their_vm_hosts_are_a_valid_inventory(tmp_path: Path) -> None:
    for file in CLIENTS.glob("*.yaml"):
        data = yaml.safe_load(file.read_text())
        add_vm_host(data)
        (tmp_path / file.name).write_text(yaml.safe_dump(data, sort_keys=False))
    inventories = load_inventory(tmp_path)
    for slug, inventory in inventories.items():
        vm = inventory.server(f"{slug}-vm-1")
        assert isinstance(vm.provider, SandboxProvider)
        assert (vm.provider.machine, vm.provider.estate) == ("vm", "demo")
        assert [c.type for c in vm.checks] == ["tcp", "systemd"]
        addresses = [s.address for s in inventory.servers]
        assert len(set(addresses)) == len(addresses)
