"""Generated check history for the example clients: a real-looking 90 days for the demo.

The demo's reports would otherwise cover the few health checks the demo itself made. This
module makes, for one client's inventory, 90 days of 5-minute health checks ending at a
given moment (deterministic: the same inventory, end and seed give the same rows), in the
import command's input format (``server, ts, ok, latency_ms``: :mod:`history.checkfiles`),
and the maintenance windows announced to the client in that time. The demo records the
announcements with ``python -m history announce`` and imports the file with
``python -m history import`` (the public commands, as an operator bringing history over
from another tool would).

What happens in it, so that every section of a report has something to show:

- every month, one maintenance window announced five days ahead (the client's schedule
  slot on the day nearest the 9th), each server rebooting inside it (10 minutes down,
  one after another): planned time;
- unplanned outages at random (10 to 45 minutes, about 0.8 per server and month) and
  blips (single failed checks, about 6 per server and month: not outages);
- in the last full month before the end (:func:`showcase_month`): an outage at the hour
  after the window's start on the 14th, a night with no maintenance (unplanned, the case
  the schedule slot used to hide), a 95-minute outage on the 22nd (past a 99.9 % budget),
  and a monitoring gap of 5 hours on the 26th (unknown time, every server).

Pure apart from :func:`write_checks`; fast (about 0.2 s for a client of 5 servers).
Sandbox code: imports only inventory and the third-party libraries.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from inventory import ClientInventory

__all__ = [
    "CHECK_EVERY",
    "Announced",
    "Episode",
    "GeneratedHistory",
    "generate_history",
    "showcase_month",
    "write_checks",
]

#: The check cadence of the generated history (the health-check deployment's).
CHECK_EVERY = timedelta(minutes=5)
#: How long a server is down when it reboots inside an announced window.
REBOOT = timedelta(minutes=10)
#: How far ahead each window is announced.
NOTICE = timedelta(days=5)
_REASONS = (
    "Provider maintenance: host kernel security updates, one reboot per server",
    "Storage firmware update on the hosts' volumes, one reboot per server",
    "Hypervisor patching by the cloud provider, one reboot per server",
)
_STEP_NS = int(CHECK_EVERY.total_seconds()) * 1_000_000_000


@dataclass(frozen=True)
class Announced:
    """A maintenance window announced to the client (the whole client)."""

    start: datetime
    end: datetime
    announced_at: datetime
    reason: str


@dataclass(frozen=True)
class Episode:
    """Something that happened to a server: what the checks show, by design."""

    server: str
    start: datetime
    end: datetime
    kind: Literal["reboot", "outage", "blip", "gap"]


@dataclass(frozen=True)
class GeneratedHistory:
    """The checks (``server, ts, ok, latency_ms``), the announcements and the episodes."""

    client: str
    checks: pd.DataFrame
    announced: tuple[Announced, ...]
    episodes: tuple[Episode, ...]


def showcase_month(end: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """The last full calendar month (in ``tz``) before ``end``: ``[start, end)``, aware."""
    local = end.astimezone(tz)
    first = date(local.year, local.month, 1)
    previous = (
        date(first.year - 1, 12, 1) if first.month == 1 else date(first.year, first.month - 1, 1)
    )

    def midnight(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=tz)

    return midnight(previous), midnight(first)


def _local(day: date, hour_offset: timedelta, tz: tzinfo, base: datetime) -> datetime:
    """``day`` at the wall time of ``base`` (a slot start) plus ``hour_offset``, aware UTC."""
    wall = base.astimezone(tz)
    at = datetime(day.year, day.month, day.day, wall.hour, wall.minute, tzinfo=tz)
    return (at + hour_offset).astimezone(UTC)


def _floor(value: datetime) -> datetime:
    ns = pd.Timestamp(value).value
    return pd.Timestamp(ns - ns % _STEP_NS, tz="UTC").to_pydatetime()


def generate_history(
    inventory: ClientInventory, end: datetime, *, days: int = 90, seed: int = 0
) -> GeneratedHistory:
    """``days`` of checks for every server of ``inventory`` up to ``end`` (exclusive).

    Args:
        inventory: the client (its servers, time zone and maintenance window).
        end: the end of the history (aware); checks are on a 5-minute grid before it.
        days: how many days.
        seed: the random seed (the client's slug is mixed in).

    Returns:
        The checks, sorted by server and time, and what was put in them.
    """
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    if days < 1:
        raise ValueError("days must be at least 1")
    tz = inventory.tz
    rng = np.random.default_rng([seed, zlib.crc32(inventory.slug.encode())])
    stop = _floor(end)
    first = _floor(stop - timedelta(days=days))
    grid = pd.date_range(first, stop, freq=CHECK_EVERY, inclusive="left", tz="UTC")
    n = len(grid)
    servers = [s.name for s in inventory.servers]
    production = [s.name for s in inventory.servers if s.role == "production"] or servers
    episodes: list[Episode] = []
    announced: list[Announced] = []

    # One announced window a month: the slot nearest the 9th, announced 5 days ahead.
    slots = [(a, b) for a, b in inventory.windows_between(first, stop) if a >= first and b <= stop]
    by_month: dict[tuple[int, int], tuple[datetime, datetime]] = {}
    for a, b in slots:
        local = a.astimezone(tz)
        key = (local.year, local.month)
        best = by_month.get(key)
        if best is None or abs(local.day - 9) < abs(best[0].astimezone(tz).day - 9):
            by_month[key] = (a, b)
    for i, (a, b) in enumerate(sorted(by_month.values())):
        a, b = a.astimezone(UTC), b.astimezone(UTC)
        announced.append(Announced(a, b, a - NOTICE, _REASONS[i % len(_REASONS)]))
        room = (b - a) - 2 * REBOOT
        gap = min(timedelta(minutes=25), room / max(len(servers), 1))
        for k, server in enumerate(servers):
            start = a + REBOOT + k * gap
            episodes.append(Episode(server, start, start + REBOOT, "reboot"))

    def inside_announced(t: datetime) -> bool:
        return any(
            w.start - timedelta(hours=1) <= t < w.end + timedelta(hours=1) for w in announced
        )

    # Unplanned outages and blips at random, away from the announced windows.
    for server in servers:
        for _ in range(rng.poisson(0.8 * days / 30)):
            start = grid[rng.integers(0, n)].to_pydatetime()
            if not inside_announced(start):
                length = CHECK_EVERY * int(rng.integers(2, 10))
                episodes.append(Episode(server, start, start + length, "outage"))
        for _ in range(rng.poisson(6 * days / 30)):
            start = grid[rng.integers(0, n)].to_pydatetime()
            episodes.append(Episode(server, start, start + CHECK_EVERY, "blip"))

    # The showcase month: a night outage without maintenance, a long outage, a gap.
    month_start, month_end = showcase_month(end, tz)
    if month_start.astimezone(UTC) >= first:
        year, month = month_start.year, month_start.month
        slot = inventory.windows_between(month_start, month_end)[0][0]
        night = _local(date(year, month, 14), timedelta(hours=1), tz, slot)
        episodes.append(Episode(production[0], night, night + timedelta(minutes=35), "outage"))
        noon = datetime(year, month, 22, 14, 10, tzinfo=tz).astimezone(UTC)
        episodes.append(Episode(production[-1], noon, noon + timedelta(minutes=95), "outage"))
        silence = datetime(year, month, 26, 9, tzinfo=tz).astimezone(UTC)
        episodes += [Episode(s, silence, silence + timedelta(hours=5), "gap") for s in servers]

    frames = []
    grid_ns = grid.as_unit("ns").asi8
    for server in servers:
        ok = np.ones(n, dtype=bool)
        keep = np.ones(n, dtype=bool)
        for e in episodes:
            if e.server != server:
                continue
            lo = np.searchsorted(grid_ns, pd.Timestamp(e.start).value)
            hi = np.searchsorted(grid_ns, pd.Timestamp(e.end).value)
            if e.kind == "gap":
                keep[lo:hi] = False
            else:
                ok[lo:hi] = False
        jitter = rng.integers(0, 20_000, n).astype("timedelta64[ms]")
        latency = np.round(rng.lognormal(np.log(35.0), 0.35, n), 1)
        frame = pd.DataFrame(
            {
                "server": server,
                "ts": (grid + pd.to_timedelta(jitter))[keep],
                "ok": ok[keep],
                # A failed check has no latency (null in the file).
                "latency_ms": pd.array(np.where(ok, latency, np.nan)[keep], dtype="Float64"),
            }
        )
        frames.append(frame)
    checks = pd.concat(frames, ignore_index=True)
    return GeneratedHistory(
        client=inventory.slug,
        checks=checks,
        announced=tuple(announced),
        episodes=tuple(sorted(episodes, key=lambda e: (e.start, e.server))),
    )


def write_checks(history: GeneratedHistory, folder: Path | str) -> Path:
    """Write the checks as ``<folder>/<client>-checks.parquet``; returns the path."""
    path = Path(folder) / f"{history.client}-checks.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    history.checks.to_parquet(path, index=False)
    return path
