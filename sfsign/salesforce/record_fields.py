"""What sfsign writes on an Opportunity or Quote, as field maps in the package's vocabulary.

Every write on a signed object's record is built here (the signature, `Pending`, `Error`, notes), so
the fields a rep sees and the length limits they are cut to are read in one place; the callers pass
plain values and need nothing of the outbox or the job state machine.
"""

from __future__ import annotations

from typing import Any

from sfsign.salesforce.names import LONG_TEXT_WRITE_MAX, STATUS_PENDING, Record


def long_text(text: str | None) -> str | None:
    """A LongTextArea value as sfsign writes it: cut to `LONG_TEXT_WRITE_MAX`, empty as None."""
    return text[:LONG_TEXT_WRITE_MAX] if text else None


def pending_fields(transaction_id: str, note: str | None) -> dict[str, Any]:
    """`Pending` for this transaction; the note (why it waits) replaces any earlier one."""
    return {Record.TRANSACTION_ID: transaction_id, Record.STATUS: STATUS_PENDING, Record.ERROR: long_text(note)}
