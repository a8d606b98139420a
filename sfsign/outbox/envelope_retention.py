"""Data minimisation for envelopes (GDPR): an envelope that ended keeps its recipients' personal data only as
long as something of sfsign's may still need it, then it is anonymised in place.

Why anonymised and not deleted: the rows are the envelope's audit skeleton (who signed when, in which step,
how many reminders, the document's hashes), and they hold nothing personal once the names, addresses,
IP addresses, user agents, typed names, free-text reasons, relay replies and link and code hashes are gone.
The evidence of the signatures is the signed PDF and the certificate of completion in Salesforce, and the
`Signature_Event__c` rows there.

An envelope is anonymised once all of these hold:
- it ended (completed, refused, expired, voided) at least `retention_s` ago; a live one never is;
- a completed one ended at least `download_s` ago (its signers may download the document from their link
  until then, and that link is found by its hash);
- its job will not read it again: the job is `done`, `envelope_ended` or `skipped`, or its row is gone (an
  `error` or `dead` job may be retried, and would make the certificate of completion from these rows);
- its record shows its last state and its owner was told what sfsign tells them (the notification texts
  name the signer), as an audit row stays until Salesforce took it.
Mails still queued for it then are cancelled: a notice weeks late helps nobody.
"""

from __future__ import annotations

import sqlite3

from sfsign.outbox.envelope_base import EnvelopeBase
from sfsign.outbox.envelope_models import MailState
from sfsign.outbox.models import JobState
from sfsign.signing.lifecycle import EventType
from sfsign.signing.model import ENVELOPE_FINAL, EnvelopeState

#: Timeline events whose detail is free text a person wrote or a relay answered (a decline's reason, a void's
#: actor and reason, who sent an invitation again, a relay's reply); the other details are sfsign's own words
#: and counts ("wrong code 2 of 5", "reminder 1 of 2", a Message-ID).
FREE_TEXT_EVENTS = (EventType.REFUSED, EventType.VOIDED, EventType.RESENT, EventType.MAIL_REJECTED)
#: What a purged recipient's `mail_error` says: that the relay refused them stays known, its reply does not.
PURGED_MAIL_ERROR = "refused by the relay (its reply was purged)"
#: Job states after which the job reads its envelope no more.
_JOB_DONE_WITH_IT = (JobState.DONE, JobState.ENVELOPE_ENDED, JobState.SKIPPED)


def _purgeable(now: float, retention_s: float, download_s: float) -> tuple[str, list[object]]:
    final = [s.value for s in ENVELOPE_FINAL]
    done_with = [s.value for s in _JOB_DONE_WITH_IT]
    where = (
        f"e.purged_at IS NULL AND e.state IN ({', '.join('?' for _ in final)}) AND e.ended_at IS NOT NULL "
        "AND e.ended_at <= ? AND (e.state != ? OR e.ended_at <= ?) "
        "AND e.synced_version >= e.version "
        "AND (e.notified_at IS NOT NULL OR e.state NOT IN (?, ?, ?)) "
        "AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.envelope_id = e.id AND r.mail_rejected_at IS NOT NULL "
        "AND r.rejection_notified_at IS NULL) "
        f"AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id AND j.state NOT IN "
        f"({', '.join('?' for _ in done_with)}))"
    )
    args: list[object] = [*final, now - retention_s, EnvelopeState.COMPLETED.value, now - download_s,
                          EnvelopeState.REFUSED.value, EnvelopeState.EXPIRED.value, EnvelopeState.COMPLETED.value,
                          *done_with]
    return where, args


class EnvelopeRetention(EnvelopeBase):
    """The envelopes' part of the retention purge (`sfsign.ops.retention`)."""

    def purge_envelopes(self, now: float, retention_s: float, download_s: float = 0.0, *,
                        dry_run: bool = False) -> int:
        """Anonymise every envelope the module's rules let go; how many (or, dry run, would be)."""
        if retention_s <= 0:
            raise ValueError("retention must be positive")
        where, args = _purgeable(now, retention_s, download_s)
        with self._transaction() as conn:  # a dry run writes nothing
            ids = [int(r[0]) for r in conn.execute(f"SELECT e.id FROM envelopes e WHERE {where}", args)]
            if not dry_run:
                for envelope_id in ids:
                    _anonymise(conn, envelope_id, now)
        return len(ids)


def _anonymise(conn: sqlite3.Connection, envelope_id: int, now: float) -> None:
    """One envelope's personal data out, in the caller's transaction; states, counts, times and hashes stay."""
    conn.execute(
        "UPDATE recipients SET name = '', email = '', salesforce_id = NULL, signed_name = NULL, reason = NULL, "
        "ip = NULL, user_agent = NULL, token_hash = NULL, code_mac = NULL, code_expires_at = NULL, "
        "mail_error = CASE WHEN mail_error IS NULL THEN NULL ELSE ? END WHERE envelope_id = ?",
        (PURGED_MAIL_ERROR, envelope_id))
    free_text = [t.value for t in FREE_TEXT_EVENTS]
    conn.execute(
        "UPDATE envelope_events SET ip = NULL, user_agent = NULL, "
        f"detail = CASE WHEN type IN ({', '.join('?' for _ in free_text)}) THEN NULL ELSE detail END "
        "WHERE envelope_id = ?", (*free_text, envelope_id))
    conn.execute("UPDATE mails SET state = CASE WHEN state = ? THEN ? ELSE state END, sealed = NULL, "
                 "last_error = NULL WHERE envelope_id = ?",
                 (MailState.PENDING.value, MailState.CANCELLED.value, envelope_id))
    conn.execute("UPDATE envelopes SET reason = NULL, purged_at = ? WHERE id = ?", (now, envelope_id))
