"""The maintenance-report flow on a Prefect test harness, a tmp SQLite store and a tmp inventory.

The store is seeded by hand with a history whose numbers are worked out below; servers
need not exist (the report reads the store only).

The period is 2026-06-10..2026-06-11 in Europe/London (BST, UTC+1): 2026-06-09T23:00Z to
2026-06-11T23:00Z, 172 800 s. The schedule's window is 02:00-03:00 local every day; only
the one of the 11th (01:00-02:00Z) was announced (on the 9th), so only it is planned:
3600 s for every server with data then. The slot of the 10th is not maintenance.

stg-1: up for the whole period (the row began an hour before it).
    observed 172 800, maintenance 3600, unplanned 0, unknown 0, uptime 100 %.

web-1:
    up      06-09 23:00Z .. 06-10 09:00Z
    down    06-10 09:00Z .. 09:30Z   6 failures: an outage, 1800 s unplanned
    up      09:30Z .. 12:00Z
    down    12:00Z .. 12:05Z         1 failure: a blip (confirmation needs 2): up
    up      12:05Z .. 06-11 00:30Z   (a maintenance run 06-10 20:00Z-20:30Z: 1800 s planned)
    down    06-11 00:30Z .. 01:30Z   12 failures, half in the window: 1800 unplanned + 1800 planned
    up      01:30Z .. 11:00Z
    unknown 11:00Z .. 13:00Z         7200 s without data
    up      13:00Z .. 23:00Z
    observed 172 800 - 7200 = 165 600; maintenance 3600 + 1800 = 5400;
    unplanned 3600; uptime = 1 - 3600 / (165 600 - 5400) = 97.752809... %;
    incidents 2, MTTR 1800, longest 1800.

Client total: observed 338 400, maintenance 9000, unplanned 3600, unknown 7200,
uptime = 1 - 3600 / 329 400 = 98.907103... %, incidents 2.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from history.change import Approval, ChangeRecord, ChangeWindow, Outcome, PackageChange
from history.schema import check_intervals, pack_interval
from history.store import open_store
from reports.render import find_chromium
from tests.conftest import artifacts_of

pytestmark = pytest.mark.integration

SLUG = "rptco"
CLIENT = """\
client:
  slug: rptco
  name: Report Co
  timezone: Europe/London
  contact: {name: Ops, email: ops@test.example}
  approvers: [{name: alice, email: alice@test.example}]
schedule: {cadence: monthly, window: {start: "02:00", duration: 1h}}
defaults: {ssh_block: test-report-ssh, os_family: debian}
servers:
  - {name: stg-1, role: staging, address: 10.0.0.1, provider: {type: none, reason: a test host}}
  - {name: web-1, role: production, address: 10.0.0.2, provider: {type: none, reason: a test host}}
"""
PERIOD = "2026-06-10..2026-06-11"


def at(text: str) -> datetime:
    """``06-10 09:00`` as an aware UTC datetime in June 2026."""
    return datetime.strptime(f"2026-{text}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# (server, state, start, end, checks, failures, first_error)
HISTORY: list[tuple[str, str, str, str, int, int, str | None]] = [
    ("stg-1", "up", "06-09 22:00", "06-11 23:00", 589, 0, None),
    ("web-1", "up", "06-09 23:00", "06-10 09:00", 120, 0, None),
    ("web-1", "down", "06-10 09:00", "06-10 09:30", 6, 6, "tcp 22: connection refused"),
    ("web-1", "up", "06-10 09:30", "06-10 12:00", 30, 0, None),
    ("web-1", "down", "06-10 12:00", "06-10 12:05", 1, 1, "tcp 22: timed out"),
    ("web-1", "up", "06-10 12:05", "06-11 00:30", 149, 0, None),
    ("web-1", "down", "06-11 00:30", "06-11 01:30", 12, 12, "tcp 22: no route to host"),
    ("web-1", "up", "06-11 01:30", "06-11 11:00", 114, 0, None),
    ("web-1", "unknown", "06-11 11:00", "06-11 13:00", 0, 0, None),
    ("web-1", "up", "06-11 13:00", "06-11 23:00", 120, 0, None),
]


def insert_intervals(url: str, rows: list[tuple[str, str, str, str, int, int, str | None]]) -> None:
    """Write intervals straight into ``check_intervals``."""
    with open_store(url) as store, store.engine.begin() as conn:
        conn.execute(
            check_intervals.insert(),
            [
                {
                    "client": SLUG,
                    "server": server,
                    "state": state,
                    "start": at(start),
                    "end": at(end),
                    "checks": checks,
                    "failures": failures,
                    "first_error": error,
                    "packed": pack_interval(state, at(start), at(end), checks, failures),
                }
                for server, state, start, end, checks, failures, error in rows
            ],
        )


def announce_the_window_of_the_11th(url: str) -> None:
    """The schedule's window of 06-11 (01:00-02:00Z), announced to the client on 06-09."""
    with open_store(url) as store:
        store.record_window(
            SLUG, at("06-11 01:00"), at("06-11 02:00"), announced_at=at("06-09 10:00")
        )


def change_record() -> ChangeRecord:
    """One completed run on 06-10 20:00Z-20:30Z: 3 package changes, approved by alice."""
    return ChangeRecord(
        client=SLUG,
        change_ref="CHG-1",
        flow_run_id="run-chg-1",
        requester="alice",
        window=ChangeWindow(start=at("06-10 20:00"), end=at("06-10 21:00"), inside=True),
        package_changes=[
            PackageChange(server="web-1", name="openssl", from_version="3.0.1", to_version="3.0.2"),
            PackageChange(server="web-1", name="nginx", from_version="1.22", to_version="1.24"),
            PackageChange(server="stg-1", name="openssl", from_version="3.0.1", to_version="3.0.2"),
        ],
        approvals=[
            Approval(approver="alice", decision="approve", at=at("06-10 20:10"), counted=True)
        ],
        outcome=Outcome.COMPLETED,
        started=at("06-10 20:00"),
        ended=at("06-10 20:30"),
    )


@pytest.fixture()
def report_env(prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A client file, a data dir and a SQLite store of this test's own; yields the store URL."""
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / f"{SLUG}.yaml").write_text(CLIENT)
    url = f"sqlite:///{tmp_path / 'store' / 'caretaker.db'}"
    monkeypatch.setenv("CARETAKER_INVENTORY_DIR", str(clients))
    monkeypatch.setenv("CARETAKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CARETAKER_HISTORY_STORE_URL", url)
    yield url


@pytest.fixture()
def seeded(report_env: str) -> str:
    """The store holding HISTORY, an announced window, a maintenance run's window and its
    change record."""
    insert_intervals(report_env, HISTORY)
    announce_the_window_of_the_11th(report_env)
    with open_store(report_env) as store:
        store.record_window(
            SLUG,
            at("06-10 20:00"),
            at("06-10 20:30"),
            kind="run",
            change_ref="CHG-1",
            server="web-1",
        )
        store.save_change_record(change_record())
    return report_env


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_report_writes_hand_checked_uptime_incidents_and_activity(seeded: str) -> None:
    from flows.maintenance_report import ReportResult, maintenance_report

    state = maintenance_report(client=SLUG, period=PERIOD, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, ReportResult)

    # The default folder: <data>/reports/<client>/<period>/, with the four files.
    expected_dir = Path(seeded.removeprefix("sqlite:///")).parent.parent / "data" / "reports"
    assert Path(result.out_dir) == expected_dir / SLUG / PERIOD
    made = ["activity.csv", "compliance.csv", "incidents.csv", "report.html", "uptime.csv"]
    if find_chromium():  # report.pdf too (./run test installs chromium)
        made = sorted([*made, "report.pdf"])
        assert Path(result.files["report.pdf"]).read_bytes().startswith(b"%PDF-")
    assert sorted(result.files) == made
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in result.files.values())

    uptime = {row["server"]: row for row in read_csv(result.files["uptime.csv"])}
    assert list(uptime) == ["stg-1", "web-1", "(all servers)"]
    stg, web, total = uptime["stg-1"], uptime["web-1"], uptime["(all servers)"]
    assert float(stg["observed_s"]) == 172_800 and float(stg["maintenance_s"]) == 3600
    assert float(stg["uptime_pct"]) == 100.0 and stg["incidents"] == "0"
    assert float(web["observed_s"]) == 165_600
    assert float(web["maintenance_s"]) == 5400
    assert float(web["unplanned_down_s"]) == 3600
    assert float(web["unknown_s"]) == 7200
    assert float(web["uptime_pct"]) == pytest.approx(100 * (1 - 3600 / 160_200))
    assert web["incidents"] == "2"
    assert float(web["mttr_s"]) == 1800 and float(web["longest_outage_s"]) == 1800
    assert web["sla_target_pct"] == "" and web["sla_met"] == ""  # no target: never a guess
    assert float(total["observed_s"]) == 338_400 and float(total["maintenance_s"]) == 9000
    assert float(total["uptime_pct"]) == pytest.approx(100 * (1 - 3600 / 329_400))
    assert result.uptime_pct == pytest.approx(100 * (1 - 3600 / 329_400))
    assert (result.unplanned_down_s, result.unknown_s, result.incidents) == (3600, 7200, 2)

    incidents = read_csv(result.files["incidents.csv"])
    assert [
        (r["server"], r["start"], r["end"], float(r["duration_s"]), r["planned"]) for r in incidents
    ] == [
        ("web-1", "2026-06-10T09:00:00+00:00", "2026-06-10T09:30:00+00:00", 1800, "False"),
        ("web-1", "2026-06-11T00:30:00+00:00", "2026-06-11T01:00:00+00:00", 1800, "False"),
        ("web-1", "2026-06-11T01:00:00+00:00", "2026-06-11T01:30:00+00:00", 1800, "True"),
    ]
    assert incidents[0]["first_error"] == "tcp 22: connection refused"
    assert incidents[1]["outage_id"] == incidents[2]["outage_id"]  # one outage, split at the edge

    (activity,) = read_csv(result.files["activity.csv"])
    assert activity["change_ref"] == "CHG-1" and activity["outcome"] == "completed"
    assert float(activity["duration_s"]) == 1800
    assert activity["packages_changed"] == "3"
    assert activity["packages_per_host"] == "stg-1: 1; web-1: 2"
    assert activity["approvals"] == "alice 2026-06-10T20:10:00+00:00"

    html = Path(result.files["report.html"]).read_text(encoding="utf-8")
    assert "Report Co: maintenance report 2026-06-10..2026-06-11" in html
    assert "<svg" in html and "tcp 22: no route to host" in html

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert set(artifacts) == {
        f"report-rptco-{PERIOD.replace('..', '-')}",
        f"uptime-rptco-{PERIOD.replace('..', '-')}",
        f"report-link-rptco-{PERIOD.replace('..', '-')}",
    }
    assert sorted(result.artifacts) == sorted(artifacts)
    # Delivered to the default storage, the data folder (where it was written): a file link.
    assert result.stored["report.html"] == result.files["report.html"]
    link = artifacts[f"report-link-rptco-{PERIOD.replace('..', '-')}"]
    # Prefect keeps a link artifact as markdown: [text](link)
    assert str(link.data).endswith(f"({Path(result.files['report.html']).as_uri()})"), link.data
    summary = artifacts[result.artifacts[0]]
    assert summary.type == "markdown" and "98.907 %" in str(summary.data)
    table = artifacts[result.artifacts[1]]
    assert table.type == "table" and "web-1" in str(table.data)


def test_without_chromium_the_report_is_made_without_a_pdf_and_says_why(
    seeded: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.maintenance_report import maintenance_report

    monkeypatch.setattr("reports.render.CHROMIUM_NAMES", ("no-such-chromium-here",))
    with caplog.at_level(logging.WARNING):
        state = maintenance_report(client=SLUG, period=PERIOD, return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    assert sorted(result.files) == [
        "activity.csv",
        "compliance.csv",
        "incidents.csv",
        "report.html",
        "uptime.csv",
    ]
    assert not (Path(result.out_dir) / "report.pdf").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "no report.pdf made: no chromium binary on PATH (looked for no-such-chromium-here)" in w
        for w in warnings
    ), warnings


def test_overlapping_intervals_stop_the_report_with_the_reason(report_env: str) -> None:
    from flows.maintenance_report import maintenance_report

    insert_intervals(
        report_env,
        [
            ("web-1", "up", "06-10 00:00", "06-10 10:00", 120, 0, None),
            ("web-1", "down", "06-10 09:00", "06-10 11:00", 24, 24, "overlaps the up row"),
        ],
    )
    state = maintenance_report(client=SLUG, period=PERIOD, return_state=True)
    assert state.is_failed()
    assert "interval_no_overlap" in str(state.message)
    assert "server=web-1" in str(state.message)
    reports = Path(report_env.removeprefix("sqlite:///")).parent.parent / "data" / "reports"
    assert not (reports / SLUG / PERIOD).exists(), "a failed validation writes nothing"


def test_prefect_history_adds_a_run_that_died_before_saving_its_record(report_env: str) -> None:
    from prefect import flow

    from flows.maintenance_report import maintenance_report

    @flow(name="server-maintenance")
    def died_early(client: str, dry_run: bool = False, change_ref: str | None = None) -> None:
        raise RuntimeError("preflight crashed before the change record was saved")

    died_early(client=SLUG, change_ref="CHG-LOST", return_state=True)
    died_early(client=SLUG, dry_run=True, change_ref="CHG-PLAN", return_state=True)
    died_early(client="someone-else", change_ref="CHG-OTHER", return_state=True)

    today = datetime.now(UTC).astimezone().date()
    period = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    state = maintenance_report(client=SLUG, period=period, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    (activity,) = read_csv(result.files["activity.csv"])
    assert activity["change_ref"] == "CHG-LOST"
    assert activity["outcome"] == "prefect:Failed"
    assert result.uptime_pct is None and result.unknown_s > 0  # no data is not uptime


def test_inventory_sets_confirmation_sla_target_and_the_day_a_server_was_added(
    report_env: str,
) -> None:
    """The same history under ``monitoring: {confirm_after: 1, sla_target_pct: 99}``, with
    web-1 ``added: 2026-06-11`` and the latest check (06-11 23:00Z) a fresh failure.

    web-1 is in scope from 2026-06-11 00:00 London (06-10 23:00Z): 86 400 s. Unknown 7200;
    observed 79 200; planned: the announced 06-11 window 01:00-02:00Z, 3600 (there is no run
    window in this store); unplanned: 00:30-01:00Z, 1800 (the 06-10 outage and the blip,
    an outage under confirm_after 1, are before it was added). Uptime = 1 - 1800 / 75 600
    = 97.619 %; target 99 % not met; allowed 1 % of 75 600 = 756 s, used 238.1 %.
    stg-1: 100 %, target 99 % met; the client as a whole meets it. The zero-length down
    row (the latest check, not yet extended by another) carries no time and does not stop
    the report.
    """
    from flows.maintenance_report import maintenance_report

    clients = Path(report_env.removeprefix("sqlite:///")).parent.parent / "clients"
    text = CLIENT.replace(
        "defaults:", "monitoring: {confirm_after: 1, sla_target_pct: 99}\ndefaults:"
    ).replace("address: 10.0.0.2,", "address: 10.0.0.2, added: 2026-06-11,")
    (clients / f"{SLUG}.yaml").write_text(text)
    insert_intervals(
        report_env, [*HISTORY, ("web-1", "down", "06-11 23:00", "06-11 23:00", 1, 1, "refused")]
    )
    announce_the_window_of_the_11th(report_env)

    state = maintenance_report(client=SLUG, period=PERIOD, return_state=True)
    assert state.is_completed(), state.message
    uptime = {row["server"]: row for row in read_csv(state.result().files["uptime.csv"])}
    web, stg = uptime["web-1"], uptime["stg-1"]
    assert float(web["observed_s"]) == 79_200 and float(web["maintenance_s"]) == 3600
    assert float(web["unplanned_down_s"]) == 1800 and float(web["unknown_s"]) == 7200
    assert float(web["uptime_pct"]) == pytest.approx(100 * (1 - 1800 / 75_600))
    assert web["incidents"] == "1"
    assert float(web["sla_target_pct"]) == 99 and web["sla_met"] == "False"
    assert float(stg["uptime_pct"]) == 100 and stg["sla_met"] == "True"
    total = uptime["(all servers)"]  # 1 - 1800 / (252 000 - 7200) = 99.265 %: met
    assert float(total["uptime_pct"]) == pytest.approx(100 * (1 - 1800 / 244_800))
    assert float(total["sla_target_pct"]) == 99 and total["sla_met"] == "True"
    html = Path(state.result().files["report.html"]).read_text(encoding="utf-8")
    assert "238" in html, "the share of the allowed downtime used is shown"
