"""Times in report.html: the client's zone, to the minute, the zone named once (issue 12)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from reports.render import fmt_approvals, fmt_local

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("value", "tz", "shown"),
    [
        # the approval time: microseconds and offset gone, London summer time
        ("2026-06-04T20:02:28.888979+00:00", LONDON, "2026-06-04 21:02"),
        # winter: London is UTC
        (datetime(2026, 12, 4, 20, 2, 59, 999999, tzinfo=UTC), LONDON, "2026-12-04 20:02"),
        # another zone, another day
        (pd.Timestamp("2026-12-05T03:30:00Z"), NEW_YORK, "2026-12-04 22:30"),
        # the hour the clocks go back happens twice: each says which
        (pd.Timestamp("2026-10-25T00:30:00Z"), LONDON, "2026-10-25 01:30 BST"),
        (pd.Timestamp("2026-10-25T01:30:00Z"), LONDON, "2026-10-25 01:30 GMT"),
        # the hour after is not ambiguous
        (pd.Timestamp("2026-10-25T02:30:00Z"), LONDON, "2026-10-25 02:30"),
        (None, LONDON, ""),
        (pd.NaT, LONDON, ""),
    ],
)
def test_a_time_is_shown_in_the_clients_zone_to_the_minute(
    value: object, tz: ZoneInfo, shown: str
) -> None:
    assert fmt_local(value, tz) == shown


def test_a_naive_time_is_refused_rather_than_guessed() -> None:
    with pytest.raises(TypeError):
        fmt_local(datetime(2026, 1, 1, 12, 0), LONDON)


def test_approvals_are_one_line_each_in_the_clients_zone() -> None:
    cell = "alice 2026-06-04T20:02:28.888979+00:00; bob.smith 2026-06-04T20:05:00+00:00"
    assert fmt_approvals(cell, LONDON) == ["alice 2026-06-04 21:02", "bob.smith 2026-06-04 21:05"]


@pytest.mark.parametrize(
    ("cell", "lines"),
    [
        ("", []),
        (None, []),
        (float("nan"), []),
        ("carol", ["carol"]),  # no time: shown as it is
        ("dave 2026-06-04T20:02:28", ["dave 2026-06-04T20:02:28"]),  # naive: not converted
    ],
)
def test_an_approvals_cell_without_a_time_is_shown_as_it_is(cell: object, lines: list[str]) -> None:
    assert fmt_approvals(cell, LONDON) == lines
