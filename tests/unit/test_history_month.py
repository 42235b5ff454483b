"""The demo's generated 90 days of checks: deterministic, in the import's format, and with
what a report needs to show (announced windows with reboots, outages, blips, a gap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from history.parquet import parquet_to_intervals
from inventory import load_client_by_slug
from sandbox.history_month import (
    CHECK_EVERY,
    NOTICE,
    REBOOT,
    generate_history,
    showcase_period,
    write_checks,
)

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
END = datetime(2026, 12, 5, 0, 52, 30, tzinfo=UTC)


@pytest.fixture(scope="module", params=["acme", "globex"])
def made(request: pytest.FixtureRequest) -> tuple:
    inventory = load_client_by_slug(CLIENTS, request.param)
    return inventory, generate_history(inventory, END)


def test_the_same_inputs_give_the_same_history_and_another_seed_another() -> None:
    acme = load_client_by_slug(CLIENTS, "acme")
    one, two = generate_history(acme, END), generate_history(acme, END)
    pd.testing.assert_frame_equal(one.checks, two.checks)
    assert one.announced == two.announced and one.episodes == two.episodes
    other = generate_history(acme, END, seed=1)
    assert not other.checks["ts"].equals(one.checks["ts"])


def test_every_server_is_checked_every_five_minutes_for_ninety_days(made: tuple) -> None:
    inventory, history = made
    checks = history.checks
    assert list(checks.columns) == ["server", "ts", "ok", "latency_ms"]
    assert list(checks["server"].unique()) == [s.name for s in inventory.servers]
    for _, rows in checks.groupby("server"):
        ts = rows["ts"]
        assert ts.is_monotonic_increasing
        assert ts.min() >= END - timedelta(days=90, minutes=5) and ts.max() < END
        steps = ts.diff().dropna()
        assert steps.min() > CHECK_EVERY - timedelta(seconds=20)
        assert (steps <= CHECK_EVERY + timedelta(seconds=20)).mean() > 0.99  # but the gap
    assert checks.loc[checks["ok"], "latency_ms"].notna().all()
    assert checks.loc[~checks["ok"], "latency_ms"].isna().all()


def test_each_month_has_a_window_announced_ahead_with_every_server_rebooting_in_it(
    made: tuple,
) -> None:
    inventory, history = made
    slots = set(inventory.windows_between(END - timedelta(days=91), END))
    assert len(history.announced) >= 3
    for window in history.announced:
        assert (window.start, window.end) in slots  # the client's own schedule slot
        assert window.announced_at == window.start - NOTICE
        reboots = [
            e
            for e in history.episodes
            if e.kind == "reboot" and window.start <= e.start and e.end <= window.end
        ]
        assert sorted(e.server for e in reboots) == sorted(s.name for s in inventory.servers)
        for reboot in reboots:
            rows = history.checks[
                (history.checks["server"] == reboot.server)
                & (history.checks["ts"] >= reboot.start)
                & (history.checks["ts"] < reboot.end)
            ]
            assert len(rows) == REBOOT // CHECK_EVERY and not rows["ok"].any()


def test_the_last_30_days_have_a_night_outage_a_long_one_a_gap_and_a_window(
    made: tuple,
) -> None:
    inventory, history = made
    period = showcase_period(END, inventory.tz)
    assert (
        period == "2026-11-05..2026-12-04"
        if inventory.slug == "globex"
        else "2026-11-06..2026-12-05"
    )
    start = END - timedelta(days=30)
    recent = [e for e in history.episodes if e.start >= start]
    assert [a for a in history.announced if a.start >= start]  # one announced window
    outages = [e for e in recent if e.kind == "outage"]
    night = next(e for e in outages if e.end - e.start == timedelta(minutes=35))
    assert timedelta(days=15) < END - night.start < timedelta(days=17)
    slot = inventory.windows_between(night.start - timedelta(hours=3), night.end)[0]
    assert slot[0] < night.start < slot[1]  # inside the schedule's slot ...
    assert not any(a.start <= night.start < a.end for a in history.announced)  # ... unannounced
    assert any(e.end - e.start == timedelta(minutes=95) for e in outages)
    gap = [e for e in recent if e.kind == "gap"]
    assert len(gap) == len(inventory.servers)
    silent = history.checks[
        (history.checks["ts"] >= gap[0].start) & (history.checks["ts"] < gap[0].end)
    ]
    assert silent.empty
    kinds = {e.kind for e in history.episodes}
    assert kinds == {"reboot", "outage", "blip", "gap"}


def test_the_written_file_passes_the_imports_validation(made: tuple, tmp_path: Path) -> None:
    inventory, history = made
    path = write_checks(history, tmp_path)
    assert path.name == f"{inventory.slug}-checks.parquet"
    intervals = parquet_to_intervals(path, 3 * CHECK_EVERY)
    assert int(intervals["checks"].sum()) == len(history.checks)
    assert set(intervals["state"]) == {"up", "down", "unknown"}


def test_a_naive_end_or_no_days_is_refused() -> None:
    acme = load_client_by_slug(CLIENTS, "acme")
    with pytest.raises(ValueError, match="aware"):
        generate_history(acme, END.replace(tzinfo=None))
    with pytest.raises(ValueError, match="at least 1"):
        generate_history(acme, END, days=0)
