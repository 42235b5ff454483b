"""Host verification: the facts frame by hand, and real great-expectations validations.

Every host here is made by hand (or parsed from output recorded on a sandbox host), so the
right answer is known before the suite runs. Nothing in great-expectations is mocked: each
``verify_facts`` call validates a real frame in a real ephemeral context. The context is
created once per process, so only the first validation pays for it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from tasks.facts import (
    AptSimulation,
    DiskUsage,
    FailedServices,
    HostFacts,
    ListeningPort,
    PackageChange,
    PackageUpdate,
    RebootRequired,
    parse_apt_simulation,
    parse_df,
    parse_failed_services,
    parse_reboot_required,
    parse_ss_listening,
)
from tasks.verify.frame import FRAME_COLUMNS, facts_frame
from tasks.verify.suite import (
    EXPECTATION_NAMES,
    HostVerificationSettings,
    VerificationReport,
    build_suite,
    validate_host_facts,
    verify_facts,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
NO_SYSTEMD = "System has not been booted with systemd as init system (PID 1). Can't operate."


# ---------------------------------------------------------------------------- helpers


def disk(mount: str, used_pct: float) -> DiskUsage:
    size = 100 * 2**30
    used = int(size * used_pct / 100)
    return DiskUsage(
        device=f"/dev/{mount.strip('/') or 'root'}",
        mount=mount,
        fstype="ext4",
        size_b=size,
        used_b=used,
        avail_b=size - used,
        used_pct=used_pct,
    )


def tcp(port: int, address: str = "*", interface: str | None = None) -> ListeningPort:
    return ListeningPort(proto="tcp", address=address, port=port, interface=interface)


def security_change(name: str) -> PackageChange:
    return PackageChange(
        name=name,
        from_version="1.0",
        to_version="1.0+sec1",
        suites=["bookworm-security"],
        arch="amd64",
        security=True,
    )


def healthy(**changes: Any) -> HostFacts:
    """A patched, healthy Debian host listening on SSH only; ``changes`` override facts."""
    facts: dict[str, Any] = {
        "disks": [disk("/", 41.0), disk("/var", 63.5)],
        "failed_services": FailedServices(known=True, units=[]),
        "reboot_required": RebootRequired(required=False),
        "apt_simulation": AptSimulation(),
        "listening_ports": [tcp(22), tcp(22, "::"), tcp(5432, "127.0.0.1")],
    }
    facts.update(changes)
    return HostFacts(**facts)


def verify(
    facts: dict[str, HostFacts], settings: HostVerificationSettings | None = None
) -> VerificationReport:
    """Verify ``facts`` with SSH (22) as every server's only allowed port."""
    return verify_facts(facts_frame(facts, {name: [22] for name in facts}), settings)


def outcome(report: VerificationReport, name: str) -> Any:
    return next(o for o in report.expectations if o.name == name)


def recorded(name: str) -> str:
    output: str = json.loads((FIXTURES / f"{name}.json").read_text())["output"]
    return output


# ------------------------------------------------------------------------------ frame


def test_the_frame_has_one_typed_row_per_server_in_order() -> None:
    frame = facts_frame({"web-2": healthy(), "web-1": healthy()}, {"web-1": [22], "web-2": [22]})

    assert list(frame["server"]) == ["web-2", "web-1"]
    assert list(frame.columns[: len(FRAME_COLUMNS)]) == list(FRAME_COLUMNS)
    row = frame.iloc[0]
    assert row["failed_units"] == 0
    assert bool(row["systemd_known"]) is True
    assert row["max_disk_used_pct"] == 63.5
    assert row["fullest_mount"] == "/var"
    assert bool(row["reboot_pending"]) is False
    assert row["pending_security_updates"] == 0
    assert row["unexpected_ports"] == ""
    assert row["missing_ports"] == ""
    assert row["facts_errors"] == 0
    assert str(frame["failed_units"].dtype) == "Int64"
    assert str(frame["reboot_pending"].dtype) == "boolean"


def test_the_frame_of_no_servers_is_empty_with_every_column() -> None:
    frame = facts_frame({}, {})

    assert frame.empty
    assert set(FRAME_COLUMNS) <= set(frame.columns)


def test_unknown_systemd_state_is_na_not_zero_failed_units() -> None:
    frame = facts_frame(
        {"h": healthy(failed_services=FailedServices(known=False, reason=NO_SYSTEMD))}, {}
    )

    assert frame.loc[0, "failed_units"] is pd.NA
    assert bool(frame.loc[0, "systemd_known"]) is False
    assert frame.loc[0, "systemd_reason"] == NO_SYSTEMD


def test_loopback_only_listeners_and_udp_are_not_unexpected_ports() -> None:
    # Recorded in a network namespace: wildcard, dual-stack, loopback, SO_BINDTODEVICE lo.
    ports = parse_ss_listening(recorded("listening_ports__netns_ipv6_udp_scopes"))

    frame = facts_frame({"h": healthy(listening_ports=ports)}, {"h": [22, 443]})

    # 80 listens on every address; 53 only on lo, 5432 only on 127.0.0.1 and ::1.
    assert frame.loc[0, "unexpected_ports"] == "80"
    assert frame.loc[0, "missing_ports"] == "443"


def test_unexpected_ports_are_sorted_numerically_and_joined() -> None:
    frame = facts_frame(
        {"h": healthy(listening_ports=[tcp(22), tcp(9100, "::"), tcp(8080), tcp(8080, "::")])},
        {"h": [22]},
    )

    assert frame.loc[0, "unexpected_ports"] == "8080,9100"


def test_a_loopback_listener_in_ipv4_mapped_form_is_loopback() -> None:
    frame = facts_frame(
        {"h": healthy(listening_ports=[tcp(22), tcp(6379, "::ffff:127.0.0.1")])}, {"h": [22]}
    )

    assert frame.loc[0, "unexpected_ports"] == ""


def test_an_empty_allowed_list_is_no_port_policy() -> None:
    frame = facts_frame({"h": healthy(listening_ports=[tcp(22), tcp(8080)])}, {"h": []})

    assert frame.loc[0, "unexpected_ports"] == ""
    assert frame.loc[0, "missing_ports"] == ""


def test_pending_security_comes_from_the_simulation_then_the_upgradable_list() -> None:
    update = PackageUpdate(
        name="openssl",
        current="3.0.1",
        candidate="3.0.2",
        suites=["bookworm-security"],
        arch="amd64",
        security=True,
    )
    plain = update.model_copy(update={"name": "vim", "suites": ["bookworm"], "security": False})
    simulated = healthy(
        apt_simulation=AptSimulation(installs=[security_change("openssl")]),
        apt_upgradable=[update, plain, update.model_copy(update={"name": "libssl3"})],
    )
    listed_only = healthy(apt_simulation=None, apt_upgradable=[update, plain])
    unknown = healthy(apt_simulation=None)

    frame = facts_frame({"sim": simulated, "list": listed_only, "none": unknown}, {})

    assert list(frame["pending_security_updates"][:2]) == [1, 1]
    assert frame.loc[2, "pending_security_updates"] is pd.NA


def test_facts_that_were_not_collected_leave_their_columns_empty() -> None:
    frame = facts_frame({"h": HostFacts()}, {"h": [22]})

    row = frame.iloc[0]
    assert row["failed_units"] is pd.NA
    assert math.isnan(row["max_disk_used_pct"])
    assert row["reboot_pending"] is pd.NA
    assert row["pending_security_updates"] is pd.NA
    assert row["unexpected_ports"] is pd.NA
    assert row["facts_errors"] == 0


# ----------------------------------------------------------------------------- suite


def test_the_suite_names_each_expectation_and_follows_the_settings() -> None:
    default = build_suite()
    relaxed = build_suite(
        HostVerificationSettings(allow_pending_reboot=True, require_systemd_known=True)
    )

    by_name = {(e.meta or {})["name"]: e for e in default.expectations}
    relaxed_names = {(e.meta or {})["name"] for e in relaxed.expectations}
    assert set(by_name) == set(EXPECTATION_NAMES) - {"systemd_state_known", "firewall_state_known"}
    assert relaxed_names == set(EXPECTATION_NAMES) - {"no_pending_reboot", "firewall_state_known"}
    assert by_name["disk_used_pct_max"].description == "every filesystem at most 90% used"


@pytest.mark.parametrize(
    "field, value",
    [
        ("disk_used_max_pct", 0),
        ("disk_used_max_pct", 101),
        ("max_pending_security", -1),
        ("unknown_setting", 1),
    ],
)
def test_settings_out_of_bounds_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        HostVerificationSettings(**{field: value})


# ------------------------------------------------------------------------ validation


def test_all_healthy_hosts_pass_without_failures_or_warnings() -> None:
    report = verify({"web-1": healthy(), "web-2": healthy()})

    assert report.passed
    assert report.failed_servers == []
    for result in report.per_server.values():
        assert result.passed and result.failures == [] and result.warnings == []
    assert all(o.success and o.unexpected_servers == [] for o in report.expectations)
    assert report.gx_statistics["unsuccessful_expectations"] == 0
    assert report.gx_statistics["evaluated_expectations"] == len(report.expectations)


def test_a_full_disk_fails_that_server_only_with_the_sentence() -> None:
    report = verify(
        {"web-1": healthy(), "db-1": healthy(disks=[disk("/", 40.0), disk("/srv", 94.0)])}
    )

    assert not report.passed
    assert report.per_server["db-1"].failures == ["disk use 94.0% over 90% on /srv"]
    assert report.per_server["web-1"].passed
    assert outcome(report, "disk_used_pct_max").unexpected_servers == ["db-1"]


def test_a_disk_exactly_at_the_threshold_passes() -> None:
    report = verify(
        {"h": healthy(disks=[disk("/", 80.0)])}, HostVerificationSettings(disk_used_max_pct=80)
    )

    assert report.passed


def test_a_pending_reboot_fails_unless_the_settings_allow_it() -> None:
    facts = {"h": healthy(reboot_required=RebootRequired(required=True, packages=["linux-image"]))}

    strict = verify(facts)
    relaxed = verify(facts, HostVerificationSettings(allow_pending_reboot=True))

    assert strict.per_server["h"].failures == ["reboot pending"]
    assert relaxed.passed
    assert relaxed.per_server["h"].warnings == ["reboot pending (allowed by the settings)"]


def test_pending_security_updates_fail_beyond_the_allowed_number() -> None:
    facts = {
        "h": healthy(
            apt_simulation=AptSimulation(
                installs=[security_change("openssl"), security_change("libssl3")]
            )
        )
    }

    strict = verify(facts)
    tolerant = verify(facts, HostVerificationSettings(max_pending_security=2))

    assert strict.per_server["h"].failures == ["2 pending security updates"]
    assert tolerant.passed
    assert tolerant.per_server["h"].warnings == ["2 pending security updates (up to 2 allowed)"]


def test_an_unexpected_listening_port_fails_with_the_port() -> None:
    report = verify({"h": healthy(listening_ports=[tcp(22), tcp(8080, "::")])})

    assert report.per_server["h"].failures == ["unexpected listening ports: 8080"]
    assert outcome(report, "no_unexpected_ports").unexpected_servers == ["h"]


def test_unknown_systemd_is_a_warning_by_default_and_a_failure_when_required() -> None:
    facts = {"h": healthy(failed_services=FailedServices(known=False, reason=NO_SYSTEMD))}

    default = verify(facts)
    strict = verify(facts, HostVerificationSettings(require_systemd_known=True))

    assert default.passed
    assert default.per_server["h"].failures == []
    assert default.per_server["h"].warnings == [
        f"systemd state unknown ({NO_SYSTEMD}): failed units not checked"
    ]
    assert not strict.passed
    assert strict.per_server["h"].failures == [f"systemd state unknown: {NO_SYSTEMD}"]
    assert outcome(strict, "systemd_state_known").unexpected_servers == ["h"]


def test_failed_systemd_units_fail_the_server_and_are_named() -> None:
    units = ["nginx.service", "php8.2-fpm.service"]
    report = verify({"h": healthy(failed_services=FailedServices(known=True, units=units))})

    assert report.per_server["h"].failures == [
        "2 failed systemd units: nginx.service, php8.2-fpm.service"
    ]


def test_a_fact_that_could_not_be_read_fails_the_server() -> None:
    facts = healthy(disks=None, errors={"disks": "df exited 1: permission denied"})

    report = verify({"h": facts})

    assert report.per_server["h"].failures == [
        "1 fact could not be read: disks: df exited 1: permission denied"
    ]
    assert (
        "disk use unknown (no disks in the facts): not checked" in report.per_server["h"].warnings
    )


def test_facts_that_were_never_collected_are_warnings_never_healthy() -> None:
    report = verify({"h": HostFacts()})

    assert report.passed  # nothing failed; but nothing is claimed either:
    assert report.per_server["h"].warnings == [
        "systemd state unknown (failed_services fact not collected): failed units not checked",
        "disk use unknown (no disks in the facts): not checked",
        "reboot state unknown (not in the facts): not checked",
        "pending security updates unknown (not in the facts): not checked",
        "listening ports unknown (not in the facts): not checked",
    ]


def test_in_a_mixed_fleet_only_the_bad_servers_are_named() -> None:
    facts = {
        "app-1": healthy(),
        "app-2": healthy(disks=[disk("/", 96.8)], listening_ports=[tcp(22), tcp(8080)]),
        "app-3": healthy(),
        "db-1": healthy(reboot_required=RebootRequired(required=True)),
        "db-2": healthy(),
    }

    report = verify(facts)

    assert not report.passed
    assert report.failed_servers == ["app-2", "db-1"]
    assert report.per_server["app-2"].failures == [
        "disk use 96.8% over 90% on /",
        "unexpected listening ports: 8080",
    ]
    assert report.per_server["db-1"].failures == ["reboot pending"]
    # Each failure under the name of the check it broke (the audit's key for a finding).
    assert report.per_server["app-2"].failed_checks == {
        "disk_used_pct_max": "disk use 96.8% over 90% on /",
        "no_unexpected_ports": "unexpected listening ports: 8080",
    }
    assert report.per_server["app-1"].failed_checks == {}
    failed = {o.name: o.unexpected_servers for o in report.expectations if not o.success}
    assert failed == {
        "disk_used_pct_max": ["app-2"],
        "no_pending_reboot": ["db-1"],
        "no_unexpected_ports": ["app-2"],
    }
    assert report.gx_statistics["unsuccessful_expectations"] == 3


def test_a_sandbox_host_recorded_before_patching_fails_on_its_pending_security_update() -> None:
    facts = HostFacts(
        disks=parse_df(recorded("disks__sandbox")),
        failed_services=parse_failed_services(recorded("failed_services__sandbox")),
        listening_ports=parse_ss_listening(recorded("listening_ports__sandbox")),
        apt_simulation=parse_apt_simulation(recorded("apt_simulation__sandbox")),
        reboot_required=parse_reboot_required(recorded("reboot_required__dev_no")),
    )

    report = verify({"glx-app-1": facts})

    assert report.per_server["glx-app-1"].failures == ["1 pending security update"]
    assert report.per_server["glx-app-1"].warnings == [
        "systemd state unknown (sh: 5: systemctl: not found): failed units not checked"
    ]


def test_a_duplicated_server_row_fails_uniqueness() -> None:
    frame = facts_frame({"h": healthy(), "g": healthy()}, {})
    frame.loc[1, "server"] = "h"

    report = verify_facts(frame)

    assert outcome(report, "server_unique").unexpected_servers == ["h"]
    assert report.per_server["h"].failures == ["the server appears more than once in the facts"]


def test_an_expectation_gx_cannot_evaluate_fails_every_server() -> None:
    frame = facts_frame({"a": healthy(), "b": healthy()}, {})
    # Text where a number belongs: GX's between-metric raises instead of answering.
    frame["max_disk_used_pct"] = pd.array(["full", "empty"], dtype="string")

    report = verify_facts(frame)

    assert not report.passed
    disk_outcome = outcome(report, "disk_used_pct_max")
    assert not disk_outcome.success and disk_outcome.error
    assert disk_outcome.unexpected_servers == ["a", "b"]
    for result in report.per_server.values():
        assert any("disk_used_pct_max could not be evaluated" in f for f in result.failures)


def test_a_frame_without_the_checked_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="facts_errors"):
        verify_facts(facts_frame({"h": healthy()}, {}).drop(columns=["facts_errors"]))


def test_no_servers_verify_to_an_empty_passing_report() -> None:
    report = verify({})

    assert report.passed and report.per_server == {}


def test_the_task_builds_the_frame_and_verifies_it() -> None:
    report = validate_host_facts.fn(
        {"h": healthy(listening_ports=[tcp(22), tcp(443)])},
        {"h": [22, 443]},
        HostVerificationSettings(),
    )

    assert report.passed
    assert [o.name for o in report.expectations] == [
        n for n in EXPECTATION_NAMES if n not in ("systemd_state_known", "firewall_state_known")
    ]


# ------------------------------------------------------------- security audit facts


def test_sshd_and_firewall_are_checked_when_read_and_silent_when_not() -> None:
    from tasks.facts import Firewall, SshdSettings

    hardened = SshdSettings(
        permit_root_login="prohibit-password",
        password_authentication=False,
        kbd_interactive_authentication=False,
        permit_empty_passwords=False,
    )
    weak = hardened.model_copy(update={"permit_root_login": "yes", "password_authentication": True})
    deny = Firewall(tool="nft", known=True, default_deny=True, detail="an input chain drops")
    accept = Firewall(tool="iptables", known=True, default_deny=False, detail="INPUT policy ACCEPT")
    missing = Firewall(tool=None, known=False, detail="neither nft nor iptables is installed")

    report = verify(
        {
            "locked": healthy(sshd=hardened, firewall=deny),
            "open": healthy(sshd=weak, firewall=accept),
            "bare": healthy(sshd=hardened, firewall=missing),
            "patched": healthy(),  # the maintenance verification reads neither fact
        }
    )

    assert report.per_server["locked"].failures == []
    assert report.per_server["open"].failures == [
        "sshd allows PermitRootLogin yes, PasswordAuthentication yes",
        "inbound traffic is not denied by default (INPUT policy ACCEPT)",
    ]
    assert report.per_server["bare"].passed
    assert (
        "firewall unknown (neither nft nor iptables is installed): not checked"
        in report.per_server["bare"].warnings
    )
    assert report.per_server["patched"].passed
    assert not any("firewall" in w for w in report.per_server["patched"].warnings)

    strict = verify(
        {"bare": healthy(sshd=hardened, firewall=missing)},
        HostVerificationSettings(require_firewall_known=True),
    )
    assert strict.per_server["bare"].failures == [
        "firewall unknown: neither nft nor iptables is installed"
    ]


def test_log_counts_are_lines_to_review_until_failed_logins_pass_the_bound() -> None:
    from tasks.facts import LogReview

    few = LogReview(source="files", files=["/var/log/sshd.log"], errors=1, auth_failures=3)
    many = LogReview(source="journal", errors=0, auth_failures=80)
    quiet = LogReview(source="files", files=["/var/log/auth.log"], errors=0, auth_failures=0)

    report = verify(
        {
            "few": healthy(log_review=few),
            "many": healthy(log_review=many),
            "quiet": healthy(log_review=quiet),
            "patched": healthy(),
        }
    )

    assert report.per_server["few"].passed
    assert (
        "logs to review (/var/log/sshd.log): 1 error line, 3 failed SSH logins"
        in report.per_server["few"].warnings
    )
    assert report.per_server["many"].failures == [
        "80 failed SSH logins in the logs (the journal, 7 days), more than 50"
    ]
    assert not any("logs" in w for w in report.per_server["quiet"].warnings)
    assert not any("logs" in w for w in report.per_server["patched"].warnings)
    relaxed = verify(
        {"many": healthy(log_review=many)}, HostVerificationSettings(max_auth_failures=100)
    )
    assert relaxed.per_server["many"].passed
