"""Global limits that protect the estate, counted by the Prefect server across every worker.

Two Prefect global concurrency limits, created from the settings (``core.settings``):

- ``caretaker-ssh-sessions`` (``ssh_sessions_limit``, default 64): SSH sessions open at
  once. A health-check batch takes one slot per checking thread for as long as its
  threads work (:func:`ssh_sessions`); a thread holds at most one open session (each
  server's session is closed when its checks are done), so the sessions open across all
  workers never exceed the limit. The round sizes its threads by the limit
  (:func:`ssh_session_limit`).
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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import LimitUnavailable
from core.settings import CaretakerSettings, settings

__all__ = [
    "AWS_API_PREFIX",
    "SSH_SESSIONS",
    "LimitSpec",
    "aws_api_call",
    "aws_limit_spec",
    "desired_limits",
    "ensure_limit",
    "forget_limits",
    "limit_actions",
    "read_limits",
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


@contextmanager
def ssh_sessions(count: int, *, timeout_s: float = SSH_SLOT_TIMEOUT_S) -> Iterator[None]:
    """Hold ``count`` slots of ``caretaker-ssh-sessions`` while the block opens sessions.

    Raises:
        LimitUnavailable: the slots were not granted within ``timeout_s`` (or the limit
            vanished, or the API refused); the block did not run.
    """
    if count <= 0 or not _in_run():
        yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_limit(ssh_limit_spec(settings()))
    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(SSH_SESSIONS, occupy=count, timeout_seconds=timeout_s, strict=True)
            )
        except Exception as exc:  # Prefect's timeout and acquisition errors
            raise LimitUnavailable(
                f"{count} SSH session slot(s) of {SSH_SESSIONS} not granted: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        yield


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
