"""The fleet benchmark's pure parts (``benchmarks/fleet_scale.py``): the process
accounting records it reads, the class each process's CPU is counted in, the order of
repeated rounds and the two-workers-against-one ratios it prints."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_scale.py"
    spec = importlib.util.spec_from_file_location("fleet_scale_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.mark.parametrize(
    ("value", "ticks"),
    [
        (0, 0),
        (250, 250),
        (0x1FFF, 8191),  # the largest mantissa without exponent
        ((1 << 13) | 100, 800),  # exponent 1: times 8
        ((2 << 13) | 3, 192),  # exponent 2: times 64
    ],
)
def test_comp_t_is_a_mantissa_times_a_power_of_eight(value: int, ticks: int) -> None:
    assert bench.comp_t(value) == ticks


def _record(pid: int, ppid: int, comm: bytes, utime: int, stime: int, version: int = 3) -> bytes:
    return struct.pack(
        bench.ACCT_V3, 0, version, 0, 0, 0, 0, pid, ppid, 0, 0.0,
        utime, stime, 0, 0, 0, 0, 0, 0, comm,
    )  # fmt: skip


def test_acct_records_give_each_exited_process_its_cpu_seconds() -> None:
    data = (
        _record(10, 1, b"apt-get", 12, 3)
        + _record(11, 10, b"dpkg", (1 << 13) | 2, 0)  # 16 ticks
        + _record(12, 1, b"old", 5, 5, version=2)  # another format: skipped
    )
    assert bench.acct_records(data) == [
        {"pid": 10, "ppid": 1, "comm": "apt-get", "cpu": 0.15},
        {"pid": 11, "ppid": 10, "comm": "dpkg", "cpu": 0.16},
    ]


def _p(comm: str, ppid: int, cmd: str = "") -> dict[str, Any]:
    return {"comm": comm, "ppid": ppid, "cmd": cmd}


PROCS = {
    1: _p("init", 0, "/sbin/init"),
    100: _p("sh", 1, "sh -ec git clone"),  # a machine's root
    101: _p("caretaker-worke", 100, "python caretaker-worker --pool p"),
    102: _p("python", 101, "python -m deployments.forkserver /tmp/s"),
    103: _p("python", 102, "python -m deployments.forkserver /tmp/s"),  # a forked run
    104: _p("git", 103),  # its clone, exited
    105: _p("python3.11", 102),  # a run that exited
    106: _p("prefect", 101, "python prefect worker start --pool p"),
    107: _p("python", 106, "python -m deployments.forkclient"),
    108: _p("python", 100, "python -m prefect.engine"),  # Prefect's own job command
    200: _p("prefect", 1, "prefect server start --workers 2"),
    201: _p("python", 200, "python -c from multiprocessing.spawn"),
    210: _p("prefect", 1, "prefect server services start"),
    300: _p("postgres", 1, "postgres: 16/main"),
    301: _p("postgres", 300, "postgres: bench idle"),
    400: _p("redis-server", 1, "redis-server 127.0.0.1:6379"),
    500: _p("sh", 600, "sh host-supervise.sh"),  # the estate: the benchmark's child
    501: _p("sshd", 500, "sshd: /usr/sbin/sshd -D"),
    502: _p("sshd-session", 501),
    503: _p("sh", 502),
    504: _p("apt-get", 503),
    505: _p("http", 504),
    506: _p("df", 503),
    600: _p("python", 1, "python benchmarks/fleet_scale.py"),
    601: _p("python", 600),
    700: _p("beam.smp", 1, "beam.smp"),
    2: _p("kthreadd", 0),
    800: _p("ksoftirqd/0", 2),
}
ROOTS = {100: "machine", 200: "api", 210: "services", 600: "bench"}


@pytest.mark.parametrize(
    ("pid", "name"),
    [
        (100, "machines: workers, job commands"),
        (101, "machines: workers, job commands"),
        (102, "machines: fork servers"),
        (103, "machines: flow runs"),
        (104, "machines: git clones of runs"),
        (105, "machines: flow runs"),  # exited: known by its parent, the fork server
        (106, "machines: workers, job commands"),
        (107, "machines: workers, job commands"),
        (108, "machines: flow runs"),  # without the fork server
        (200, "Prefect API processes"),
        (201, "Prefect API processes"),
        (210, "Prefect services process"),
        (300, "PostgreSQL"),
        (301, "PostgreSQL"),
        (400, "Redis"),
        (501, "hosts: sshd"),
        (502, "hosts: sshd"),
        (504, "hosts: apt, dpkg"),
        (505, "hosts: apt, dpkg"),  # apt's fetch method
        (503, "hosts: other commands"),
        (506, "hosts: other commands"),
        (500, "benchmark driver"),  # the host's supervisor is not under sshd
        (601, "benchmark driver"),
        (700, "other (not the benchmark's)"),
        (999, "other (not the benchmark's)"),  # unknown pid
        (800, "kernel threads"),
        (2, "kernel threads"),
    ],
)
def test_each_process_is_counted_in_its_class(pid: int, name: str) -> None:
    assert bench.cpu_class(pid, PROCS, ROOTS) == name


def test_a_parent_loop_does_not_hang_the_classification() -> None:
    procs = {10: _p("a", 11), 11: _p("b", 10)}
    assert bench.cpu_class(10, procs, {}) == "other (not the benchmark's)"


@pytest.mark.parametrize(("rep", "order"), [(0, (1, 2)), (1, (2, 1)), (2, (1, 2)), (5, (2, 1))])
def test_repeated_rounds_alternate_which_worker_count_goes_first(
    rep: int, order: tuple[int, int]
) -> None:
    assert bench.round_order(rep) == order


def test_ratios_pair_the_rounds_and_take_medians() -> None:
    got = bench.ratios([30.0, 20.0, 40.0], [60.0, 30.0, 52.0])  # paired: 2.0, 1.5, 1.3
    assert got["median"] == pytest.approx(1.5)
    assert got["min"] == pytest.approx(1.3)
    assert got["max"] == pytest.approx(2.0)
    assert got["of_medians"] == pytest.approx(52.0 / 30.0)


def test_one_round_each_is_its_own_ratio() -> None:
    got = bench.ratios([31.4], [49.7])
    assert got["median"] == got["of_medians"] == pytest.approx(49.7 / 31.4)
