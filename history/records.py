"""Change records in the history store: one per maintenance run, saved as it progresses.

The record (:class:`history.change.ChangeRecord`) is stored whole as JSON (JSONB on
PostgreSQL), keyed by client, change ref and flow run, with its outcome and times beside
it for queries. What is stored passes the same redaction as every text that leaves the
process (:func:`redacted_record`). :class:`ChangeRecords` is the part of
:class:`history.store.HistoryStore` that saves and reads them.

A rerun of a change (same client and change ref, a new flow run) continues the change's
record rather than writing a second one: it reads it (:meth:`ChangeRecords.change_record`)
and moves the row to its own flow run (:meth:`ChangeRecords.continue_change_record`).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from core.redact import redact_json
from history.change import ChangeRecord
from history.compliance import write_verifications
from history.engine import StoreBase
from history.schema import change_records, require_aware, utc_now

__all__ = ["ChangeRecords", "redacted_record"]


def redacted_record(record: ChangeRecord) -> ChangeRecord:
    """A copy of the record with every text masked (:func:`core.redact.redact_json`).

    Command output, provider errors and notice failures quoted in the record may carry a
    credential; the store, the run's final state and anything else the record leaves the
    process as get this copy. The original is left as it is.
    """
    return ChangeRecord.model_validate(redact_json(record.model_dump(mode="json")))


class ChangeRecords(StoreBase):
    """Change records' operations (a part of :class:`history.store.HistoryStore`)."""

    def save_change_record(self, record: ChangeRecord) -> None:
        """Insert or replace the record of one run (keyed by client, change ref, flow run).

        Saving again as the run progresses replaces the earlier version; the record is
        validated as a whole first (its lists may have been appended to in place), and
        stored redacted (:func:`redacted_record`). Its verifications are written to
        ``verification_results`` in the same transaction (:mod:`history.compliance`).

        Args:
            record: the change record.
        """
        record = redacted_record(ChangeRecord.model_validate(record.model_dump()))
        values = {
            "client": record.client,
            "change_ref": record.change_ref,
            "flow_run_id": record.flow_run_id,
            "outcome": record.outcome.value if record.outcome else None,
            "started": record.started,
            "ended": record.ended,
            "body": record.model_dump(mode="json"),
            "saved_at": utc_now(),
        }
        statement = self._insert(change_records).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["client", "change_ref", "flow_run_id"],
            set_={
                k: statement.excluded[k]
                for k in ("outcome", "started", "ended", "body", "saved_at")
            },
        )
        with self._write() as conn:
            conn.execute(statement)
            if record.verifications:  # and the verification results it holds, for reports
                write_verifications(conn, record)

    def change_record(self, client: str, change_ref: str) -> ChangeRecord | None:
        """The newest record of one change (client and change ref), or None.

        Args:
            client: client slug.
            change_ref: the change reference.
        """
        query = (
            sa.select(change_records.c.body)
            .where(change_records.c.client == client, change_records.c.change_ref == change_ref)
            .order_by(change_records.c.started.desc(), change_records.c.id.desc())
            .limit(1)
        )
        with self._read() as conn:
            body = conn.execute(query).scalar_one_or_none()
        return None if body is None else ChangeRecord.model_validate(body)

    def continue_change_record(self, record: ChangeRecord, previous_flow_run_id: str) -> None:
        """Save ``record`` over the row the flow run ``previous_flow_run_id`` wrote for the
        same change: one change, one row, now keyed by the run that continues it.

        Args:
            record: the continued record (its ``flow_run_id`` is the continuing run's).
            previous_flow_run_id: the run whose row it continues.
        """
        record = redacted_record(ChangeRecord.model_validate(record.model_dump()))
        statement = (
            sa.update(change_records)
            .where(
                change_records.c.client == record.client,
                change_records.c.change_ref == record.change_ref,
                change_records.c.flow_run_id == previous_flow_run_id,
            )
            .values(
                flow_run_id=record.flow_run_id,
                outcome=record.outcome.value if record.outcome else None,
                started=record.started,
                ended=record.ended,
                body=record.model_dump(mode="json"),
                saved_at=utc_now(),
            )
        )
        with self._write() as conn:
            if conn.execute(statement).rowcount != 1:
                raise LookupError(
                    f"no change record of {record.client} {record.change_ref} by flow run"
                    f" {previous_flow_run_id} to continue"
                )

    def change_records(
        self, client: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ChangeRecord]:
        """A client's change records, by start time.

        Args:
            client: client slug.
            since: only runs that started at or after this time (aware).
            until: only runs that started before this time (aware).

        Returns:
            The records, oldest first.
        """
        query = sa.select(change_records.c.body).where(change_records.c.client == client)
        if since is not None:
            query = query.where(change_records.c.started >= require_aware(since, "since"))
        if until is not None:
            query = query.where(change_records.c.started < require_aware(until, "until"))
        query = query.order_by(change_records.c.started, change_records.c.id)
        with self._read() as conn:
            bodies = conn.execute(query).scalars().all()
        return [ChangeRecord.model_validate(body) for body in bodies]
