"""Facts: each parser against output recorded on real hosts, and the one-trip collector.

The fixtures in ``tests/fixtures/facts/`` hold a command's real output and the answer
read from it by hand; one parametrized test runs every parser over them. The
collector is tested by running its script for real with /bin/sh on this machine.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from core.errors import CaretakerError
from tasks.facts import (
    FACTS,
    AptSimulation,
    Fact,
    FactParseError,
    HostFacts,
    build_facts_script,
    facts_for_family,
    parse_apt_simulation,
    parse_facts,
    parse_failed_services,
    parse_os_release,
    split_facts_output,
)
from tasks.facts.collect import AUDIT_FACTS, PLAN_FACTS, collect_facts
from tasks.packages import APT_REFRESH
from tasks.remote.base import CommandResult

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
FIXTURES = sorted(FIXTURE_DIR.glob("*.json"))
SOURCES = ("recorded on ", "composed from ", "source: documented format")


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _run_sh(script: str) -> str:
    proc = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------ recorded fixtures


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_parser_reads_recorded_output_as_read_by_hand(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert "draft_expected" not in doc, "review the draft by hand, then delete it"
    fact = FACTS[doc["fact"]]
    assert doc["command"] == fact.command, "the fixture was recorded with another command"
    assert doc["source"].startswith(SOURCES)
    if doc["source"].startswith("source: documented format"):
        # Hand-written output is only acceptable where no host of the kind exists here.
        assert doc["fact"].startswith("dnf_")
    if "error" in doc:
        assert doc["expected"] is None
        with pytest.raises(FactParseError, match=re.escape(doc["error"])) as info:
            fact.parse(doc["output"])
        assert info.value.fact == doc["fact"]
    else:
        assert _jsonable(fact.parse(doc["output"])) == doc["expected"]


def test_every_fact_has_a_fixture_that_parses() -> None:
    covered = {
        json.loads(p.read_text())["fact"]
        for p in FIXTURES
        if "error" not in json.loads(p.read_text())
    }
    assert covered == set(FACTS)


# ------------------------------------------------------------------------- collector


def test_facts_script_sets_c_locale_and_runs_each_fact_once_in_order() -> None:
    script = build_facts_script(["kernel", "uptime", "kernel"])
    assert script.startswith("LC_ALL=C\nexport LC_ALL\n")
    assert script.count("uname -r") == 1
    assert script.index("uname -r") < script.index("cat /proc/uptime")
    assert script.rstrip().endswith("exit 0")


def test_facts_script_refuses_an_unknown_fact() -> None:
    with pytest.raises(KeyError, match="no_such_fact"):
        build_facts_script(["kernel", "no_such_fact"])


def test_extra_sections_ride_in_the_same_script_after_the_facts() -> None:
    script = build_facts_script(["kernel"], {"mine": "echo one; exit 2", "other": "printf x"})
    sections = split_facts_output(_run_sh(script))
    assert sections["mine"] == (2, "one\n") and sections["other"] == (0, "x")
    assert set(sections) == {"kernel", "mine", "other"}
    assert script.index("uname -r") < script.index("echo one")


@pytest.mark.parametrize("name", ["kernel", "Bad-Name", "", "a b"])
def test_an_extra_section_cannot_take_a_facts_name_or_break_the_markers(name: str) -> None:
    with pytest.raises(ValueError, match="extra section"):
        build_facts_script(["uptime"], {name: "true"})


# Tools that can be installed and still not runnable on this machine, by what they say
# then. `sshd -T` refuses to run until its privilege separation directory exists, which
# only the first sshd start creates (systemd's RuntimeDirectory, or the sandbox's sshd):
# on a machine where openssh-server was just installed it fails, after any test that
# started an sshd it parses. Either way the fact must be an answer or a named error with
# that message, never a wrong value; which one cannot depend on the tests run before.
_NOT_RUNNABLE_HERE: dict[str, tuple[str, ...]] = {
    "sshd": ("Missing privilege separation directory",),
}


def test_every_fact_either_parses_or_is_named_in_errors_when_run_here() -> None:
    names = list(FACTS)
    facts = parse_facts(split_facts_output(_run_sh(build_facts_script(names))), names)
    for name in names:
        assert (getattr(facts, name) is not None) != (name in facts.errors), name
    # On this machine every fact of its own family must really parse (tools present),
    # unless the tool says it cannot run in this machine's present state.
    assert facts.os is not None
    for name in facts_for_family(facts.os.family):
        tool = FACTS[name].command.split()[0]
        if tool in ("cat", "if") or shutil.which(tool):
            error = facts.errors.get(name)
            known = _NOT_RUNNABLE_HERE.get(name, ())
            assert error is None or any(m in error for m in known), error
    assert facts.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_split_keeps_output_without_a_trailing_newline_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(FACTS, "t_no_newline", Fact("t_no_newline", "printf 'a b'", str))
    monkeypatch.setitem(FACTS, "t_newline", Fact("t_newline", "printf 'x\\n\\n'", str))
    monkeypatch.setitem(FACTS, "t_empty", Fact("t_empty", "true", str))
    monkeypatch.setitem(FACTS, "t_fails", Fact("t_fails", "echo partial; exit 3", str))
    stdout = _run_sh(build_facts_script(["t_no_newline", "t_newline", "t_empty", "t_fails"]))
    assert split_facts_output(stdout) == {
        "t_no_newline": (0, "a b"),
        "t_newline": (0, "x\n\n"),
        "t_empty": (0, ""),
        "t_fails": (3, "partial\n"),
    }


def test_a_command_reading_stdin_cannot_swallow_the_rest_of_the_script() -> None:
    # Fed on stdin (as "ssh host sh -s" would), a command that reads stdin would eat
    # the following facts; each runs with stdin from /dev/null.
    script = build_facts_script(["kernel", "uptime"]).replace("uname -r", "cat; uname -r")
    proc = subprocess.run(
        ["/bin/sh", "-s"], input=script, capture_output=True, text=True, timeout=60, check=True
    )
    assert set(split_facts_output(proc.stdout)) == {"kernel", "uptime"}


def test_split_ignores_what_a_login_script_printed_before_the_script() -> None:
    stdout = "Welcome to web-01\n@@caretaker:begin@@\n6.1.0-28-amd64\n\n@@caretaker:kernel:0@@\n"
    assert split_facts_output(stdout) == {"kernel": (0, "6.1.0-28-amd64\n")}


def test_a_section_cut_short_is_missing_and_named_in_errors() -> None:
    stdout = "@@caretaker:begin@@\n6.1.0-28-amd64\n\n@@caretaker:kernel:0@@\n12.5 3"
    sections = split_facts_output(stdout)
    assert sections == {"kernel": (0, "6.1.0-28-amd64\n")}
    facts = parse_facts(sections, ["kernel", "uptime"])
    assert facts.kernel == "6.1.0-28-amd64"
    assert facts.uptime is None
    assert "cut short" in facts.errors["uptime"]


def test_a_failed_command_and_a_bad_output_are_recorded_not_raised() -> None:
    facts = parse_facts(
        {
            "kernel": (0, "6.1.0-28-amd64\n"),
            "disks": (2, "df: invalid option -- 'T'\n"),
            "load": (0, "garbage\n"),
            "held_packages": (127, ""),
        }
    )
    assert facts.kernel == "6.1.0-28-amd64"
    assert facts.disks is None and facts.errors["disks"] == "exit 2: df: invalid option -- 'T'"
    assert facts.load is None and "load: expected 'l1 l5 l15" in facts.errors["load"]
    assert facts.errors["held_packages"] == "exit 127 (command not found)"


def test_a_parser_bug_is_recorded_and_does_not_cost_the_other_facts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(text: str) -> str:
        raise IndexError("list index out of range")

    monkeypatch.setitem(FACTS, "kernel", Fact("kernel", "uname -r", broken))
    facts = parse_facts({"kernel": (0, "x\n"), "uptime": (0, "12.50 3.00\n")})
    assert facts.uptime == 12.5
    assert facts.errors["kernel"] == "parser failed: IndexError: list index out of range"


def test_held_packages_kept_back_by_apt_are_named_held_back() -> None:
    recorded = json.loads((FIXTURE_DIR / "apt_simulation__local_repo_pending.json").read_text())
    facts = parse_facts(
        {"apt_simulation": (0, recorded["output"]), "held_packages": (0, "ct-held\n")}
    )
    assert facts.apt_simulation is not None
    assert facts.apt_simulation.kept_back == ["ct-held"]
    assert facts.apt_simulation.held_back == ["ct-held"]
    assert [c.name for c in facts.apt_simulation.new_packages] == ["ct-runtime"]
    assert [c.name for c in facts.apt_simulation.security_installs] == [
        "ct-runtime",
        "ct-agent",
        "ct-openssl",
    ]


def test_host_facts_are_frozen_and_survive_a_json_round_trip() -> None:
    names = ["os", "memory", "disks", "listening_ports"]
    facts = parse_facts(split_facts_output(_run_sh(build_facts_script(names))), names)
    with pytest.raises(ValueError):
        facts.kernel = "x"  # type: ignore[misc]
    assert HostFacts.model_validate_json(facts.model_dump_json()) == facts


def test_facts_for_family_picks_the_package_manager() -> None:
    assert "apt_simulation" in facts_for_family("debian")
    assert "dnf_updates" not in facts_for_family("debian")
    assert "dnf_updates" in facts_for_family("rhel")
    assert "apt_simulation" not in facts_for_family("rhel")
    assert facts_for_family("unknown") == [
        n for n, f in FACTS.items() if f.families == frozenset({"debian", "rhel", "unknown"})
    ]


# -------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("fact", "output", "line"),
    [
        ("os", "ID=debian\nthis is not os-release\n", "this is not os-release"),
        ("os", 'PRETTY_NAME="unterminated\n', 'PRETTY_NAME="unterminated'),
        ("kernel", "", ""),
        ("kernel", "6.1.0\n6.2.0\n", "6.2.0"),
        ("boot_id", "not-a-uuid\n", "not-a-uuid"),
        ("uptime", "12.5\n", "12.5"),
        ("load", "0.1 0.2 0.3 1-100 42\n", "0.1 0.2 0.3 1-100 42"),
        ("memory", "MemTotal: lots\n", "MemTotal: lots"),
        ("disks", "/dev/vda ext4 1 1 0 100% /\n", "/dev/vda ext4 1 1 0 100% /"),
        ("disks", "Filesystem Type\n/dev/vda ext4 12 x 3 50% /\n", "/dev/vda ext4 12 x 3 50% /"),
        (
            "apt_upgradable",
            "Listing...\nE: Could not open lock file\n",
            "E: Could not open lock file",
        ),
        ("apt_upgradable", "Listing...\nfoo 1.0 amd64\n", "foo 1.0 amd64"),
        (
            "apt_simulation",
            "Inst broken-line\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n",
            "Inst broken-line",
        ),
        ("reboot_required", "maybe\n", "maybe"),
        ("listening_ports", "tcp LISTEN 0 128 nonsense 0.0.0.0:*\n", "tcp LISTEN 0 128 nonsense"),
        ("listening_ports", "Netid State Recv-Q Send-Q Local Peer\n", "Netid State"),
        ("failed_services", "foo.service loaded failed failed Foo\n", "foo.service loaded"),
        ("failed_services", "Unknown operation 'list-units'.\nrc=1\n", "Unknown operation"),
        ("held_packages", "WARNING: apt does not have a stable CLI\n", "WARNING: apt"),
        ("dnf_updates", "Error: Failed to download metadata for repo\nrc=1\n", "Error: Failed"),
        ("dnf_updates", "\nkernel 5.14 baseos extra\nrc=100\n", "kernel 5.14 baseos extra"),
        ("dnf_reboot_required", "\nrc=1\n", "rc=1"),
    ],
)
def test_malformed_output_raises_with_the_fact_and_the_line(
    fact: str, output: str, line: str
) -> None:
    with pytest.raises(FactParseError) as info:
        FACTS[fact].parse(output)
    assert info.value.fact == fact
    assert line in info.value.line
    assert isinstance(info.value, ValueError)


def test_a_truncated_apt_simulation_is_an_error_not_a_shorter_plan() -> None:
    recorded = json.loads((FIXTURE_DIR / "apt_simulation__local_repo_pending.json").read_text())
    lines = recorded["output"].splitlines(keepends=True)
    without_last_inst = "".join(line for line in lines if not line.startswith("Inst ct-tool"))
    with pytest.raises(FactParseError, match="disagrees with apt's summary"):
        parse_apt_simulation(without_last_inst)
    no_summary = "".join(line for line in lines if "not upgraded." not in line)
    with pytest.raises(FactParseError, match="no summary line"):
        parse_apt_simulation(no_summary)


def test_fact_parse_error_belongs_to_the_family_and_pickles() -> None:
    error = FactParseError("load", "bad line", "expected five fields")
    assert isinstance(error, CaretakerError)
    # Prefect pickles task exceptions; this is our own object, not untrusted data.
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301
    assert (copy.fact, copy.line, copy.reason, str(copy)) == (
        "load",
        "bad line",
        "expected five fields",
        str(error),
    )


# ------------------------------------------------------ formats not recordable here
# This machine has no systemd, no other distribution and apt 2.6 only; these cases
# are composed from the tools' documented formats and say so.


def test_failed_units_are_listed_when_systemd_answers() -> None:
    output = (
        "nginx.service       loaded failed failed A high performance web server\n"
        "certbot.timer       loaded failed failed Run certbot twice daily\n"
        "rc=0\n"
    )
    result = parse_failed_services(output)
    assert result.known is True
    assert result.units == ["nginx.service", "certbot.timer"]


def test_no_failed_units_is_known_and_empty() -> None:
    assert parse_failed_services("rc=0\n").model_dump() == {
        "known": True,
        "units": [],
        "reason": None,
    }


def test_missing_systemctl_is_unknown_not_healthy() -> None:
    result = parse_failed_services("sh: 1: systemctl: not found\nrc=127\n")
    assert result.known is False
    assert result.reason == "sh: 1: systemctl: not found"


@pytest.mark.parametrize(
    ("os_release", "family", "codename"),
    [
        (
            'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n',
            "debian",
            "noble",
        ),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "rhel", None),
        ('ID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "rhel", None),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\nUBUNTU_CODENAME=jammy\n', "debian", "jammy"),
        ("ID=alpine\nVERSION_ID=3.20.0\n", "unknown", None),
        ("# no ID at all\nNAME=Linux\n", "unknown", None),
    ],
)
def test_os_family_comes_from_id_then_id_like(
    os_release: str, family: str, codename: str | None
) -> None:
    info = parse_os_release(os_release)
    assert (info.family, info.codename) == (family, codename)


def test_apt3_summary_and_not_upgrading_section_are_read() -> None:
    output = (
        "Reading package lists...\n"
        "Calculating upgrade...\n"
        "Upgrading:\n"
        "  openssl\n"
        "Not upgrading:\n"
        "  linux-image-amd64\n"
        "\n"
        "Summary:\n"
        "  Upgrading: 1, Installing: 0, Removing: 0, Not Upgrading: 1\n"
        "Inst openssl [3.5.1-1] (3.5.1-1+deb13u1 Debian-Security:13/stable-security [amd64])\n"
        "Conf openssl (3.5.1-1+deb13u1 Debian-Security:13/stable-security [amd64])\n"
    )
    plan = parse_apt_simulation(output)
    assert plan.kept_back == ["linux-image-amd64"]
    assert [(c.name, c.security, c.suites) for c in plan.installs] == [
        ("openssl", True, ["stable-security"])
    ]


def test_held_packages_that_would_change_are_named() -> None:
    output = (
        "The following packages will be REMOVED:\n"
        "  ct-legacy\n"
        "The following held packages will be changed:\n"
        "  ct-legacy\n"
        "0 upgraded, 0 newly installed, 1 to remove and 0 not upgraded.\n"
        "Remv ct-legacy [0.9]\n"
    )
    plan = parse_apt_simulation(output)
    assert plan == AptSimulation(removals=["ct-legacy"], held_changed=["ct-legacy"])


def test_sshd_weaknesses_name_what_lets_a_password_or_root_in() -> None:
    from tasks.facts import parse_sshd_effective

    recorded = json.loads((FIXTURE_DIR / "sshd__debian12_default_config.json").read_text())
    assert parse_sshd_effective(recorded["output"]).weaknesses() == ["PasswordAuthentication yes"]

    loose = recorded["output"].replace("permitrootlogin without-password", "permitrootlogin yes")
    loose = loose.replace("permitemptypasswords no", "permitemptypasswords yes")
    loose = loose.replace("kbdinteractiveauthentication no", "kbdinteractiveauthentication yes")
    assert parse_sshd_effective(loose).weaknesses() == [
        "PermitRootLogin yes",
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication yes",
        "PermitEmptyPasswords yes",
    ]
    sandbox = json.loads((FIXTURE_DIR / "sshd__sandbox_config.json").read_text())
    assert parse_sshd_effective(sandbox["output"]).weaknesses() == []
    with pytest.raises(FactParseError, match="expected yes or no"):
        parse_sshd_effective(loose.replace("passwordauthentication yes", "passwordauthentication"))


# ------------------------------------------------------------------ the collect task


class LocalShellHost:
    """A ``RemoteHost`` that runs each command with /bin/sh here and records how."""

    name = "local"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        self.calls.append((command, kwargs))
        if command == APT_REFRESH:  # never touch this machine's package lists
            stdout = ""
        else:
            stdout = _run_sh(command)
        return CommandResult(
            host=self.name, command=command, exit_code=0, stdout=stdout, stderr="", duration_s=0
        )

    def close(self) -> None:
        pass


def test_collect_facts_reads_only_the_named_facts_in_one_round_trip() -> None:
    host = LocalShellHost()
    facts = collect_facts.fn(host, ["kernel", "boot_id"], refresh=False)
    assert len(host.calls) == 1 and host.calls[0][1]["sudo"] is True
    assert facts.kernel and facts.boot_id and facts.errors == {}
    assert facts.uptime is None and facts.sshd is None


def test_collect_facts_refreshes_apt_lists_first_and_a_failed_refresh_raises() -> None:
    host = LocalShellHost()
    collect_facts.fn(host, ["kernel"])
    (refresh, refresh_options), (script, _) = host.calls
    assert refresh == APT_REFRESH and script.startswith("LC_ALL=C")
    assert refresh_options["check"] is True  # a failed refresh raises: no stale plan


def test_the_audit_reads_the_plans_facts_plus_sshd_firewall_and_logs() -> None:
    assert AUDIT_FACTS == (*PLAN_FACTS, "sshd", "firewall", "log_review")
    assert set(AUDIT_FACTS) <= set(FACTS)
