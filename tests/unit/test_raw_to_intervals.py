"""The vectorised raw-check compression agrees with ``extend_intervals``, check by check.

Random sequences (seeded) with failures, silences longer than the gap and duplicate
timestamps are folded both ways: one check at a time with the ingest's pure
``extend_intervals``, and all servers at once with ``raw_checks_to_intervals``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from history.fold import CheckSample, Interval, extend_intervals, raw_checks_to_intervals

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
    from core.errors import HistoryExists
    from history.checkfiles import load_samples
    from history.importer import bulk_import_parquet
    from history.ingest import ingest
    from history.intervals import read_intervals_frame
    from history.parquet import parquet_to_intervals
    from history.rollups import read_rollups
    from history.store import open_store

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
    from history.cli import main
    from history.importer import import_file
    from history.ingest import ingest
    from history.intervals import read_intervals_frame
    from history.rollups import read_rollups
    from history.store import open_store

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
    from core.errors import ImportRejected
    from history.importer import bulk_import_parquet
    from history.intervals import read_intervals_frame
    from history.store import open_store

    frame = as_frame([CheckSample("web1", T0 + timedelta(minutes=i), True) for i in range(5)])
    frame["ok"] = frame["ok"].astype("boolean")
    frame.loc[3, "ok"] = pd.NA
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        with pytest.raises(ImportRejected, match="row 4"):
            bulk_import_parquet(store, "acme", path, max_gap=MAX_GAP)
        assert read_intervals_frame(store, "acme").empty


# ------------------------------------------------------------ Parquet fast paths


def fold_gap(samples: list[CheckSample], gap: timedelta) -> list[tuple[object, ...]]:
    """The reference with any gap; samples in file order (ties keep it, as sorted())."""
    out: list[Interval] = []
    for server in sorted({s.server for s in samples}):
        current: Interval | None = None
        for sample in sorted((s for s in samples if s.server == server), key=lambda s: s.ts):
            closed, current = extend_intervals(current, sample, gap)
            out.extend(closed)
        assert current is not None
        out.append(current)
    return [(i.server, i.state, i.start, i.end, i.checks, i.failures, i.first_error) for i in out]


def server_checks(rng: np.random.Generator, server: str, n: int, t: datetime) -> list[CheckSample]:
    """n checks with duplicates (step 0), silences and failures, shuffled a little."""
    out = []
    for _ in range(n):
        t += timedelta(minutes=int(rng.choice([0, 1, 1, 1, 2, 5])))
        out.append(CheckSample(server, t, bool(rng.random() > 0.3)))
    if rng.random() < 0.5:  # not in time order: the sort path
        rng.shuffle(out)  # type: ignore[arg-type]
    return out


def write_groups(
    path: Path,
    groups: list[list[CheckSample]],
    *,
    unit: str = "ms",
    dictionary: bool = True,
    statistics: bool = True,
) -> list[CheckSample]:
    """One Parquet row group per list; returns the samples in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    server_type = pa.dictionary(pa.int32(), pa.string()) if dictionary else pa.string()
    schema = pa.schema(
        [
            ("server", server_type),
            ("ts", pa.timestamp(unit, tz="UTC")),
            ("ok", pa.bool_()),
            ("latency_ms", pa.float32()),
        ]
    )
    with pq.ParquetWriter(path, schema, write_statistics=statistics) as writer:
        for group in groups:
            table = pa.table(
                {
                    "server": pa.array([s.server for s in group]).cast(server_type),
                    "ts": pa.array([s.ts for s in group], pa.timestamp(unit, tz="UTC")),
                    "ok": pa.array([s.ok for s in group], pa.bool_()),
                    "latency_ms": pa.array([1.5] * len(group), pa.float32()),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=len(group) + 1)
    return [s for group in groups for s in group]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "layout",
    [
        "one group per server",  # statistics give the server: no server column read
        "server over two groups",  # one server's groups folded together
        "two servers in one group",  # read whole; the split server folded again
        "no statistics",  # everything by the general path
    ],
)
def test_parquet_layouts_fold_like_extend_intervals(tmp_path: Path, layout: str, seed: int) -> None:
    from history.parquet import parquet_to_intervals

    rng = np.random.default_rng(seed)
    a, b, c = (server_checks(rng, s, int(rng.integers(1, 30)), T0) for s in ("a1", "b2", "c3"))
    if layout == "one group per server":
        groups = [b, a, c]
    elif layout == "server over two groups":
        half = len(b) // 2
        groups = [b[:half], a, b[half:], c]
    elif layout == "two servers in one group":
        half = len(b) // 2
        groups = [a + b[:half], c, b[half:]]
    else:
        groups = [a, b + c]
    path = tmp_path / "checks.parquet"
    samples = write_groups(path, [g for g in groups if g], statistics=layout != "no statistics")
    got = parquet_to_intervals(path, MAX_GAP)
    assert rows(got) == fold_gap(samples, MAX_GAP)
    assert list(got.columns) == list(raw_checks_to_intervals(as_frame(samples), MAX_GAP).columns)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_are_folded_in_the_file_unit_with_the_same_result(
    tmp_path: Path, unit: str
) -> None:
    from history.parquet import parquet_to_intervals

    # A gap of 180.5 s: 181 s is a silence, 180 s is not, in every unit.
    gap = timedelta(seconds=180.5)
    steps = [0, 60, 180, 181, 0, 60, 240, 60]
    t, samples = T0, []
    for i, step in enumerate(steps):
        t += timedelta(seconds=step)
        samples.append(CheckSample("web1", t, i % 3 != 0))
    path = tmp_path / "checks.parquet"
    write_groups(path, [samples], unit=unit)
    assert rows(parquet_to_intervals(path, gap)) == fold_gap(samples, gap)


def test_the_server_is_taken_from_statistics_only_when_they_show_one_valid_name(
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq

    from history.parquet import _one_server

    one = [CheckSample("web1", T0, True)]
    two = [CheckSample("web1", T0, True), CheckSample("web2", T0, True)]
    spaced = [CheckSample(" web1", T0, True)]
    path = tmp_path / "stats.parquet"
    write_groups(path, [one, two, spaced, [CheckSample("x" * 256, T0, True)]])
    meta = pq.ParquetFile(path).metadata
    assert [_one_server(meta.row_group(i), 0) for i in range(4)] == ["web1", None, None, None]
    write_groups(path, [one], statistics=False)
    assert _one_server(pq.ParquetFile(path).metadata.row_group(0), 0) is None


def test_bad_rows_are_reported_with_file_row_numbers_on_every_path(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.errors import ImportRejected
    from history.parquet import parquet_to_intervals

    schema = pa.schema(
        [
            ("server", pa.string()),
            ("ts", pa.timestamp("ms", tz="UTC")),
            ("ok", pa.bool_()),
            ("latency_ms", pa.float64()),
        ]
    )
    ts = [T0 + timedelta(minutes=i) for i in range(4)]
    groups = [
        # rows 1-4: one server (statistics path), ok missing in row 3
        {"server": ["web1"] * 4, "ts": ts, "ok": [True, True, None, True], "latency_ms": [1.0] * 4},
        # rows 5-8: one server, ts missing in row 6, negative latency in row 8
        {"server": ["web2"] * 4, "ts": [ts[0], None, ts[2], ts[3]], "ok": [True] * 4,
         "latency_ms": [1.0, 1.0, 1.0, -1.0]},
        # rows 9-12: two servers, one blank name (rows 10 and 12)
        {"server": ["web3", " ", "web3", " "], "ts": ts, "ok": [True] * 4, "latency_ms": [1.0] * 4},
        # rows 13-16: a server name that only the row-wise check rejects (whitespace only)
        {"server": ["  "] * 4, "ts": ts, "ok": [True] * 4, "latency_ms": [None] * 4},
    ]  # fmt: skip
    path = tmp_path / "bad.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for group in groups:
            writer.write_table(pa.table(group, schema=schema))
    with pytest.raises(ImportRejected) as caught:
        parquet_to_intervals(path, MAX_GAP)
    bad = [int(p.split(":")[0].removeprefix("row ")) for p in caught.value.problems]
    assert bad == [3, 6, 8, 10, 12, 13, 14, 15, 16]
    # A report (no latency check) still refuses the other bad rows.
    with pytest.raises(ImportRejected) as caught:
        parquet_to_intervals(path, MAX_GAP, check_latency=False)
    assert len(caught.value.problems) == 8


def test_names_equal_once_trimmed_are_one_server(tmp_path: Path) -> None:
    from history.parquet import parquet_to_intervals

    checks = [CheckSample("web1", T0 + timedelta(minutes=i), i != 2) for i in range(5)]
    # The row-wise import trims names; so does the vectorised one, in any row group.
    spaced = [replace(c, server="web1 ") if i % 2 else c for i, c in enumerate(checks)]
    path = tmp_path / "trim.parquet"
    write_groups(path, [spaced[:3], spaced[3:]], dictionary=False)
    assert rows(parquet_to_intervals(path, MAX_GAP)) == fold_gap(checks, MAX_GAP)


def test_timestamps_that_nanoseconds_cannot_hold_reject_the_file(tmp_path: Path) -> None:
    from core.errors import ImportRejected
    from history.parquet import parquet_to_intervals

    far = datetime(3000, 1, 1, tzinfo=UTC)
    path = tmp_path / "far.parquet"
    write_groups(path, [[CheckSample("web1", far, True)]], unit="s")
    with pytest.raises(ImportRejected, match="nanoseconds"):
        parquet_to_intervals(path, MAX_GAP)
