"""The procedure's parts that need no sandbox: scripted hosts, and task results -> record parts.

``open_sessions`` takes the hosts from a source passed in (STYLE 8), so a run can be
given scripted hosts; each task result maps to the change record's part in one pure
function of ``tasks/records.py``, tested here as tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import RebootTimeout
from history.change import (
    ChangeRecord,
    ChangeWindow,
    HostResult,
    Outcome,
    PackageChange,
    PlanSummary,
    Verification,
)
from inventory import ClientInventory, Server, load_client
from tasks.checks import CheckResult
from tasks.packages import HostPlan, PackageDiff, PackageVersionChange
from tasks.reboot import RebootResult
from tasks.records import (
    completed_outcome,
    failed_verifications,
    not_restored,
    production_results,
    recorded_package_changes,
    recorded_reboot,
    recorded_restore_test,
    recorded_snapshot,
    recorded_verification,
    restored,
)
from tasks.remote import CommandResult
from tasks.rollout import NOTHING_CHANGED
from tasks.sessions import HostFactory, open_sessions
from tasks.snapshots.base import RestoreTestResult, SnapshotRecord
from tasks.verify import verification_settings

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
AT = datetime(2026, 1, 10, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def acme() -> ClientInventory:
    return load_client(CLIENTS / "acme.yaml")


class ScriptedHost:
    """A host that answers from a script and remembers what it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.commands: list[str] = []
        self.closed = False

    def run(
        self,
        command: str,
        *,
        timeout: float = 300,
        sudo: bool = False,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        self.commands.append(command)
        return CommandResult(
            host=self.name, command=command, exit_code=0, stdout="ok\n", stderr="", duration_s=0
        )

    def close(self) -> None:
        self.closed = True


def test_a_run_can_be_given_scripted_hosts_and_closes_them(acme: ClientInventory) -> None:
    hosts = {s.name: ScriptedHost(s.name) for s in acme.servers}

    @contextmanager
    def scripted(inventory: ClientInventory, servers: list[Server]) -> Iterator[HostFactory]:
        yield lambda server: hosts[server.name]
        for host in hosts.values():
            host.close()

    with open_sessions(acme, acme.servers, scripted) as sessions:  # type: ignore[arg-type]
        host = sessions.host(acme.servers[1])
        assert host.run("uptime").stdout == "ok\n"
    assert hosts[acme.servers[1].name].commands == ["uptime"]
    assert all(h.closed for h in hosts.values())


# --- snapshots -------------------------------------------------------------------------------


def taken(state: str, **update: object) -> SnapshotRecord:
    fields: dict[str, object] = {
        "provider": "aws",
        "kind": "volumes",
        "server": "acme-web-1",
        "client": "acme",
        "change_ref": "CHG-1",
        "ids": ["snap-1", "snap-2"],
        "state": state,
        "created_at": AT,
        "encrypted": True,
    }
    return SnapshotRecord.model_validate(fields | update)


@pytest.mark.parametrize(
    ("snapshot", "error", "state", "ids", "detail", "risk"),
    [
        (taken("completed"), None, "completed", ("snap-1", "snap-2"), "", None),
        (taken("pending"), None, "pending", ("snap-1", "snap-2"), "", None),
        (taken("error", detail="quota"), None, "failed", ("snap-1", "snap-2"), "quota", None),
        (taken("completed", reused=True), None, "completed", ("snap-1", "snap-2"),
         "reused from an earlier run", None),
        (taken("completed", encrypted=False, encrypted_copies={"snap-1": "snap-9"}), None,
         "completed", ("snap-1", "snap-2"), "encrypted copies: snap-1 -> snap-9", None),
        (taken("accepted-risk", ids=[], detail="bare metal"), None, "skipped", (), "",
         "bare metal"),
        (taken("accepted-risk", ids=[]), None, "skipped", (), "", "provider none"),
        (None, "AccessDenied", "failed", (), "AccessDenied", None),
        (None, None, "failed", (), "no snapshot", None),
    ],
)  # fmt: skip
def test_each_snapshot_outcome_becomes_one_record_entry(
    acme: ClientInventory,
    snapshot: SnapshotRecord | None,
    error: str | None,
    state: str,
    ids: tuple[str, ...],
    detail: str,
    risk: str | None,
) -> None:
    entry = recorded_snapshot(acme.servers[1], snapshot, error)
    assert (entry.state, entry.ids, entry.detail, entry.accepted_risk) == (state, ids, detail, risk)
    assert entry.provider == "aws"


# --- packages and reboots ----------------------------------------------------------------------


def test_package_changes_are_recorded_per_host_security_as_planned() -> None:
    plan = HostPlan.model_validate(
        {
            "server": "web-1",
            "role": "production",
            "address": "10.0.0.1",
            "reachable": True,
            "changes": [
                {"name": "openssl", "from_version": "1", "to_version": "2", "suites": [],
                 "arch": None, "security": True},
                {"name": "curl", "from_version": "7", "to_version": "8", "suites": [],
                 "arch": None, "security": False},
            ],
        }
    )  # fmt: skip
    diff = PackageDiff(
        server="web-1",
        changes=[
            PackageVersionChange(name="openssl", from_version="1", to_version="2"),
            PackageVersionChange(name="curl", from_version="7", to_version="8"),
            PackageVersionChange(name="libfoo", from_version=None, to_version="1"),
        ],
        noop=False,
        reboot_required_after=False,
        duration_s=1,
    )
    assert recorded_package_changes(plan, diff) == [
        PackageChange(server="web-1", name="openssl", from_version="1", to_version="2",
                      security=True),
        PackageChange(server="web-1", name="curl", from_version="7", to_version="8"),
        PackageChange(server="web-1", name="libfoo", to_version="1"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("result", "old", "new", "came_back"),
    [
        (RebootResult(server="w", old_boot_id="a", new_boot_id="b", seconds=20), "a", "b", True),
        (RebootTimeout("w", old_boot_id="a", waited_s=300), "a", None, False),
        (RuntimeError("worker died"), "?", None, False),
    ],
)
def test_a_reboot_is_recorded_whether_or_not_the_host_came_back(
    result: RebootResult | BaseException, old: str, new: str | None, came_back: bool
) -> None:
    reboot = recorded_reboot("w", result)
    assert (reboot.old_boot_id, reboot.new_boot_id, reboot.came_back) == (old, new, came_back)


# --- verification ------------------------------------------------------------------------------


def check(ok: bool) -> CheckResult:
    return CheckResult(server="w", kind="tcp", target="10.0.0.1:22", ok=ok, detail="refused")


@pytest.mark.parametrize(
    ("checks", "facts_error", "suite", "failures"),
    [
        ([check(True)], None, [], ()),
        ([check(False)], None, [], ("tcp 10.0.0.1:22: refused",)),
        ("timed out", None, [], ("health checks did not run: timed out",)),
        ([check(True)], "host key changed", [], ("facts not collected: host key changed",)),
        ([check(True)], None, ["failed units: nginx"], ("failed units: nginx",)),
        ([check(False)], "gone", ["x"], ("tcp 10.0.0.1:22: refused", "facts not collected: gone",
                                         "x")),
    ],
)  # fmt: skip
def test_a_verification_fails_on_any_check_missing_facts_or_suite_failure(
    checks: list[CheckResult] | str, facts_error: str | None, suite: list[str],
    failures: tuple[str, ...],
) -> None:  # fmt: skip
    verification = recorded_verification(
        "w", "production", checks=checks, facts_error=facts_error, suite_failures=suite,
        expectations=["no_failed_units"], at=AT,
    )  # fmt: skip
    assert verification.failures == failures
    assert verification.passed is (not failures)


def record(**update: object) -> ChangeRecord:
    window = ChangeWindow(start=AT, end=AT.replace(hour=7), inside=True)
    base = ChangeRecord(
        client="acme", change_ref="CHG-1", flow_run_id="r", requester="me", window=window,
        started=AT,
    )  # fmt: skip
    return base.model_copy(update=update)


def test_a_server_that_failed_before_verification_is_recorded_as_failed_once() -> None:
    done = Verification(server="a", phase="production", passed=False, failures=("x",))
    added = failed_verifications(
        record(verifications=[done]), "production", {"a": "verification failed: x",
                                                     "b": "patching failed: dpkg"}
    )  # fmt: skip
    assert [(v.server, v.failures) for v in added] == [("b", ("patching failed: dpkg",))]


# --- rollbacks, restore test, outcome -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "verify", "restored_ok", "verified_ok", "detail"),
    [
        (None, [], True, True, "failure: why"),
        (None, ["tcp:80"], True, False, "failure: why; after restore: tcp:80"),
        ("image gone", None, False, False, "failure: why; restore failed: image gone"),
    ],
)
def test_a_restore_is_recorded_with_its_verification(
    error: str | None, verify: list[str] | None, restored_ok: bool, verified_ok: bool, detail: str
) -> None:
    rollback = restored("w", taken("completed"), "why", restore_error=error, verify_failures=verify)
    assert (rollback.restored_ok, rollback.verified_ok, rollback.detail) == (
        restored_ok,
        verified_ok,
        detail,
    )
    assert rollback.snapshot_ids == ("snap-1", "snap-2")


def test_a_server_left_as_it_is_says_why() -> None:
    rollback = not_restored("w", "on_failure is halt", "verification failed: x")
    assert rollback.detail == "not restored (on_failure is halt); failure: verification failed: x"
    assert not rollback.restored_ok and not rollback.verified_ok


def test_the_restore_test_is_recorded_from_its_result_or_its_error() -> None:
    result = RestoreTestResult(
        server="w", provider="aws", snapshot_ids=["a", "b"], ok=True, rto_s=42, cleaned_up=True
    )
    entry = recorded_restore_test("w", result, 900)
    assert (entry.snapshot_id, entry.ok, entry.rto_s, entry.rto_bound_s) == ("a,b", True, 42, 900)
    failed = recorded_restore_test("w", "no capacity", 900)
    assert (failed.ok, failed.detail, failed.snapshot_id) == (False, "no capacity", None)


@pytest.mark.parametrize(
    ("rollbacks", "outcome", "detail"),
    [
        ([], Outcome.COMPLETED, ""),
        ([restored("a", taken("completed"), "w", restore_error=None, verify_failures=[])],
         Outcome.COMPLETED_WITH_ROLLBACKS, ""),
        ([not_restored("a", NOTHING_CHANGED, "w")], Outcome.COMPLETED_WITH_FAILURES,
         "; failed, not restored: a"),
        ([restored("b", taken("completed"), "w", restore_error=None, verify_failures=[]),
          not_restored("a", "on_failure is ask", "w")], Outcome.COMPLETED_WITH_FAILURES,
         "; failed, not restored: a"),
    ],
)  # fmt: skip
def test_production_done_is_completed_with_rollbacks_only_when_every_failed_server_was_restored(
    rollbacks: list[object], outcome: Outcome, detail: str
) -> None:
    changes = [PackageChange(server=s, name="openssl", to_version="2") for s in ("a", "a", "b")]
    done = record(package_changes=changes, rollbacks=rollbacks)
    assert completed_outcome(done) == (outcome, "3 package change(s) on 2 server(s)" + detail)


def test_a_failed_restore_is_never_completed_with_rollbacks() -> None:
    bad = restored("a", taken("completed"), "why", restore_error="gone", verify_failures=None)
    unverified = restored("a", taken("completed"), "why", restore_error=None, verify_failures=["x"])
    for rollback in (bad, unverified):
        outcome, detail = completed_outcome(record(rollbacks=[rollback]))
        assert outcome is Outcome.RESTORE_FAILED
        assert detail.endswith("restore failed on a")


def test_a_server_on_which_nothing_changed_is_recorded_as_not_restored() -> None:
    rollback = not_restored("w", NOTHING_CHANGED, "patching failed: dpkg lock")
    assert rollback.detail == "not restored (nothing changed); failure: patching failed: dpkg lock"
    assert rollback.changed is False and rollback.snapshot_ids == ()


def passed(server: str) -> Verification:
    return Verification(server=server, phase="production", passed=True)


def failed(server: str) -> Verification:
    return Verification(server=server, phase="production", passed=False, failures=("x",))


@pytest.mark.parametrize(
    ("verifications", "rollbacks", "result"),
    [
        ([], [], HostResult.UNTOUCHED),
        ([passed("p")], [], HostResult.PATCHED),
        ([failed("p")], [], HostResult.FAILED),
        ([failed("p")], [restored("p", taken("completed"), "x", restore_error=None,
                                  verify_failures=[])], HostResult.RESTORED),
        ([failed("p")], [restored("p", taken("completed"), "x", restore_error="gone",
                                  verify_failures=None)], HostResult.FAILED),
        ([failed("p")], [restored("p", taken("completed"), "x", restore_error=None,
                                  verify_failures=["tcp:22"])], HostResult.FAILED),
        ([failed("p")], [not_restored("p", NOTHING_CHANGED, "dpkg lock")], HostResult.UNCHANGED),
        ([failed("p")], [not_restored("p", "on_failure is halt", "x")], HostResult.FAILED),
        # staging's verification is not production's
        ([Verification(server="p", phase="staging", passed=True)], [], HostResult.UNTOUCHED),
    ],
)  # fmt: skip
def test_each_production_server_ends_patched_restored_unchanged_untouched_or_failed(
    verifications: list[Verification], rollbacks: list[object], result: HostResult
) -> None:
    plan = PlanSummary(policy="all", staging=("s",), production=("p",))
    done = record(plan=plan, verifications=verifications, rollbacks=rollbacks)
    assert production_results(done) == {"p": result}


@pytest.mark.parametrize(
    ("reboot", "after_restore", "pending_reboot_allowed", "security_allowed"),
    [
        ("if-required", False, False, 0),
        ("always", False, False, 0),
        ("never", False, True, 0),  # never rebooted: a pending reboot is expected
        ("if-required", True, True, 10_000),  # back at the old versions
        ("never", True, True, 10_000),
    ],
)
def test_a_pending_reboot_fails_verification_unless_the_policy_never_reboots(
    reboot: str, after_restore: bool, pending_reboot_allowed: bool, security_allowed: int
) -> None:
    settings = verification_settings(reboot, after_restore=after_restore)  # type: ignore[arg-type]
    assert settings.allow_pending_reboot is pending_reboot_allowed
    assert settings.max_pending_security == security_allowed


def test_a_verification_keeps_the_suites_warnings_without_failing() -> None:
    verification = recorded_verification(
        "w", "production", checks=[check(True)], facts_error=None, suite_failures=[],
        expectations=["no_pending_reboot"], at=AT,
        suite_warnings=["reboot pending (allowed by the settings)"],
    )  # fmt: skip
    assert verification.passed
    assert verification.warnings == ("reboot pending (allowed by the settings)",)
