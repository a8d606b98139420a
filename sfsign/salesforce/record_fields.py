"""What sfsign writes on an Opportunity or Quote, and reads back of its own signature, in the package's names.

Every write on a signed object's record is built here (the signature, its long-term upgrade, `Pending`,
`Error`, notes), so the fields a rep sees and the length limits they are cut to are read in one place;
the callers pass plain values and need nothing of the outbox or the job state machine.
"""

from __future__ import annotations

from typing import Any

from sfsign.salesforce.names import (
    ACTOR_LENGTH,
    DECLINE_REASON_LENGTH,
    LONG_TEXT_WRITE_MAX,
    PROGRESS_LENGTH,
    SIGNER_LENGTH,
    STATUS_COMPLETED,
    STATUS_ERROR,
    STATUS_PENDING,
    STATUS_SIGNED,
    VALIDATION_LENGTH,
    Record,
    SignatureEvent,
)
from sfsign.salesforce.soql import soql_id_list, soql_quote

#: The field an expired envelope's `on_expiry` moves, per object (the rule's `stage:` or `status:`).
EXPIRY_FIELDS: dict[str, str] = {"Opportunity": "StageName", "Quote": "Status"}


def long_text(text: str | None) -> str | None:
    """A LongTextArea value as sfsign writes it: cut to `LONG_TEXT_WRITE_MAX`, empty as None."""
    return text[:LONG_TEXT_WRITE_MAX] if text else None


def _short(text: str | None, length: int) -> str | None:
    return (text or "")[:length] or None


def document_url(instance_url: str, document_id: str | None) -> str:
    """The signed file's Lightning link; `document_id` may be a `/composite` reference to the 069 being read."""
    return f"{instance_url}/lightning/r/ContentDocument/{document_id}/view"


def pending_fields(transaction_id: str, note: str | None) -> dict[str, Any]:
    """`Pending` for this transaction; the note (why it waits) replaces any earlier one."""
    return {Record.TRANSACTION_ID: transaction_id, Record.STATUS: STATUS_PENDING, Record.ERROR: long_text(note)}


def signed_fields(
    *, transaction_id: str, signed_at: str | None, sha256: str | None, level: str | None, timestamp: str | None,
    signer: str | None, signer_serial: str | None, validation: str | None, eidas_level: str | None,
) -> dict[str, Any]:
    """The signature as the record shows it once the file is uploaded (without the file's id and link,
    which the write-back adds: `writeback.SignedFile`)."""
    return {
        Record.TRANSACTION_ID: transaction_id,
        Record.STATUS: STATUS_SIGNED,
        Record.SIGNED_AT: signed_at,
        Record.ERROR: None,
        Record.DOCUMENT_HASH: sha256,
        Record.LEVEL: level,
        Record.TIMESTAMP: timestamp,
        Record.SIGNER: _short(signer, SIGNER_LENGTH),
        Record.SIGNER_SERIAL: signer_serial,
        Record.VALIDATION: _short(validation, VALIDATION_LENGTH),
        Record.EIDAS_LEVEL: eidas_level,
    }


def progress_text(signed: int, total: int) -> str:
    """`Sign_Progress__c`: "1 of 2 signed"."""
    return f"{signed} of {total} signed"[:PROGRESS_LENGTH]


def completed_fields(
    *, transaction_id: str, completed_at: str | None, signers: int, signed_at: str | None, sha256: str | None,
    level: str | None, timestamp: str | None, signer: str | None, signer_serial: str | None, validation: str | None,
    eidas_level: str | None,
) -> dict[str, Any]:
    """Every signer signed and the final document (with its certificate of completion) is on the record: the
    final signature as `signed_fields` shows one, but `Completed`, when and "n of n signed" (the file's id and
    link come with the write-back: `writeback.SignedFile`)."""
    fields = signed_fields(transaction_id=transaction_id, signed_at=signed_at, sha256=sha256, level=level,
                           timestamp=timestamp, signer=signer, signer_serial=signer_serial, validation=validation,
                           eidas_level=eidas_level)
    fields.update({Record.STATUS: STATUS_COMPLETED, Record.COMPLETED_AT: completed_at,
                   Record.PROGRESS: progress_text(signers, signers)})
    return fields


def document_fields(instance_url: str, document_id: str | None) -> dict[str, Any]:
    """The signed file (its ContentDocument, 069) and its link."""
    return {Record.DOCUMENT_ID: document_id, Record.DOCUMENT_URL: document_url(instance_url, document_id)}


def adopted_fields(transaction_id: str, instance_url: str, document_id: str | None, *, status: str = STATUS_SIGNED,
                   note: str | None = None) -> dict[str, Any]:
    """A file found in Salesforce with this transaction id, shown as the record's signed document: `Signed`, or
    `Completed` (every customer signed), with a note for the rep (None clears an earlier one)."""
    return {Record.TRANSACTION_ID: transaction_id, Record.STATUS: status,
            Record.ERROR: None if note is None else note[:LONG_TEXT_WRITE_MAX],
            **document_fields(instance_url, document_id)}


def upgraded_fields(*, level: str | None, sha256: str | None, validation: str | None,
                    archive_due: str | None) -> dict[str, Any]:
    """The long-term (B-LT/B-LTA) version of the same file: its level, hash and validation."""
    return {
        Record.LEVEL: level,
        Record.DOCUMENT_HASH: sha256,
        Record.VALIDATION: _short(validation, VALIDATION_LENGTH),
        Record.ARCHIVE_DUE: archive_due,
        Record.ERROR: None,
    }


def error_fields(transaction_id: str, reason: str) -> dict[str, Any]:
    """`Error` and why; the transaction id says which attempt failed."""
    return {Record.TRANSACTION_ID: transaction_id, Record.STATUS: STATUS_ERROR,
            Record.ERROR: reason[:LONG_TEXT_WRITE_MAX]}


def upgrade_failed_fields(level: str | None, reason: str) -> dict[str, Any]:
    """The B-T document is signed and on the record; only its long-term upgrade failed. The status stays
    `Signed` (it is true) and the note says what is missing."""
    return {Record.ERROR: f"Signed at {level}, but the upgrade to long-term validation failed: {reason}"
            [:LONG_TEXT_WRITE_MAX]}


def note_fields(note: str) -> dict[str, Any]:
    """A note for the rep (`Sign_Error__c`) that leaves the status as it is."""
    return {Record.ERROR: note[:LONG_TEXT_WRITE_MAX]}


def envelope_fields(*, transaction_id: str, status: str | None, signed: int, total: int, sent_at: str | None,
                    expires_at: str | None, decline_reason: str | None, clear_note: bool) -> dict[str, Any]:
    """An envelope as the record shows it while it is out for signature and when it ended. `status` None
    leaves the status alone (a completed envelope: the job's write-back sets `Completed` with the files).
    `decline_reason` None clears an earlier one; `clear_note` clears `Sign_Error__c` (a note of the attempt
    before, such as `Pending`'s, when the envelope is sent)."""
    fields: dict[str, Any] = {
        Record.TRANSACTION_ID: transaction_id,
        Record.PROGRESS: progress_text(signed, total),
        Record.SENT_AT: sent_at,
        Record.EXPIRES_AT: expires_at,
        Record.DECLINE_REASON: _short(decline_reason, DECLINE_REASON_LENGTH),
    }
    if status is not None:
        fields[Record.STATUS] = status
    if clear_note:
        fields[Record.ERROR] = None
    return fields


def expiry_fields(sobject: str, value: str) -> dict[str, Any]:
    """The rule's `on_expiry`: the Opportunity's stage or the Quote's status."""
    return {EXPIRY_FIELDS[sobject]: value}


def owner_query(sobject: str, record_ids: list[str]) -> str:
    """Who owns these records (the custom notification's recipient). A Quote has no owner in Salesforce: its
    opportunity's owner is the rep."""
    owner = "OwnerId" if sobject == "Opportunity" else "Opportunity.OwnerId"
    # With the field an expiry moves: the notification says where the record is, not where it was meant to go.
    return f"SELECT Id, {owner}, {EXPIRY_FIELDS[sobject]} FROM {sobject} WHERE Id IN {soql_id_list(record_ids)}"


def owner_of(row: dict[str, Any]) -> str | None:
    """The owner's id in a row of `owner_query`."""
    if row.get("OwnerId"):
        return str(row["OwnerId"])
    opportunity = row.get("Opportunity")
    return str(opportunity["OwnerId"]) if isinstance(opportunity, dict) and opportunity.get("OwnerId") else None


def shown_signature_query(sobject: str, record_id: str) -> str:
    """What the record shows of its signature: whether an adopted file's write-back is still owed, and
    since when a record signed before this outbox knew of it is signed."""
    return (f"SELECT {Record.TRANSACTION_ID}, {Record.STATUS}, {Record.SIGNED_AT} FROM {sobject} "
            f"WHERE Id = {soql_quote(record_id)}")


def already_signed_note(signed_on: str | None, transaction_id: str) -> str:
    """What a record already signed shows (`Sign_Error__c`, the status stays `Signed`) when a stage change
    or a "Send for signature" asks for it again: the intake's answer and the fetch step's say the same."""
    return (f"Already signed on {signed_on or 'an earlier date'}, transaction {transaction_id}; this request "
            "(stage change or Send for Signature) signed nothing new. To sign a new version, use "
            "Send for Signature with the action Re-issue.")


def audit_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox audit rows as `Signature_Event__c` records."""
    return [
        {
            SignatureEvent.OPPORTUNITY if r["sobject"] == "Opportunity" else SignatureEvent.QUOTE: r["record_id"],
            SignatureEvent.TRANSACTION_ID: r["transaction_id"],
            SignatureEvent.EVENT_TYPE: r["event_type"],
            SignatureEvent.OCCURRED_AT: r["occurred_at"],
            SignatureEvent.ACTOR: (r["actor"] or "")[:ACTOR_LENGTH],
            SignatureEvent.DETAIL: r["detail"] or None,
        }
        for r in rows
    ]
