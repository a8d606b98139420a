"""The memory of each record's current signed document per rule (`signed_documents`).

It outlives the retention purge of job rows because it names no person (ids, the transaction, a time): a
purged `done` row must not let the record be signed again on a new trigger. Every job change that can move
a document onto or off a record keeps it in step, inside the change's own transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import structlog

from sfsign.outbox.models import ARCHIVE_SOURCE, REENTRY_VALUES, SIGNED_STATES, SIGNED_VALUES, audit_time

log = structlog.get_logger("sfsign.outbox")

_CREATE = (
    "CREATE TABLE IF NOT EXISTS signed_documents (sobject TEXT NOT NULL, record_id TEXT NOT NULL, "
    "rule TEXT NOT NULL, transaction_id TEXT NOT NULL, signed_at TEXT, content_document_id TEXT, "
    "superseded_by TEXT, updated_at FLOAT, PRIMARY KEY (sobject, record_id, rule))"
)


def remember(conn: sqlite3.Connection, job_id: int) -> None:
    """Keep the memory in step with a job that just changed, inside the caller's transaction: a job whose
    document is on the record (a signed state, not superseded, not an archive renewal or a flagged
    duplicate) becomes the record's current document for its rule; a job that leaves for `error`/`dead`
    (`sfsign retry` puts it back) stops being it, as `signed_job` reads jobs."""
    cur = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
    row = cur.fetchone()
    if row is not None:
        remember_row(conn, dict(zip([d[0] for d in cur.description], row, strict=True)))


def remember_row(conn: sqlite3.Connection, job: Mapping[str, Any]) -> None:
    """`remember` for a job row the caller has just read or written (`UPDATE … RETURNING`), so the write
    path of every step does not read the row a second time."""
    state, tx = job["state"], job["transaction_id"]
    if state in REENTRY_VALUES:
        conn.execute("DELETE FROM signed_documents WHERE transaction_id = ? AND superseded_by IS NULL", (tx,))
        return
    if state not in SIGNED_VALUES or job["source"] == ARCHIVE_SOURCE or job["duplicate_of"] is not None \
            or job["superseded_by"] is not None:
        return
    conn.execute(
        "INSERT INTO signed_documents (sobject, record_id, rule, transaction_id, signed_at, content_document_id, "
        "superseded_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (sobject, record_id, rule) "
        "DO UPDATE SET transaction_id = excluded.transaction_id, signed_at = excluded.signed_at, "
        "content_document_id = excluded.content_document_id, superseded_by = NULL, "
        "updated_at = excluded.updated_at",
        (job["sobject"], job["record_id"], job["rule"], tx,
         job["signed_at"] or audit_time(job["done_at"] or job["updated_at"]), job["content_document_id"],
         time.time()),
    )


def create_signed_memory(conn: sqlite3.Connection) -> None:
    """Migration: create the memory and fill it from the signed jobs an existing outbox holds (after the
    record ids were made canonical, so keys match)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_CREATE)
        states = [s.value for s in SIGNED_STATES]
        ids = conn.execute(
            f"SELECT id FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) AND source != ? "
            "AND duplicate_of IS NULL AND superseded_by IS NULL ORDER BY id",
            (*states, ARCHIVE_SOURCE),
        ).fetchall()
        for (job_id,) in ids:
            remember(conn, int(job_id))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if ids:
        log.info("outbox migration: remembered the signed document of each record", documents=len(ids))
