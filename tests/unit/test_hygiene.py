"""Hygiene: parsers from recorded output (tests/fixtures/hygiene/, recorded by
record_hygiene.py on real commands), decisions as tables, and the inventory's settings.

The expected values below were read off the recorded output, not produced by the parsers.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import FactParseError, InventoryError
from history.change import ChangeRecord, ChangeWindow, Performance
from inventory import ClientInventory, Server
from inventory.hygiene import LogReviewPolicy, MalwareScan, SoftwarePolicy, StressTest
from inventory.schedule import add_months, review_problem
from tasks.hygiene.base import bounded, sections
from tasks.hygiene.logreview import LogDigest, log_findings, parse_review, review_since
from tasks.hygiene.malware import Infection, ScanResult, malware_findings, parse_scan
from tasks.hygiene.processes import parse_performance, parse_ps
from tasks.hygiene.services import (
    Listener,
    ServiceSurvey,
    parse_services,
    service_findings,
    services_to_disable,
    unused_services,
)
from tasks.hygiene.software import (
    parse_removals,
    parse_survey,
    removal_check,
    remove_command,
    survey_plan,
)
from tasks.hygiene.stress import StressRun, parse_stress, stress_command, stress_failures
from tasks.rollout import batches, rollout_order

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hygiene"


def recorded(case: str) -> str:
    output: str = json.loads((FIXTURES / f"{case}.json").read_text())["output"]
    return output


# ------------------------------------------------------------------ malware


def test_a_scan_names_every_infected_file_and_its_signature() -> None:
    result = parse_scan(recorded("malware_infected"))
    assert result.engine == "clamscan" and result.exit_code == 1
    assert result.infected == [
        Infection(path="/tmp/rec/scan/dropper.sh", signature="Caretaker.Test.Marker.UNOFFICIAL"),
        Infection(path="/tmp/rec/scan/sub/eicar.com", signature="Caretaker.Test.EICAR.UNOFFICIAL"),
    ]
    assert (result.scanned_files, result.known_signatures) == (3, 2)
    assert result.signatures_updated is not None and result.now is not None
    findings = malware_findings("web-1", result, MalwareScan())
    assert [(f.severity, f.summary) for f in findings] == [
        ("critical", "malware: Caretaker.Test.Marker.UNOFFICIAL in /tmp/rec/scan/dropper.sh"),
        ("critical", "malware: Caretaker.Test.EICAR.UNOFFICIAL in /tmp/rec/scan/sub/eicar.com"),
    ]
    assert all(f.kind == "malware" and f.server == "web-1" for f in findings)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("malware_no_database", ["malware scan: no signature database loaded"]),
        (
            "malware_timed_out",
            ["malware scan stopped at its bound of 600 s: not every file was scanned"],
        ),
        ("malware_not_installed", ["malware scan not run: ClamAV is not installed"]),
        ("malware_no_paths", ["malware scan: none of the paths exists"]),
    ],
)
def test_a_scan_that_could_not_do_its_job_is_a_finding_never_a_clean_bill(
    case: str, expected: list[str]
) -> None:
    result = parse_scan(recorded(case))
    findings = malware_findings("h", result, MalwareScan())
    assert [f.summary for f in findings] == expected
    assert {f.severity for f in findings} == (
        {"info"} if case in ("malware_not_installed", "malware_no_paths") else {"warning"}
    )


def test_stale_signatures_are_a_finding() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    result = ScanResult(
        engine="clamscan",
        exit_code=0,
        known_signatures=8_700_000,
        now=now,
        signatures_updated=now - timedelta(days=9),
    )
    fresh = result.model_copy(update={"signatures_updated": now - timedelta(days=6)})
    policy = MalwareScan(signatures_max_age=timedelta(days=7))
    assert [f.summary for f in malware_findings("h", result, policy)] == [
        "malware signatures are 9 days old (at most 7): is freshclam updating?"
    ]
    assert malware_findings("h", fresh, policy) == []


def test_a_scan_without_sections_is_refused() -> None:
    with pytest.raises(FactParseError):
        parse_scan("Scanned files: 3\n")


def test_scan_paths_are_absolute_and_never_climb() -> None:
    for bad in ("relative/path", "/srv/../etc", "/tmp/$(reboot)", "/a b"):
        with pytest.raises(ValueError):
            MalwareScan(paths=(bad,))
    with pytest.raises(ValueError):
        MalwareScan(paths=("/srv", "/srv"))


def test_bounded_commands_time_out_and_idle() -> None:
    assert bounded("echo 'a'", 30) == (
        "timeout -k 10 30 nice -n 19 ionice -c 3 sh -c 'echo '\"'\"'a'\"'\"''"
    )
    assert bounded("x", 5, idle=False) == "timeout -k 10 5 sh -c 'x'"
    with pytest.raises(ValueError):
        bounded("x", 0)


def test_sections_refuse_output_before_the_first_marker() -> None:
    with pytest.raises(FactParseError):
        sections("x", "stray\n=== a\nrc=0\n")
    assert sections("x", "=== a\none\nrc=3\n=== b\n")["a"].rc == 3


# ------------------------------------------------------------------ software


def test_the_removal_plan_is_apts_own_simulation_dependents_included() -> None:
    plan = parse_survey(
        recorded("software_unwanted_and_autoremove"),
        SoftwarePolicy(unwanted=("stress-ng", "telnet")),
    )
    assert [(r.name, r.version, r.why) for r in plan.removals] == [
        ("stress-ng", "0.15.06-2", "unwanted"),
        ("libipsec-mb1", "1.3-2", "no longer needed"),
        ("libjudydebian1", "1.0.5-5+b2", "no longer needed"),
    ]
    assert plan.names == ["libipsec-mb1", "libjudydebian1", "stress-ng"]
    assert plan.line().startswith("remove stress-ng 0.15.06-2 (unwanted), libipsec-mb1")


def test_nothing_to_remove_plans_nothing() -> None:
    plan = parse_survey(recorded("software_nothing"), SoftwarePolicy(unwanted=("telnet",)))
    assert plan.removals == [] and plan.error is None


_POLICY = SoftwarePolicy(unwanted=("stress-ng", "telnet"))


@pytest.mark.parametrize(
    ("section", "policy", "names", "error"),
    [
        # read in the facts' round trip: the same plan as the survey alone
        (
            "software_unwanted_and_autoremove",
            _POLICY,
            ["libipsec-mb1", "libjudydebian1", "stress-ng"],
            None,
        ),
        ("software_nothing", SoftwarePolicy(unwanted=("telnet",)), [], None),
        # a policy that removes nothing is not surveyed, whatever the section says
        (None, SoftwarePolicy(autoremove=False), [], None),
        ("garbage", SoftwarePolicy(autoremove=False), [], None),
        # the script cut short before the survey, or output that is no survey
        (None, _POLICY, [], "no survey output (script cut short?)"),
        ("garbage", _POLICY, [], "output before the first '=== section' line"),
    ],
)
def test_the_survey_section_of_the_facts_script_becomes_the_removal_plan(
    section: str | None, policy: SoftwarePolicy, names: list[str], error: str | None
) -> None:
    text = (
        None
        if section is None
        else ("no marker here\n" if section == "garbage" else recorded(section))
    )
    plan = survey_plan(None if text is None else (0, text), policy)
    assert plan.names == names
    assert (plan.error is None) if error is None else (error in (plan.error or ""))


@pytest.mark.parametrize(
    ("planned", "simulated", "why"),
    [
        (["a", "b"], ["b", "a"], None),
        (["a"], ["a", "libc6"], "apt would now also remove libc6, which the plan did not show"),
        (["a", "b"], ["a"], "no longer installed or no longer removable: b"),
        ([], ["x"], "apt would now also remove x, which the plan did not show"),
    ],
)
def test_removal_runs_only_when_apt_removes_exactly_the_plan(
    planned: list[str], simulated: list[str], why: str | None
) -> None:
    assert removal_check(planned, simulated) == why


def test_removal_names_each_package_and_waits_for_the_lock() -> None:
    assert remove_command(["telnet", "rsh-client"], 30, simulate=True) == (
        "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=30 -s remove"
        " telnet rsh-client"
    )
    assert parse_removals("Remv telnet:amd64 [0.17]\nRemv x\nInst y\n") == [
        ("telnet", "0.17"),
        ("x", None),
    ]


# ------------------------------------------------------------------ services


def test_enabled_services_and_listeners_are_read_from_recorded_output() -> None:
    survey = parse_services(recorded("services"))
    assert survey.known
    assert "mariadb.service" in survey.enabled and "ssh.service" in survey.enabled
    assert len(survey.enabled) == 12
    assert Listener(port=3306, process="mariadbd", pid=3824) in survey.listening
    assert Listener(port=2024) in survey.listening  # no process named (another namespace)


SURVEY = ServiceSurvey(
    known=True,
    enabled=[
        "getty@.service",
        "nginx.service",
        "ssh.service",
        "systemd-timesyncd.service",
        "telnetd.service",
        "mydaemon.service",
    ],
    listening=[
        Listener(port=22, process="sshd", pid=1, unit="mydaemon.service"),
        Listener(port=23, process="inetd", pid=2, unit="telnetd.service"),
        Listener(port=80, process="nginx", pid=3, unit="nginx.service"),
    ],
)


@pytest.mark.parametrize(
    ("allowed", "disable_unused", "unused", "disabled"),
    [
        ((), True, [], []),  # no service policy: nothing is unused, nothing disabled
        (("nginx.service",), False, ["telnetd.service", "mydaemon.service"], []),
        # the unit behind the SSH port is never disabled, even when not allowed
        (("nginx.service",), True, ["telnetd.service", "mydaemon.service"], ["telnetd.service"]),
        (("nginx.service", "telnetd.service", "mydaemon.service"), True, [], []),
    ],
)
def test_unused_services_are_disabled_only_when_the_inventory_says_so(
    allowed: tuple[str, ...], disable_unused: bool, unused: list[str], disabled: list[str]
) -> None:
    assert unused_services(SURVEY, allowed) == unused
    assert services_to_disable(SURVEY, allowed, disable_unused, ssh_port=22) == disabled


def test_service_findings_name_enabled_and_listening_services_outside_the_policy() -> None:
    findings = service_findings("db-1", SURVEY, ("nginx.service", "mydaemon.service"))
    assert [f.summary for f in findings] == [
        "service telnetd.service is enabled but not in allowed_services",
        "telnetd.service (inetd) listens on port 23 but is not in allowed_services",
    ]
    unknown = ServiceSurvey(known=False, reason="System has not been booted with systemd")
    assert [(f.severity, f.summary) for f in service_findings("h", unknown, ("a.service",))] == [
        ("info", "services not checked: System has not been booted with systemd")
    ]
    assert services_to_disable(unknown, ("a.service",), True, 22) == []


# ------------------------------------------------------------------ log review


def test_the_journal_is_counted_per_unit_kernel_and_ssh() -> None:
    since = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    digest = parse_review(recorded("logreview_journal"), since)
    # journal.export: 3 recent nginx errors (one more is older than the review), a
    # systemd error, the kernel's OOM kill and I/O error; 5 failed SSH logins, 1 accepted.
    assert digest.known
    assert digest.errors_by_unit == {"init.scope": 1, "kernel": 2, "nginx.service": 3}
    assert (digest.oom_kills, digest.io_errors, digest.auth_failures) == (1, 1, 5)
    text = recorded("logreview_journal")
    assert "MESSAGE" not in text  # no message text ever leaves the server


def test_no_journal_is_not_reviewed_never_clean() -> None:
    digest = parse_review(recorded("logreview_no_journal"), datetime.now(UTC))
    assert not digest.known
    assert [(f.severity, f.summary) for f in log_findings("h", digest, LogReviewPolicy())] == [
        ("info", "log review: no journal on this server")
    ]


@pytest.mark.parametrize(
    ("digest", "policy", "summaries"),
    [
        (LogDigest(known=True, errors_by_unit={"a.service": 50}), LogReviewPolicy(), []),
        (
            LogDigest(known=True, errors_by_unit={"a.service": 51}),
            LogReviewPolicy(),
            ["a.service: 51 error entries"],
        ),
        (
            LogDigest(known=True, oom_kills=1),
            LogReviewPolicy(),
            ["kernel: 1 OOM kill(s), 0 I/O error(s)"],
        ),
        (LogDigest(known=True, oom_kills=1), LogReviewPolicy(max_kernel_errors=1), []),
        (LogDigest(known=True, auth_failures=21), LogReviewPolicy(), ["21 failed SSH logins"]),
        (
            LogDigest(known=True, errors_by_unit={"a": 100_000}, capped=["errors"]),
            LogReviewPolicy(),
            ["a: at least 100000 error entries"],
        ),
    ],
)
def test_log_findings_are_counts_above_the_thresholds(
    digest: LogDigest, policy: LogReviewPolicy, summaries: list[str]
) -> None:
    assert [f.summary for f in log_findings("h", digest, policy)] == summaries


def test_the_review_starts_at_the_last_maintenance_within_the_lookback() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)

    def record(ref: str, ended: datetime) -> ChangeRecord:
        window = ChangeWindow(start=ended - timedelta(hours=2), end=ended, inside=True)
        return ChangeRecord(
            client="c",
            change_ref=ref,
            flow_run_id="r",
            requester="x",
            window=window,
            started=ended - timedelta(hours=1),
            ended=ended,
        )

    last = now - timedelta(days=3)
    records = [record("CHG-1", now - timedelta(days=60)), record("CHG-2", last)]
    assert review_since(records, now, timedelta(days=31)) == last
    assert review_since(records, now, timedelta(days=1)) == now - timedelta(days=1)
    assert review_since([], now, timedelta(days=31)) == now - timedelta(days=31)
    # this change's own record is not "the last maintenance"
    assert review_since(records, now, timedelta(days=90), "CHG-2") == now - timedelta(days=60)


# ------------------------------------------------------------------ stress


def test_a_stress_run_that_held_is_read_with_its_figures() -> None:
    run = parse_stress(recorded("stress_held"))
    assert run.successful and run.exit_code == 0 and run.seconds == 2.17
    assert [(m.stressor, m.bogo_ops, m.ops_per_s) for m in run.metrics] == [
        ("cpu", 1098, 549.0),
        ("vm", 0, 0.0),
        ("io", 4435, 2216.9),
    ]
    assert run.line() == "cpu 549 ops/s, vm 0 ops/s, io 2216.9 ops/s in 2.17 s"


AFTER = Performance(load_1m=1.5, cpus=2, memory_used_pct=20.0)


@pytest.mark.parametrize(
    ("case", "after", "checks", "failures"),
    [
        ("stress_held", AFTER, [], []),
        ("stress_not_installed", AFTER, [], ["stress test: stress-ng is not installed"]),
        ("stress_failed", AFTER, [], ["stress test: stress-ng failed: exit 1"]),
        (
            "stress_held",
            "ssh 10.0.0.1: connection refused",
            [],
            ["stress test: the server did not answer afterwards: ssh 10.0.0.1: connection refused"],
        ),
        (
            "stress_held",
            AFTER,
            ["tcp 80: connection refused"],
            ["stress test: afterwards tcp 80: connection refused"],
        ),
        (
            "stress_held",
            Performance(load_1m=9.0, cpus=2),
            [],
            ["stress test: load 9 on 2 CPU(s) afterwards (above 4 per CPU)"],
        ),
    ],
)
def test_a_server_that_does_not_hold_up_fails(
    case: str, after: Performance | str, checks: list[str], failures: list[str]
) -> None:
    run = parse_stress(recorded(case))
    assert stress_failures(run, after, checks, StressTest(enabled=True)) == failures


def test_a_stress_run_killed_at_its_bound_fails() -> None:
    run = StressRun(exit_code=124, successful=False)
    assert stress_failures(run, AFTER, [], StressTest(seconds=30)) == [
        "stress test: stress-ng did not end within 90 s"
    ]


def test_the_stress_command_is_bounded_and_splits_memory_over_the_workers() -> None:
    command = stress_command(StressTest(seconds=20, cpu=2, vm=2, vm_percent=40, io=0))
    assert command.startswith("timeout -k 10 80 sh -c ")
    assert "--cpu 2 --vm 2 --vm-bytes 20% --timeout 20s --metrics-brief" in command
    assert "--io" not in command
    with pytest.raises(ValueError):
        StressTest(cpu=0, vm=0, io=0)


# ------------------------------------------------------------------ performance


def test_performance_reads_load_memory_disks_and_the_top_processes() -> None:
    perf = parse_performance(recorded("performance"))
    assert perf.load_1m == 1.56 and perf.cpus == 2
    assert perf.memory_used_pct == pytest.approx(6.0, abs=0.1)
    assert perf.disk_used_pct is not None
    assert len(perf.top_cpu) == len(perf.top_memory) == 5
    assert perf.top_cpu[0] == "python (pid 15802, root): 51.9% cpu, 0.2% mem, 65 MiB"
    assert perf.top_memory[0].startswith("qemu-system-x86 (pid 13175, root)")


def test_process_names_keep_their_spaces_and_bad_lines_are_refused() -> None:
    (proc,) = parse_ps("  7 root 0.0 0.0 0 (sd-pam) x\n")
    assert proc.name == "(sd-pam) x"
    with pytest.raises(FactParseError):
        parse_ps("7 root lots 0.0 0 x\n")


# ------------------------------------------------------------------ rollout order, schedule


def server(name: str, criticality: str, role: str = "production") -> Server:
    return Server.model_validate(
        {
            "name": name,
            "role": role,
            "address": "10.0.0.1",
            "ssh_block": "k",
            "os_family": "debian",
            "provider": {"type": "none", "reason": "test server only"},
            "criticality": criticality,
            "port": 22,
        }
    )


def test_the_least_critical_production_servers_go_first_in_file_order_otherwise() -> None:
    fleet = [
        server("db", "critical"),
        server("web-1", "medium"),
        server("cache", "low"),
        server("web-2", "medium"),
        server("api", "high"),
    ]
    assert [s.name for s in rollout_order(fleet)] == ["cache", "web-1", "web-2", "api", "db"]


def test_batches_follow_the_rollout_order(acme: ClientInventory) -> None:
    web1, web2, db1 = acme.production  # db1 is critical in clients/acme.yaml
    critical_first = web1.model_copy(update={"criticality": "critical"})
    planned = batches(acme, [critical_first, web2, db1])
    # Equally critical servers keep their file order.
    assert [s.name for b in planned for s in b] == [web2.name, web1.name, db1.name]
    assert [len(b) for b in planned] == [2, 1]


@pytest.fixture()
def acme(repo_root: Path) -> ClientInventory:
    from inventory import load_client

    return load_client(repo_root / "clients" / "acme.yaml")


@pytest.mark.parametrize(
    ("agreed", "reviewed", "every", "today", "late"),
    [
        (date(2025, 1, 1), None, 12, date(2026, 1, 1), False),
        (date(2025, 1, 1), None, 12, date(2026, 1, 2), True),
        (date(2024, 1, 1), date(2025, 6, 30), 12, date(2026, 6, 30), False),
        (date(2024, 1, 1), date(2025, 6, 30), 6, date(2026, 1, 1), True),
        (None, None, 12, date(2026, 1, 1), True),  # never recorded: late by definition
    ],
)
def test_a_schedule_not_reviewed_within_its_period_is_flagged(
    agreed: date | None, reviewed: date | None, every: int, today: date, late: bool
) -> None:
    assert (review_problem(agreed, reviewed, every, today) is not None) is late


def test_review_dates_are_calendar_months() -> None:
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
    assert add_months(date(2026, 11, 30), 3) == date(2027, 2, 28)
    assert review_problem(date(2025, 1, 1), None, 12, date(2026, 1, 11)) == (
        "the maintenance schedule was agreed on 2025-01-01 and never reviewed: its review"
        " was due by 2026-01-01 (every 12 months), 10 days ago"
    )


def test_inventory_hygiene_settings_have_defaults_and_are_checked(
    repo_root: Path, tmp_path: Path
) -> None:
    from inventory import load_client

    acme = load_client(repo_root / "clients" / "acme.yaml")
    assert acme.hygiene.stress.allow_production is False
    text = (repo_root / "clients" / "acme.yaml").read_text()
    bad = text.replace('reviewed_on: "2026-07-10"', 'reviewed_on: "2025-12-31"', 1)
    assert bad != text
    (tmp_path / "acme.yaml").write_text(bad)
    with pytest.raises(InventoryError) as err:
        load_client(tmp_path / "acme.yaml")
    assert "reviewed_on 2025-12-31 is before agreed_on 2026-01-15" in str(err.value)


# ------------------------------------------------------------------ the steps' pure parts


def test_the_plan_names_removals_disables_scan_stress_and_log_review(acme: ClientInventory) -> None:
    from tasks.hygiene.software import Removal, SoftwarePlan
    from tasks.hygiene.steps import plan_lines

    inv = acme.model_copy(
        update={"hygiene": acme.hygiene.model_copy(update={"stress": StressTest(enabled=True)})}
    )
    removals = {
        acme.servers[0].name: SoftwarePlan(
            removals=[Removal(name="telnet", version="0.17", why="unwanted")]
        ),
        acme.servers[1].name: SoftwarePlan(),
    }
    lines = plan_lines(inv, acme.servers, removals, {acme.servers[2].name: ["cups.service"]})
    assert lines[0] == f"{acme.servers[0].name}: remove telnet 0.17 (unwanted)"
    assert lines[1] == f"{acme.servers[2].name}: disable cups.service"
    assert lines[2].startswith("malware scan of ")
    staging = ", ".join(s.name for s in acme.staging)
    assert lines[3].startswith(f"stress test of {staging} after patching: 60 s (cpu 1, vm 1, io 1")
    assert lines[-1] == "log review since the last maintenance on every server"


def test_stress_goes_to_production_only_when_the_inventory_allows_it(
    acme: ClientInventory,
) -> None:
    from tasks.hygiene.steps import stress_targets

    off = acme.hygiene.model_copy(update={"stress": StressTest(enabled=False)})
    staging_only = acme.hygiene.model_copy(update={"stress": StressTest(enabled=True)})
    everywhere = acme.hygiene.model_copy(
        update={"stress": StressTest(enabled=True, allow_production=True)}
    )
    assert stress_targets(off, acme.servers) == []
    assert {s.role for s in stress_targets(staging_only, acme.servers)} == {"staging"}
    assert len(stress_targets(everywhere, acme.servers)) == len(acme.servers)


def test_a_stress_failure_fails_the_verification_and_a_pass_names_the_test() -> None:
    from history.change import Verification
    from tasks.hygiene.steps import with_stress
    from tasks.hygiene.stress import StressReport

    passed = Verification(server="s", phase="staging", passed=True, expectations=("disk",))
    held = StressReport(server="s", run=StressRun(exit_code=0, successful=True))
    broke = held.model_copy(update={"failures": ["stress test: stress-ng failed: exit 1"]})
    assert with_stress(passed, held).passed
    assert with_stress(passed, held).expectations == ("disk", "stress test")
    failed = with_stress(passed, broke)
    assert not failed.passed and failed.failures == ("stress test: stress-ng failed: exit 1",)


def test_removals_and_disables_go_only_to_servers_the_change_left_verified(
    acme: ClientInventory,
) -> None:
    from history.change import Rollback, Verification
    from tasks.hygiene.steps import verified_servers

    a, b, c, _d = (s.name for s in acme.servers[:4])
    window = ChangeWindow(
        start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 1, 4, tzinfo=UTC), inside=True
    )
    record = ChangeRecord(
        client="acme",
        change_ref="CHG",
        flow_run_id="r",
        requester="x",
        window=window,
        started=datetime(2026, 1, 1, tzinfo=UTC),
        verifications=[
            Verification(server=a, phase="staging", passed=True),
            Verification(server=b, phase="production", passed=False, failures=("tcp 80",)),
            Verification(server=c, phase="production", passed=True),
            Verification(server=b, phase="production", passed=True),  # verified after restore
        ],
        rollbacks=[Rollback(server=b, restored_ok=True, verified_ok=True)],
    )
    # b was restored (its pre-change state is back), d never verified: neither is touched.
    assert [s.name for s in verified_servers(record, acme.servers[:4])] == [a, c]


def test_the_approval_text_shows_the_order_the_hygiene_and_the_warnings(
    acme: ClientInventory,
) -> None:
    from tasks.hygiene.steps import HygienePlan, HygieneSteps, order_line

    steps = HygieneSteps(acme, acme.servers, sessions=None)  # type: ignore[arg-type]
    steps.planned = HygienePlan(lines=["web-1: remove telnet"], warnings=["provider x"])
    text = steps.approval_text(acme.production)
    assert order_line(acme, acme.production) in text
    assert "Hygiene in this change:\n- web-1: remove telnet" in text
    assert "WARNING, weigh before approving:\n- provider x" in text
    assert HygieneSteps(acme, [], sessions=None).approval_text([]) == ""  # type: ignore[arg-type]


def test_the_audit_counts_hygiene_warnings_as_findings_and_info_as_warnings() -> None:
    from flows.security_audit import ServerAudit, with_hygiene
    from tasks.hygiene.base import finding

    rows = [ServerAudit(server="a", status="passed"), ServerAudit(server="b", status="passed")]
    merged = with_hygiene(
        rows,
        [
            finding("malware", "a", "malware: Eicar in /srv/x", "critical"),
            finding("logs", "a", "log review: no journal on this server", "info"),
            finding("logs", "b", "log review: no journal on this server", "info"),
        ],
    )
    assert merged[0].status == "findings"
    assert merged[0].findings == ["malware: malware: Eicar in /srv/x"]
    assert merged[0].warnings == ["logs: log review: no journal on this server"]
    assert merged[1].status == "passed" and merged[1].findings == []


def test_schedule_review_and_provider_events_are_report_notes(acme: ClientInventory) -> None:
    from tasks.hygiene.steps import report_notes, schedule_findings
    from tasks.providers import ProviderEvent

    late = acme.model_copy(
        update={
            "schedule": acme.schedule.model_copy(
                update={"agreed_on": date(2024, 1, 1), "reviewed_on": None}
            )
        }
    )
    unknown = acme.model_copy(
        update={
            "schedule": acme.schedule.model_copy(update={"agreed_on": None, "reviewed_on": None})
        }
    )
    today = date(2026, 12, 5)
    assert [f.severity for f in schedule_findings(late, today)] == ["warning"]
    assert [f.severity for f in schedule_findings(unknown, today)] == ["info"]
    event = ProviderEvent(
        server="web-1",
        provider="aws",
        code="system-reboot",
        not_before=datetime(2026, 12, 20, 2, tzinfo=UTC),
    )
    notes = report_notes(late, today, [event])
    assert notes[0].startswith("Schedule review: the maintenance schedule was agreed on 2024-01-01")
    assert (
        notes[1] == "Provider maintenance scheduled: web-1: aws system-reboot 2026-12-20 02:00 UTC"
    )
    assert report_notes(late, today, "endpoint unreachable")[-1] == (
        "Providers' scheduled maintenance could not be read: endpoint unreachable"
    )


def test_the_plan_and_the_record_show_the_hygiene_the_order_and_the_warnings() -> None:
    from history.change import PlanSummary
    from tasks.packages import MaintenancePlan
    from tasks.record_markdown import plan_markdown, render_markdown

    plan = MaintenancePlan(
        client="acme",
        change_ref="CHG-1",
        dry_run=True,
        policy="all",
        hosts=[],
        hygiene=["web-1: remove telnet 0.17 (unwanted)"],
        order=["web-2", "db-1"],
        warnings=["provider maintenance in the window: db-1: aws system-reboot"],
    )
    text = plan_markdown(plan)
    assert "## Rollout order (least critical first)\n\nweb-2, db-1" in text
    assert "## Hygiene\n\n- web-1: remove telnet 0.17 (unwanted)" in text
    assert "- **provider maintenance in the window: db-1: aws system-reboot**" in text
    window = ChangeWindow(
        start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 1, 4, tzinfo=UTC), inside=True
    )
    record = ChangeRecord(
        client="acme",
        change_ref="CHG-1",
        flow_run_id="r",
        requester="x",
        window=window,
        started=datetime(2026, 1, 1, tzinfo=UTC),
        plan=PlanSummary(
            policy="all",
            hygiene=tuple(plan.hygiene),
            order=tuple(plan.order),
            warnings=tuple(plan.warnings),
        ),
    )
    shown = render_markdown(record)
    assert "**Hygiene planned:**\n\n- web-1: remove telnet 0.17 (unwanted)" in shown
    assert "**Warnings the approvers saw:**" in shown and "| Rollout order | web-2, db-1 |" in shown
