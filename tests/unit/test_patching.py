"""Applying updates and rebooting, without SSH.

The pure parts (the dpkg-query parser, the diff, the apt failure classifier and its
summaries) are read from output recorded on sandbox hosts in
``tests/fixtures/patching/``. The tasks run against scripted fake hosts that answer
with those recorded outputs, so every path (no-op, success, lock, broken postinst,
reboot that returns or never does) is exercised in milliseconds.
"""

from __future__ import annotations

import json
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.errors import (
    CommandFailed,
    ConfigError,
    ConnectError,
    PatchFailed,
    RebootTimeout,
    RemoteError,
)
from tasks.facts import (
    BOOT_ID,
    REBOOT_REQUIRED,
    FactParseError,
    HostFacts,
    PackageChange,
    RebootRequired,
    parse_apt_simulation,
)
from tasks.packages import (
    APT_REFRESH,
    DPKG_INSTALLED,
    HostPlan,
    InstalledPackage,
    PackageDiff,
    PackageVersionChange,
    apply_updates,
    apt_install_command,
    apt_refresh_command,
    classify_apt_failure,
    failure_summary,
    package_diff,
    parse_dpkg_installed,
    pending_changes,
    plan_host,
)
from tasks.reboot import REBOOT_COMMAND, RebootResult, reboot_host, reboot_needed
from tasks.remote import CommandResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "patching"
FACT_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
SOURCES = ("recorded on ", "composed", "the ")


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    assert doc["source"].startswith(SOURCES), "every fixture says where it came from"
    return doc


def names(prefix: str) -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob(f"{prefix}__*.json"))


def installed(doc_name: str) -> dict[str, InstalledPackage]:
    return parse_dpkg_installed(fixture(doc_name)["output"])


def change(name: str, old: str | None, new: str, security: bool = False) -> PackageChange:
    return PackageChange(
        name=name,
        from_version=old,
        to_version=new,
        suites=["caretaker-security" if security else "caretaker"],
        arch="all",
        security=security,
    )


def host_plan(server: str = "h01", *changes: PackageChange, **extra: Any) -> HostPlan:
    return HostPlan(
        server=server,
        role="staging",
        address="10.213.65.11",
        reachable=True,
        changes=list(changes),
        **extra,
    )


AGENT = change("caretaker-agent", "1.0", "1.1")
TOOLS = change("caretaker-tools", "2.3", "2.4")


# ------------------------------------------------------------------ recorded fixtures


@pytest.mark.parametrize("name", names("dpkg_installed"))
def test_dpkg_query_output_is_read_as_read_by_hand(name: str) -> None:
    doc = fixture(name)
    assert doc["command"] == DPKG_INSTALLED, "the fixture was recorded with another command"
    if "error" in doc:
        with pytest.raises(FactParseError, match=re.escape(doc["error"])):
            parse_dpkg_installed(doc["output"])
        return
    packages = parse_dpkg_installed(doc["output"])
    assert len(packages) == doc["expected"]["count"]
    for package, want in doc["expected"]["some"].items():
        got = packages[package]
        assert {
            "version": got.version,
            "status": got.status,
            "installed": got.installed,
            "configured": got.configured,
        } == want, package


@pytest.mark.parametrize("name", names("package_diff"))
def test_the_diff_of_two_recorded_readings_is_what_changed(name: str) -> None:
    doc = fixture(name)
    diff = package_diff(installed(doc["before"]), installed(doc["after"]))
    assert [c.model_dump() for c in diff] == doc["expected"]


@pytest.mark.parametrize("name", names("apt_install") + names("apt_update"))
def test_apt_failures_are_classified_and_summarised_as_read_by_hand(name: str) -> None:
    doc = fixture(name)
    output = doc["stderr"] + "\n" + doc["stdout"]
    assert classify_apt_failure(output) == doc["expected"]["kind"]
    assert (
        failure_summary(doc["expected"]["kind"], output, doc["lock_timeout_s"])
        == (doc["expected"]["summary"])
    )


def test_the_recorded_install_commands_are_the_ones_the_task_builds() -> None:
    doc = fixture("apt_install__broken_postinst")
    assert doc["command"] == apt_install_command(host_plan("h01", AGENT, TOOLS), 120)
    assert fixture("apt_update__lists_lock_held")["command"] == apt_refresh_command(2)


def test_a_held_lock_is_recognised_from_stderr_alone() -> None:
    stderr = fixture("apt_install__dpkg_lock_held")["stderr"]
    assert classify_apt_failure(stderr) == "lock"


def test_a_network_warning_during_update_is_classified_even_though_apt_exited_0() -> None:
    doc = fixture("apt_update__repository_refused")
    assert doc["exit_code"] == 0
    assert classify_apt_failure(doc["stderr"]) == "network"


def test_unrecognised_apt_output_is_unknown_not_guessed() -> None:
    assert classify_apt_failure("E: Some packages could not be installed.") == "unknown"
    assert failure_summary("unknown", "", 120) == "apt-get failed: no output"


# ------------------------------------------------------------------------ pure logic


def test_the_diff_names_new_removed_and_downgraded_packages() -> None:
    def pkg(name: str, version: str, status: str = "ii ") -> InstalledPackage:
        return InstalledPackage(name=name, version=version, status=status)

    before = {
        "kept": pkg("kept", "1"),
        "gone": pkg("gone", "1"),
        "purged-config": pkg("purged-config", "3", "rc "),
        "down": pkg("down", "2"),
    }
    after = {
        "kept": pkg("kept", "1"),
        "gone": pkg("gone", "1", "rc "),
        "purged-config": pkg("purged-config", "3", "rc "),
        "down": pkg("down", "1"),
        "new": pkg("new", "0.1", "iU "),
    }
    assert package_diff(before, after) == [
        PackageVersionChange(name="down", from_version="2", to_version="1"),
        PackageVersionChange(name="gone", from_version="1", to_version=None),
        PackageVersionChange(name="new", from_version=None, to_version="0.1", configured=False),
    ]


def test_a_planned_version_that_failed_to_configure_is_still_pending() -> None:
    after = installed("dpkg_installed__sandbox_after_broken_postinst")
    pending = pending_changes(host_plan("h01", AGENT, TOOLS), after)
    assert [c.name for c in pending] == ["caretaker-tools"]


def test_a_foreign_architecture_package_is_matched_by_its_dpkg_name() -> None:
    libc = InstalledPackage(name="libc6", version="2.36-9+deb12u14", status="ii ")
    plan = host_plan("h01", change("libc6:i386", "2.36-9+deb12u13", "2.36-9+deb12u14"))
    assert pending_changes(plan, {"libc6": libc}) == []


def test_the_refresh_command_is_the_one_planning_uses() -> None:
    assert apt_refresh_command(120) == APT_REFRESH


def test_the_install_command_pins_exactly_the_planned_upgrades() -> None:
    simulation = json.loads((FACT_FIXTURES / "apt_simulation__local_repo_pending.json").read_text())
    facts = HostFacts(
        apt_simulation=parse_apt_simulation(simulation["output"]),
        held_packages=["ct-held"],
        reboot_required=RebootRequired(required=False),
    )
    plan = plan_host(
        server="web-1",
        role="production",
        address="10.0.0.5",
        facts=facts,
        policy="all",
        hold=["ct-tool"],
        reboot_policy="if-required",
    )
    command = apt_install_command(plan, 120)
    assert command.startswith("DEBIAN_FRONTEND=noninteractive apt-get -q -y ")
    assert "-o DPkg::Lock::Timeout=120" in command
    assert "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold" in command
    named = command.split("--no-install-recommends ", 1)[1].split()
    # Upgrades pinned; the new dependency (ct-runtime) comes with them; the inventory's
    # hold (ct-tool) and apt's hold (ct-held) are not named; the approved removal is.
    assert named == [
        "ct-agent=1.1",
        "ct-lib=1.1",
        "ct-openssl=3.0.2-2",
        "ct-legacy-",
    ]
    assert "--no-remove" not in command


def test_a_plan_without_removals_forbids_apt_from_removing_anything() -> None:
    command = apt_install_command(host_plan("h01", AGENT), 30)
    assert "--no-remove install --only-upgrade --no-install-recommends caretaker-agent=1.1" in (
        command
    )


def test_a_version_with_shell_characters_is_quoted() -> None:
    command = apt_install_command(host_plan("h01", change("odd", "1", "1;reboot")), 30)
    assert "'odd=1;reboot'" in command


@pytest.mark.parametrize(
    ("policy", "changed", "required", "expected"),
    [
        ("if-required", True, True, True),
        ("if-required", True, False, False),
        ("if-required", False, True, True),
        ("always", True, False, True),
        ("always", False, False, False),
        ("always", False, True, True),
        ("never", True, True, False),
        ("never", False, False, False),
    ],
)
def test_reboot_needed_follows_the_policy_and_what_patching_left(
    policy: Any, changed: bool, required: bool, expected: bool
) -> None:
    diff = PackageDiff(
        server="h01",
        changes=[PackageVersionChange(name="a", from_version="1", to_version="2")]
        if changed
        else [],
        noop=not changed,
        reboot_required_after=required,
        duration_s=0,
    )
    assert reboot_needed(policy, diff) is expected


# ------------------------------------------------------------------- apply_updates


class AptHost:
    """A fake Debian host: a dpkg database, a reboot flag, and scripted apt runs.

    ``install`` decides what the pinned install does: it may change ``packages`` and
    returns (exit code, stdout, stderr), usually from a recorded fixture.
    """

    def __init__(
        self,
        packages: dict[str, InstalledPackage],
        install: Callable[[AptHost], tuple[int, str, str]] | None = None,
        update: Callable[[AptHost], tuple[int, str, str]] | None = None,
        name: str = "h01",
    ) -> None:
        self.name = name
        self.packages = dict(packages)
        self.reboot_required = False
        self.install = install or (lambda h: (0, "", ""))
        self.update = update or (lambda h: (0, "Reading package lists...\n", ""))
        self.commands: list[tuple[str, bool]] = []

    def set(self, name: str, version: str, status: str = "ii ") -> None:
        self.packages[name] = InstalledPackage(name=name, version=version, status=status)

    def run(
        self,
        command: str,
        *,
        timeout: float = 300,
        sudo: bool = False,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        self.commands.append((command, sudo))
        if command.endswith(DPKG_INSTALLED):
            lines = [f"{p.name}\t{p.version}\t{p.status}\n" for p in self.packages.values()]
            code, out, err = 0, "".join(lines), ""
        elif command == REBOOT_REQUIRED:
            code, out, err = 0, "yes\n" if self.reboot_required else "no\n", ""
        elif " update" in command:
            code, out, err = self.update(self)
        elif " install " in command:
            code, out, err = self.install(self)
        else:
            raise AssertionError(f"unexpected command {command}")
        result = CommandResult(
            host=self.name, command=command, exit_code=code, stdout=out, stderr=err, duration_s=0
        )
        return result.check() if check else result

    def close(self) -> None:
        pass

    @property
    def apt_runs(self) -> list[tuple[str, bool]]:
        return [(c, sudo) for c, sudo in self.commands if c.startswith(("apt-get", "DEBIAN"))]


def recorded(name: str) -> Callable[[AptHost], tuple[int, str, str]]:
    doc = fixture(name)
    return lambda host: (doc["exit_code"], doc["stdout"], doc["stderr"])


def initial() -> dict[str, InstalledPackage]:
    return installed("dpkg_installed__sandbox_initial")


def test_applying_a_plan_upgrades_its_packages_and_returns_the_diff() -> None:
    def upgrade(host: AptHost) -> tuple[int, str, str]:
        host.set("caretaker-agent", "1.1")
        host.reboot_required = True
        return 0, "Setting up caretaker-agent (1.1) ...\n", ""

    host = AptHost(initial(), install=upgrade)
    diff = apply_updates.fn(host, host_plan("h01", AGENT))
    assert diff.changes == [
        PackageVersionChange(name="caretaker-agent", from_version="1.0", to_version="1.1")
    ]
    assert not diff.noop and diff.reboot_required_after
    assert diff.command == apt_install_command(host_plan("h01", AGENT), 120)
    assert [c.split()[0] for c, _ in host.apt_runs] == ["apt-get", "DEBIAN_FRONTEND=noninteractive"]
    assert all(sudo for _, sudo in host.apt_runs), "every apt command runs as root"


def test_a_rerun_of_an_applied_plan_is_a_noop_and_runs_no_apt() -> None:
    host = AptHost(initial())
    host.set("caretaker-agent", "1.1")
    diff = apply_updates.fn(host, host_plan("h01", AGENT))
    assert diff.noop and diff.changes == [] and diff.command is None
    assert host.apt_runs == []


def test_an_empty_plan_is_a_noop() -> None:
    host = AptHost(initial())
    assert apply_updates.fn(host, host_plan("h01")).noop
    assert host.apt_runs == []


def test_a_held_dpkg_lock_fails_with_a_lock_message_and_changes_nothing() -> None:
    host = AptHost(initial(), install=recorded("apt_install__dpkg_lock_held"))
    with pytest.raises(PatchFailed) as info:
        apply_updates.fn(host, host_plan("h01", AGENT), lock_timeout_s=2, timeout_s=60)
    error = info.value
    assert error.kind == "lock" and error.exit_code == 100
    assert "the dpkg lock (/var/lib/dpkg/lock-frontend) was held" in str(error)
    assert "for more than 2 s" in str(error) and "no package was changed" in str(error)
    assert isinstance(error.diff, PackageDiff) and error.diff.changes == []
    assert isinstance(error, CommandFailed), "a PatchFailed is a CommandFailed"


def test_a_broken_postinst_fails_with_evidence_and_the_diff_of_what_changed() -> None:
    def broken(host: AptHost) -> tuple[int, str, str]:
        host.set("caretaker-agent", "1.1")
        host.set("caretaker-tools", "2.4", "iF ")
        return recorded("apt_install__broken_postinst")(host)

    host = AptHost(initial(), install=broken)
    with pytest.raises(PatchFailed) as info:
        apply_updates.fn(host, host_plan("h01", AGENT, TOOLS))
    error = info.value
    assert error.kind == "postinst"
    assert "caretaker-tools" in str(error) and "post-installation script" in str(error)
    assert "caretaker-tools 2.3 -> 2.4 (not configured)" in str(error)
    assert "Sub-process /usr/bin/dpkg returned an error code" in error.stderr_tail
    assert isinstance(error.diff, PackageDiff)
    assert error.diff.unconfigured == ["caretaker-tools"]
    assert {c.name: c.to_version for c in error.diff.changes} == {
        "caretaker-agent": "1.1",
        "caretaker-tools": "2.4",
    }


def test_a_rerun_after_a_broken_postinst_tries_again_instead_of_a_noop() -> None:
    host = AptHost(
        installed("dpkg_installed__sandbox_after_broken_postinst"),
        install=recorded("apt_install__broken_postinst_rerun"),
    )
    with pytest.raises(PatchFailed, match="caretaker-tools") as info:
        apply_updates.fn(host, host_plan("h01", AGENT, TOOLS))
    assert info.value.kind == "postinst"
    assert len(host.apt_runs) == 2


def test_a_held_lists_lock_is_waited_for_up_to_the_bound_then_fails() -> None:
    host = AptHost(initial(), update=recorded("apt_update__lists_lock_held"))
    started = time.monotonic()
    with pytest.raises(PatchFailed) as info:
        apply_updates.fn(host, host_plan("h01", AGENT), lock_timeout_s=1, timeout_s=60)
    assert 1 <= time.monotonic() - started < 5
    assert info.value.kind == "lock"
    assert "apt lists lock (/var/lib/apt/lists/lock) was held" in str(info.value)
    assert len(host.apt_runs) >= 2, "apt-get update was tried again while the bound allowed"
    assert all("install" not in c for c, _ in host.apt_runs)


def test_apt_succeeding_without_doing_the_plan_is_a_failure() -> None:
    host = AptHost(initial(), install=lambda h: (0, "0 upgraded\n", ""))
    with pytest.raises(
        PatchFailed, match=r"planned changes are not in place: caretaker-agent 1\.1"
    ):
        apply_updates.fn(host, host_plan("h01", AGENT))


def test_an_install_failing_after_an_unreachable_refresh_says_the_refresh_failed() -> None:
    host = AptHost(
        initial(),
        update=recorded("apt_update__repository_refused"),
        install=recorded("apt_install__version_not_found"),
    )
    with pytest.raises(PatchFailed) as info:
        apply_updates.fn(host, host_plan("h01", AGENT))
    assert info.value.kind == "unknown"
    assert "Version '9.9' for 'caretaker-agent' was not found" in str(info.value)
    assert "apt-get update could not reach the repository before this" in str(info.value)


def test_a_plan_for_another_host_is_refused_before_anything_runs() -> None:
    host = AptHost(initial(), name="h02")
    with pytest.raises(ConfigError, match="plan of 'h01' was handed to host 'h02'"):
        apply_updates.fn(host, host_plan("h01", AGENT))
    assert host.commands == []


def test_a_host_that_could_not_be_planned_is_not_patched() -> None:
    host = AptHost(initial())
    plan = host_plan("h01", error="cannot plan packages: apt's simulation is missing")
    with pytest.raises(ConfigError, match="not planned"):
        apply_updates.fn(host, plan)
    assert host.commands == []


def test_patch_failed_survives_pickling_with_its_diff() -> None:
    diff = PackageDiff(server="h01", noop=False, reboot_required_after=False, duration_s=1.5)
    error = PatchFailed(
        "h01", "apt-get install", 100, "out", "err", kind="lock", summary="held", diff=diff
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert isinstance(copy, PatchFailed)
    assert (copy.kind, copy.diff, str(copy)) == ("lock", diff, str(error))


# --------------------------------------------------------------------- reboot_host

OLD = "40832704-ee06-4aff-986c-e3500edfeee2"
NEW = "d1d3cca6-b2a3-415e-98d2-3ef599ac9876"


class RebootingHost:
    """A fake host whose boot id changes after ``down_polls`` failed connections."""

    def __init__(self, down_polls: int = 2, comes_back: bool = True, drop: bool = True) -> None:
        self.name = "h01"
        self.boot_id = OLD
        self.down_polls = down_polls
        self.comes_back = comes_back
        self.drop = drop
        self.rebooted = False
        self.closed = 0
        self.commands: list[tuple[str, bool]] = []

    def run(
        self,
        command: str,
        *,
        timeout: float = 300,
        sudo: bool = False,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        self.commands.append((command, sudo))
        if command == REBOOT_COMMAND:
            self.rebooted = True
            if self.drop:
                raise ConnectError(self.name, "connection lost while running the reboot")
            out = ""
        elif command == BOOT_ID:
            if self.rebooted:
                if self.down_polls > 0 or not self.comes_back:
                    self.down_polls -= 1
                    raise ConnectError(self.name, "connection refused (is sshd running?)")
                self.boot_id = NEW
            out = self.boot_id + "\n"
        else:
            raise AssertionError(command)
        return CommandResult(
            host=self.name, command=command, exit_code=0, stdout=out, stderr="", duration_s=0
        )

    def close(self) -> None:
        self.closed += 1


def test_a_reboot_returns_the_new_boot_id() -> None:
    host = RebootingHost(down_polls=2)
    result = reboot_host.fn(host, "h01", timeout_s=10, poll_s=0.01)
    assert result == RebootResult(
        server="h01", old_boot_id=OLD, new_boot_id=NEW, seconds=result.seconds
    )
    assert host.closed >= 1, "the old connection is closed before polling"
    assert (REBOOT_COMMAND, True) in host.commands, "the reboot runs as root"


def test_a_dropped_connection_while_issuing_the_reboot_is_not_an_error() -> None:
    assert reboot_host.fn(RebootingHost(drop=True), "h01", timeout_s=5, poll_s=0.01).new_boot_id


def test_a_host_that_never_comes_back_times_out_within_the_bound() -> None:
    host = RebootingHost(comes_back=False)
    started = time.monotonic()
    with pytest.raises(RebootTimeout) as info:
        reboot_host.fn(host, "h01", timeout_s=0.5, poll_s=0.05)
    assert time.monotonic() - started < 1.5
    error = info.value
    assert isinstance(error, RemoteError)
    assert error.old_boot_id == OLD and 0.5 <= error.waited_s < 1.5
    assert "connection refused" in error.last_seen


def test_a_host_that_never_reboots_times_out_saying_so() -> None:
    class NeverReboots(RebootingHost):
        def run(self, command: str, **kwargs: Any) -> CommandResult:
            result = super().run(command, **kwargs)
            self.rebooted = False  # the command ran, yet the host does not go down
            return result

    with pytest.raises(RebootTimeout, match="up with the old boot id"):
        reboot_host.fn(NeverReboots(drop=False), "h01", timeout_s=0.3, poll_s=0.05)


def test_a_refused_reboot_command_raises_and_nothing_is_polled() -> None:
    class SudoRefused(RebootingHost):
        def run(self, command: str, **kwargs: Any) -> CommandResult:
            if command == REBOOT_COMMAND:
                raise CommandFailed(self.name, command, 1, "", "sudo: a password is required")
            return super().run(command, **kwargs)

    host = SudoRefused()
    with pytest.raises(CommandFailed, match="password is required"):
        reboot_host.fn(host, "h01", timeout_s=5, poll_s=0.01)
    assert [c for c, _ in host.commands].count(BOOT_ID) == 1


def test_a_hung_connection_attempt_cannot_outlast_the_bound() -> None:
    class Hangs(RebootingHost):
        def run(self, command: str, **kwargs: Any) -> CommandResult:
            if command == BOOT_ID and self.rebooted:
                time.sleep(5)  # a connect to a host that does not answer
            return super().run(command, **kwargs)

    started = time.monotonic()
    with pytest.raises(RebootTimeout, match="still trying to connect"):
        reboot_host.fn(Hangs(), "h01", timeout_s=0.5, poll_s=0.05)
    assert time.monotonic() - started < 1.5


def test_reboot_timeout_survives_pickling() -> None:
    error = RebootTimeout("h01", OLD, 8.2, "unreachable")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.host, copy.old_boot_id, copy.waited_s, str(copy)) == (
        "h01",
        OLD,
        8.2,
        str(error),
    )
