"""The one way a job row changes: its columns, the signed-document memory and, for a change of state, its
audit row, all in one SQLite transaction. Every writer of the store (`steps`, `intake`, `queries`) builds on
`JobChanges`, so no state change can reach the disk without its audit row, or the other way round.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlite_utils

from sfsign.outbox.models import Job, JobState, StepAudit, audit_time
from sfsign.outbox.schema import JOB_COLUMNS
from sfsign.outbox.signed_memory import remember_row
from sfsign.salesforce.names import LONG_TEXT_WRITE_MAX


class JobChanges:
    """The database, its transactions, and the write path every job change takes."""

    db: sqlite_utils.Database

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` (the writer lock up front, so a read-then-write never deadlocks) … COMMIT, or
        ROLLBACK on anything, including a cancelled caller's KeyboardInterrupt. Inside a transaction already
        (the async face's group commit, `sfsign.outbox.group_commit`) it is a savepoint: all or nothing
        still, committed with the group."""
        conn = self.db.conn
        if conn.in_transaction:
            yield from _savepoint(conn)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get(self, job_id: int) -> Job:
        jobs = self._job_rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not jobs:
            raise KeyError(f"no job with id {job_id}")
        return jobs[0]

    def _job_rows(self, sql: str, args: Iterable[Any]) -> list[Job]:
        cur = self.db.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [Job.from_row(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]

    def _change(
        self, job_id: int, changes: Mapping[str, object], audit: StepAudit | None, *, event_type: str | None = None,
        actor: str = "sfsign",
    ) -> Job:
        """Write `changes` to the job; when its state changes and `audit` is given, the audit row goes in the
        same transaction (event type: the new state, unless `event_type` names another).

        Every step of every job comes through here, so it reads and writes as little as it can: one read
        of what the audit row needs, one `UPDATE … RETURNING` that hands back the new row."""
        with self._transaction() as conn:
            return self._apply(conn, job_id, changes, audit, event_type=event_type, actor=actor)

    def _apply(
        self, conn: sqlite3.Connection, job_id: int, changes: Mapping[str, object], audit: StepAudit | None, *,
        event_type: str | None = None, actor: str = "sfsign",
    ) -> Job:
        """`_change` inside the caller's transaction: several steps that finish together (render and sign
        in one pool task) commit together, each with its own audit row."""
        values = {k: (v.value if isinstance(v, JobState) else v) for k, v in changes.items()}
        values["updated_at"] = time.time()
        unknown = values.keys() - JOB_COLUMNS.keys()
        if unknown:
            raise KeyError(f"unknown job columns: {sorted(unknown)}")
        before = conn.execute("SELECT state, transaction_id, sobject, record_id FROM jobs WHERE id = ?",
                              (job_id,)).fetchone()
        if before is None:
            raise KeyError(f"no job with id {job_id}")
        sets = ", ".join(f"{k} = ?" for k in values)
        cur = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? RETURNING *", [*values.values(), job_id])
        row = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
        cur.close()
        if "state" in values or "content_document_id" in values:
            remember_row(conn, row)
        if audit is not None and "state" in values and before[0] != values["state"]:
            self._audit_row(before[1], before[2], before[3], event_type or str(values["state"]), actor,
                            audit.detail, occurred=audit.occurred_at, status="sent" if audit.sent else "pending")
        return Job.from_row(row)

    def _audit(
        self, job_id: int, event_type: str, actor: str, detail: str | None, *, occurred: str | None = None,
        status: str = "pending",
    ) -> None:
        row = self.db.execute(
            "SELECT transaction_id, sobject, record_id FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        self._audit_row(row[0], row[1], row[2], event_type, actor, detail, occurred=occurred, status=status)

    def _audit_row(
        self, transaction_id: str, sobject: str, record_id: str, event_type: str, actor: str, detail: str | None,
        *, occurred: str | None = None, status: str = "pending",
    ) -> None:
        self.db.execute(
            "INSERT INTO audit (transaction_id, sobject, record_id, event_type, occurred_at, actor, detail, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (transaction_id, sobject, record_id, event_type, occurred or audit_time(), actor,
             (detail or "")[:LONG_TEXT_WRITE_MAX], status),
        )


def _savepoint(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`JobChanges._transaction` nested in an open transaction."""
    conn.execute("SAVEPOINT job_change")
    try:
        yield conn
        conn.execute("RELEASE job_change")
    except BaseException:
        if conn.in_transaction:  # else SQLite rolled the whole transaction back already (disk full)
            conn.execute("ROLLBACK TO job_change")
            conn.execute("RELEASE job_change")
        raise
