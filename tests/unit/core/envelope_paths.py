"""Test setup for envelopes: a real outbox file, a job, signers in steps, a fixed link key, and the mailer's
view of a queued code (unsealed as the mailer will, from the mail row)."""

from __future__ import annotations

from pathlib import Path

from sfsign.outbox import Job, NewJob, OutboxStore
from sfsign.outbox.envelope_models import Envelope, MailState, QueuedMail, Recipient, SignerEvidence, Visit
from sfsign.signing.lifecycle import DAY, EnvelopePolicy
from sfsign.signing.model import MailKind, ResolvedSigner, SignerSource
from sfsign.signing.tokens import LinkKeys

T0 = 1_800_000_000.0  # a fixed "now": every due time in these tests is T0 plus whole days
KEYS = LinkKeys(b"k" * 32)
VISIT = Visit(ip="203.0.113.7", user_agent="Mozilla/5.0 (test)")
EVIDENCE = SignerEvidence(typed_name="Ada Lovelace", consent=True, visit=VISIT)
ANNA = ResolvedSigner(1, "Anna Buyer", "anna@example.com", SignerSource.CONTACT_ROLE, "003000000000001AAA", "Buyer")
BERT = ResolvedSigner(1, "Bert Legal", "bert@example.com", SignerSource.CONTACT_ROLE, "003000000000002AAA", "Legal")
CARA = ResolvedSigner(2, "Cara Seller", "cara@example.com", SignerSource.USER, "005000000000001AAA")
SIGNERS = (ANNA, BERT, CARA)  # step 1: Anna and Bert in parallel; step 2: Cara
DAYS = DAY


def outbox(path: Path) -> OutboxStore:
    return OutboxStore(path / "outbox.sqlite")


def job(store: OutboxStore, tx: str = "tx-env-1", record: str = "006000000000001AAA") -> Job:
    return store.commit_event(None, None, [NewJob(tx, "quote", "Opportunity", record, "cdc")]).created[0]


def envelope(store: OutboxStore, signers: tuple[ResolvedSigner, ...] = SIGNERS, *, tx: str = "tx-env-1",
             record: str = "006000000000001AAA", policy: EnvelopePolicy | None = None, at: float = T0) -> Envelope:
    return store.create_envelope(job(store, tx, record), signers, policy or EnvelopePolicy(), at, KEYS,
                                 document_sha256="ab" * 32)


def people(store: OutboxStore, env: Envelope) -> dict[str, Recipient]:
    """The envelope's recipients by first name."""
    return {r.name.split()[0]: r for r in store.recipients(env.id)}


def mails(store: OutboxStore, env: Envelope, kind: MailKind | None = None,
          state: MailState | None = MailState.PENDING) -> list[QueuedMail]:
    return [m for m in store.envelope_mails(env.id)
            if (kind is None or m.kind is kind) and (state is None or m.state is state)]


def code_from_mail(store: OutboxStore, recipient: Recipient) -> str:
    """The code in the recipient's newest pending code mail, as the mailer reads it."""
    [mail] = [m for m in store.envelope_mails(recipient.envelope_id)
              if m.kind is MailKind.CODE and m.recipient_id == recipient.id and m.state is MailState.PENDING]
    assert mail.sealed is not None
    return KEYS.unseal(mail.sealed, mail.message_id)


def authenticated(store: OutboxStore, recipient: Recipient, at: float = T0) -> None:
    """The recipient asked for a code and typed it (email_otp)."""
    store.issue_code(recipient.id, at, KEYS)
    assert store.check_code(recipient.id, code_from_mail(store, recipient), at, KEYS).result.value == "verified"


def sign(store: OutboxStore, recipient: Recipient, at: float = T0) -> None:
    authenticated(store, recipient, at)
    assert store.mark_recipient_signed(recipient.id, EVIDENCE, at).result.value == "signed"
