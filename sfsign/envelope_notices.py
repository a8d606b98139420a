"""A recipient's address the relay refused for good (SMTP 5xx on RCPT or DATA), as the record and its owner
learn of it: a note on the record while the envelope is live, and one custom notification to the owner.

Why: that signer will never get their invitation, and nothing on the signing side can fix it; only a person
can, by correcting the address in Salesforce and sending the document again. The note names the recipient
by number and Salesforce id and the relay's reply with the address masked (the mailer's `scrub`), never the
address; the notification, which only the owner receives, names the signer as the refusal notification does.
The owner is told once per recipient whose address was refused (`recipients.mail_rejected_at`), through the
record mirror's own notification path (its owners' query, backoff and outcome handling).
"""

from __future__ import annotations

from sfsign.outbox.envelope_models import Envelope, MirrorView, Recipient
from sfsign.signing.model import SignerSource

#: What to do about it, in the words of the record's Send for Signature action.
FIX = ("correct the address in Salesforce, then Void this request (Send for Signature) and send the document "
       "again: the new request goes to the corrected address")


def _where(recipient: Recipient) -> str:
    """Where the address came from on the record: the field to correct."""
    sf_id = recipient.salesforce_id or ""
    return {
        SignerSource.CONTACT_ROLE: f"contact {sf_id}".strip(),
        SignerSource.QUOTE_CONTACT: f"the quote's contact {sf_id}".strip(),
        SignerSource.QUOTE_EMAIL: "the quote's Email field",
        SignerSource.USER: f"user {sf_id}".strip(),
    }[recipient.source]


def _who(envelope: Envelope, recipient: Recipient) -> str:
    return f"recipient {recipient.id} ({_where(recipient)}), step {recipient.step} of {envelope.steps}"


def rejection_note(view: MirrorView) -> str:
    """`Sign_Error__c` while the envelope is live and the relay refused an address (every such recipient)."""
    envelope = view.envelope
    lines = [f"The mail relay refused the e-mail address of {_who(envelope, r)}: {r.mail_error or 'rejected'}."
             for r in view.rejected]
    many = len(view.rejected) > 1
    return " ".join(lines) + (f" {'They' if many else 'This signer'} cannot receive the invitation to sign: "
                              f"{FIX}.")


def rejection_notification(view: MirrorView, recipient: Recipient) -> tuple[str, str]:
    """The owner's notification of one refused address: title and body."""
    envelope = view.envelope
    what = view.file_title or f"{envelope.sobject} {envelope.record_id}"
    name = " ".join(recipient.name.split()) or "A signer"
    return (f"Signature request not delivered: {what}",
            f"The mail relay refused the e-mail address of {name} ({_where(recipient)}, step {recipient.step} of "
            f"{envelope.steps}), so they cannot sign. To fix it: {FIX}.")
