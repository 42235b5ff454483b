"""The vectorised raw-check compression agrees with ``extend_intervals``, check by check.

Random sequences (seeded) with failures, silences longer than the gap and duplicate
timestamps are folded both ways: one check at a time with the ingest's pure
``extend_intervals``, and all servers at once with ``raw_checks_to_intervals``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.compute import raw_checks_to_intervals
from reports.ingest import CheckSample, Interval, extend_intervals

MAX_GAP = timedelta(minutes=3)
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def fold(samples: list[CheckSample]) -> list[tuple[object, ...]]:
    """The reference: each server's checks in time order through extend_intervals."""
    out: list[Interval] = []
    for server in sorted({s.server for s in samples}):
        current: Interval | None = None
        for sample in sorted((s for s in samples if s.server == server), key=lambda s: s.ts):
            closed, current = extend_intervals(current, sample, MAX_GAP)
            out.extend(closed)
        assert current is not None
        out.append(current)
    return [(i.server, i.state, i.start, i.end, i.checks, i.failures, i.first_error) for i in out]


def random_checks(rng: np.random.Generator, n: int) -> list[CheckSample]:
    samples = []
    for server in ("web1", "web2", "db1")[: rng.integers(1, 4)]:
        t = T0
        for _ in range(n):
            step = rng.choice([0, 1, 1, 1, 2, 5], p=[0.1, 0.3, 0.3, 0.1, 0.1, 0.1])
            t += timedelta(minutes=int(step))
            samples.append(CheckSample(server, t, bool(rng.random() > 0.3)))
    rng.shuffle(samples)  # type: ignore[arg-type]
    return samples


def as_frame(samples: list[CheckSample]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "server": [s.server for s in samples],
            "ts": pd.to_datetime([s.ts for s in samples], utc=True),
            "ok": [s.ok for s in samples],
        }
    )


def rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    return [
        (
            r.server,
            r.state,
            r.start.to_pydatetime(),
            r.end.to_pydatetime(),
            r.checks,
            r.failures,
            r.first_error,
        )
        for r in frame.itertuples(index=False)
    ]


@pytest.mark.parametrize("seed", range(60))
def test_vectorised_compression_matches_extend_intervals_on_random_sequences(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = random_checks(rng, int(rng.integers(1, 40)))
    assert rows(raw_checks_to_intervals(as_frame(samples), MAX_GAP)) == fold(samples)


def test_a_silence_longer_than_the_gap_becomes_an_unknown_interval() -> None:
    samples = [
        CheckSample("web1", T0, True),
        CheckSample("web1", T0 + timedelta(minutes=1), True),
        CheckSample("web1", T0 + timedelta(minutes=10), False),
        CheckSample("web1", T0 + timedelta(minutes=11), False),
    ]
    got = raw_checks_to_intervals(as_frame(samples), MAX_GAP)
    assert got["state"].tolist() == ["up", "unknown", "down"]
    assert got["checks"].tolist() == [2, 0, 2]
    assert got["failures"].tolist() == [0, 0, 2]
    assert got["end"].tolist() == [
        pd.Timestamp(T0 + timedelta(minutes=1)),
        pd.Timestamp(T0 + timedelta(minutes=10)),
        pd.Timestamp(T0 + timedelta(minutes=11)),
    ]
    assert got["first_error"].tolist() == [None, None, "check failed"]


def test_no_checks_give_no_intervals() -> None:
    empty = as_frame([])
    empty["ts"] = pd.to_datetime(empty["ts"], utc=True)
    assert raw_checks_to_intervals(empty, MAX_GAP).empty


def test_the_bulk_parquet_import_writes_what_row_by_row_ingest_writes(tmp_path: Path) -> None:
    from reports.ingest import (
        HistoryExists,
        bulk_import_parquet,
        ingest,
        load_samples,
        parquet_to_intervals,
        read_intervals_frame,
        read_rollups,
    )
    from reports.store import open_store

    rng = np.random.default_rng(7)
    samples = random_checks(rng, 60)
    frame = as_frame(samples)
    path = tmp_path / "checks.parquet"
    # Two row groups, so the threaded per-group path is exercised.
    frame.sort_values(["server", "ts"]).to_parquet(path, row_group_size=len(frame) // 2 + 1)
    expected = raw_checks_to_intervals(frame, MAX_GAP)
    pd.testing.assert_frame_equal(parquet_to_intervals(path, MAX_GAP), expected)
    with (
        open_store(f"sqlite:///{tmp_path}/a.db") as a,
        open_store(f"sqlite:///{tmp_path}/b.db") as b,
    ):
        ingest(a, "acme", load_samples(path), max_gap=MAX_GAP)
        bulk_import_parquet(b, "acme", path, max_gap=MAX_GAP)
        pd.testing.assert_frame_equal(
            read_intervals_frame(a, "acme"), read_intervals_frame(b, "acme")
        )
        assert read_rollups(a, "acme") == read_rollups(b, "acme")
        with pytest.raises(HistoryExists, match="already has intervals"):
            bulk_import_parquet(b, "acme", path, max_gap=MAX_GAP)


def test_import_file_takes_the_bulk_path_for_a_fresh_history_and_folds_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reports.ingest import import_file, ingest, main, read_intervals_frame, read_rollups
    from reports.store import open_store

    first = [CheckSample("web1", T0 + timedelta(minutes=i), i % 7 != 3) for i in range(30)]
    later = [CheckSample("web1", T0 + timedelta(minutes=30 + i), i != 2) for i in range(10)]
    paths = []
    for name, samples in (("first", first), ("later", later)):
        paths.append(tmp_path / f"{name}.parquet")
        as_frame(samples).to_parquet(paths[-1])
    bulk_url, folded_url = f"sqlite:///{tmp_path}/bulk.db", f"sqlite:///{tmp_path}/fold.db"

    # The command line on a fresh store: the bulk path, every check counted.
    assert main(["import", str(paths[0]), "--client", "acme", "--store", bulk_url]) == 0
    assert "imported 30 check(s)" in capsys.readouterr().out
    with open_store(bulk_url) as bulk, open_store(folded_url) as folded:
        # web1 now has history: the second file is folded into its open interval.
        assert import_file(bulk, "acme", paths[1], max_gap=MAX_GAP).samples == 10
        ingest(folded, "acme", first + later, max_gap=MAX_GAP)
        pd.testing.assert_frame_equal(
            read_intervals_frame(bulk, "acme"), read_intervals_frame(folded, "acme")
        )
        assert read_rollups(bulk, "acme") == read_rollups(folded, "acme")


def test_a_bad_row_rejects_the_whole_bulk_import(tmp_path: Path) -> None:
    from reports.ingest import ImportRejected, bulk_import_parquet, read_intervals_frame
    from reports.store import open_store

    frame = as_frame([CheckSample("web1", T0 + timedelta(minutes=i), True) for i in range(5)])
    frame["ok"] = frame["ok"].astype("boolean")
    frame.loc[3, "ok"] = pd.NA
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        with pytest.raises(ImportRejected, match="row 4"):
            bulk_import_parquet(store, "acme", path, max_gap=MAX_GAP)
        assert read_intervals_frame(store, "acme").empty
