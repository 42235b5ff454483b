"""Work shared by the batches of one round that run in the same process.

A health-check round cuts its servers into batches (task runs of one client each) with a
few threads each. Given a fixed part of the work, a batch with 6 threads ends ~15 %
later than one with 7, and the round waits for its slowest batch (measured: ~1.7 s of
an 18 s round of 1,000 servers). Here each batch puts its calls on the round's one queue
and its threads ("lanes") take the next call of any batch of the round until the queue
is empty: every lane stays busy to the end, as one thread pool over the whole round.

A call runs in the context its batch gave it (the batch's task run: its logs and its
session slots, tasks/limits.py), on whichever lane takes it; a batch returns once its
lanes are done and its own calls have ended, wherever they ran. A lane only ever runs
one call at a time, so the calls running at once are never more than the lanes of the
batches still working (and each batch holds an SSH-session slot per lane).

Batches of the round in other processes (another task runner) share nothing: each then
works through its own calls, as with no round at all.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar, cast

__all__ = ["run_on_lanes"]

T = TypeVar("T")


class _Round:
    """The queue of one round's calls in this process, and how many batches use it."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Future[object], contextvars.Context, Callable[[], object]]]
        self.queue = deque()
        self.batches = 0

    def drain(self) -> None:
        """Run the round's calls, one at a time, until none is left to take."""
        while True:
            try:
                future, context, call = self.queue.popleft()  # deque: atomic, no lock
            except IndexError:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = context.run(call)
            except BaseException as exc:  # the call's error is its batch's result
                future.set_exception(exc)
            else:
                future.set_result(result)


_rounds: dict[str, _Round] = {}
_rounds_lock = threading.Lock()


@contextmanager
def _joined(key: str | None) -> Iterator[_Round]:
    if key is None:
        yield _Round()
        return
    with _rounds_lock:
        shared = _rounds.setdefault(key, _Round())
        shared.batches += 1
    try:
        yield shared
    finally:
        with _rounds_lock:
            shared.batches -= 1
            if shared.batches == 0:
                del _rounds[key]


def run_on_lanes(
    calls: Sequence[Callable[[], T]], lanes: int, *, round_key: str | None = None
) -> list[T]:
    """Run ``calls`` on ``lanes`` threads shared with the other batches of ``round_key``.

    Each call runs in a copy of the caller's context (made here, on the caller's thread).
    Blocks until this batch's lanes have found the round's queue empty and every call of
    this batch has ended; returns their results in order, or raises the first error
    among them (in order).

    Args:
        calls: this batch's work.
        lanes: threads this batch brings to the round (at least 1 when there are calls).
        round_key: the round's id, the same for every batch of it; None shares nothing.
    """
    if not calls:
        return []
    with _joined(round_key) as shared:
        futures: list[Future[object]] = [Future() for _ in calls]
        shared.queue.extend(
            (future, contextvars.copy_context(), call)
            for future, call in zip(futures, calls, strict=True)
        )
        threads = [
            threading.Thread(target=shared.drain, name=f"lane-{i}", daemon=True)
            for i in range(max(1, min(lanes, len(calls))))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [cast(T, future.result()) for future in futures]
