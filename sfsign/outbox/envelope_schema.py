"""The customer-signing tables (issue 14): envelopes, their recipients, their timeline and their mail queue.

Created by `schema.migrate` when missing, so an outbox written by an older version opens and gains them
empty; like the jobs table, later versions only ever add columns (`ENVELOPE_TABLES` lists them all).
Times are epoch seconds (REAL), as in `jobs`. No token and no code is stored: a link token's SHA-256,
a code's HMAC and, while its mail waits, the code sealed for the mailer (`sfsign.signing.tokens`).
"""

from __future__ import annotations

import sqlite3

ENVELOPE_TABLES: dict[str, dict[str, str]] = {
    # One per job whose rule has signers. The policy columns keep what the rule said when it was sent.
    "envelopes": {
        "id": "INTEGER PRIMARY KEY",
        "job_id": "INTEGER",
        "transaction_id": "TEXT NOT NULL UNIQUE",
        "sobject": "TEXT NOT NULL",
        "record_id": "TEXT NOT NULL",
        "rule": "TEXT NOT NULL",
        "state": "TEXT NOT NULL",
        "current_step": "INTEGER NOT NULL",
        "steps": "INTEGER NOT NULL",
        "language": "TEXT NOT NULL",
        "auth_method": "TEXT NOT NULL",
        "reminder_first_s": "REAL NOT NULL",
        "reminder_every_s": "REAL NOT NULL",
        "reminder_max": "INTEGER NOT NULL",
        "message_domain": "TEXT NOT NULL",
        "created_at": "REAL NOT NULL",
        "sent_at": "REAL",
        "expires_at": "REAL NOT NULL",
        "completed_at": "REAL",
        "ended_at": "REAL",  # completed, refused, expired or voided
        "next_due_at": "REAL",  # the expiry or the earliest reminder; NULL once ended
        "reminders_sent": "INTEGER NOT NULL DEFAULT 0",
        "reason": "TEXT",  # why it was voided or declined
        "document_sha256_before": "TEXT",
        "document_sha256_after": "TEXT",
        "updated_at": "REAL",
        # The record mirror (`sfsign.envelope_mirror`): `version` counts the events that change what the
        # record shows, `synced_version` is the version the record shows; a failed write waits for
        # `mirror_next_at`. `notified_at`: the record owner was told of the outcome (refused, expired,
        # completed), once; a failed notification waits for `notify_next_at`.
        "version": "INTEGER NOT NULL DEFAULT 0",
        "synced_version": "INTEGER NOT NULL DEFAULT 0",
        "mirror_attempts": "INTEGER NOT NULL DEFAULT 0",
        "mirror_next_at": "REAL",
        "mirror_error": "TEXT",
        "notified_at": "REAL",
        "notify_attempts": "INTEGER NOT NULL DEFAULT 0",
        "notify_next_at": "REAL",
        "notify_error": "TEXT",
        # The retention purge anonymised it (`sfsign.outbox.envelope_retention`): no personal data is left.
        "purged_at": "REAL",
    },
    "recipients": {
        "id": "INTEGER PRIMARY KEY",
        "envelope_id": "INTEGER NOT NULL REFERENCES envelopes(id)",
        "step": "INTEGER NOT NULL",
        "position": "INTEGER NOT NULL",  # order in the rule's signer list
        "name": "TEXT NOT NULL",
        "email": "TEXT NOT NULL",
        "source": "TEXT NOT NULL",
        "salesforce_id": "TEXT",
        "role": "TEXT",
        "state": "TEXT NOT NULL",
        "token_generation": "INTEGER NOT NULL DEFAULT 1",
        "token_hash": "TEXT UNIQUE",
        "code_mac": "TEXT",
        "code_expires_at": "REAL",
        "code_failures": "INTEGER NOT NULL DEFAULT 0",
        "locked_until": "REAL",
        "authenticated_at": "REAL",  # the last right code (email_otp): signing is allowed from then on
        "invited_at": "REAL",
        "viewed_at": "REAL",
        "signed_at": "REAL",
        "refused_at": "REAL",
        "signed_name": "TEXT",  # the name the signer typed
        "reason": "TEXT",  # why they declined
        "ip": "TEXT",  # of the signature or refusal
        "user_agent": "TEXT",
        "next_reminder_at": "REAL",
        "reminders_sent": "INTEGER NOT NULL DEFAULT 0",
        "mail_error": "TEXT",  # the relay refused this address for good
        "applied_at": "REAL",  # their signature is in the job's PDF (the worker's signature step)
        # The relay refused their address (since their last mail that went through): the record owner is told
        # once per such refusal (`sfsign.envelope_mirror`); a failed notification waits for its next time.
        "mail_rejected_at": "REAL",
        "rejection_notified_at": "REAL",
        "rejection_notify_attempts": "INTEGER NOT NULL DEFAULT 0",
        "rejection_notify_next_at": "REAL",
    },
    # The timeline: what the certificate of completion lists.
    "envelope_events": {
        "id": "INTEGER PRIMARY KEY",
        "envelope_id": "INTEGER NOT NULL REFERENCES envelopes(id)",
        "type": "TEXT NOT NULL",
        "at": "REAL NOT NULL",
        "recipient_id": "INTEGER",
        "ip": "TEXT",
        "user_agent": "TEXT",
        "auth_method": "TEXT",
        "detail": "TEXT",
    },
    # Every mail is a row before it goes out: its Message-ID is fixed here, so a mail sent twice (the process
    # died after the relay took it, before `sent` was committed) carries the same Message-ID both times.
    "mails": {
        "id": "INTEGER PRIMARY KEY",
        "envelope_id": "INTEGER NOT NULL REFERENCES envelopes(id)",
        "recipient_id": "INTEGER",
        "kind": "TEXT NOT NULL",
        "message_id": "TEXT NOT NULL UNIQUE",
        "state": "TEXT NOT NULL",  # pending | sent | rejected | cancelled
        "attempts": "INTEGER NOT NULL DEFAULT 0",
        "next_attempt_at": "REAL NOT NULL",
        "last_error": "TEXT",
        "created_at": "REAL NOT NULL",
        "sent_at": "REAL",
        "sealed": "TEXT",  # a code mail's code, sealed for the mailer; cleared once sent
    },
}

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS envelopes_due ON envelopes (next_due_at)",
    "CREATE INDEX IF NOT EXISTS envelopes_record ON envelopes (sobject, record_id)",
    "CREATE INDEX IF NOT EXISTS envelopes_unsynced ON envelopes (mirror_next_at) WHERE version > synced_version",
    "CREATE INDEX IF NOT EXISTS envelopes_unnotified ON envelopes (state) WHERE notified_at IS NULL",
    "CREATE INDEX IF NOT EXISTS recipients_envelope ON recipients (envelope_id, step)",
    "CREATE INDEX IF NOT EXISTS recipients_unnotified_rejection ON recipients (rejection_notify_next_at) "
    "WHERE mail_rejected_at IS NOT NULL AND rejection_notified_at IS NULL",
    "CREATE INDEX IF NOT EXISTS envelopes_unpurged ON envelopes (ended_at) WHERE purged_at IS NULL",
    "CREATE INDEX IF NOT EXISTS envelope_events_envelope ON envelope_events (envelope_id, id)",
    "CREATE INDEX IF NOT EXISTS mails_queue ON mails (state, next_attempt_at)",
)


def migrate_envelopes(conn: sqlite3.Connection) -> None:
    """Create the tables an outbox lacks and add the columns an older version of them lacks, in one
    transaction (none when nothing is missing). A column added later must be nullable or have a default
    (SQLite's ADD COLUMN rule)."""
    statements: list[str] = []
    for table, columns in ENVELOPE_TABLES.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            statements.append(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns.items())})")
            continue
        statements += [f"ALTER TABLE {table} ADD COLUMN {name} {kind.replace(' UNIQUE', '')}"
                       for name, kind in columns.items() if name not in have]
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    statements += [sql for sql in _INDEXES if sql.split()[5] not in indexes]
    if not statements:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in statements:
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
