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
from sfsign.outbox.signed_memory import remember
from sfsign.salesforce.names import LONG_TEXT_WRITE_MAX


class JobChanges:
    """The database, its transactions, and the write path every job change takes."""

    db: sqlite_utils.Database

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` (the writer lock up front, so a read-then-write never deadlocks) … COMMIT, or
        ROLLBACK on anything, including a cancelled caller's KeyboardInterrupt."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get(self, job_id: int) -> Job:
        return Job.from_row(self.db.table("jobs").get(job_id))

    def _job_rows(self, sql: str, args: Iterable[Any]) -> list[Job]:
        cur = self.db.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [Job.from_row(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]

    def _change(
        self, job_id: int, changes: Mapping[str, object], audit: StepAudit | None, *, event_type: str | None = None,
        actor: str = "sfsign",
    ) -> Job:
        """Write `changes` to the job; when its state changes and `audit` is given, the audit row goes in the
        same transaction (event type: the new state, unless `event_type` names another)."""
        values = {k: (v.value if isinstance(v, JobState) else v) for k, v in changes.items()}
        values["updated_at"] = time.time()
        unknown = set(values) - set(JOB_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job columns: {sorted(unknown)}")
        with self._transaction() as conn:
            before = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            sets = ", ".join(f"{k} = ?" for k in values)
            conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])
            if "state" in values or "content_document_id" in values:
                remember(conn, job_id)
            if audit is not None and "state" in values and before is not None and before[0] != values["state"]:
                self._audit(job_id, event_type or str(values["state"]), actor, audit.detail,
                            occurred=audit.occurred_at, status="sent" if audit.sent else "pending")
        return self.get(job_id)

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
