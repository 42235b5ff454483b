"""Generated check history for the example clients: a real-looking 90 days for the demo.

The demo's reports would otherwise cover the few health checks the demo itself made. This
module makes, for one client's inventory, 90 days of 5-minute health checks ending at a
given moment (deterministic: the same inventory, end and seed give the same rows), in the
import command's input format (``server, ts, ok, latency_ms``: :mod:`history.checkfiles`),
and the maintenance windows announced to the client in that time. The demo records the
announcements with ``python -m history announce`` and imports the file with
``python -m history import`` (the public commands, as an operator bringing history over
from another tool would).

What happens in it, so that every section of a report has something to show; times are
counted back from the end, so the 30 days before it (:func:`showcase_period`, what the
demo reports) always hold the showcase:

- every 30 days, one maintenance window announced five days ahead (the client's schedule
  slot 10, 40, 70 days before the end), each server rebooting inside it (10 minutes down,
  one after another): planned time;
- unplanned outages at random (10 to 45 minutes, about 0.8 per server and month) and
  blips (single failed checks, about 6 per server and month: not outages);
- 16 days before the end, an outage of the first production server at the hour after
  the schedule slot's start, on a night with no maintenance (unplanned: the case the
  schedule slot used to hide); 8 days before, a 95-minute outage of the last production
  server (past a 99.9 % budget); 4 days before, a monitoring gap of 5 hours (unknown
  time, every server).

Pure apart from :func:`write_checks`; fast (well under a second for both example clients).
Sandbox code: imports only inventory and the third-party libraries.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
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
    "showcase_period",
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


def showcase_period(end: datetime, tz: tzinfo) -> str:
    """The 30 local days up to and including the day of ``end`` as a report period,
    ``YYYY-MM-DD..YYYY-MM-DD`` (what the demo reports: every showcase event is in it)."""
    last = end.astimezone(tz).date()
    return f"{last - timedelta(days=29)}..{last}"


def _slot_near(inventory: ClientInventory, when: datetime) -> tuple[datetime, datetime] | None:
    """The client's schedule slot that starts nearest ``when`` (UTC), within two weeks."""
    slots = inventory.windows_between(when - timedelta(days=14), when + timedelta(days=14))
    if not slots:
        return None
    a, b = min(slots, key=lambda slot: abs(slot[0] - when))
    return a.astimezone(UTC), b.astimezone(UTC)


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

    # One announced window every 30 days, the last 10 days before the end, told 5 days ahead.
    for i, back in enumerate(range(10, days, 30)):
        slot = _slot_near(inventory, stop - timedelta(days=back))
        if slot is None or slot[0] < first or slot[1] > stop:
            continue
        a, b = slot
        announced.append(Announced(a, b, a - NOTICE, _REASONS[i % len(_REASONS)]))
        room = (b - a) - 2 * REBOOT
        gap = min(timedelta(minutes=25), room / max(len(servers), 1))
        for k, server in enumerate(servers):
            start = a + REBOOT + k * gap
            episodes.append(Episode(server, start, start + REBOOT, "reboot"))
    announced.sort(key=lambda w: w.start)

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

    # The showcase: a night outage without maintenance, a long outage, a gap.
    if days >= 17:
        near = _slot_near(inventory, stop - timedelta(days=16))
        night = (near[0] if near else stop - timedelta(days=16)) + timedelta(hours=1)
        episodes.append(Episode(production[0], night, night + timedelta(minutes=35), "outage"))
        day = (stop - timedelta(days=8)).astimezone(tz).date()
        noon = datetime(day.year, day.month, day.day, 14, 10, tzinfo=tz).astimezone(UTC)
        episodes.append(Episode(production[-1], noon, noon + timedelta(minutes=95), "outage"))
        day = (stop - timedelta(days=4)).astimezone(tz).date()
        silence = datetime(day.year, day.month, day.day, 9, tzinfo=tz).astimezone(UTC)
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
