"""The demo's month: generated history imported through the public commands, then the real
``maintenance-report`` flow (Prefect test harness) on the example inventory.

The history ends 2026-12-05 01:00Z; the demo reports the 30 days up to that day
(2026-11-06..2026-12-05, Europe/London for acme). That report must show what a real month
does: incidents (the unannounced 03:00 outage of 19 November among them, unplanned),
planned time (the window announced for 25 November, a reboot per server inside it),
unknown time (the gap of 1 December) and an SLA verdict; December (five days of data)
says "insufficient data" instead of "met".
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deployments.demo import import_demo_history
from history.store import open_store
from inventory import load_inventory
from sandbox.history_month import showcase_period

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
END = datetime(2026, 12, 5, 1, tzinfo=UTC)


def rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_demo_month_report_shows_incidents_planned_time_and_the_sla(
    prefect_api: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.maintenance_report import maintenance_report

    url = f"sqlite:///{tmp_path / 'caretaker.db'}"
    monkeypatch.setenv("CARETAKER_INVENTORY_DIR", str(CLIENTS))
    monkeypatch.setenv("CARETAKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CARETAKER_HISTORY_STORE_URL", url)
    clients = load_inventory(CLIENTS)

    assert import_demo_history(clients, tmp_path / "gen", END) == 0
    printed = capsys.readouterr().out
    assert printed.count("announced: acme (all servers)") >= 3
    assert "imported" in printed and "check(s) for globex" in printed
    # Run again: the store's history is kept, nothing imported twice.
    assert import_demo_history(clients, tmp_path / "gen", END) == 0
    assert printed.count("imported") == 2 and "kept" in capsys.readouterr().out
    with open_store(url) as store:
        announced = store.windows("acme", datetime(2026, 11, 1, tzinfo=UTC), END)
    assert {w.announced_by for w in announced} == {"demo provider notice"}

    period = showcase_period(END, clients["acme"].tz)
    assert period == "2026-11-06..2026-12-05"
    state = maintenance_report(client="acme", period=period, return_state=True)
    assert state.is_completed(), state.message
    month = state.result()
    uptime = {r["server"]: r for r in rows(month.files["uptime.csv"])}
    servers = [s.name for s in clients["acme"].servers]
    for name in servers:  # the announced 4-hour window, on every server
        assert float(uptime[name]["maintenance_s"]) == 4 * 3600
        # The 5-hour gap and the rest of 5 December are unknown: judged all the same.
        assert 90 < float(uptime[name]["coverage_pct"]) < 97
        assert uptime[name]["sla_met"] in ("True", "False")
    assert month.sla in ("met", "missed") and month.incidents >= 2
    incidents = rows(month.files["incidents.csv"])
    planned = [r for r in incidents if r["planned"] == "True"]
    assert sorted(r["server"] for r in planned) == sorted(servers)  # one reboot each
    night = [r for r in incidents if r["start"].startswith("2026-11-19T03:0")]
    assert night and night[0]["planned"] == "False"  # no maintenance that night
    html = Path(month.files["report.html"]).read_text(encoding="utf-8")
    assert "insufficient data (" not in html  # every verdict judged

    state = maintenance_report(client="acme", period="2026-12", return_state=True)
    assert state.is_completed(), state.message
    december = state.result()
    assert december.sla.startswith("insufficient data (coverage ")
    assert "insufficient data (" in Path(december.files["report.html"]).read_text()
