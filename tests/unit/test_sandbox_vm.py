"""The VM tier's pure pieces: MACs, the machine's command line, a clone's identity script,
the apt sources, the restore test's port forward (sandbox/vm.py, tasks/snapshots/sandbox_vm.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandbox import vm as vm_mod
from sandbox.vm_image import VmImage, recipe
from tasks.snapshots.sandbox_vm import _FORWARD

IMAGE = VmImage(disk=Path("/i/disk.qcow2"), kernel=Path("/i/vmlinuz"), initrd=Path("/i/initrd"))


def test_macs_are_stable_local_and_distinct() -> None:
    macs = {vm_mod.mac_for(f"vm{i}", f"10.213.90.{20 + i}") for i in range(50)}
    assert len(macs) == 50
    assert all(m.startswith("52:54:00:") and len(m.split(":")) == 6 for m in macs)
    assert vm_mod.mac_for("vm1", "10.213.90.21") == vm_mod.mac_for("vm1", "10.213.90.21")


def test_every_vm_runs_the_same_machine_only_the_netdev_differs() -> None:
    """-loadvm needs the same devices in the same order: the template's and a clone's
    command lines differ only in the netdev, the MAC, the folder and -loadvm."""
    template = vm_mod.qemu_command(
        IMAGE, Path("/t"), accel="tcg", netdev="hubport,id=n0,hubid=0", mac="52:54:00:00:00:01"
    )
    clone = vm_mod.qemu_command(
        IMAGE,
        Path("/t"),
        accel="tcg",
        netdev="tap,id=n0,ifname=ctk90v21,script=no,downscript=no,vnet_hdr=off",
        mac="52:54:00:00:00:01",
        loadvm="ready",
    )
    assert clone[: clone.index("-netdev")] == template[: template.index("-netdev")]
    assert clone[-2:] == ["-loadvm", "ready"]
    devices = [clone[i + 1].split(",")[0] for i, a in enumerate(clone) if a == "-device"]
    assert devices == [
        "virtio-blk-pci",
        "virtio-net-pci",
        "virtio-serial-pci",
        "virtserialport",
        "virtio-rng-pci",
    ]
    assert "qemu64" in clone  # -cpu max: a clone's timers never fire after -loadvm


def test_the_identity_script_gives_a_clone_its_own_everything() -> None:
    script = vm_mod.identity_script(
        name="vm2",
        address="10.213.90.22",
        prefix=24,
        mac="52:54:00:aa:bb:cc",
        host_key="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
        host_key_pub="ssh-ed25519 AAAA root@vm2\n",
        authorized_key="ssh-ed25519 BBBB caretaker\n",
        sources="deb [trusted=yes] http://10.213.90.1:4242/ caretaker main\n",
    )
    for needed in (
        "date -s @",
        "/dev/urandom",
        "address 52:54:00:aa:bb:cc",
        "10.213.90.22/24",
        "Address=10.213.90.22/24",
        "hostname vm2",
        "/etc/machine-id",
        "/etc/ssh/ssh_host_ed25519_key",
        "authorized_keys",
        "http://10.213.90.1:4242/",
        "systemctl restart ssh",
    ):
        assert needed in script, needed
    # Two clones never get the same machine id or entropy.
    other = vm_mod.identity_script(
        name="vm2", address="10.213.90.22", prefix=24, mac="m", host_key="k",
        host_key_pub="p", authorized_key="a", sources="s",
    )  # fmt: skip
    assert [x for x in script.splitlines() if "machine-id" in x] != [
        x for x in other.splitlines() if "machine-id" in x
    ]
    # It is valid sh.
    assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0


def test_the_sources_list_names_only_the_estate_repository() -> None:
    text = vm_mod.http_sources_list("http://10.213.90.1:4242/", ("caretaker", "caretaker-security"))
    assert text.splitlines() == [
        "deb [trusted=yes] http://10.213.90.1:4242/ caretaker main",
        "deb [trusted=yes] http://10.213.90.1:4242/ caretaker-security main",
    ]


@pytest.mark.parametrize(
    ("usernet", "port"),
    [
        (
            "Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port"
            " RecvQ SendQ\r\n  TCP[HOST_FORWARD]  13       127.0.0.1 36503       10.0.2.15    22"
            "     0     0\r\n",
            36503,
        ),
        ("Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port\r\n", None),
    ],
)
def test_the_restore_copys_forwarded_port_is_read_from_info_usernet(
    usernet: str, port: int | None
) -> None:
    match = _FORWARD.search(usernet)
    assert (int(match.group(1)) if match else None) == port


def test_the_image_recipe_names_what_is_in_it() -> None:
    text = recipe()
    for needed in ("systemd", "openssh-server", "nftables", "linux-image-cloud-amd64", "drop"):
        assert needed in text
