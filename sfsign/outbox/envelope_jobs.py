"""The steps a job with signers takes around its envelope, each one SQLite transaction with what it depends on.

- `send_envelope`: the envelope (idempotent by transaction id) and the job's move to `awaiting_signatures`
  commit together, so a crash leaves either both or neither; a re-run finds the envelope and only moves
  the job.
- A signature recorded by the listener makes the job `signatures_due` in the same transaction
  (`EnvelopeSteps.mark_recipient_signed`); an envelope that ends refused, expired or voided ends its job
  `envelope_ended` (`EnvelopeBase._end`).
- The worker applies each signed recipient's signature to the PDF and marks it `applied_at`; `settle_signatures`
  then decides, from what the outbox holds at that moment (not what the worker read before), whether the
  job waits again, is still due (a signature came in meanwhile), ended, or may be completed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sfsign.outbox.envelope_models import Envelope, MailState, Recipient
from sfsign.outbox.envelopes import EnvelopeSteps
from sfsign.outbox.models import Job, JobState, SignatureEvidence, StepAudit
from sfsign.signing.lifecycle import EnvelopePolicy
from sfsign.signing.model import EnvelopeState, MailKind, RecipientState, ResolvedSigner
from sfsign.signing.tokens import LinkKeys


class EnvelopeJobs(EnvelopeSteps):
    """A job's moves that go with its envelope."""

    def mark_prepared(self, job: Job) -> Job:
        """Seal after signing: the PDF with every empty field is on disk (nothing signed yet); sending is next."""
        return self._change(job.id, {"state": JobState.SIGNED}, StepAudit("signature fields added; sealed after "
                                                                          "the last signature"))

    def send_envelope(self, job: Job, signers: Sequence[ResolvedSigner], policy: EnvelopePolicy, now: float,
                      keys: LinkKeys, *, document_sha256: str | None = None) -> tuple[Job, Envelope]:
        """The envelope out and the job `awaiting_signatures`, in one transaction."""
        with self._transaction() as conn:
            envelope = self._create_envelope(conn, job, list(signers), policy, now, keys, document_sha256)
            steps = f"{len(signers)} signer(s) in {envelope.steps} step(s)"
            moved = self._apply(conn, job.id, {"state": JobState.AWAITING_SIGNATURES, "envelope_sent_at": now},
                                StepAudit(f"envelope sent to {steps}"))
            return moved, envelope

    def signed_unapplied(self, transaction_id: str) -> list[Recipient]:
        """Recipients who signed and whose signature is not in the PDF yet, in the order they signed."""
        rows = self._dicts(
            "SELECT r.* FROM recipients r JOIN envelopes e ON e.id = r.envelope_id WHERE e.transaction_id = ? "
            "AND r.state = ? AND r.applied_at IS NULL ORDER BY r.signed_at, r.step, r.position",
            [transaction_id, RecipientState.SIGNED.value])
        return [Recipient.from_row(r) for r in rows]

    def mark_applied(self, recipient_id: int, now: float, *, signed_at: str | None = None,
                     timestamp_time: str | None = None) -> Recipient:
        """The recipient's signature is in the PDF on disk (written before this mark: a crash in between
        finds the field signed, which counts as applied). `signed_at` and `timestamp_time` (of the signature
        just made) become the job's latest signature, which the record shows once the envelope completes."""
        with self._transaction() as conn:
            conn.execute("UPDATE recipients SET applied_at = ? WHERE id = ? AND applied_at IS NULL",
                         (now, recipient_id))
            recipient = self._recipient(recipient_id)
            job_id = self._envelope(recipient.envelope_id).job_id
            if signed_at is not None and job_id is not None:
                self._apply(conn, job_id, {"signed_at": signed_at, "timestamp_time": timestamp_time}, None)
            return recipient

    def settle_signatures(self, job: Job) -> tuple[Job, bool]:
        """After the worker applied what was due: the job as it now is, and whether it may be completed
        (every signature applied and the envelope completed). A signature recorded meanwhile keeps it due;
        an envelope that ended meanwhile has already ended the job; else it waits again."""
        with self._transaction() as conn:
            current = self.get(job.id)
            if current.state is not JobState.SIGNATURES_DUE:
                return current, False
            envelope = self.envelope(job.transaction_id)
            if envelope is None:
                raise KeyError(f"no envelope with transaction id {job.transaction_id!r}")
            recipients = self._recipients(envelope.id)
            if any(r.state is RecipientState.SIGNED and r.applied_at is None for r in recipients):
                return current, False
            if envelope.state is EnvelopeState.COMPLETED:
                return current, True
            if envelope.ended:  # cannot happen (its end moved the job); kept so a job never waits for ever
                return self._apply(conn, job.id, {"state": JobState.ENVELOPE_ENDED, "done_at": time.time()},
                                   StepAudit(f"envelope {envelope.state.value}")), False
            return self._apply(conn, job.id, {"state": JobState.AWAITING_SIGNATURES, "attempts": 0}, None), False

    def mark_envelope_completed(self, job: Job, *, seal: SignatureEvidence | None, sha256: str, level: str,
                                validation: str, archive_due: str | None, certificate_sha256: str) -> Job:
        """Every signature is in, the long-term data added and the verdict ok; the final PDF and the
        certificate of completion are on disk: their upload is next. `seal`: the seller's seal, when it
        was made now (sealed after signing)."""
        changes: dict[str, object] = {
            "state": JobState.SIGNED, "ltv_sha256": sha256, "ltv_level": level, "validation": validation,
            "archive_due": archive_due, "certificate_sha256": certificate_sha256, "attempts": 0}
        if seal is not None:
            changes.update(sha256=seal.sha256, level=seal.level, signer_subject=seal.signer_subject,
                           signer_serial=seal.signer_serial, signed_at=seal.signed_at,
                           timestamp_time=seal.timestamp_time)
        detail = (f"completed: PAdES {level}, SHA-256 {sha256}, validation: {validation}; certificate of "
                  f"completion SHA-256 {certificate_sha256}")
        job = self._change(job.id, changes, StepAudit(detail))
        self._release_completed_mails(job.transaction_id)
        return job

    def _release_completed_mails(self, transaction_id: str) -> None:
        """The completed copies were queued with the last signature and have waited for the final document
        (backing off like any mail that cannot go yet): it is on disk now, so they are due at once, and the
        mail loop is woken (`mails_queued`) instead of finding them at its next retry, up to 30 s later."""
        with self._transaction() as conn:
            released = conn.execute(
                "UPDATE mails SET next_attempt_at = ? WHERE state = ? AND kind = ? AND envelope_id = "
                "(SELECT id FROM envelopes WHERE transaction_id = ?)",
                (time.time(), MailState.PENDING.value, MailKind.COMPLETED.value, transaction_id)).rowcount
        if released:
            self.mails_queued += 1

    def set_document_version(self, job: Job, version_id: str) -> Job:
        """The final PDF is in Salesforce (the certificate's upload follows): a retry uploads it never again."""
        return self._change(job.id, {"content_version_id": version_id, "upload_uncertain": 0}, None)

    def mark_envelope_uploaded(self, job: Job, certificate_version_id: str) -> Job:
        """Both files are on the record: the write-back (`Completed`) is next."""
        return self._change(job.id, {"state": JobState.UPLOADED, "certificate_version_id": certificate_version_id,
                                     "upload_uncertain": 0},
                            StepAudit(f"ContentVersion {job.content_version_id} (signed document), "
                                      f"{certificate_version_id} (certificate of completion)"))
