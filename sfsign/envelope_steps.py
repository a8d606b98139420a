"""The steps of a job whose rule has `signers:` (customer signing), beside the seal-only steps (`sfsign.steps`):

    queued ─fetch→ fetched ─prepare→ signed ─send→ awaiting_signatures ⇄ signatures_due ─apply_signatures→
    (every signature applied, envelope completed: seal if after signing, long-term data, verdict, certificate)
    signed ─upload_completed→ uploaded ─write_back_completed→ done
    (refused, expired, voided: the envelope's own step ends the job `envelope_ended`)

The fetch step (shared) resolves the signers and keeps them on the job. `prepare` seals first (the seal-only
render-and-sign, which creates every signer's empty field) or, for `seal: after_signing`, only adds the
empty fields. `send` makes the envelope and moves the job in one outbox transaction. A signature the
listener records makes the job due in the same transaction; `apply_signatures` puts every signed, not yet
applied signature into the PDF in signing order, one pool task each, writing the PDF before marking the
recipient applied: a crash in between finds the field signed (`FieldAlreadySigned`), which counts as
applied, so no field is ever signed twice. The PDFs stay in the data directory while the envelope lives
(the signing page shows them) and after `done` (the completed download link reads `<tx>.ltv.pdf`; the
retention purge removes them later).

Knobs: the rule's `signers:` block; `WorkerConfig.link_keys` and `message_domain`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from sfsign.adoption import CERTIFICATE_SUFFIX
from sfsign.config import ProfileConfig, RuleConfig, Rules, SignersConfig
from sfsign.documents import jobs as doc_jobs
from sfsign.documents import signer_jobs
from sfsign.documents.completion_certificate import CompletionCertificate, RecipientEvent, RecipientSummary
from sfsign.documents.errors import FieldAlreadySigned
from sfsign.documents.specs import SIGNATURE_FIELD, SignatureLevel, SignerEvidence, customer_field
from sfsign.failures import PermanentFailure, TransientFailure
from sfsign.mapping import file_name_for
from sfsign.outbox import Job, JobState, audit_time
from sfsign.outbox.envelope_models import Envelope, Recipient
from sfsign.profiles import key_source, signing_request, tsa_of
from sfsign.salesforce.files import NewFile
from sfsign.salesforce.record_fields import completed_fields
from sfsign.salesforce.writeback import OutcomeEvent, SignedFile
from sfsign.signing.lifecycle import DAY, Clock, EnvelopePolicy, ReminderPolicy, SystemClock
from sfsign.signing.listener.documents import About, write_about
from sfsign.signing.recipients import load_signers
from sfsign.signing.tokens import LinkKeys
from sfsign.steps import Steps, recorded

log = structlog.get_logger("sfsign.worker")

Step = Callable[[Job, Rules], Awaitable[Job]]
CERTIFICATE_TITLE = "Certificate of completion"


def envelope_policy(signers: SignersConfig, language: str, message_domain: str) -> EnvelopePolicy:
    """What the rule says of its envelopes, as the outbox keeps it on each one."""
    reminders = signers.reminders
    policy = ReminderPolicy(max_count=0) if reminders is None else ReminderPolicy(
        reminders.first_after_days * DAY, reminders.every_days * DAY, reminders.max)
    return EnvelopePolicy(auth=signers.authentication, expires_after_s=signers.expires_after_days * DAY,
                          reminders=policy, language=language, message_domain=message_domain)


def _moment(at: float | None) -> datetime:
    return datetime.fromtimestamp(at or 0.0, UTC)


def _signers_of(rule: RuleConfig) -> SignersConfig:
    if rule.signers is None:
        raise PermanentFailure(f"rule {rule.name!r} no longer has signers, but this job was sent to signers; "
                               "restore the rule's `signers:` block, then run `sfsign retry`", "RULE_CHANGED")
    return rule.signers


class EnvelopeSteps:
    """The customer-signing steps; `step_for` picks a job's next one (None: the seal-only table's)."""

    def __init__(self, steps: Steps, keys: LinkKeys | None, message_domain: str, clock: Clock | None = None) -> None:
        self.steps = steps
        # The daemon's envelope clock: the envelope's sent time, which its reminders and expiry count from, and
        # its completion, which the download link counts from, agree with the scheduler's and the pages' "now".
        self.clock = clock or SystemClock()
        self.outbox = steps.outbox
        self.sf = steps.sf
        self.artifacts = steps.artifacts
        self.keys = keys
        self.message_domain = message_domain

    def step_for(self, job: Job) -> Step | None:
        if job.signers_json is None:
            return None
        if job.state is JobState.FETCHED:
            return self.prepare
        if job.state is JobState.SIGNED:
            return self.send if job.envelope_sent_at is None else self.upload_completed
        if job.state is JobState.SIGNATURES_DUE:
            return self.apply_signatures
        if job.state is JobState.UPLOADED:
            return self.write_back_completed
        return None

    def _rule(self, job: Job, rules: Rules) -> tuple[RuleConfig, ProfileConfig]:
        rule = rules.by_name(job.rule)
        if rule is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        return rule, rules.profiles[rule.profile]

    # ---------------------------------------------------------------------------- before the envelope

    async def prepare(self, job: Job, rules: Rules) -> Job:
        """Seal first (render and sign, every signer's empty field created with the seal), or, sealed after
        signing, render and add the seller's and every signer's empty field."""
        rule, _profile = self._rule(job, rules)
        if _signers_of(rule).seal == "before_sending":
            return await self.steps.render_and_sign(job, rules)
        template = rules.templates.get(job.rule)
        if template is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        try:
            pdf, boxes, notes = await self.steps.in_pool(signer_jobs.render_with_fields_job, job.document_json or "{}",
                                                         str(template))
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "RENDER_FAILED") from None
        for note in notes:
            log.warning("rendering changed the document", note=note)
        await self.artifacts.write(job.transaction_id, "boxes.json", json.dumps(boxes).encode())
        await self.artifacts.write(job.transaction_id, "rendered.pdf", pdf)
        return await self.outbox.mark_prepared(job)

    async def send(self, job: Job, rules: Rules) -> Job:
        """The envelope out and the job `awaiting_signatures`, in one outbox transaction (a re-run finds
        the envelope the first run made)."""
        if self.keys is None:
            raise PermanentFailure("customer signing needs the link key (the daemon loads it)", "CONFIG")
        rule, _profile = self._rule(job, rules)
        signers = _signers_of(rule)
        pdf = await self._current_pdf(job)
        if pdf is None:  # the data directory lost it before anyone saw it: prepare it again
            log.warning("the document to send is missing from the data directory; preparing it again")
            return await self.outbox.redo_from_fetched(job, drop_signature=True)
        about = self.artifacts.path(job.transaction_id, "about.json")
        if not about.exists():  # written at fetch (with the rep); a job fetched by an older version has none
            await asyncio.to_thread(write_about, self.artifacts.directory, job.transaction_id,
                                    About(rules.seller.name, job.file_title or ""))
        sha256 = job.sha256 or await asyncio.to_thread(lambda: hashlib.sha256(pdf).hexdigest())
        policy = envelope_policy(signers, rule.language, self.message_domain)
        job, envelope = await self.outbox.send_envelope(job, load_signers(job.signers_json or "[]"), policy,
                                                        self.clock.now(), self.keys, document_sha256=sha256)
        log.info("envelope sent", envelope_id=envelope.id, steps=envelope.steps, auth=envelope.auth_method.value)
        return job

    async def _current_pdf(self, job: Job) -> bytes | None:
        """The newest version signers sign: sealed or signed before (`signed.pdf`), else the unsealed one."""
        for kind in ("signed.pdf", "rendered.pdf"):
            data = await self.artifacts.read(job.transaction_id, kind)
            if data is not None:
                return data
        return None

    # ------------------------------------------------------------------------------------ signatures

    async def apply_signatures(self, job: Job, rules: Rules) -> Job:
        """Every recorded, not yet applied signature into the PDF, in the order they were given; then back to
        waiting, or on to completion once the envelope is completed."""
        _rule, profile = self._rule(job, rules)
        due = await self.outbox.signed_unapplied(job.transaction_id)
        if due:
            envelope = await self._envelope(job)
            pdf = await self._current_pdf(job)
            if pdf is None:
                raise PermanentFailure("the document the signers signed is missing from the data directory; the "
                                       "envelope must be voided and sent again", "DOCUMENT_MISSING")
            urls, auth = tsa_of(profile)
            key = key_source(profile)
            for recipient in due:
                request = signer_jobs.SignerRequest(key, customer_field(recipient.position),
                                                    _evidence(recipient, envelope), urls, auth)
                try:
                    signed: signer_jobs.SignerResult | None = await self.steps.in_pool(
                        signer_jobs.signer_sign_job, pdf, request)
                except FieldAlreadySigned:  # applied before a crash kept its mark from the outbox
                    log.info("signature already in the document", recipient_id=recipient.id)
                    signed = None
                except doc_jobs.TransientDocumentFailure as exc:
                    raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
                except doc_jobs.DocumentFailure as exc:
                    raise PermanentFailure(str(exc), "SIGN_FAILED") from None
                if signed is None:
                    await self.outbox.mark_applied(recipient.id, self.clock.now())
                    continue
                pdf = signed.pdf
                await self.artifacts.write(job.transaction_id, "signed.pdf", pdf)
                await self.outbox.mark_applied(recipient.id, self.clock.now(), signed_at=signed.signed_at,
                                               timestamp_time=signed.timestamp_time)
                log.info("signer's signature applied", recipient_id=recipient.id, field=signed.field_name)
        job, complete = await self.outbox.settle_signatures(job)
        return await self._complete(job, rules) if complete else job

    async def _envelope(self, job: Job) -> Envelope:
        envelope = await self.outbox.envelope(job.transaction_id)
        if envelope is None:
            raise PermanentFailure("the job's envelope is not in the outbox", "NO_ENVELOPE")
        return envelope

    async def _complete(self, job: Job, rules: Rules) -> Job:
        """After the last signature: the seal (sealed after signing), long-term validation data at the
        profile's level with both validators' verdict, and the certificate of completion. Nothing leaves
        the machine before the outbox records it, so a crash here only repeats the work."""
        _rule, profile = self._rule(job, rules)
        pdf = await self.artifacts.read(job.transaction_id, "signed.pdf")
        if pdf is None:
            raise PermanentFailure("the signed document is missing from the data directory", "DOCUMENT_MISSING")
        seal = None
        if job.signer_serial is None:  # not sealed before sending (by the job, whatever the rule says now)
            boxes = json.loads(await self.artifacts.read(job.transaction_id, "boxes.json") or b"{}")
            try:
                seal = await self.steps.in_pool(doc_jobs.sign_job, pdf, boxes, signing_request(profile))
            except doc_jobs.TransientDocumentFailure as exc:
                raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
            except doc_jobs.DocumentFailure as exc:
                raise PermanentFailure(str(exc), "SIGN_FAILED") from None
            pdf = seal.pdf
        sha_after = seal.sha256 if seal else await asyncio.to_thread(lambda: hashlib.sha256(pdf).hexdigest())
        signers = load_signers(job.signers_json or "[]")
        urls, auth = tsa_of(profile)
        target = SignatureLevel.B_LT if profile.level == SignatureLevel.B_LT.value else SignatureLevel.B_LTA
        request = signer_jobs.CompletionRequest((SIGNATURE_FIELD, *(customer_field(i) for i in range(len(signers)))),
                                                tuple(profile.trust_roots), urls, auth, target)
        try:
            done = await self.steps.in_pool(signer_jobs.complete_job, pdf, request)
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "LTV_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "LTV_FAILED") from None
        if not done.verdict.ok:
            raise PermanentFailure(f"the completed document does not validate: {'; '.join(done.verdict.lines())}",
                                   "COMPLETION_INVALID")
        envelope = await self.outbox.record_signed_document(job.transaction_id, sha_after, self.clock.now())
        certificate = await self._certificate(job, envelope, rules)
        try:
            cert_pdf, cert_sha = await self.steps.in_pool(signer_jobs.certificate_job, certificate, key_source(profile),
                                                          urls, auth)
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "CERTIFICATE_FAILED") from None
        await self.artifacts.write(job.transaction_id, "ltv.pdf", done.pdf)
        await self.artifacts.write(job.transaction_id, "certificate.pdf", cert_pdf)
        validation = "; ".join(done.verdict.lines())
        log.info("envelope completed and its document validated", level=done.level)
        return await self.outbox.mark_envelope_completed(job, seal=seal, sha256=done.sha256, level=done.level,
                                                         validation=validation, archive_due=done.archive_due,
                                                         certificate_sha256=cert_sha)

    async def _certificate(self, job: Job, envelope: Envelope, rules: Rules) -> CompletionCertificate:
        recipients = await self.outbox.recipients(envelope.id)
        timeline = await self.outbox.timeline(envelope.id)
        about_file = await self.artifacts.read(job.transaction_id, "about.json")
        about = About(**json.loads(about_file)) if about_file else About(rules.seller.name)
        sender = f"{about.rep_name} <{about.rep_email}>" if about.rep_email else about.sender
        named = {r.id: f"{r.name} <{r.email}>" for r in recipients}
        return CompletionCertificate(
            organisation=rules.seller.name, transaction_id=job.transaction_id, envelope_id=str(envelope.id),
            document_title=job.file_title or about.title, sender=sender or rules.seller.name,
            status=envelope.state.value, sent_at=_moment(envelope.sent_at), completed_at=_moment(envelope.completed_at),
            sha256_before=envelope.document_sha256_before or "", sha256_after=envelope.document_sha256_after or "",
            recipients=tuple(RecipientSummary(r.step, r.name, r.email, envelope.auth_method.value, r.state.value)
                             for r in recipients),
            events=tuple(RecipientEvent(_moment(e.at), e.type.value, named.get(e.recipient_id or 0, ""), e.ip or "",
                                        e.user_agent or "", e.auth_method or "", e.detail or "") for e in timeline),
            language=envelope.language,
        )

    # ------------------------------------------------------------------------------ onto the record

    async def upload_completed(self, job: Job, rules: Rules) -> Job:
        """The final PDF as the record's File, then the certificate of completion as a second File; each upload
        is guarded by its own transaction id, so a retry finds what an earlier attempt uploaded."""
        final = self.artifacts.path(job.transaction_id, "ltv.pdf")
        certificate = self.artifacts.path(job.transaction_id, "certificate.pdf")
        title = job.file_title or Path(job.file_name or job.transaction_id).stem
        in_doubt = bool(job.upload_uncertain) or job.attempts > 0
        if job.content_version_id is None:
            found = await self.sf.find_file(job.transaction_id) if in_doubt else None
            if found is None:
                _require(final)
                found_id = await self.steps.guarded_upload(job, NewFile(
                    title=title, path_on_client=file_name_for(title, job.transaction_id), path=final,
                    first_publish_location_id=job.record_id, transaction_id=job.transaction_id))
            else:
                found_id = found.id
            job = await self.outbox.set_document_version(job, found_id)
            in_doubt = False
        cert_tx = job.transaction_id + CERTIFICATE_SUFFIX
        found = await self.sf.find_file(cert_tx) if in_doubt else None
        if found is not None:
            return await self.outbox.mark_envelope_uploaded(job, found.id)
        _require(certificate)
        cert_title = f"{title} - {CERTIFICATE_TITLE}"
        version_id = await self.steps.guarded_upload(job, NewFile(
            title=cert_title, path_on_client=file_name_for(cert_title, cert_tx), path=certificate,
            first_publish_location_id=job.record_id, transaction_id=cert_tx))
        return await self.outbox.mark_envelope_uploaded(job, version_id)

    async def write_back_completed(self, job: Job, rules: Rules) -> Job:
        """`Completed` on the record, with the final file's link, when, "n of n signed" and the final signature's
        evidence; the job is done (its files stay for the completed download link until retention)."""
        _rule, profile = self._rule(job, rules)
        envelope = await self._envelope(job)
        recipients = await self.outbox.recipients(envelope.id)
        completed_at = audit_time(envelope.completed_at)
        fields = completed_fields(
            transaction_id=job.transaction_id, completed_at=completed_at, signers=len(recipients),
            signed_at=job.signed_at or completed_at,  # the final signature's (`mark_applied`, or the seal's)
            sha256=job.ltv_sha256, level=job.ltv_level, timestamp=job.timestamp_time, signer=job.signer_subject,
            signer_serial=job.signer_serial, validation=job.validation, eidas_level=profile.eidas_level)
        event = OutcomeEvent(job.transaction_id, JobState.DONE.value, audit_time(),
                             f"Completed: {len(recipients)} of {len(recipients)} signed, PAdES {job.ltv_level}")
        file = SignedFile(self.steps.instance_url(), version_id=job.content_version_id,
                          document_id=job.content_document_id or None)
        await self.steps.pending.before_record_write(job.id)
        written = await self.sf.write(job, fields, event, file=file)
        self.steps.metrics.documents_signed.labels(job.rule).inc()
        return await self.outbox.mark_done(job, recorded(written), signed_visible=True, document_id=written.document_id)


def _require(path: Path) -> None:
    if not path.exists():
        raise PermanentFailure(f"{path.name} is missing from the data directory; the completed document cannot be "
                               "uploaded", "DOCUMENT_MISSING")


def _evidence(recipient: Recipient, envelope: Envelope) -> SignerEvidence:
    """What the signing page recorded of the signer, as their signature carries it."""
    return SignerEvidence(
        name=recipient.signed_name or recipient.name, email=recipient.email, auth_method=envelope.auth_method.value,
        signed_at=_moment(recipient.signed_at), ip=recipient.ip or "",
        authenticated_at=_moment(recipient.authenticated_at) if recipient.authenticated_at else None,
        language=envelope.language)
