"""The per-client run lock of maintenance runs, and its history.

The lock is a row in ``run_locks``: it outlives the process, so it holds while a run is
paused for approval, which a Prefect concurrency limit does not. Whether another run's
lock may be taken over is asked of a holder check (:class:`Takeover`: take, or refuse
with a reason); a lock whose holder has finished (crashed, failed, cancelled) or is
unknown is taken over with a compare-and-swap. The lock never fails open: a check that
cannot tell refuses. Every acquisition, release and takeover is kept in
``run_lock_events``. :class:`RunLocks` is
the part of :class:`history.store.HistoryStore` that does it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.errors import MaintenanceInProgress
from history.engine import StoreBase
from history.schema import run_lock_events, run_locks, utc_now

log = logging.getLogger(__name__)

__all__ = ["HolderCheck", "LockEvent", "LockHandle", "RunLocks", "Takeover"]


@dataclass(frozen=True)
class Takeover:
    """What to do about another run holding the lock: take it over, or refuse.

    Attributes:
        take: True when the holder is over (final state, or unknown to Prefect).
        reason: why, in words (shown in the refusal and the takeover's log line).
    """

    take: bool
    reason: str


#: Asked with the holder's flow run id; says whether its lock may be taken over.
HolderCheck = Callable[[str], Takeover]


@dataclass(frozen=True)
class LockHandle:
    """Proof that a run holds its client's run lock.

    Attributes:
        client: client slug.
        holder_flow_run_id: the run that holds the lock.
        change_ref: the change that run implements.
        acquired_at: when the lock was taken (UTC); for a re-entry, when it was first taken.
        took_over_from: the stale run the lock was taken from, if any.
        took_over_change_ref: that run's change ref.
        took_over_because: why the lock could be taken over (the holder check's reason).
        reentered: the holder asked again (task retry, resumed run) and already held it.
    """

    client: str
    holder_flow_run_id: str
    change_ref: str
    acquired_at: datetime
    took_over_from: str | None = None
    took_over_change_ref: str | None = None
    took_over_because: str | None = None
    reentered: bool = False


@dataclass(frozen=True)
class LockEvent:
    """One entry of a client's run-lock history (``run_lock_events``).

    Attributes:
        client: client slug.
        event: ``acquired``, ``released`` or ``taken-over``.
        holder_flow_run_id: the run that acquired, released or took over the lock.
        change_ref: that run's change ref.
        previous_holder: for a takeover, the stale run the lock was taken from.
        previous_change_ref: that run's change ref.
        at: when it happened (UTC).
    """

    client: str
    event: Literal["acquired", "released", "taken-over"]
    holder_flow_run_id: str
    change_ref: str
    previous_holder: str | None
    previous_change_ref: str | None
    at: datetime


class RunLocks(StoreBase):
    """The run lock's operations (a part of :class:`history.store.HistoryStore`)."""

    def acquire_run_lock(
        self,
        client: str,
        holder_flow_run_id: str,
        change_ref: str,
        *,
        holder_check: HolderCheck | None = None,
    ) -> LockHandle:
        """Take the client's run lock for a maintenance run, atomically.

        The lock is a row, so it holds across a Prefect pause, a worker restart and a
        process exit, until :meth:`release_run_lock` (or a takeover).

        * No holder: the lock is taken.
        * The same run holds it (a retried task, a resumed run): it is returned as is.
        * Another run holds it: ``holder_check(holder_run_id)`` is asked, outside any
          database transaction, whether that run's lock may be taken over (it is finished,
          or unknown). If so, the lock is taken over with a compare-and-swap on the holder
          seen (two contenders cannot both take over) and the takeover is recorded in
          ``run_lock_events``. Otherwise the call is refused with the check's reason.

        Args:
            client: client slug.
            holder_flow_run_id: the run asking (its Prefect flow run id).
            change_ref: the change it implements.
            holder_check: says whether a holder's lock may be taken over; None: never.
                An exception it raises propagates (the lock is not taken).

        Returns:
            The handle; ``took_over_from`` names a stale holder that was replaced.

        Raises:
            MaintenanceInProgress: another run holds the lock and the check refused (names
                it, its change and the check's reason).
        """
        now = utc_now()
        claim = (
            self._insert(run_locks)
            .values(
                client=client,
                holder_flow_run_id=holder_flow_run_id,
                change_ref=change_ref,
                acquired_at=now,
            )
            .on_conflict_do_nothing(index_elements=["client"])
            # RETURNING says whether this statement inserted the row; rowcount does not
            # (through SQLAlchemy, psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING).
            .returning(run_locks.c.client)
        )
        # A holder may release between our look and our takeover; try again then. Three
        # rounds are plenty: each lost round means someone else made progress.
        for _ in range(3):
            with self._write() as conn:
                if conn.execute(claim).first() is not None:
                    self._lock_event(conn, client, "acquired", holder_flow_run_id, change_ref)
                    return LockHandle(client, holder_flow_run_id, change_ref, now)
                held = self._lock_row(conn, client)
            if held is None:
                continue
            if held.holder_flow_run_id == holder_flow_run_id:
                return LockHandle(
                    client,
                    held.holder_flow_run_id,
                    held.change_ref,
                    held.acquired_at,
                    reentered=True,
                )
            verdict = holder_check(held.holder_flow_run_id) if holder_check else None
            if verdict is None or not verdict.take:
                raise MaintenanceInProgress(
                    client,
                    held.holder_flow_run_id,
                    held.change_ref,
                    held.acquired_at,
                    reason=verdict.reason if verdict else None,
                )
            swap = (
                run_locks.update()
                .where(
                    run_locks.c.client == client,
                    run_locks.c.holder_flow_run_id == held.holder_flow_run_id,
                )
                .values(
                    holder_flow_run_id=holder_flow_run_id, change_ref=change_ref, acquired_at=now
                )
                .returning(run_locks.c.client)
            )
            with self._write() as conn:
                if conn.execute(swap).first() is not None:
                    self._lock_event(
                        conn,
                        client,
                        "taken-over",
                        holder_flow_run_id,
                        change_ref,
                        held.holder_flow_run_id,
                        held.change_ref,
                    )
                    log.warning(
                        "client %s: run lock taken over by %s (change %s) from run %s"
                        " (change %s): %s",
                        client,
                        holder_flow_run_id,
                        change_ref,
                        held.holder_flow_run_id,
                        held.change_ref,
                        verdict.reason,
                    )
                    return LockHandle(
                        client,
                        holder_flow_run_id,
                        change_ref,
                        now,
                        took_over_from=held.holder_flow_run_id,
                        took_over_change_ref=held.change_ref,
                        took_over_because=verdict.reason,
                    )
        current = self.run_lock(client)
        if current is None:  # pragma: no cover - only under pathological churn
            raise MaintenanceInProgress(client, "(changing hands)", "(unknown)")
        raise MaintenanceInProgress(
            client, current.holder_flow_run_id, current.change_ref, current.acquired_at
        )

    def release_run_lock(self, client: str, holder_flow_run_id: str) -> bool:
        """Release the client's run lock if ``holder_flow_run_id`` holds it.

        A run whose lock was taken over releases nothing (the new holder keeps it).

        Args:
            client: client slug.
            holder_flow_run_id: the run releasing.

        Returns:
            True when the lock was held by that run and is now free.
        """
        with self._write() as conn:
            row = self._lock_row(conn, client)
            if row is None or row.holder_flow_run_id != holder_flow_run_id:
                return False
            conn.execute(
                run_locks.delete().where(
                    run_locks.c.client == client,
                    run_locks.c.holder_flow_run_id == holder_flow_run_id,
                )
            )
            self._lock_event(conn, client, "released", holder_flow_run_id, row.change_ref)
            return True

    def run_lock(self, client: str) -> LockHandle | None:
        """Who holds the client's run lock now, or None."""
        with self._read() as conn:
            row = self._lock_row(conn, client)
        if row is None:
            return None
        return LockHandle(client, row.holder_flow_run_id, row.change_ref, row.acquired_at)

    def lock_events(self, client: str) -> list[LockEvent]:
        """The client's run-lock history, oldest first."""
        t = run_lock_events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.client == client).order_by(t.c.at, t.c.id)
            ).all()
        return [
            LockEvent(
                client=row.client,
                event=row.event,
                holder_flow_run_id=row.holder_flow_run_id,
                change_ref=row.change_ref,
                previous_holder=row.previous_holder,
                previous_change_ref=row.previous_change_ref,
                at=row.at,
            )
            for row in rows
        ]

    @staticmethod
    def _lock_row(conn: Connection, client: str) -> sa.Row[Any] | None:
        return conn.execute(sa.select(run_locks).where(run_locks.c.client == client)).first()

    @staticmethod
    def _lock_event(
        conn: Connection,
        client: str,
        kind: Literal["acquired", "released", "taken-over"],
        holder: str,
        change_ref: str,
        previous_holder: str | None = None,
        previous_change_ref: str | None = None,
    ) -> None:
        conn.execute(
            run_lock_events.insert().values(
                client=client,
                event=kind,
                holder_flow_run_id=holder,
                change_ref=change_ref,
                previous_holder=previous_holder,
                previous_change_ref=previous_change_ref,
                at=utc_now(),
            )
        )
