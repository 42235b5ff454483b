"""The server-maintenance dry run over real sandbox hosts, against a real Prefect API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from sandbox import faults
from sandbox.estate import Estate, numbered_hosts
from sandbox.prefect_blocks import ssh_identity
from sandbox.repo import PackageSpec
from tests.conftest import artifacts_of, sandbox_unavailable, ssh

pytestmark = pytest.mark.integration

CLIENT = """\
client:
  slug: {slug}
  name: Test Co
  timezone: Europe/Paris
  contact: {{name: Ops, email: ops@test.example}}
  approvers: [{{name: alice, email: alice@test.example}}]
schedule: {{cadence: quarterly, window: {{start: "01:00", duration: 4h}}}}
rollout: {{batch_size: 2, failures_tolerated: 0, on_failure: restore}}
patch: {{policy: {policy}, hold: [caretaker-legacy], reboot: if-required}}
defaults: {{ssh_block: {block}, user: {user}, port: 22, os_family: debian}}
servers:
{servers}
"""


def write_client(
    directory: Path, estate: Estate, slug: str, block: str, policy: str = "all", user: str = "root"
) -> None:
    lines = []
    for i, host in enumerate(estate.spec.hosts):
        role = "staging" if i == 0 else "production"
        lines.append(
            f"  - {{name: {host.name}, role: {role}, address: {host.address}, "
            f"provider: {{type: sandbox}}, checks: [{{type: tcp, port: 22}}]}}"
        )
    (directory / f"{slug}.yaml").write_text(
        CLIENT.format(slug=slug, block=block, policy=policy, user=user, servers="\n".join(lines))
    )


@pytest.fixture(scope="module")
def estate() -> Iterator[Estate]:
    """Seven fresh hosts (h01 staging, h02..h07 production) with new versions published."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    estate = Estate(numbered_hosts("test-dryrun", 64, 7))
    estate.up(fresh=True)
    estate.publish(PackageSpec(name="caretaker-agent", version="1.1"))
    estate.publish(
        PackageSpec(name="caretaker-libsec", version="1.0+sec1", security=True, reboot=True)
    )
    estate.publish(PackageSpec(name="caretaker-legacy", version="1.0"))
    try:
        yield estate
    finally:
        estate.down(purge=True)


@pytest.fixture(scope="module")
def inventory(
    estate: Estate, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Client files for the estate, and their SSH blocks saved on the Prefect API."""
    directory = tmp_path_factory.mktemp("clients")
    identity = ssh_identity(estate)
    identity.save("test-dryrun-ssh", overwrite=True)
    # The same key, but known_hosts holds another key for h05: a changed host key.
    other = (estate.host_dir("h06") / "upper/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    lines = identity.known_hosts.splitlines()
    lines = [
        f"{line.split()[0]} {other[0]} {other[1]}" if line.startswith("10.213.64.15 ") else line
        for line in lines
    ]
    identity.model_copy(update={"known_hosts": "\n".join(lines) + "\n"}).save(
        "test-dryrun-badkey", overwrite=True
    )
    write_client(directory, estate, "testco", "test-dryrun-ssh")
    write_client(directory, estate, "testsec", "test-dryrun-ssh", policy="security")
    write_client(directory, estate, "testkey", "test-dryrun-badkey")
    write_client(directory, estate, "testops", "test-dryrun-ssh", user="ops")
    mp = pytest.MonkeyPatch()
    mp.setenv("CARETAKER_INVENTORY_DIR", str(directory))
    yield directory
    mp.undo()


def _agent(estate: Estate, host: str) -> str:
    return ssh(estate, host, "dpkg-query -W -f '${Version}' caretaker-agent").stdout


def test_the_dry_run_plans_every_host_and_changes_nothing(estate: Estate, inventory: Path) -> None:
    from flows.server_maintenance import server_maintenance

    state = server_maintenance(
        client="testco", dry_run=True, change_ref="CHG-1001", return_state=True
    )
    plan = state.result()
    assert plan.change_ref == "CHG-1001" and plan.dry_run
    assert [h.server for h in plan.hosts] == [f"h0{i}" for i in range(1, 8)]
    for host in plan.hosts:
        assert host.reachable and host.error is None, host
        changes = {c.name: (c.from_version, c.to_version, c.security) for c in host.changes}
        assert changes == {
            "caretaker-agent": ("1.0", "1.1", False),
            "caretaker-libsec": ("1.0", "1.0+sec1", True),
        }
        assert host.skipped_held == ["caretaker-legacy"]
        assert host.reboot_expected is False  # libsec asks only after its postinst ran
    assert {_agent(estate, h.name) for h in estate.spec.hosts} == {"1.0"}, (
        "a dry run changed a host"
    )

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert artifacts["plan-testco"].type == "table"
    assert "caretaker-libsec" in str(artifacts["plan-testco"].data)
    assert "CHG-1001" in str(artifacts["plan-testco-summary"].data)


def test_a_pending_reboot_is_planned_as_expected(estate: Estate, inventory: Path) -> None:
    from flows.server_maintenance import server_maintenance

    ssh(
        estate,
        "h02",
        "touch /var/run/reboot-required && echo linux-image-x >> /var/run/reboot-required.pkgs",
    )
    try:
        plan = server_maintenance(client="testco", dry_run=True, scope="h02,h03")
    finally:
        ssh(estate, "h02", "rm -f /var/run/reboot-required /var/run/reboot-required.pkgs")
    by_name = {h.server: h for h in plan.hosts}
    assert set(by_name) == {"h02", "h03"}
    assert by_name["h02"].reboot_expected and "linux-image-x" in by_name["h02"].reboot_reason
    assert not by_name["h03"].reboot_expected


def test_a_security_only_policy_plans_only_security_updates(
    estate: Estate, inventory: Path
) -> None:
    from flows.server_maintenance import server_maintenance

    plan = server_maintenance(client="testsec", dry_run=True, scope="staging")
    (host,) = plan.hosts
    assert host.server == "h01"
    assert [c.name for c in host.changes] == ["caretaker-libsec"]
    assert host.skipped_policy == ["caretaker-agent"]


def test_an_unreachable_host_is_reported_while_the_others_are_planned(
    estate: Estate, inventory: Path
) -> None:
    from flows.server_maintenance import server_maintenance

    faults.stop_sshd(estate, "h03")
    try:
        plan = server_maintenance(client="testco", dry_run=True)
    finally:
        faults.start_sshd(estate, "h03")
    by_name = {h.server: h for h in plan.hosts}
    assert [h.server for h in plan.unreachable] == ["h03"]
    assert "refused" in (by_name["h03"].error or "")
    assert all(len(by_name[n].changes) == 2 for n in by_name if n != "h03")


def test_a_changed_host_key_is_refused_and_reported(estate: Estate, inventory: Path) -> None:
    from flows.server_maintenance import server_maintenance

    plan = server_maintenance(client="testkey", dry_run=True)
    by_name = {h.server: h for h in plan.hosts}
    assert [h.server for h in plan.unreachable] == ["h05"]
    assert "host key" in (by_name["h05"].error or "").lower()
    assert all(by_name[n].reachable for n in by_name if n != "h05")


def test_an_unknown_client_fails_with_the_clients_that_exist(inventory: Path) -> None:
    from core.errors import InventoryError
    from flows.server_maintenance import server_maintenance

    with pytest.raises(InventoryError, match="testco"):
        server_maintenance(client="nosuch", dry_run=True)


def test_secrets_never_reach_the_plan_or_the_artifacts(estate: Estate, inventory: Path) -> None:
    from flows.server_maintenance import server_maintenance

    state = server_maintenance(client="testco", dry_run=True, scope="h01", return_state=True)
    plan = state.result()
    key = estate.key_path.read_text()
    secret_line = key.splitlines()[1]
    assert secret_line not in plan.model_dump_json()
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert artifacts, "the dry run published no artifact"
    assert all(secret_line not in str(a.data) for a in artifacts.values())
    assert isinstance(ssh_identity(estate).private_key, SecretStr)


def test_a_non_root_login_plans_through_sudo(estate: Estate, inventory: Path) -> None:
    from flows.server_maintenance import server_maintenance

    plan = server_maintenance(client="testops", dry_run=True, scope="h06")
    (host,) = plan.hosts
    assert host.reachable and host.error is None
    assert {c.name for c in host.changes} == {"caretaker-agent", "caretaker-libsec"}
    # apt-get update ran as root through sudo: the lists it wrote belong to root.
    owner = ssh(estate, "h06", "stat -c %U /var/lib/apt/lists/lock", user="ops").stdout.strip()
    assert owner == "root"
