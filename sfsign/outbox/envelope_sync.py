"""The envelopes' side of the record: which envelopes the record does not show yet, which outcomes the record
owner has not been told of, and the rep's requests from Salesforce (Void, Resend).

Change tracking is two persisted counters per envelope: `version` (bumped in the transaction of every event
that changes what the record shows, `EnvelopeBase._event`) and `synced_version` (the version a record write
carried). A write that fails waits for `mirror_next_at`; one that lands while a newer event came in leaves
the envelope unsynced, so the newer state is written next. Nothing lives only in memory: a restart finds
what is still to write, and what is still to tell.
"""

from __future__ import annotations

import json

from sfsign.outbox.envelope_base import EnvelopeBase
from sfsign.outbox.envelope_models import Envelope, MirrorView, Recipient, RejectionNotice
from sfsign.outbox.models import JobState
from sfsign.signing.lifecycle import EventType
from sfsign.signing.model import ENVELOPE_FINAL, EnvelopeState, RecipientState

ERROR_MAX = 1_000
#: Outcomes the record owner is told of (a void is the rep's own doing).
NOTIFIED_STATES = (EnvelopeState.REFUSED, EnvelopeState.EXPIRED, EnvelopeState.COMPLETED)

_VIEW = (
    "SELECT e.*, j.file_title AS file_title, j.state AS job_state, "
    "(SELECT COUNT(*) FROM recipients r WHERE r.envelope_id = e.id) AS total, "
    "(SELECT COUNT(*) FROM recipients r WHERE r.envelope_id = e.id AND r.state = 'signed') AS signed, "
    "(SELECT r.name FROM recipients r WHERE r.envelope_id = e.id AND r.state = 'refused' LIMIT 1) AS decliner "
    "FROM envelopes e LEFT JOIN jobs j ON j.id = e.job_id"
)


class EnvelopeSync(EnvelopeBase):
    """What the record mirror and the rep's requests read and mark."""

    def _views(self, where: str, args: list[object], limit: int) -> list[MirrorView]:
        rows = self._dicts(f"{_VIEW} WHERE {where} ORDER BY e.id LIMIT ?", [*args, limit])
        envelopes = [Envelope.from_row(r) for r in rows]
        rejected = self._rejected([e.id for e in envelopes if not e.ended])
        return [MirrorView(e, int(r["signed"]), int(r["total"]), r["file_title"], r["job_state"], r["decliner"],
                           tuple(rejected.get(e.id, ()))) for e, r in zip(envelopes, rows, strict=True)]

    def _rejected(self, envelope_ids: list[int]) -> dict[int, list[Recipient]]:
        """Envelope id → its recipients whose address the relay refused (one query for all)."""
        if not envelope_ids:
            return {}
        found: dict[int, list[Recipient]] = {}
        for row in self._dicts("SELECT * FROM recipients WHERE mail_rejected_at IS NOT NULL AND envelope_id IN "
                               "(SELECT value FROM json_each(?)) ORDER BY step, position",
                               [json.dumps(envelope_ids)]):
            recipient = Recipient.from_row(row)
            found.setdefault(recipient.envelope_id, []).append(recipient)
        return found

    # ------------------------------------------------------------------------------ the record mirror

    def envelopes_to_mirror(self, now: float, limit: int = 200) -> list[MirrorView]:
        """Envelopes whose record shows an older version, not waiting for a retry, oldest first."""
        return self._views("e.version > e.synced_version AND (e.mirror_next_at IS NULL OR e.mirror_next_at <= ?)",
                           [now], limit)

    def mark_mirrored(self, envelope_id: int, version: int) -> None:
        """The record shows `version` (an event since keeps the envelope to write again)."""
        with self._transaction() as conn:
            conn.execute("UPDATE envelopes SET synced_version = MAX(synced_version, ?), mirror_attempts = 0, "
                         "mirror_next_at = NULL, mirror_error = NULL WHERE id = ?", (version, envelope_id))

    def mark_mirror_failed(self, envelope_id: int, error: str, retry_at: float) -> Envelope:
        with self._transaction() as conn:
            conn.execute("UPDATE envelopes SET mirror_attempts = mirror_attempts + 1, mirror_next_at = ?, "
                         "mirror_error = ? WHERE id = ?", (retry_at, error[:ERROR_MAX], envelope_id))
            return self._envelope(envelope_id)

    # ---------------------------------------------------------------------------------- notifications

    def outcomes_to_notify(self, now: float, limit: int = 100) -> list[MirrorView]:
        """Envelopes whose outcome the record owner has not been told of: refused or expired once the record
        shows it, completed once the job is `done` (the record shows Completed, the files are on it)."""
        return self._views(
            "e.notified_at IS NULL AND e.version > 0 AND (e.notify_next_at IS NULL OR e.notify_next_at <= ?) AND "
            "((e.state IN (?, ?) AND e.synced_version >= e.version) OR (e.state = ? AND j.state = ?))",
            [now, EnvelopeState.REFUSED.value, EnvelopeState.EXPIRED.value, EnvelopeState.COMPLETED.value,
             JobState.DONE.value], limit)

    def mark_notified(self, envelope_id: int, now: float, note: str | None = None) -> None:
        """Told (or given up on for good, `note` saying why): never again."""
        with self._transaction() as conn:
            conn.execute("UPDATE envelopes SET notified_at = ?, notify_next_at = NULL, notify_error = ? WHERE id = ?",
                         (now, (note or None) and note[:ERROR_MAX], envelope_id))

    def mark_notify_failed(self, envelope_id: int, error: str, retry_at: float) -> Envelope:
        with self._transaction() as conn:
            conn.execute("UPDATE envelopes SET notify_attempts = notify_attempts + 1, notify_next_at = ?, "
                         "notify_error = ? WHERE id = ?", (retry_at, error[:ERROR_MAX], envelope_id))
            return self._envelope(envelope_id)

    # ------------------------------------------------------------------------- refused addresses

    def rejections_to_notify(self, now: float, limit: int = 100) -> list[RejectionNotice]:
        """Recipients whose address the relay refused and whose record owner was not told yet, once the
        record shows the note (as a refusal's notification waits for the record), not waiting for a retry."""
        rows = self._dicts(
            "SELECT r.* FROM recipients r JOIN envelopes e ON e.id = r.envelope_id WHERE r.mail_rejected_at IS NOT "
            "NULL AND r.rejection_notified_at IS NULL AND (r.rejection_notify_next_at IS NULL OR "
            "r.rejection_notify_next_at <= ?) AND e.synced_version >= e.version ORDER BY r.id LIMIT ?", [now, limit])
        recipients = [Recipient.from_row(r) for r in rows]
        ids = sorted({r.envelope_id for r in recipients})
        views = {v.envelope.id: v for v in self._views(
            "e.id IN (SELECT value FROM json_each(?))", [json.dumps(ids)], len(ids))} if ids else {}
        return [RejectionNotice(views[r.envelope_id], r) for r in recipients]

    def mark_rejection_notified(self, recipient_id: int, now: float) -> None:
        """Told (or given up on for good): never again for this refusal."""
        with self._transaction() as conn:
            conn.execute("UPDATE recipients SET rejection_notified_at = ?, rejection_notify_next_at = NULL "
                         "WHERE id = ?", (now, recipient_id))

    def mark_rejection_notify_failed(self, recipient_id: int, retry_at: float) -> Recipient:
        with self._transaction() as conn:
            conn.execute("UPDATE recipients SET rejection_notify_attempts = rejection_notify_attempts + 1, "
                         "rejection_notify_next_at = ? WHERE id = ?", (retry_at, recipient_id))
            return self._recipient(recipient_id)

    # ------------------------------------------------------------------------------ the rep's requests

    def live_envelopes(self, sobject: str, record_id: str, rule: str | None = None) -> list[Envelope]:
        """The record's envelopes out for signature (of `rule`, when given), oldest first."""
        final = [s.value for s in ENVELOPE_FINAL]
        rows = self._dicts(
            f"SELECT * FROM envelopes WHERE sobject = ? AND record_id = ? AND state NOT IN "
            f"({', '.join('?' for _ in final)})" + (" AND rule = ?" if rule is not None else "") + " ORDER BY id",
            [sobject, record_id, *final, *([rule] if rule is not None else [])])
        return [Envelope.from_row(r) for r in rows]

    def resend_all(self, transaction_id: str, now: float, actor: str, request: str) -> list[int]:
        """The invitation again to every recipient who holds a live link and has not answered, in one
        transaction; the recipients. `request` names the rep's request (the platform event): asked again
        (a replayed event), it finds its own `resent` events and sends nothing twice."""
        with self._transaction() as conn:
            envelope = self._envelope_of(transaction_id)
            if envelope.ended:
                return []
            tag = f"(request {request})"
            done = conn.execute("SELECT 1 FROM envelope_events WHERE envelope_id = ? AND type = ? AND detail LIKE ?",
                                (envelope.id, EventType.RESENT.value, f"%{tag}")).fetchone()
            if done is not None:
                return []
            holding = [r.id for r in self._recipients(envelope.id) if r.step == envelope.current_step
                       and r.state in (RecipientState.INVITED, RecipientState.VIEWED)]
            for recipient_id in holding:
                self._resend(conn, envelope, recipient_id, now, actor, detail=f"sent again by {actor} {tag}")
            return holding

    def _envelope_of(self, transaction_id: str) -> Envelope:
        rows = self._dicts("SELECT * FROM envelopes WHERE transaction_id = ?", [transaction_id])
        if not rows:
            raise KeyError(f"no envelope with transaction id {transaction_id!r}")
        return Envelope.from_row(rows[0])
