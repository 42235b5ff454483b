"""``python -m history announce``: a maintenance window told to the client before it began.

The rule (:func:`history.announce.check_announcement`) as a table, including the ways an
operator might try to turn unplanned time into planned time after the fact; then the
command on a real SQLite store and the example inventory.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import AnnouncementRefused
from history.announce import check_announcement, parse_local_time
from history.cli import main
from history.store import open_store
from inventory import load_client_by_slug

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
ACME = load_client_by_slug(CLIENTS, "acme")  # Europe/London
NOW = datetime(2026, 10, 12, 9, tzinfo=UTC)
H = timedelta(hours=1)
START = datetime(2026, 10, 14, 1, tzinfo=UTC)  # 02:00 in London (BST)


@pytest.mark.parametrize(
    ("servers", "start", "end", "announced_at", "by", "reason", "problem"),
    [
        ([], START, START + 4 * H, NOW, "bob", "EBS move", None),
        (["acme-web-1", "acme-db-1"], START, START + 4 * H, NOW - 48 * H, "bob", "x", None),
        ([], START, START, NOW, "bob", "x", "before it starts"),
        ([], START, START - H, NOW, "bob", "x", "before it starts"),
        ([], START, START + 8 * 24 * H, NOW, "bob", "x", "more than 7 days"),
        (["acme-web-9"], START, START + H, NOW, "bob", "x", "not a server of acme"),
        (["glx-app-1"], START, START + H, NOW, "bob", "x", "not a server of acme"),
        ([], START, START + H, NOW, " ", "x", "who announced it"),
        ([], START, START + H, NOW, "bob", "", "what the maintenance is"),
        # told after the window began: not an announcement, whatever the reason
        ([], NOW - H, NOW + H, NOW, "bob", "x", "not before the window began"),
        ([], NOW - H, NOW + H, NOW - H, "bob", "x", "not before the window began"),
        ([], START - 96 * H, START - 92 * H, NOW, "bob", "x", "not before the window began"),
        # an announcement dated in the future is a plan to announce, not an announcement
        ([], START, START + H, NOW + H, "bob", "x", "in the future"),
    ],
)
def test_an_announcement_is_made_before_the_window_for_the_clients_own_servers(
    servers: list[str],
    start: datetime,
    end: datetime,
    announced_at: datetime,
    by: str,
    reason: str,
    problem: str | None,
) -> None:
    def check() -> object:
        return check_announcement(
            ACME, servers, start, end, by=by, reason=reason, announced_at=announced_at, now=NOW
        )

    if problem is None:
        made = check()
        assert made.servers == tuple(servers)  # type: ignore[attr-defined]
    else:
        with pytest.raises(AnnouncementRefused, match=problem):
            check()


def test_every_broken_rule_is_named_at_once() -> None:
    with pytest.raises(AnnouncementRefused) as refused:
        check_announcement(
            ACME, ["nope"], START, START - H, by="", reason="", announced_at=NOW, now=NOW
        )
    assert len(refused.value.problems) == 4


def test_a_time_without_a_zone_is_the_clients_local_time() -> None:
    assert parse_local_time("2026-10-14 02:00", ACME.tz, "--start") == START
    assert parse_local_time("2026-10-14T02:00+00:00", ACME.tz, "--start") == START + H
    with pytest.raises(AnnouncementRefused, match="is not a time"):
        parse_local_time("next tuesday", ACME.tz, "--start")


def run(store: str, *args: str) -> int:
    return main(["announce", "--store", store, "--client", "acme", *args])


def test_the_command_records_the_window_and_refuses_a_late_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CARETAKER_INVENTORY_DIR", str(CLIENTS))
    store = f"sqlite:///{tmp_path / 'caretaker.db'}"
    start = (datetime.now(UTC) + 48 * H).replace(minute=0, second=0, microsecond=0)
    local = start.astimezone(ACME.tz).strftime("%Y-%m-%d %H:%M")
    common = ["--start", local, "--end", (start + 4 * H).isoformat()]

    assert run(store, *common, "--server", "acme-db-1", "--by", "bob", "--reason", "EBS") == 0
    assert "announced: acme (acme-db-1)" in capsys.readouterr().out
    # A window that began already: refused, nothing written.
    began = ["--start", (start - 72 * H).isoformat(), "--end", (start - 68 * H).isoformat()]
    assert run(store, *began, "--by", "bob", "--reason", "late") == 1
    assert "not before the window began" in capsys.readouterr().err
    # The same one, with the time the client was really told: recorded.
    told = (start - 96 * H).isoformat()
    assert run(store, *began, "--by", "bob", "--reason", "told", "--announced-at", told) == 0
    # An unknown client: a clear error, not a traceback.
    assert main(["announce", "--store", store, "--client", "nope", *common, "--by", "b",
                 "--reason", "r"]) == 1  # fmt: skip
    assert "nope" in capsys.readouterr().err

    with open_store(store) as opened:
        windows = opened.windows("acme", start - 100 * H, start + 100 * H)
    assert [(w.server, w.start, w.reason, w.announced_by) for w in windows] == [
        (None, start - 72 * H, "told", "bob"),
        ("acme-db-1", start, "EBS", "bob"),
    ]
    assert windows[0].announced_at == start - 96 * H
    assert all(w.kind == "planned" for w in windows)
