"""The sandbox provider's bookkeeping on a disk-only estate (no host running, no root needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.errors import SnapshotError
from inventory import Server, SnapshotPolicy
from sandbox.estate import Estate, EstateSpec, HostSpec
from tasks.snapshots.sandbox import SandboxSnapshotProvider, known_hosts_for


@pytest.fixture()
def estate(tmp_path: Path) -> Estate:
    spec = EstateSpec(name="unit", net=79, hosts=[HostSpec(name="app-1", address="10.213.79.11")])
    estate = Estate(spec, root=tmp_path / "unit")
    upper = estate.host_dir("app-1") / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/hostname").write_text("app-1\n")
    (upper / "etc/motd").write_text("before the change\n")
    return estate


@pytest.fixture()
def app() -> Server:
    return Server.model_validate(
        {
            "name": "app-1",
            "role": "production",
            "address": "10.213.79.11",
            "ssh_block": "ops",
            "os_family": "debian",
            "provider": {"type": "sandbox", "estate": "unit"},
        }
    )


def test_a_snapshot_is_a_copy_of_the_hosts_disk_layer_with_its_metadata(
    estate: Estate, app: Server
) -> None:
    record = SandboxSnapshotProvider(estate, SnapshotPolicy()).create(app, "globex", "CHG-1")
    folder = estate.dir / "snapshots" / record.ids[0]
    assert (folder / "upper/etc/motd").read_text() == "before the change\n"
    meta = json.loads((folder / "snapshot.json").read_text())
    assert meta["client"] == "globex" and meta["change_ref"] == "CHG-1"
    assert meta["server"] == "app-1" and meta["state"] == "completed"
    assert meta["size_bytes"] == record.size_bytes == len("app-1\n") + len("before the change\n")


def test_a_later_change_to_the_host_does_not_touch_the_snapshot(
    estate: Estate, app: Server
) -> None:
    record = SandboxSnapshotProvider(estate, SnapshotPolicy()).create(app, "globex", "CHG-1")
    (estate.host_dir("app-1") / "upper/etc/motd").write_text("after\n")
    copy = estate.dir / "snapshots" / record.ids[0] / "upper/etc/motd"
    assert copy.read_text() == "before the change\n"


def test_find_and_list_see_the_servers_snapshots_by_change_ref(estate: Estate, app: Server) -> None:
    provider = SandboxSnapshotProvider(estate, SnapshotPolicy(), client="globex")
    first = provider.create(app, "globex", "CHG-1")
    second = provider.create(app, "globex", "CHG-2")
    assert provider.find(app, "CHG-1") == first
    assert provider.find(app, "CHG-3") is None
    assert [r.ids for r in provider.list(app)] == [first.ids, second.ids]
    other_client = SandboxSnapshotProvider(estate, SnapshotPolicy(), client="acme")
    assert other_client.list(app) == []


def test_a_failed_snapshot_is_not_found_again_so_a_rerun_takes_a_new_one(
    estate: Estate, app: Server
) -> None:
    provider = SandboxSnapshotProvider(estate, SnapshotPolicy())
    record = provider.create(app, "globex", "CHG-1")
    meta = estate.dir / "snapshots" / record.ids[0] / "snapshot.json"
    meta.write_text(meta.read_text().replace('"completed"', '"error"'))
    assert provider.find(app, "CHG-1") is None
    with pytest.raises(SnapshotError, match="failed"):
        provider.wait(record, timeout_s=0, poll_s=0.1)


def test_waiting_for_a_completed_snapshot_returns_at_once(estate: Estate, app: Server) -> None:
    provider = SandboxSnapshotProvider(estate, SnapshotPolicy())
    record = provider.create(app, "globex", "CHG-1")
    assert provider.wait(record, timeout_s=0, poll_s=0.1).state == "completed"


def test_sandbox_disks_are_not_encrypted_so_requiring_it_refuses(
    estate: Estate, app: Server
) -> None:
    provider = SandboxSnapshotProvider(estate, SnapshotPolicy(require_encryption=True))
    with pytest.raises(SnapshotError, match="not encrypted"):
        provider.create(app, "globex", "CHG-1")
    assert not (estate.dir / "snapshots").exists() or not any((estate.dir / "snapshots").iterdir())


def test_a_snapshot_under_a_restore_test_is_not_deleted(estate: Estate, app: Server) -> None:
    provider = SandboxSnapshotProvider(estate, SnapshotPolicy())
    record = provider.create(app, "globex", "CHG-1")
    folder = estate.dir / "snapshots" / record.ids[0]
    (folder / f"in-use-{os.getpid()}").touch()
    with pytest.raises(SnapshotError, match="being restore-tested"):
        provider.delete(record)
    assert folder.exists()
    (folder / f"in-use-{os.getpid()}").unlink()
    provider.delete(record)
    assert not folder.exists()


def test_a_host_that_is_not_in_the_estate_is_a_snapshot_error(estate: Estate, app: Server) -> None:
    stranger = app.model_copy(update={"name": "stranger"})
    with pytest.raises(SnapshotError, match="no host 'stranger'"):
        SandboxSnapshotProvider(estate, SnapshotPolicy()).create(stranger, "globex", "CHG-1")


def test_the_restored_copy_is_verified_with_the_originals_key_at_its_new_address() -> None:
    known = (
        "10.213.79.11 ssh-ed25519 AAAAoriginal\n10.213.79.12 ssh-ed25519 AAAAother\n"
        "10.213.79.13,app-3 ssh-ed25519 AAAAthird\n"
    )
    assert known_hosts_for(known, "10.213.79.11", "10.213.250.2") == (
        "10.213.250.2 ssh-ed25519 AAAAoriginal\n"
    )
    assert known_hosts_for(known, "10.213.79.13", "10.213.250.6") == (
        "10.213.250.6 ssh-ed25519 AAAAthird\n"
    )
    with pytest.raises(SnapshotError, match=r"no known_hosts entry for 10\.213\.79\.99"):
        known_hosts_for(known, "10.213.79.99", "10.213.250.2")
