"""core/lanes.py: a round's batches share their threads, keep their own context and errors."""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable

import pytest

from core import lanes
from core.lanes import run_on_lanes

owner: contextvars.ContextVar[str] = contextvars.ContextVar("owner", default="none")


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:  # the test reads it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_results_in_order_without_a_round() -> None:
    calls = [lambda i=i: i * i for i in range(20)]
    assert run_on_lanes(calls, 4) == [i * i for i in range(20)]
    assert run_on_lanes([], 4) == []
    assert lanes._rounds == {}


def test_lanes_of_a_round_take_another_batchs_calls_in_that_batchs_context() -> None:
    """Batch A brings one lane for 9 calls, batch B four lanes for four: B's lanes help A."""
    running = 0
    most = 0
    lock = threading.Lock()
    go = threading.Event()
    a_started = threading.Event()
    seen: list[tuple[str, str]] = []  # (owner seen by the call, thread that ran it)

    def a_call() -> str:
        nonlocal running, most
        a_started.set()
        with lock:
            running += 1
            most = max(most, running)
            if running >= 4:
                go.set()
        go.wait(timeout=3)
        with lock:
            running -= 1
            seen.append((owner.get(), threading.current_thread().name))
        return owner.get()

    def batch(name: str, calls: list[Callable[[], str]], count: int) -> list[str]:
        owner.set(name)
        return run_on_lanes(calls, count, round_key="round-1")

    a, a_out = _in_thread(lambda: batch("a", [a_call] * 9, 1))
    assert a_started.wait(timeout=3)
    b_calls: list[Callable[[], str]] = [owner.get] * 4
    b, b_out = _in_thread(lambda: batch("b", b_calls, 4))
    a.join(timeout=10)
    b.join(timeout=10)
    assert a_out["result"] == ["a"] * 9  # every call of A saw A's context
    assert b_out["result"] == ["b"] * 4
    assert most >= 4  # A alone has one lane: the others were B's
    assert {who for who, _ in seen} == {"a"}
    assert lanes._rounds == {}  # the round is forgotten once its last batch ends


def test_calls_at_once_never_exceed_the_lanes_of_the_batches() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    def batch(count: int) -> Callable[[], list[None]]:
        return lambda: run_on_lanes([call] * 15, count, round_key="round-2")

    batches = [_in_thread(batch(n)) for n in (1, 2, 3)]
    for thread, out in batches:
        thread.join(timeout=10)
        assert out["result"] == [None] * 15
    assert 1 <= most <= 6


def test_an_error_is_its_own_batchs_and_the_other_batches_finish() -> None:
    release = threading.Event()
    a_started = threading.Event()

    def boom() -> int:
        a_started.set()
        release.wait(timeout=3)
        raise ValueError("server 3")

    def slow_ok() -> int:
        release.wait(timeout=3)
        return 1

    a, a_out = _in_thread(lambda: run_on_lanes([boom, slow_ok, boom], 1, round_key="r3"))
    assert a_started.wait(timeout=3)
    twos: list[Callable[[], int]] = [lambda: 2] * 3
    b, b_out = _in_thread(lambda: run_on_lanes(twos, 3, round_key="r3"))
    time.sleep(0.05)
    release.set()
    a.join(timeout=10)
    b.join(timeout=10)
    assert isinstance(a_out["error"], ValueError)
    assert str(a_out["error"]) == "server 3"
    assert b_out["result"] == [2, 2, 2]
    assert lanes._rounds == {}


@pytest.mark.parametrize("key", [None, "r4"])
def test_one_lane_runs_the_calls_one_at_a_time_in_order(key: str | None) -> None:
    order: list[int] = []
    calls = [functools.partial(order.append, i) for i in range(5)]
    assert run_on_lanes(calls, 1, round_key=key) == [None] * 5
    assert order == [0, 1, 2, 3, 4]
