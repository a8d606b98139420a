"""`OutboxStore`: the synchronous SQLite outbox, to be used from one thread (`Outbox` is its async face).

The outbox is what makes sfsign exactly-once: see `intake` for how jobs enter it, `steps` for how they
move, `changes` for the one write path both take. This module adds the reads: the worker's queue, the
audit relay's queue, operator queries, retention, and the `meta` table (its keys: `sfsign.outbox.meta`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sfsign.outbox.envelope_codes import EnvelopeCodes
from sfsign.outbox.envelope_jobs import EnvelopeJobs
from sfsign.outbox.envelope_queue import EnvelopeQueue
from sfsign.outbox.envelope_retention import EnvelopeRetention
from sfsign.outbox.envelope_sync import EnvelopeSync
from sfsign.outbox.intake import IntakeStore
from sfsign.outbox.meta import (
    FIRST_SUBSCRIBED_KEY,
    OPS_PROBE_KEY,
    RECONCILE_PREFIX,
    reconcile_key,
    reconcile_since,
    reconcile_value,
)
from sfsign.outbox.models import (
    ACTIVE_STATES,
    ARCHIVE_SOURCE,
    FINISHED_STATES,
    Job,
    JobState,
    OutboxStats,
    PurgeResult,
)
from sfsign.outbox.schema import open_database


class OutboxStore(IntakeStore, EnvelopeJobs, EnvelopeCodes, EnvelopeQueue, EnvelopeSync, EnvelopeRetention):
    """Synchronous SQLite access; use it from one thread (see `Outbox` for the async face). Customer
    signing's envelopes come from `envelopes`, `envelope_codes`, `envelope_queue` and `envelope_sync`, their
    jobs' moves from `envelope_jobs`, their retention from `envelope_retention`."""

    def __init__(self, path: Path) -> None:
        self.db = open_database(path)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------- the worker's queue

    def claim_due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Up to `limit` jobs due by `now` and not in `exclude` (the running ones), earliest first.

        The dispatcher asks after every step of every job, with hundreds running in a burst. One query
        per active state walks the index `jobs(state, next_attempt_at)` in order and stops at `limit`;
        a single query over all states had to collect and sort every due job each time (quadratic in a
        burst). The running ids go in as one JSON parameter, not one parameter each."""
        excluded = _json_ids(exclude)
        found: list[tuple[float, int]] = []
        for state in ACTIVE_STATES:
            found += self.db.execute(
                "SELECT next_attempt_at, id FROM jobs WHERE state = ? AND next_attempt_at <= ? "
                "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY next_attempt_at, id LIMIT ?",
                (state.value, now, excluded, limit)).fetchall()
        ids = [job_id for _, job_id in sorted(found)[:limit]]
        if not ids:
            return []
        jobs = {job.id: job for job in self._job_rows(
            "SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))}
        return [jobs[i] for i in ids if i in jobs]

    def waiting_unannounced(self, older_than: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Jobs queued before `older_than` that no worker has started yet (no attempt: a retrying job shows
        its own reason) and whose record was not told `Pending` yet; oldest first."""
        excluded = list(exclude)
        sql = (
            "SELECT * FROM jobs WHERE state = ? AND attempts = 0 AND pending_shown_at IS NULL"
            " AND signed_visible_at IS NULL AND created_at <= ?"
            + (f" AND id NOT IN ({', '.join('?' for _ in excluded)})" if excluded else "")
            + " ORDER BY created_at, id LIMIT ?"
        )
        return self._job_rows(sql, [JobState.QUEUED.value, older_than, *excluded, limit])

    def mark_pending_shown(self, ids: list[int], at: float) -> None:
        """Record that these jobs' records were told `Pending` (once per job, never again)."""
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            self.db.execute(f"UPDATE jobs SET pending_shown_at = ? WHERE id IN ({', '.join('?' for _ in part)})",
                            [at, *part])

    def next_due_at(self, exclude: Iterable[int] = ()) -> float | None:
        """When the next job not in `exclude` (the ones already running) falls due (per state, in index
        order, as `claim_due`)."""
        excluded = _json_ids(exclude)
        found = [row[0] for state in ACTIVE_STATES for row in self.db.execute(
            "SELECT next_attempt_at FROM jobs WHERE state = ? AND next_attempt_at IS NOT NULL "
            "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY next_attempt_at LIMIT 1",
            (state.value, excluded)).fetchall()]
        return float(min(found)) if found else None

    # ------------------------------------------------------------------------- the audit relay's queue

    def pending_audit(self, limit: int = 200, older_than: str | None = None) -> list[dict[str, Any]]:
        """Audit rows not yet in Salesforce, oldest first; `older_than` (an `audit_time`) leaves out the
        newer ones (those of jobs still running, which their own write-back will carry)."""
        cur = self.db.execute(
            "SELECT * FROM audit WHERE status = 'pending'" + (" AND occurred_at <= ?" if older_than else "")
            + " ORDER BY id LIMIT ?",
            (older_than, limit) if older_than else (limit,),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def mark_audit(self, ids: list[int], status: str, error: str | None = None) -> None:
        if ids:
            marks = ", ".join("?" for _ in ids)
            self.db.execute(f"UPDATE audit SET status = ?, error = ? WHERE id IN ({marks})", [status, error, *ids])

    # ------------------------------------------------------------------------------------ reads

    def by_transaction(self, transaction_id: str) -> Job | None:
        rows = list(self.db.table("jobs").rows_where("transaction_id = ?", [transaction_id]))
        return Job.from_row(rows[0]) if rows else None

    def jobs(self, state: JobState | None = None, limit: int = 1000) -> list[Job]:
        where, args = ("state = ?", [state.value]) if state else (None, [])
        return [
            Job.from_row(r)
            for r in self.db.table("jobs").rows_where(where, args, order_by="id", limit=limit)
        ]

    def counts(self) -> dict[str, int]:
        return {
            row[0]: row[1] for row in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        }

    def recent_jobs(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """Newest first: what an operator looking at `sfsign jobs` wants to see."""
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        return self._job_rows(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", [*args, limit])

    def oldest_active(self) -> Job | None:
        """The active job waiting longest: the first sign of a stuck queue."""
        states = [s.value for s in ACTIVE_STATES]
        rows = self._job_rows(
            f"SELECT * FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) ORDER BY created_at, id LIMIT 1",
            states,
        )
        return rows[0] if rows else None

    def last_event(self) -> tuple[str, float] | None:
        """(channel, time) of the last event committed with a replay id, from the replay table."""
        row = self.db.execute(
            "SELECT channel, updated_at FROM replay WHERE updated_at IS NOT NULL ORDER BY updated_at DESC LIMIT 1"
        ).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def signed_visible_since(self, since: float) -> int:
        """Documents that reached `Signed` on their record at or after `since` (epoch seconds)."""
        row = self.db.execute("SELECT COUNT(*) FROM jobs WHERE signed_visible_at >= ?", (since,)).fetchone()
        return int(row[0])

    def stats(self, signed_since: float) -> OutboxStats:
        """Jobs per state, documents that reached `Signed` since `signed_since` (archive renewals are no new
        documents), parked events and the mail queue: the scrape-time gauges, in one read."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE signed_visible_at >= ? AND source != ?", (signed_since, ARCHIVE_SOURCE)
        ).fetchone()
        mails = self.db.execute("SELECT COUNT(*), MIN(created_at) FROM mails WHERE state = 'pending'").fetchone()
        return OutboxStats(jobs_by_state=self.counts(), signed_today=int(row[0]) if row else 0,
                           parked_events=self.parked_count(), mails_pending=int(mails[0]) if mails else 0,
                           oldest_mail_at=float(mails[1]) if mails and mails[1] is not None else None)

    def job_states(self, transaction_ids: Iterable[str]) -> dict[str, tuple[JobState, float | None]]:
        """(state, done_at) per transaction id; ids without a job row are absent from the result."""
        out: dict[str, tuple[JobState, float | None]] = {}
        ids = list(dict.fromkeys(transaction_ids))
        for start in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            rows = self.db.execute(
                f"SELECT transaction_id, state, done_at FROM jobs WHERE transaction_id IN "
                f"({', '.join('?' for _ in chunk)})",
                chunk,
            ).fetchall()
            out.update({str(t): (JobState(s), float(d) if d is not None else None) for t, s, d in rows})
        return out

    def purge(self, now: float, retention_s: float, *, dry_run: bool = False) -> PurgeResult:
        """Delete finished (done/error/dead) jobs last changed more than `retention_s` ago, and the audit
        rows of jobs no longer kept that have left the audit queue (sent or refused).

        Data minimisation (GDPR): a job row names the record's file and the requester. Active jobs are
        never touched, and an audit row still waiting for Salesforce stays until it is sent. The memory of a
        record's current signed document (`signed_documents`, no personal data) stays, so a purged `done` row
        does not let the record be signed again on a new trigger; a superseded one goes.
        """
        if retention_s <= 0:
            raise ValueError("retention must be positive")
        cutoff = now - retention_s
        finished = [s.value for s in FINISHED_STATES]
        expired = f"state IN ({', '.join('?' for _ in finished)}) AND updated_at < ?"
        expired_args = [*finished, cutoff]
        orphan_audit = (
            "status != 'pending' AND (transaction_id NOT IN (SELECT transaction_id FROM jobs) "
            f"OR transaction_id IN (SELECT transaction_id FROM jobs WHERE {expired}))"
        )
        with self._transaction() as conn:  # a dry run writes nothing: its commit is a rollback's equal
            jobs = {
                str(state): int(n)
                for state, n in conn.execute(f"SELECT state, COUNT(*) FROM jobs WHERE {expired} GROUP BY state",
                                             expired_args)
            }
            if dry_run:
                audit = int(conn.execute(f"SELECT COUNT(*) FROM audit WHERE {orphan_audit}", expired_args)
                            .fetchone()[0])
                return PurgeResult(jobs, audit)
            conn.execute(f"DELETE FROM jobs WHERE {expired}", expired_args)
            # A superseded document is no longer the record's: its memory goes like a finished job.
            conn.execute("DELETE FROM signed_documents WHERE superseded_by IS NOT NULL AND updated_at < ?", (cutoff,))
            audit = conn.execute(
                "DELETE FROM audit WHERE status != 'pending' "
                "AND transaction_id NOT IN (SELECT transaction_id FROM jobs)"
            ).rowcount
        return PurgeResult(jobs, int(audit))

    # -------------------------------------------------------------------------------------- meta

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def meta_with_prefix(self, prefix: str) -> list[str]:
        rows = self.db.execute("SELECT key FROM meta WHERE key LIKE ? ORDER BY key", (prefix.replace("%", "") + "%",))
        return [str(r[0]) for r in rows.fetchall()]

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def mark_first_subscribed(self, at: str | None = None) -> None:
        """Remember when every channel was first subscribed (default: now); later calls keep the first time."""
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                        (FIRST_SUBSCRIBED_KEY, at or _now_iso()))

    def first_subscribed_at(self) -> str | None:
        return self.get_meta(FIRST_SUBSCRIBED_KEY)

    def probe_write(self) -> None:
        """A write that proves the outbox takes one right now (the readiness probe)."""
        self.set_meta(OPS_PROBE_KEY, _now_iso())

    def request_reconcile(self, sobject: str, at: str | None = None, since: datetime | None = None) -> None:
        """Persist that `sobject` needs reconciling (requested `at`, default now; only records changed
        `since`, or all), before anything else is done about it. A request pending already is widened:
        every record if either asks for all, else the earlier bound."""
        key = reconcile_key(sobject)
        with self._transaction():
            pending = self.get_meta(key)
            if pending is not None:
                earlier = reconcile_since(pending)
                since = None if earlier is None or since is None else min(earlier, since)
            self.set_meta(key, reconcile_value(at or _now_iso(), since))

    def pending_reconciles(self) -> dict[str, str]:
        """The objects whose requested reconciliation has not been done yet, by name, each with its request
        (what `reconcile_done` must be given; `reconcile_since` reads its bound)."""
        rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE ? ORDER BY key", (RECONCILE_PREFIX + "%",))
        return {str(key).removeprefix(RECONCILE_PREFIX): str(value) for key, value in rows.fetchall()}

    def reconcile_done(self, sobject: str, requested_at: str) -> bool:
        """Clear the request the pass answered, unless a newer one came meanwhile: a record that moved after
        the pass's query (a later stream gap, an overflow event) must get a pass of its own."""
        cursor = self.db.execute("DELETE FROM meta WHERE key = ? AND value = ?", (reconcile_key(sobject), requested_at))
        return cursor.rowcount > 0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json_ids(ids: Iterable[int]) -> str:
    """Job ids as one SQL parameter, for `id NOT IN (SELECT value FROM json_each(?))`."""
    return json.dumps([int(i) for i in ids])
