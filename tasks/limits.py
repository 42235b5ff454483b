"""Global limits that protect the estate, counted by the Prefect server across every worker.

Two Prefect global concurrency limits, created from the settings (``core.settings``):

- ``caretaker-ssh-sessions`` (``ssh_sessions_limit``, default 64): SSH sessions open at
  once, every session caretaker opens (decision 78). A session of a maintenance run, an
  audit or any other run holds one slot from its connection to its close
  (:class:`SessionSlots`, through ``tasks.sessions``), released on close, when its
  connection failed or was lost, and before a run waits for an answer. A health-check
  batch instead takes one slot per checking thread for as long as its threads work
  (:func:`ssh_sessions`): a thread holds at most one open session (each server's session
  is closed when its checks are done), and the sessions opened inside the batch take no
  slot of their own. The round sizes its threads by the limit (:func:`ssh_session_limit`).
  A run never waits on its own idle sessions: a session that needs a slot when none is
  free takes the slot of the run's longest idle session (closing it), so a run working on
  more hosts at once than the limit goes on, reconnecting as it goes.
- ``caretaker-aws-api-<region>`` (``aws_api_calls_per_s``, default 20): a rate limit (slots
  decay at that many per second; a burst of the same size). Every EC2 call takes one slot
  first (:func:`aws_api_call`, in ``tasks.snapshots.aws.endpoint.Ec2.call``).

**A missing limit is created, never skipped.** Prefect's own behaviour is to skip a
limit that does not exist with a warning (``strict=False``), which would leave the estate
unbounded because a deploy step was forgotten. So the first use in a process creates a
missing limit from the settings (:func:`ensure_limit`; an existing one is never changed:
the numbers an operator set with ``caretaker-limits apply`` win), and slots are then
taken with ``strict=True``: a limit deleted during a run is a :class:`LimitUnavailable`,
not a silent free-for-all. ``caretaker-limits`` (``deployments/limits.py``) shows and
applies them at deploy time.

Outside a flow or task run (a unit test calling a function directly) there is no run to
count: no slot is taken. See docs/health-check.md (Limits).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from core.errors import LimitUnavailable
from core.settings import CaretakerSettings, settings

__all__ = [
    "AWS_API_PREFIX",
    "SSH_SESSIONS",
    "LimitSpec",
    "PrefectSlots",
    "SessionSlots",
    "SlotApi",
    "aws_api_call",
    "aws_limit_spec",
    "desired_limits",
    "ensure_limit",
    "forget_limits",
    "limit_actions",
    "read_limits",
    "session_slots",
    "sessions_counted_by_batch",
    "slot_answer",
    "slot_step",
    "ssh_limit_spec",
    "ssh_session_limit",
    "ssh_sessions",
]

log = logging.getLogger(__name__)

SSH_SESSIONS = "caretaker-ssh-sessions"
AWS_API_PREFIX = "caretaker-aws-api-"

#: How long a batch waits for SSH session slots before its servers count as crashed.
SSH_SLOT_TIMEOUT_S = 240.0
#: How long an AWS call waits for its rate limit.
AWS_SLOT_TIMEOUT_S = 120.0
#: How long one session waits for its slot before the run gets a LimitUnavailable.
SESSION_SLOT_TIMEOUT_S = 240.0
#: A session slot's lease: slots of a process killed before it released them are free
#: again after this long (renewed while held; Prefect's minimum is 60 s).
SESSION_LEASE_S = 300.0
#: How often a session waiting for a slot asks the server again (sooner when one of the
#: run's own sessions goes idle or closes).
SESSION_POLL_S = 1.0
#: The first wait before asking again after a server error (doubled each time, up to the poll).
RETRY_FIRST_S = 0.05

Action = Literal["create", "update", "keep"]


class LimitSpec(BaseModel):
    """One global concurrency limit as caretaker wants it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The limit's name on the Prefect server.")
    limit: int = Field(ge=1, description="Slots: sessions at once, or a rate limit's burst.")
    slot_decay_per_second: float = Field(
        default=0.0, ge=0, description="0 for a concurrency limit; calls per second for a rate."
    )


def ssh_limit_spec(config: CaretakerSettings) -> LimitSpec:
    """``caretaker-ssh-sessions`` from the settings (pure)."""
    return LimitSpec(name=SSH_SESSIONS, limit=config.ssh_sessions_limit)


def aws_limit_spec(region: str, config: CaretakerSettings) -> LimitSpec:
    """``caretaker-aws-api-<region>``: ``aws_api_calls_per_s`` per second, as big a burst (pure)."""
    rate = config.aws_api_calls_per_s
    return LimitSpec(
        name=f"{AWS_API_PREFIX}{region}",
        limit=max(1, math.ceil(rate)),
        slot_decay_per_second=rate,
    )


def desired_limits(regions: Iterable[str], config: CaretakerSettings) -> list[LimitSpec]:
    """The SSH limit and one AWS rate limit per region, in name order (pure)."""
    return [ssh_limit_spec(config)] + [aws_limit_spec(r, config) for r in sorted(set(regions))]


def limit_actions(
    desired: Iterable[LimitSpec], existing: Mapping[str, LimitSpec]
) -> list[tuple[Action, LimitSpec]]:
    """What applying ``desired`` does to the server's ``existing`` limits (pure).

    Returns:
        Per desired limit: ``create`` (missing), ``update`` (other numbers) or ``keep``.
    """
    actions: list[tuple[Action, LimitSpec]] = []
    for spec in desired:
        have = existing.get(spec.name)
        action: Action = "create" if have is None else "keep" if have == spec else "update"
        actions.append((action, spec))
    return actions


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def read_limits(names: Iterable[str]) -> dict[str, LimitSpec]:
    """The named limits as the Prefect server has them (missing ones are left out)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, LimitSpec] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                continue
            found[name] = LimitSpec(
                name=name,
                limit=max(1, limit.limit),
                slot_decay_per_second=limit.slot_decay_per_second or 0.0,
            )
    return found


_known: dict[tuple[str, str], LimitSpec] = {}
_known_lock = threading.Lock()


def ensure_limit(spec: LimitSpec) -> LimitSpec:
    """The limit as the server has it, created from ``spec`` first when it is missing.

    Once per process and API: an existing limit is never changed here. Two processes
    creating it at once is fine (the loser reads the winner's).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    key = (str(PREFECT_API_URL.value()), spec.name)
    with _known_lock:
        if key in _known:
            return _known[key]
        existing = read_limits([spec.name]).get(spec.name)
        if existing is None:
            with get_client(sync_client=True) as client:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(
                            name=spec.name,
                            limit=spec.limit,
                            slot_decay_per_second=spec.slot_decay_per_second,
                        )
                    )
                except ObjectAlreadyExists:
                    pass  # another process created it a moment ago
                else:
                    log.warning(
                        "global concurrency limit %s was missing: created it from the settings"
                        " (%d slot(s), %g/s decay); `caretaker-limits apply` sets it at deploy"
                        " time",
                        spec.name,
                        spec.limit,
                        spec.slot_decay_per_second,
                    )
            existing = read_limits([spec.name]).get(spec.name, spec)
        _known[key] = existing
        return existing


def forget_limits() -> None:
    """Forget which limits this process saw (the next use reads them again)."""
    with _known_lock:
        _known.clear()


def ssh_session_limit() -> int | None:
    """The SSH sessions caretaker may open at once (the server's limit), or None
    outside a run."""
    if not _in_run():
        return None
    return ensure_limit(ssh_limit_spec(settings())).limit


_batch_slots: ContextVar[bool] = ContextVar("caretaker_batch_ssh_slots", default=False)


def sessions_counted_by_batch() -> bool:
    """Whether the sessions opened here are counted by a batch's slots (:func:`ssh_sessions`)."""
    return _batch_slots.get()


@contextmanager
def ssh_sessions(count: int, *, timeout_s: float = SSH_SLOT_TIMEOUT_S) -> Iterator[None]:
    """Hold ``count`` slots of ``caretaker-ssh-sessions`` while the block opens sessions.

    The sessions the block (and the threads it starts with a copy of its context) opens
    take no slot of their own: the caller opens at most ``count`` at a time.

    The slots are one lease (renewed while held, given back at the end), asked for like a
    session's (:class:`PrefectSlots`: one request at a time per process, sent once past
    Prefect's retrying client, asked again after 50 ms doubling on a server error, every
    second while every slot is held). Through Prefect's ``concurrency()`` the ten batches
    of a health-check round asking at once met SQLite's "database is locked" (503), after
    which Prefect's client sleeps 2 s: ~3 s of every round.

    Raises:
        LimitUnavailable: the slots were not granted within ``timeout_s`` (or the limit
            vanished, or the API refused); the block did not run.
    """
    if count <= 0 or not _in_run():
        yield
        return
    ensure_limit(ssh_limit_spec(settings()))
    api = _batch_slot_api()
    lease = _take_slots(api, count, timeout_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(api.lease_s / 3):
            try:
                api.renew(lease)
            except Exception as exc:  # expired: the slots may be counted no more
                log.warning("%s: lease %s not renewed: %s", api.name, lease, exc)

    renewer = threading.Thread(target=renew, name="caretaker-batch-slots", daemon=True)
    renewer.start()
    token = _batch_slots.set(True)
    try:
        yield
    finally:
        _batch_slots.reset(token)
        stop.set()
        renewer.join()
        try:
            api.give_back(lease)
        except Exception as exc:  # the lease expires by itself: never hide the block's error
            log.warning("%s: lease %s not given back: %s", api.name, lease, exc)


def _take_slots(
    api: PrefectSlots, count: int, timeout_s: float, poll_s: float = SESSION_POLL_S
) -> str:
    """Ask until ``count`` slots are granted (one lease), or raise at ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        lease = api.take(count)
        if lease is not None:
            return lease
        left = deadline - time.monotonic()
        if left <= 0:
            why = api.last_error or "not free (every SSH session caretaker may open is open)"
            raise LimitUnavailable(
                f"{count} SSH session slot(s) of {api.name} not granted within {timeout_s:g}s:"
                f" {why}"
            )
        pause = poll_s
        if api.last_error:  # a server error: ask again soon, backing off to the poll
            failures += 1
            pause = error_pause(pause, failures)
        time.sleep(min(pause, left))


_batch_apis: dict[str, PrefectSlots] = {}
_batch_apis_lock = threading.Lock()


def _batch_slot_api() -> PrefectSlots:
    """One :class:`PrefectSlots` per Prefect API in this process, shared by its batches:
    their requests go one at a time over one client (a client costs ~45 ms of CPU)."""
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value() or "")
    with _batch_apis_lock:
        api = _batch_apis.get(url)
        if api is None:
            api = _batch_apis[url] = PrefectSlots()
        return api


# ---- one slot per open session ------------------------------------------------------------

Step = Literal["hold", "take", "evict", "wait", "fail"]


def error_pause(poll_s: float, failures: int) -> float:
    """The pause before asking again after ``failures`` server errors in a row (pure):
    50 ms, doubling, never longer than the poll."""
    return min(poll_s, RETRY_FIRST_S * 2 ** (failures - 1))


def slot_step(*, holds: bool, granted: bool, idle_other: bool, time_left_s: float) -> Step:
    """What a session about to run a command does about its slot (pure).

    ``hold``: it holds one already. ``take``: the server granted one. ``evict``: none is
    free, but another session of the same run is idle: close that one and take its slot
    (a run never waits on itself, so it cannot deadlock however many hosts it works on at
    once). ``wait``: every slot is held elsewhere or by the run's busy sessions: wait and
    ask again. ``fail``: the wait is over.
    """
    if holds:
        return "hold"
    if granted:
        return "take"
    if idle_other:
        return "evict"
    return "wait" if time_left_s > 0 else "fail"


SlotAnswer = Literal["busy", "failed", "refused"]


def slot_answer(status_code: int) -> SlotAnswer:
    """What an error answer to a slot request means (pure).

    ``busy``: 423, every slot is held: wait and ask again. ``failed``: a server error (5xx,
    seen as 500 from ``increment-with-lease`` when 200 sessions asked at once on a
    two-process server): the request may succeed next time, so it is asked again within the
    same bounded wait, never counted as a slot. ``refused``: any other answer (the request
    itself is wrong, or the credentials): asking again will not help.
    """
    if status_code == 423:
        return "busy"
    if 500 <= status_code <= 599:
        return "failed"
    return "refused"


class SlotApi(Protocol):
    """Where session slots come from: the Prefect server (:class:`PrefectSlots`) or a fake."""

    def take(self) -> str | None:
        """One slot's lease, or None when none is free right now (never waits)."""
        ...

    def give_back(self, lease: str) -> None:
        """Release the slot of ``lease``."""
        ...

    def renew(self, lease: str) -> None:
        """Keep the slot of ``lease`` for another lease period."""
        ...


class PrefectSlots:
    """Slots of ``caretaker-ssh-sessions`` on the Prefect server, one lease per slot.

    The limit is created from the settings when it is missing (:func:`ensure_limit`); a
    limit that vanished afterwards is a :class:`LimitUnavailable` (strict).
    """

    def __init__(self, name: str = SSH_SESSIONS, lease_s: float = SESSION_LEASE_S) -> None:
        self.name = name
        self.lease_s = lease_s
        #: Why the last ask got no answer (a server error), for the message of a wait that ends.
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._open: Any = None
        # One request at a time per run: five sessions opening at once made five concurrent
        # writes of one row, which a SQLite-backed server answers with 503 (see _send);
        # one after another they take ~8 ms each.
        self._asking = threading.Lock()

    def _client(self) -> Any:
        """One API client for the run's slots, opened at the first ask.

        A client per request cost ~45 ms of CPU (Prefect builds its HTTP client, transport
        and settings each time) against ~3 ms for a take and a release on one client; a
        maintenance run takes and gives back a slot for every session it opens.
        """
        from prefect.client.orchestration import get_client

        with self._lock:
            if self._open is None:
                self._open = get_client(sync_client=True).__enter__()
            return self._open

    def close(self) -> None:
        """Close the API client (the next ask opens another)."""
        with self._lock:
            client, self._open = self._open, None
        if client is not None:
            client.__exit__(None, None, None)

    def take(self, slots: int = 1) -> str | None:
        from httpx import HTTPStatusError, TransportError

        try:
            response = self._send(
                "/v2/concurrency_limits/increment-with-lease",
                {
                    "names": [self.name],
                    "slots": slots,
                    "mode": "concurrency",
                    "lease_duration": self.lease_s,
                },
            )
        except HTTPStatusError as exc:
            code = exc.response.status_code
            answer = slot_answer(code)
            if answer == "refused":
                raise LimitUnavailable(
                    f"{self.name}: the Prefect API refused a slot: {code}"
                ) from exc
            if answer == "failed":
                self.last_error = f"the Prefect API answered {code}"
                log.debug("%s: %s; asking again", self.name, self.last_error)
            return None
        except TransportError as exc:
            self.last_error = f"the Prefect API did not answer ({type(exc).__name__})"
            log.debug("%s: %s; asking again", self.name, self.last_error)
            return None
        except Exception as exc:
            raise LimitUnavailable(f"{self.name}: no slot: {type(exc).__name__}: {exc}") from exc
        self.last_error = None
        body = response.json()
        if not body.get("limits"):
            raise LimitUnavailable(f"{self.name} does not exist (deleted during the run?)")
        return str(body["lease_id"])

    def _send(self, path: str, body: dict[str, Any]) -> Any:
        """One POST to the API, one attempt, sent past Prefect's retrying client.

        After a 503 Prefect's client sleeps 2 s before giving the answer back, even with no
        retries left, and a SQLite-backed server answers these requests 503 ("database is
        locked") whenever other writes commit between its read and its write: at nearly
        every session's first ask in the tests. The callers ask again after 50 ms. The
        request is Prefect's own: its base URL, auth headers and transport (the API
        client's HTTP client).
        """
        from httpx import Client

        with self._asking:
            client = self._client()
            http = client._client
            response = Client.send(http, http.build_request("POST", path, json=body))
            if response.status_code == 403:  # a CSRF-protected server: Prefect's own path
                return client.request("POST", path, json=body)
            response.raise_for_status()
            return response

    def _send_retried(self, path: str, body: dict[str, Any]) -> None:
        """``_send``, asked again on a server error (50 ms, doubling; 5 attempts)."""
        from httpx import HTTPStatusError, TransportError

        for attempt in range(5):
            try:
                self._send(path, body)
                return
            except HTTPStatusError as exc:
                if slot_answer(exc.response.status_code) != "failed" or attempt == 4:
                    raise
            except TransportError:
                if attempt == 4:
                    raise
            time.sleep(RETRY_FIRST_S * 2**attempt)

    def give_back(self, lease: str) -> None:
        self._send_retried("/v2/concurrency_limits/decrement-with-lease", {"lease_id": lease})

    def renew(self, lease: str) -> None:
        self._send_retried(
            f"/v2/concurrency_limits/leases/{lease}/renew",
            {"lease_duration": self.lease_s},
        )


class Session(Protocol):
    """A session the slots are held for: it can drop its connection (to give its slot)."""

    name: str

    def disconnect(self) -> None:
        """Close the connection; the next command reconnects (and takes a slot again)."""
        ...


@dataclass
class _Held:
    session: Session
    lease: str | None = None
    busy: int = 0
    idle_since: float = 0.0


class SessionSlots:
    """One slot of ``caretaker-ssh-sessions`` per open session of a run.

    A session takes its slot before its first command (:meth:`enter`), keeps it between
    commands and gives it back when it is closed (:meth:`release`), when its connection
    failed or was lost (:meth:`leave` with ``connected=False``), and all at once when the
    run's sessions are closed or the run waits for an answer (:meth:`release_all`).
    Leases are renewed by one thread while any is held, so the slots of a killed process
    come back after ``SESSION_LEASE_S``.

    Args:
        api: where slots come from.
        timeout_s: how long a session waits for its slot.
        poll_s: how often a waiting session asks the server again.
        clock: monotonic seconds (a test's clock).
    """

    def __init__(
        self,
        api: SlotApi,
        *,
        timeout_s: float = SESSION_SLOT_TIMEOUT_S,
        poll_s: float = SESSION_POLL_S,
        renew_every_s: float = SESSION_LEASE_S / 3,
        clock: Callable[[], float] = time.monotonic,
        name: str = SSH_SESSIONS,
    ) -> None:
        self._api = api
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._renew_every_s = renew_every_s
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def leases(self) -> list[str]:
        """The leases held now."""
        with self._cond:
            return [h.lease for h in self._held.values() if h.lease is not None]

    def enter(self, session: Session) -> None:
        """Before a command: ``session`` holds a slot (taken, or waited for).

        Raises:
            LimitUnavailable: no slot within the timeout (the message names the limit),
                or the limit is gone.
        """
        deadline = self._clock() + self._timeout_s
        failures = 0
        while True:
            with self._cond:
                held = self._held.setdefault(id(session), _Held(session))
                if held.lease is not None:
                    held.busy += 1
                    return
            lease = self._api.take()
            victim: _Held | None = None
            with self._cond:
                held = self._held.setdefault(id(session), _Held(session))
                if held.lease is not None:  # another thread of this session took one
                    step: Step = "hold"
                else:
                    victim = self._idle_other(session)
                    step = slot_step(
                        holds=False,
                        granted=lease is not None,
                        idle_other=victim is not None,
                        time_left_s=deadline - self._clock(),
                    )
                if step == "take":
                    held.lease, lease = lease, None
                elif step == "evict":
                    assert victim is not None
                    held.lease, victim.lease = victim.lease, None
                    victim.session.disconnect()  # idle: nothing runs on it
                    log.info(
                        "%s: took the slot of idle session %s (%s is full)",
                        session.name,
                        victim.session.name,
                        self._name,
                    )
                if step in ("hold", "take", "evict"):
                    held.busy += 1
                    self._start_renewer()
            if lease is not None:  # granted, but not needed any more
                self._api.give_back(lease)
            if step in ("hold", "take", "evict"):
                return
            api_error = getattr(self._api, "last_error", None)
            if step == "fail":
                if api_error:
                    raise LimitUnavailable(
                        f"{session.name}: no slot of {self._name} within "
                        f"{self._timeout_s:g}s: {api_error}"
                    )
                raise LimitUnavailable(
                    f"{session.name}: no slot of {self._name} free within "
                    f"{self._timeout_s:g}s (every SSH session caretaker may open is open: "
                    f"raise ssh_sessions_limit with `caretaker-limits apply`, or wait)"
                )
            pause = self._poll_s
            if api_error:  # a server error: ask again soon, backing off to the poll
                failures += 1
                pause = error_pause(pause, failures)
            with self._cond:
                self._cond.wait(min(pause, max(deadline - self._clock(), 0.0)))

    def leave(self, session: Session, *, connected: bool = True) -> None:
        """After a command: ``session`` is idle; without a connection its slot goes back."""
        lease = None
        with self._cond:
            held = self._held.get(id(session))
            if held is None:
                return
            held.busy = max(held.busy - 1, 0)
            if held.busy == 0:
                held.idle_since = self._clock()
                if not connected:
                    lease, held.lease = held.lease, None
            self._cond.notify_all()
        if lease is not None:
            self._give_back(lease)

    def release(self, session: Session) -> None:
        """``session`` was closed: its slot goes back."""
        with self._cond:
            held = self._held.pop(id(session), None)
            self._cond.notify_all()
        if held is not None and held.lease is not None:
            self._give_back(held.lease)

    def release_all(self) -> None:
        """Every slot goes back (the run's sessions were closed)."""
        with self._cond:
            leases = [h.lease for h in self._held.values() if h.lease is not None]
            self._held.clear()
            self._cond.notify_all()
        for lease in leases:
            self._give_back(lease)

    def close(self) -> None:
        """Release every slot, stop renewing, and close the slots' API client."""
        self._stop.set()
        self.release_all()
        close_api = getattr(self._api, "close", None)
        if close_api is not None:
            close_api()

    def _idle_other(self, session: Session) -> _Held | None:
        idle = [
            h
            for key, h in self._held.items()
            if key != id(session) and h.lease is not None and h.busy == 0
        ]
        return min(idle, key=lambda h: h.idle_since) if idle else None

    def _give_back(self, lease: str) -> None:
        try:
            self._api.give_back(lease)
        except Exception as exc:  # the lease then expires on the server
            log.warning(
                "%s: a slot was not released (%s): it expires with its lease", self._name, exc
            )

    def _start_renewer(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop, name="caretaker-session-slots", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            for lease in self.leases:
                try:
                    self._api.renew(lease)
                except Exception as exc:  # expired: the slot may be counted no more
                    log.warning("%s: lease %s not renewed: %s", self._name, lease, exc)


def session_slots() -> SessionSlots | None:
    """Slots for the sessions of a run (the limit created when missing); None outside a
    run (a unit test calling a function directly: nothing to count)."""
    if not _in_run():
        return None
    ensure_limit(ssh_limit_spec(settings()))
    return SessionSlots(PrefectSlots())


def aws_api_call(region: str, *, timeout_s: float = AWS_SLOT_TIMEOUT_S) -> None:
    """Wait for a slot of ``caretaker-aws-api-<region>`` (one AWS API call).

    Raises:
        LimitUnavailable: no slot within ``timeout_s``, or the limit vanished.
    """
    if not _in_run():
        return
    from prefect.concurrency.sync import rate_limit

    spec = ensure_limit(aws_limit_spec(region, settings()))
    try:
        rate_limit(spec.name, timeout_seconds=timeout_s, strict=True)
    except Exception as exc:  # Prefect's timeout and acquisition errors
        raise LimitUnavailable(
            f"aws {region}: no slot of {spec.name} within {timeout_s:g}s: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
