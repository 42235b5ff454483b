"""The plan is a pure function of a host's facts and the client's patch policy."""

from __future__ import annotations

import pytest

from core.artifacts import artifact_key
from tasks.facts import AptSimulation, HostFacts, PackageChange, RebootRequired
from tasks.packages import HostPlan, MaintenancePlan, plan_host, unreachable_host
from tasks.record_markdown import plan_markdown, plan_rows


def change(name: str, old: str | None, new: str, security: bool = False) -> PackageChange:
    suite = "caretaker-security" if security else "caretaker"
    return PackageChange(
        name=name, from_version=old, to_version=new, suites=[suite], arch="all", security=security
    )


def facts(
    *changes: PackageChange,
    held: list[str] | None = None,
    pending: bool = False,
    kept_back: list[str] | None = None,
) -> HostFacts:
    return HostFacts(
        kernel="6.1.0",
        apt_simulation=AptSimulation(installs=list(changes), kept_back=kept_back or []),
        held_packages=held or [],
        reboot_required=RebootRequired(
            required=pending, packages=["linux-image-6.1"] if pending else []
        ),
    )


def plan(
    f: HostFacts, policy: str = "all", hold: list[str] | None = None, reboot: str = "if-required"
) -> HostPlan:
    return plan_host(
        server="web-1",
        role="production",
        address="10.0.0.1",
        facts=f,
        policy=policy,
        hold=hold or [],
        reboot_policy=reboot,
    )  # type: ignore[arg-type]


AGENT = change("caretaker-agent", "1.0", "1.1")
LIBSEC = change("caretaker-libsec", "1.0", "1.0+sec1", security=True)


def test_every_simulated_upgrade_is_planned_with_its_versions() -> None:
    host = plan(facts(LIBSEC, AGENT))
    assert [(c.name, c.from_version, c.to_version) for c in host.changes] == [
        ("caretaker-agent", "1.0", "1.1"),
        ("caretaker-libsec", "1.0", "1.0+sec1"),
    ]
    assert host.reachable and host.error is None and not host.reboot_expected


def test_a_security_only_policy_leaves_other_updates_out_and_says_so() -> None:
    host = plan(facts(AGENT, LIBSEC), policy="security")
    assert [c.name for c in host.changes] == ["caretaker-libsec"]
    assert host.skipped_policy == ["caretaker-agent"]


def test_packages_held_by_the_inventory_or_apt_mark_are_never_planned() -> None:
    legacy = change("caretaker-legacy", "0.9", "1.0")
    host = plan(
        facts(AGENT, legacy, held=["caretaker-tools"], kept_back=["caretaker-tools"]),
        hold=["caretaker-legacy"],
    )
    assert [c.name for c in host.changes] == ["caretaker-agent"]
    assert host.skipped_held == ["caretaker-legacy", "caretaker-tools"]


@pytest.mark.parametrize(
    ("changes", "pending", "policy", "expected", "reason"),
    [
        ((AGENT,), False, "if-required", False, ""),
        (
            (AGENT, change("linux-image-amd64", "6.1.1", "6.1.2")),
            False,
            "if-required",
            True,
            "upgrades linux-image-amd64",
        ),
        ((AGENT,), True, "if-required", True, "reboot already pending (linux-image-6.1)"),
        ((AGENT,), False, "always", True, "reboot policy: always"),
        ((), False, "always", False, ""),
        ((change("libc6", "2.36-9", "2.36-10"),), True, "never", False, "reboot policy: never"),
    ],
)
def test_the_expected_reboot_follows_policy_pending_state_and_packages(
    changes: tuple[PackageChange, ...], pending: bool, policy: str, expected: bool, reason: str
) -> None:
    host = plan(facts(*changes, pending=pending), reboot=policy)
    assert (host.reboot_expected, host.reboot_reason) == (expected, reason)


def test_a_host_without_apt_simulation_is_not_planned_and_says_why() -> None:
    host = plan(HostFacts(errors={"apt_simulation": "exit 100: E: dpkg was interrupted"}))
    assert host.error == "cannot plan packages: exit 100: E: dpkg was interrupted"
    assert host.changes == []


def test_the_artifacts_show_every_change_and_every_host_not_planned() -> None:
    plan_ = MaintenancePlan(
        client="acme",
        change_ref="CHG-7",
        dry_run=True,
        policy="all",
        hosts=[
            plan(facts(AGENT, LIBSEC)),
            unreachable_host(
                server="web-2",
                role="production",
                address="10.0.0.2",
                error="web-2: connection refused",
            ),
        ],
    )
    rows = plan_rows(plan_)
    assert [(r["server"], r["package"], r["from"], r["to"], r["status"]) for r in rows] == [
        ("web-1", "caretaker-agent", "1.0", "1.1", "would upgrade"),
        ("web-1", "caretaker-libsec", "1.0", "1.0+sec1", "would upgrade"),
        ("web-2", "", "", "", "NOT PLANNED: web-2: connection refused"),
    ]
    text = plan_markdown(plan_)
    assert "Dry run: nothing was changed" in text and "CHG-7" in text
    assert "| caretaker-libsec | 1.0 | 1.0+sec1 | yes |" in text
    assert "**web-2** (10.0.0.2): web-2: connection refused" in text
    assert plan_.change_count == 2 and [h.server for h in plan_.unreachable] == ["web-2"]


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("plan", "ACME_Corp 1") == "plan-acme-corp-1"
