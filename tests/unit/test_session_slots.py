"""Every SSH session holds a slot of ``caretaker-ssh-sessions`` while it is open (decision
78): the pure step, the run's slot keeper against a fake server, and the counted host.

The fake server is a counter with a limit (:class:`FakeServer`); its highest count is what
the Prefect server would have seen at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from core.errors import LimitUnavailable
from tasks import limits
from tasks.limits import SessionSlots, slot_answer, slot_step
from tasks.remote import CommandResult
from tasks.sessions import CountedHost, _open_runs, _RunSessions, close_sessions


@pytest.mark.parametrize(
    ("holds", "granted", "idle_other", "time_left", "step"),
    [
        (True, False, False, 0.0, "hold"),  # keeps its slot between commands
        (True, True, True, 5.0, "hold"),
        (False, True, False, 5.0, "take"),  # the server granted one
        (False, True, True, 5.0, "take"),  # a free slot first: the idle session stays open
        (False, False, True, 5.0, "evict"),  # none free: the run's own idle session gives its
        (False, False, True, 0.0, "evict"),  # ... even at the end of the wait
        (False, False, False, 5.0, "wait"),  # held elsewhere or by busy sessions
        (False, False, False, 0.0, "fail"),  # bounded
        (False, False, False, -1.0, "fail"),
    ],
)
def test_a_session_holds_takes_borrows_from_its_run_waits_or_fails(
    holds: bool, granted: bool, idle_other: bool, time_left: float, step: str
) -> None:
    assert (
        slot_step(holds=holds, granted=granted, idle_other=idle_other, time_left_s=time_left)
        == step
    )


class FakeServer:
    """``caretaker-ssh-sessions`` on a server: ``limit`` slots, leases, the peak in use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.peak = 0
        self.serial = 0
        self.renewed: list[str] = []
        self.gone = False

    def take(self) -> str | None:
        if self.gone:
            raise LimitUnavailable("caretaker-ssh-sessions does not exist")
        with self.lock:
            if len(self.active) >= self.limit:
                return None
            self.serial += 1
            lease = f"lease-{self.serial}"
            self.active.add(lease)
            self.peak = max(self.peak, len(self.active))
            return lease

    def give_back(self, lease: str) -> None:
        with self.lock:
            self.active.discard(lease)

    def renew(self, lease: str) -> None:
        self.renewed.append(lease)


class Session:
    """A session as the keeper sees it; counts its disconnects."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


def keeper(server: FakeServer, **options: Any) -> SessionSlots:
    return SessionSlots(server, poll_s=0.01, **options)


def test_a_session_keeps_its_slot_between_commands_and_gives_it_back_when_closed() -> None:
    server = FakeServer(2)
    slots = keeper(server)
    web = Session("web-1")
    for _ in range(3):
        slots.enter(web)
        slots.leave(web)
    assert server.serial == 1 and len(server.active) == 1  # one slot for three commands
    slots.release(web)
    assert server.active == set()


def test_a_session_whose_connection_failed_or_was_lost_holds_no_slot() -> None:
    server = FakeServer(1)
    slots = keeper(server)
    web = Session("web-1")
    slots.enter(web)
    slots.leave(web, connected=False)  # a connect error, or a reboot took the connection
    assert server.active == set()
    slots.enter(web)  # reconnecting takes one again
    assert len(server.active) == 1


def test_a_run_on_more_hosts_than_the_limit_borrows_from_its_idle_sessions() -> None:
    server = FakeServer(2)
    slots = keeper(server)
    a, b, c = Session("a"), Session("b"), Session("c")
    for s in (a, b):
        slots.enter(s)
        slots.leave(s)
    slots.enter(c)  # the server is full: a (idle longest) gives its slot and is closed
    assert (a.disconnects, b.disconnects) == (1, 0)
    assert len(server.active) == 2 and server.peak == 2
    slots.leave(c)
    slots.enter(a)  # a again: b is the longest idle now
    assert b.disconnects == 1 and server.peak == 2


def test_a_busy_session_is_never_closed_for_another_and_the_wait_is_bounded() -> None:
    server = FakeServer(1)
    clock = [0.0]
    slots = SessionSlots(server, timeout_s=3.0, poll_s=0.0, clock=lambda: clock[0])
    busy, other = Session("busy-1"), Session("other-1")
    slots.enter(busy)  # a command running: never taken from

    original = server.take

    def take_later() -> str | None:
        clock[0] += 1.0  # each ask of the server takes a second of the wait
        return original()

    server.take = take_later  # type: ignore[method-assign]
    with pytest.raises(LimitUnavailable) as caught:
        slots.enter(other)
    assert busy.disconnects == 0
    message = str(caught.value)
    assert "caretaker-ssh-sessions" in message and "other-1" in message
    assert "ssh_sessions_limit" in message and "3s" in message


def test_sessions_held_elsewhere_are_waited_for() -> None:
    server = FakeServer(1)
    elsewhere = server.take()  # another worker's session
    assert elsewhere is not None
    slots = keeper(server, timeout_s=5.0)
    web = Session("web-1")
    threading.Timer(0.2, server.give_back, args=(elsewhere,)).start()
    started = time.monotonic()
    slots.enter(web)
    assert 0.15 < time.monotonic() - started < 4 and len(server.active) == 1


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (423, "busy"),  # every slot held: wait
        (500, "failed"),  # seen: 200 sessions asking at once of a two-process server
        (502, "failed"),
        (503, "failed"),
        (504, "failed"),
        (400, "refused"),  # a wrong request does not get better by asking again
        (401, "refused"),
        (404, "refused"),
        (422, "refused"),
    ],
)
def test_a_server_error_is_asked_again_a_wrong_request_is_not(status: int, answer: str) -> None:
    assert slot_answer(status) == answer


class FlakyServer(FakeServer):
    """A server that fails its first ``failures`` asks with a 500, as PrefectSlots sees it."""

    def __init__(self, limit: int, failures: int) -> None:
        super().__init__(limit)
        self.failures = failures
        self.last_error: str | None = None

    def take(self) -> str | None:
        if self.failures > 0:
            self.failures -= 1
            self.last_error = "the Prefect API answered 500"
            return None
        self.last_error = None
        return super().take()


def test_a_server_error_costs_a_retry_not_the_run() -> None:
    server = FlakyServer(1, failures=3)
    slots = keeper(server, timeout_s=5.0)
    slots.enter(Session("web-1"))
    assert server.failures == 0 and len(server.active) == 1


def test_a_server_that_keeps_failing_ends_the_wait_naming_its_error() -> None:
    server = FlakyServer(1, failures=10**6)
    clock = [0.0]

    def ticking() -> float:
        clock[0] += 1.0
        return clock[0]

    slots = SessionSlots(server, timeout_s=3.0, poll_s=0.0, clock=ticking)
    with pytest.raises(LimitUnavailable) as caught:
        slots.enter(Session("web-1"))
    message = str(caught.value)
    assert "web-1" in message and "caretaker-ssh-sessions" in message
    assert "the Prefect API answered 500" in message and server.active == set()


def test_a_vanished_limit_stops_the_session_instead_of_letting_it_through() -> None:
    server = FakeServer(1)
    server.gone = True
    with pytest.raises(LimitUnavailable):
        keeper(server).enter(Session("web-1"))


def test_threads_on_more_hosts_than_the_limit_never_exceed_it_and_never_deadlock() -> None:
    server = FakeServer(3)
    slots = keeper(server, timeout_s=20.0)
    sessions = [Session(f"h{i:02}") for i in range(10)]
    errors: list[BaseException] = []

    def work(session: Session) -> None:
        try:
            for _ in range(5):  # a task running several commands on its host
                slots.enter(session)
                time.sleep(0.002)
                slots.leave(session)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert server.peak <= 3
    slots.close()
    assert server.active == set()


def test_held_leases_are_renewed_while_held() -> None:
    server = FakeServer(2)
    slots = keeper(server, renew_every_s=0.01)
    web = Session("web-1")
    slots.enter(web)
    deadline = time.monotonic() + 5
    while not server.renewed and time.monotonic() < deadline:
        time.sleep(0.01)
    slots.close()
    assert server.renewed and set(server.renewed) <= {"lease-1"}
    assert server.active == set()


# --- the counted host ----------------------------------------------------------------------


class Transport:
    def __init__(self, active: bool) -> None:
        self.active = active

    def is_active(self) -> bool:
        return self.active


class FakeSsh:
    """Stands in for ``SshRemoteHost``: connects on a command, unless told it fails."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.transport: Transport | None = None
        self.closed = 0
        self.user = "root"

    def run(self, command: str, **_: Any) -> CommandResult:
        if self.fail:
            raise OSError("connection refused")
        self.transport = Transport(True)
        return CommandResult(
            host=self.name, command=command, exit_code=0, stdout="", stderr="", duration_s=0
        )

    def close(self) -> None:
        self.closed += 1
        self.transport = None


def counted(name: str, slots: SessionSlots, fail: bool = False) -> tuple[CountedHost, FakeSsh]:
    inner = FakeSsh(name, fail)
    return CountedHost(inner, slots), inner  # type: ignore[arg-type]


def test_a_counted_host_holds_its_slot_from_its_first_command_to_its_close() -> None:
    server = FakeServer(1)
    slots = keeper(server)
    host, inner = counted("web-1", slots)
    assert server.active == set()  # handed out, not connected: no slot
    host.run("uptime")
    host.run("uptime")
    assert len(server.active) == 1 and server.serial == 1
    assert host.user == "root"  # anything else is the SSH host's
    host.close()
    assert server.active == set() and inner.closed == 1


def test_a_counted_host_that_cannot_connect_gives_its_slot_back() -> None:
    server = FakeServer(1)
    slots = keeper(server)
    host, _ = counted("web-1", slots, fail=True)
    with pytest.raises(OSError):
        host.run("uptime")
    assert server.active == set()


@contextmanager
def batch_slots() -> Iterator[None]:
    token = limits._batch_slots.set(True)
    try:
        yield
    finally:
        limits._batch_slots.reset(token)


def test_inside_a_health_check_batch_the_batch_slots_count_the_session() -> None:
    server = FakeServer(1)
    slots = keeper(server)
    host, _ = counted("web-1", slots)
    with batch_slots():
        host.run("uptime")
    assert server.serial == 0


def test_before_a_wait_every_session_handed_out_is_closed_and_its_slot_given_back() -> None:
    server = FakeServer(2)
    slots = keeper(server)
    handed = _RunSessions()
    hosts = [counted(name, slots) for name in ("web-1", "web-2")]
    for host, _ in hosts:
        host.run("uptime")
        handed.hosts[host.name] = host
    assert len(server.active) == 2
    token = _open_runs.set((handed,))
    try:
        assert close_sessions() == 2
    finally:
        _open_runs.reset(token)
    assert server.active == set()
    assert [inner.closed for _, inner in hosts] == [1, 1]
    hosts[0][0].run("uptime")  # after the wait: reconnects, takes a slot again
    assert len(server.active) == 1
    assert close_sessions() == 0  # nothing open in this context


def test_a_run_about_to_wait_for_an_answer_closes_its_sessions_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import approval

    server = FakeServer(2)
    slots = keeper(server)
    host, inner = counted("web-1", slots)
    host.run("uptime")
    handed = _RunSessions()
    handed.hosts[host.name] = host
    during: list[tuple[int, int]] = []

    def pause(form: Any, timeout_s: int, poll_s: float, key: str) -> str:
        during.append((inner.closed, len(server.active)))  # what the wait holds
        return "answer"

    monkeypatch.setattr(approval, "prefect_pause", pause)  # a direct call: paused in process
    token = _open_runs.set((handed,))
    try:
        assert approval.prefect_wait(approval.ApprovalForm, 60, 1, "approval-1") == "answer"
    finally:
        _open_runs.reset(token)
    assert during == [(1, 0)]  # closed, no slot held, while it waited
