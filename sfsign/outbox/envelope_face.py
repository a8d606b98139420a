"""The async twins of the envelope steps and reads (`Outbox` inherits them): each runs on the outbox's one
thread, as every other store operation does, so the signing listener and the mailer never block the loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sfsign.outbox.envelope_models import (
    CodeOutcome,
    DueOutcome,
    Envelope,
    EnvelopeEvent,
    MirrorView,
    QueuedMail,
    Recipient,
    RejectionNotice,
    SignerEvidence,
    SignOutcome,
    TokenMatch,
    Visit,
)
from sfsign.outbox.models import Job, SignatureEvidence
from sfsign.outbox.store import OutboxStore
from sfsign.signing.lifecycle import EnvelopePolicy
from sfsign.signing.model import EnvelopeState, ResolvedSigner
from sfsign.signing.tokens import LinkKeys

T = TypeVar("T")
_NO_VISIT = Visit()


def no_wake() -> None:
    """The default `wake`: nobody to tell (a CLI or a test that runs no worker)."""


class EnvelopeFace:
    """Envelope operations of `Outbox`; `call` is the outbox's own (one thread, one store).

    `wake` is called after a step that may have made a job due (a signature, the end of an envelope): the
    daemon sets it to the worker's, so a signature reaches the PDF without waiting for the worker's poll."""

    wake: Callable[[], None]

    async def call(self, fn: Callable[[OutboxStore], T]) -> T:
        raise NotImplementedError

    async def _waking(self, fn: Callable[[OutboxStore], T]) -> T:
        result = await self.call(fn)
        self.wake()
        return result

    async def create_envelope(self, job: Job, signers: Sequence[ResolvedSigner], policy: EnvelopePolicy,
                              now: float, keys: LinkKeys, *, document_sha256: str | None = None) -> Envelope:
        people = list(signers)
        return await self.call(lambda s: s.create_envelope(job, people, policy, now, keys,
                                                           document_sha256=document_sha256))

    async def mark_recipient_viewed(self, recipient_id: int, now: float, visit: Visit = _NO_VISIT) -> Recipient:
        return await self.call(lambda s: s.mark_recipient_viewed(recipient_id, now, visit))

    async def mark_recipient_signed(self, recipient_id: int, evidence: SignerEvidence, now: float) -> SignOutcome:
        return await self._waking(lambda s: s.mark_recipient_signed(recipient_id, evidence, now))

    async def mark_recipient_refused(self, recipient_id: int, reason: str, now: float,
                                     visit: Visit = _NO_VISIT) -> SignOutcome:
        return await self._waking(lambda s: s.mark_recipient_refused(recipient_id, reason, now, visit))

    async def void(self, transaction_id: str, reason: str, now: float, actor: str = "operator") -> Envelope:
        return await self._waking(lambda s: s.void(transaction_id, reason, now, actor))

    async def resend(self, transaction_id: str, recipient_id: int, now: float, actor: str = "operator") -> QueuedMail:
        return await self.call(lambda s: s.resend(transaction_id, recipient_id, now, actor))

    async def record_signed_document(self, transaction_id: str, sha256: str, now: float) -> Envelope:
        return await self.call(lambda s: s.record_signed_document(transaction_id, sha256, now))

    async def issue_code(self, recipient_id: int, now: float, keys: LinkKeys, visit: Visit = _NO_VISIT) -> CodeOutcome:
        return await self.call(lambda s: s.issue_code(recipient_id, now, keys, visit))

    async def check_code(self, recipient_id: int, code: str, now: float, keys: LinkKeys,
                         visit: Visit = _NO_VISIT) -> CodeOutcome:
        return await self.call(lambda s: s.check_code(recipient_id, code, now, keys, visit))

    async def next_mail(self, now: float) -> QueuedMail | None:
        return await self.call(lambda s: s.next_mail(now))

    async def next_mail_at(self) -> float | None:
        return await self.call(OutboxStore.next_mail_at)

    async def mark_mail_sent(self, mail_id: int, now: float) -> QueuedMail:
        return await self.call(lambda s: s.mark_mail_sent(mail_id, now))

    async def mark_mail_failed(self, mail_id: int, error: str, now: float, *, permanent: bool) -> QueuedMail:
        return await self.call(lambda s: s.mark_mail_failed(mail_id, error, now, permanent=permanent))

    async def due_envelopes(self, now: float, limit: int = 100) -> list[Envelope]:
        return await self.call(lambda s: s.due_envelopes(now, limit))

    async def next_envelope_due_at(self) -> float | None:
        return await self.call(OutboxStore.next_envelope_due_at)

    async def run_due(self, envelope_id: int, now: float) -> DueOutcome:
        return await self._waking(lambda s: s.run_due(envelope_id, now))

    async def envelope(self, transaction_id: str) -> Envelope | None:
        return await self.call(lambda s: s.envelope(transaction_id))

    async def envelopes(self, state: EnvelopeState | None = None, limit: int = 50) -> list[Envelope]:
        return await self.call(lambda s: s.envelopes(state, limit))

    async def recipients(self, envelope_id: int) -> list[Recipient]:
        return await self.call(lambda s: s.recipients(envelope_id))

    async def timeline(self, envelope_id: int) -> list[EnvelopeEvent]:
        return await self.call(lambda s: s.timeline(envelope_id))

    async def envelope_mails(self, envelope_id: int) -> list[QueuedMail]:
        return await self.call(lambda s: s.envelope_mails(envelope_id))

    async def recipient_by_token(self, token: str) -> TokenMatch | None:
        return await self.call(lambda s: s.recipient_by_token(token))

    # ------------------------------------------------------------------- the job's moves (`envelope_jobs`)

    async def mark_prepared(self, job: Job) -> Job:
        return await self.call(lambda s: s.mark_prepared(job))

    async def send_envelope(self, job: Job, signers: Sequence[ResolvedSigner], policy: EnvelopePolicy, now: float,
                            keys: LinkKeys, *, document_sha256: str | None = None) -> tuple[Job, Envelope]:
        people = list(signers)
        return await self.call(lambda s: s.send_envelope(job, people, policy, now, keys,
                                                         document_sha256=document_sha256))

    async def signed_unapplied(self, transaction_id: str) -> list[Recipient]:
        return await self.call(lambda s: s.signed_unapplied(transaction_id))

    async def mark_applied(self, recipient_id: int, now: float, *, signed_at: str | None = None,
                           timestamp_time: str | None = None) -> Recipient:
        return await self.call(lambda s: s.mark_applied(recipient_id, now, signed_at=signed_at,
                                                        timestamp_time=timestamp_time))

    async def settle_signatures(self, job: Job) -> tuple[Job, bool]:
        return await self.call(lambda s: s.settle_signatures(job))

    async def mark_envelope_completed(self, job: Job, *, seal: SignatureEvidence | None, sha256: str, level: str,
                                      validation: str, archive_due: str | None, certificate_sha256: str) -> Job:
        return await self.call(lambda s: s.mark_envelope_completed(
            job, seal=seal, sha256=sha256, level=level, validation=validation, archive_due=archive_due,
            certificate_sha256=certificate_sha256))

    async def set_document_version(self, job: Job, version_id: str) -> Job:
        return await self.call(lambda s: s.set_document_version(job, version_id))

    async def mark_envelope_uploaded(self, job: Job, certificate_version_id: str) -> Job:
        return await self.call(lambda s: s.mark_envelope_uploaded(job, certificate_version_id))

    async def envelopes_to_mirror(self, now: float, limit: int = 200) -> list[MirrorView]:
        return await self.call(lambda s: s.envelopes_to_mirror(now, limit))

    async def mark_mirrored(self, envelope_id: int, version: int) -> None:
        await self.call(lambda s: s.mark_mirrored(envelope_id, version))

    async def mark_mirror_failed(self, envelope_id: int, error: str, retry_at: float) -> Envelope:
        return await self.call(lambda s: s.mark_mirror_failed(envelope_id, error, retry_at))

    async def outcomes_to_notify(self, now: float, limit: int = 100) -> list[MirrorView]:
        return await self.call(lambda s: s.outcomes_to_notify(now, limit))

    async def mark_notified(self, envelope_id: int, now: float, note: str | None = None) -> None:
        await self.call(lambda s: s.mark_notified(envelope_id, now, note))

    async def mark_notify_failed(self, envelope_id: int, error: str, retry_at: float) -> Envelope:
        return await self.call(lambda s: s.mark_notify_failed(envelope_id, error, retry_at))

    async def rejections_to_notify(self, now: float, limit: int = 100) -> list[RejectionNotice]:
        return await self.call(lambda s: s.rejections_to_notify(now, limit))

    async def mark_rejection_notified(self, recipient_id: int, now: float) -> None:
        await self.call(lambda s: s.mark_rejection_notified(recipient_id, now))

    async def mark_rejection_notify_failed(self, recipient_id: int, retry_at: float) -> Recipient:
        return await self.call(lambda s: s.mark_rejection_notify_failed(recipient_id, retry_at))

    async def live_envelopes(self, sobject: str, record_id: str, rule: str | None = None) -> list[Envelope]:
        return await self.call(lambda s: s.live_envelopes(sobject, record_id, rule))

    async def purge_envelopes(self, now: float, retention_s: float, download_s: float = 0.0, *,
                              dry_run: bool = False) -> int:
        return await self.call(lambda s: s.purge_envelopes(now, retention_s, download_s, dry_run=dry_run))

    async def resend_all(self, transaction_id: str, now: float, actor: str, request: str) -> list[int]:
        return await self.call(lambda s: s.resend_all(transaction_id, now, actor, request))
