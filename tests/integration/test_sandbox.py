"""The sandbox estate is real: sshd per host, apt per host, faults, clean teardown."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from core.errors import SandboxError
from sandbox import faults, moto
from sandbox.estate import AwsInstanceSpec, Estate, EstateSpec, HostSpec, numbered_hosts
from sandbox.repo import PackageSpec
from tests.conftest import sandbox_unavailable, ssh

pytestmark = pytest.mark.integration


def _agent_version(fleet: Estate, host: str) -> str:
    out = ssh(fleet, host, "dpkg-query -W -f '${Version}' caretaker-agent")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_host_runs_its_own_sshd_with_its_own_host_key(fleet: Estate) -> None:
    names = {ssh(fleet, h.name, "hostname").stdout.strip() for h in fleet.spec.hosts}
    assert names == {h.name for h in fleet.spec.hosts}
    keys = [line.split()[2] for line in fleet.known_hosts_path.read_text().splitlines()]
    assert len(set(keys)) == len(fleet.spec.hosts)


def test_up_again_changes_nothing_on_running_hosts(fleet: Estate) -> None:
    before = {r["host"]: r["boot_id"] for r in fleet.status()}
    pids = {h.name: fleet.init_pid(h.name) for h in fleet.spec.hosts}
    fleet.up()
    assert {r["host"]: r["boot_id"] for r in fleet.status()} == before
    assert {h.name: fleet.init_pid(h.name) for h in fleet.spec.hosts} == pids


def test_an_upgrade_changes_packages_on_that_host_and_no_other(fleet: Estate) -> None:
    fleet.publish(PackageSpec(name="caretaker-tools", version="2.4"))
    out = ssh(
        fleet,
        "h08",
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive "
        "apt-get -y install --only-upgrade caretaker-tools",
    )
    assert out.returncode == 0, out.stderr
    tools = "dpkg-query -W -f '${Version}' caretaker-tools"
    assert ssh(fleet, "h08", tools).stdout == "2.4"
    assert ssh(fleet, "h07", tools).stdout == "2.3"


def test_hosts_have_no_route_out_of_the_machine(fleet: Estate) -> None:
    for target in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "192.0.2.1", "8.8.8.8"):
        out = ssh(fleet, "h01", f"ip route get {target}")
        assert out.returncode != 0, f"h01 has a route to {target}: {out.stdout}"
    assert ssh(fleet, "h01", "ip route get 10.213.61.12").returncode == 0


def test_a_non_root_user_gets_root_through_sudo(fleet: Estate) -> None:
    assert ssh(fleet, "h02", "sudo -n id -u", user="ops").stdout.strip() == "0"


def test_a_stopped_sshd_refuses_and_comes_back(fleet: Estate) -> None:
    faults.stop_sshd(fleet, "h03")
    try:
        out = ssh(fleet, "h03", "true")
        assert out.returncode == 255 and "refused" in out.stderr
    finally:
        faults.start_sshd(fleet, "h03")
    assert ssh(fleet, "h03", "true").returncode == 0


def test_a_cut_link_times_out_and_comes_back(fleet: Estate) -> None:
    faults.cut_link(fleet, "h04")
    try:
        out = ssh(fleet, "h04", "true")
        assert out.returncode == 255 and "timed out" in out.stderr
    finally:
        faults.restore_link(fleet, "h04")
    assert ssh(fleet, "h04", "true").returncode == 0


def test_a_held_dpkg_lock_blocks_apt_on_that_host(fleet: Estate) -> None:
    faults.hold_dpkg_lock(fleet, "h05")
    try:
        out = ssh(fleet, "h05", "apt-get -o DPkg::Lock::Timeout=1 -y install caretaker-agent")
        assert out.returncode != 0 and "lock" in out.stderr
    finally:
        faults.release_dpkg_lock(fleet, "h05")
    assert (
        ssh(fleet, "h05", "apt-get -o DPkg::Lock::Timeout=1 -y install caretaker-agent").returncode
        == 0
    )


def test_a_broken_package_fails_its_postinst(fleet: Estate) -> None:
    faults.publish_broken(fleet, "caretaker-legacy", "0.9.1")
    try:
        out = ssh(
            fleet,
            "h06",
            "apt-get -q update && DEBIAN_FRONTEND=noninteractive "
            "apt-get -y install --only-upgrade caretaker-legacy",
        )
        assert out.returncode != 0
        assert "postinst failed (sandbox fault)" in out.stdout + out.stderr
    finally:
        fleet.repo.unpublish("caretaker-legacy", "0.9.1")


def test_a_reboot_gives_a_new_boot_id_and_no_boot_keeps_it_down(fleet: Estate) -> None:
    before = ssh(fleet, "h07", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    ssh(fleet, "h07", "reboot")
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline and after in (before, ""):
        time.sleep(0.5)
        after = ssh(fleet, "h07", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", after) and after != before

    faults.no_boot(fleet, "h07")
    try:
        ssh(fleet, "h07", "reboot")
        time.sleep(3)
        assert fleet.init_pid("h07") is None
        assert ssh(fleet, "h07", "true").returncode == 255
    finally:
        faults.no_boot(fleet, "h07", on=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and ssh(fleet, "h07", "true").returncode != 0:
        time.sleep(0.5)
    assert ssh(fleet, "h07", "true").returncode == 0


def _leftovers(estate: Estate) -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [
        f"netns {line.split()[0]}"
        for line in netns.splitlines()
        if line.startswith(f"ctk{estate.spec.net}-")
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {m}" for m in re.findall(rf"\d+: (ctk(?:br)?{estate.spec.net}\w*)[@:]", links)]
    found += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/mounts").read_text().splitlines()
        if str(estate.dir) in line
    ]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(estate.dir) in cmdline:
            found.append(f"process {proc.name}: {cmdline[:80]}")
    return found


def test_down_leaves_no_namespace_link_mount_or_process() -> None:
    if sandbox_unavailable():
        pytest.skip(sandbox_unavailable())
    spec = EstateSpec(
        name="test-down",
        net=62,
        hosts=[
            HostSpec(name="d1", address="10.213.62.11"),
            HostSpec(name="d2", address="10.213.62.12"),
        ],
        aws=[AwsInstanceSpec(name="d1", region="eu-west-1", client="t")],
    )
    estate = Estate(spec)
    estate.up(fresh=True)
    moto.start(estate)
    faults.hold_dpkg_lock(estate, "d1")
    faults.cut_link(estate, "d2")
    assert _leftovers(estate), "the estate should be visible while up"
    estate.down()
    estate.down()  # idempotent
    assert _leftovers(estate) == []
    assert moto.endpoint(estate) is None
    estate.down(purge=True)
    assert not estate.dir.exists()


def test_the_aws_endpoint_knows_the_estates_instances_and_volumes() -> None:
    if sandbox_unavailable():
        pytest.skip(sandbox_unavailable())
    spec = numbered_hosts("test-aws", 63, 2).model_copy(
        update={
            "aws": [AwsInstanceSpec(name="h01", region="eu-west-1", client="acme", data_volumes=2)]
        }
    )
    estate = Estate(spec)
    estate.dir.mkdir(parents=True, exist_ok=True)
    try:
        url = moto.start(estate)
        assert moto.start(estate) == url  # once
        ec2 = moto.client(url, "eu-west-1")
        found = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["h01"]}])
        (instance,) = [i for r in found["Reservations"] for i in r["Instances"]]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["caretaker:client"] == "acme"
        volumes = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance["InstanceId"]]}]
        )["Volumes"]
        assert len(volumes) == 3  # root + 2 data volumes
        assert ec2.describe_images(Owners=["self"])["Images"], "the sandbox AMI is registered"
    finally:
        estate.down(purge=True)


def test_a_second_estate_on_a_net_in_use_is_refused_with_the_way_out(tmp_path: Path) -> None:
    # What two demo runs with different CARETAKER_CACHE directories did: the second estate
    # plumbed its hosts into the first one's namespaces, and every host key "changed".
    if sandbox_unavailable():
        pytest.skip(sandbox_unavailable())
    first = Estate(numbered_hosts("test-clash", 82, 1))
    first.up(fresh=True)
    try:
        second = Estate(numbered_hosts("test-clash", 82, 1), root=tmp_path / "other-cache")
        with pytest.raises(SandboxError, match=r"ctk82-h01 already runs processes .* net 82"):
            second.up()
        assert ssh(first, "h01", "true").returncode == 0  # the first estate is untouched
    finally:
        first.down(purge=True)
