"""A job's steps, one per state: each reads what the previous step persisted and persists its own result.

    queued ─fetch→ fetched ─render→ rendered ─sign→ signed ─upload→ uploaded ─write_back→ done
    (B-LT/B-LTA)                                          write_back→ ltv_pending ─ltv_upgrade→
    ltv_upgraded ─ltv_upload→ ltv_uploaded ─ltv_write_back→ done

A step returns the job as the outbox now holds it, or raises (`sfsign.failures`, or a
`SalesforceError`): the worker (`sfsign.worker`) owns the order, the retries and the give-up. Salesforce
calls go through the gateway (`sfsign.gateway`), CPU work through the process pool, a bounded number at
once, files through `sfsign.artifacts`. Before a step writes its record it lets a `Pending` note in flight
land first (`sfsign.pending`).

Knobs (`WorkerConfig`): `cpu_slots` (documents in the process pool at once), `ltv_delay_s` (2 s: upgrades
wait so fresh documents go first), `governor_defer_s` (900 s: upgrades wait while the API budget is tight).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from sfsign.adoption import Adopted, envelope_file
from sfsign.artifacts import Artifacts
from sfsign.config import ProfileConfig, RuleConfig, Rules
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.specs import SignatureLevel
from sfsign.failures import PermanentFailure, TransientFailure
from sfsign.gateway import SalesforceGateway
from sfsign.mapping import NotRenderable, build_document, file_name_for, file_title_for
from sfsign.ops.metrics import Metrics
from sfsign.outbox import AuditEvent, Job, JobState, Outbox, StepAudit, audit_time
from sfsign.pending import PendingNotes
from sfsign.profiles import signing_request, upgrade_request
from sfsign.record_types import (
    ANY_RULE_SOURCES,
    EXPLICIT_SOURCES,
    REISSUE_SOURCES,
    RecordTypeNotRead,
    covering_rule,
    uncovered_reason,
)
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.files import ContentVersionRef, NewFile
from sfsign.salesforce.names import AUDIT_ALREADY_SIGNED, AUDIT_SUPERSEDED, STATUS_COMPLETED, STATUS_SIGNED, Record
from sfsign.salesforce.record_fields import (
    adopted_fields,
    already_signed_note,
    note_fields,
    signed_fields,
    upgraded_fields,
)
from sfsign.salesforce.records import SignableRecord
from sfsign.salesforce.writeback import OutcomeEvent, SignedFile, Written
from sfsign.signing.listener.documents import About, write_about
from sfsign.signing.recipients import document_signers, dump_signers
from sfsign.worker_config import WorkerConfig

log = structlog.get_logger("sfsign.worker")
T = TypeVar("T")

ALREADY_SIGNED = "ALREADY_SIGNED"  # error code of a job that found its record signed before this outbox knew it
_SIGNED_SHOWN = (STATUS_SIGNED, STATUS_COMPLETED)  # a sealed document, or one every customer signed


def _rule(job: Job, rules: Rules) -> RuleConfig:
    rule = rules.by_name(job.rule)
    if rule is None:
        raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
    return rule


def _profile(job: Job, rules: Rules) -> ProfileConfig:
    return rules.profiles[_rule(job, rules).profile]


def _file_of(job: Job) -> tuple[str, str]:
    """(Title, PathOnClient) of the job's file. The name is allow-listed again here, so a job fetched by
    an older version (its name stored unfiltered) cannot poison the batch it is uploaded in."""
    title = job.file_title or Path(job.file_name or job.transaction_id).stem
    return title, file_name_for(title, job.transaction_id)


def recorded(written: Written) -> StepAudit:
    """The write-back's outcome event for the job's audit row: same detail and time, and `sent` when it went
    with the write-back (the audit relay then never sends it again)."""
    event = written.event
    return StepAudit() if event is None else StepAudit(event.detail, event.occurred_at, event.sent)


class Steps:
    """The steps of every job, sharing the collaborators; `table` maps each state to its step."""

    def __init__(self, *, outbox: Outbox, gateway: SalesforceGateway, pending: PendingNotes, artifacts: Artifacts,
                 cpu_pool: Executor, config: WorkerConfig, metrics: Metrics, instance_url: Callable[[], str]) -> None:
        self.outbox = outbox
        self.sf = gateway
        self.pending = pending
        self.artifacts = artifacts
        self.cpu_pool = cpu_pool
        self.config = config
        self.metrics = metrics
        self.instance_url = instance_url
        self._cpu = asyncio.Semaphore(max(1, config.cpu_slots))

    # ------------------------------------------------------------------------------------------ fetch

    async def fetch(self, job: Job, rules: Rules) -> Job:
        rule = _rule(job, rules)
        fetched = await self.sf.fetch(job)
        if fetched.existing_file is not None:
            return await self._adopt_existing_file(job, rule, fetched.existing_file, fetched.record)
        record = fetched.record
        if record is None:
            raise PermanentFailure(f"{job.sobject} {job.record_id} was not found (deleted?)", "NOT_FOUND")
        if job.source in ANY_RULE_SOURCES:
            taken = await self._take_covering_rule(job, rule, rules, record)
            if isinstance(taken, Job):
                return taken
            job, rule = taken
        skipped = await self._skip_other_record_type(job, rule, rules, record)
        if skipped is not None:
            return skipped
        shown = record.sign_transaction_id
        if shown and self._signed_before_this_outbox(job, record) and not await self.outbox.knows_transaction(shown):
            if job.source in REISSUE_SOURCES:
                await self._supersede_shown(job, shown)
            elif len(rules.for_object(job.sobject)) == 1:
                return await self._tell_signed_before(job, shown)
        signers = None
        try:
            document = build_document(record, rule, rules, job.transaction_id, datetime.now(UTC))
            if rule.signers is not None:  # customer signing: who signs, read once and kept on the job
                signers = await self.sf.read_signers(rule.signers, job.sobject, job.record_id)
                document = document.model_copy(update={"signers": document_signers(signers, document.seller.name)})
        except NotRenderable as exc:  # a signer who cannot be reached is one (`SignerMissing`)
            raise PermanentFailure(str(exc), "NOT_RENDERABLE") from None
        title = file_title_for(rule, document, job.record_id)
        if signers is not None:  # who sends what, for the signing page (the listener never asks Salesforce)
            owner = record.owner
            about = About(document.seller.name, title, (owner.name or "") if owner else "",
                          (owner.email or "") if owner else "")
            await asyncio.to_thread(write_about, self.artifacts.directory, job.transaction_id, about)
        return await self.outbox.mark_fetched(job, document_json=document.model_dump_json(), file_title=title,
                                              file_name=file_name_for(title, job.transaction_id),
                                              signers_json=None if signers is None else dump_signers(signers))

    @staticmethod
    def _signed_before_this_outbox(job: Job, record: SignableRecord) -> bool:
        """Whether the record shows `Signed` by another transaction. Only a job the intake let through gets
        here, so when the outbox does not know that transaction either (a fresh or lost data directory; the
        caller checks, as a transaction it knows, a job ended `error` after its upload, is the documented
        re-entry and signs), the record was signed before this outbox. A new trigger on an object with one
        rule then signs nothing (that signature is this rule's document); with several rules the record's
        `Sign_*` fields cannot say which rule signed, and it signs. A Re-issue signs a new version, which is
        what it asks for, and the signature the record showed is superseded on the record and in its trail."""
        shown = record.sign_transaction_id
        return record.sign_status in _SIGNED_SHOWN and bool(shown) and shown != job.transaction_id

    async def _supersede_shown(self, job: Job, shown: str) -> None:
        """A Re-issue replaces a signature this outbox never knew (its memory started after it): the new
        version will take the record's `Sign_*` fields, and the old transaction's trail says by which Re-issue
        and why. It is written when the Re-issue is decided, as the intake writes it for a document the outbox
        remembers (when the Re-issue is queued), not when the new version lands."""
        detail = (f"Superseded by Re-issue transaction {job.transaction_id} (the record showed this signature; "
                  f"the local outbox did not know it); reason: {job.reason or '(none given)'}")
        await self.outbox.commit_event(None, None, [], [AuditEvent(
            transaction_id=shown, sobject=job.sobject, record_id=job.record_id, event_type=AUDIT_SUPERSEDED,
            actor=job.requested_by or "sfsign", detail=detail)])
        log.info("Re-issue of a record signed before this outbox knew of it: signing a new version",
                 superseded_transaction_id=shown)

    async def _tell_signed_before(self, job: Job, shown: str) -> Job:
        """Sign nothing: the record keeps `Signed`, its `Sign_Error__c` gets the intake's already-signed note,
        the signed transaction's trail an `already_signed` event (first, so a crash repeats it rather than
        loses it), and the job ends `error` (ALREADY_SIGNED), which holds no slot: a Re-issue signs anew."""
        row = await self.sf.shown_signature(job.sobject, job.record_id)
        note = already_signed_note(row.get(Record.SIGNED_AT) if row else None, shown)
        await self.pending.before_record_write(job.id)
        await self.sf.update(job.sobject, job.record_id, note_fields(note))
        detail = f"{job.source} trigger signed nothing (the record shows it, the local outbox did not know it): {note}"
        if job.reason:
            detail += f" Reason given: {job.reason}"
        await self.outbox.commit_event(None, None, [], [AuditEvent(
            transaction_id=shown, sobject=job.sobject, record_id=job.record_id, event_type=AUDIT_ALREADY_SIGNED,
            actor=job.requested_by or "sfsign", detail=detail)])
        log.warning("trigger for a record signed before this outbox knew of it: nothing signed, the record says so",
                    signed_transaction_id=shown)
        return await self.outbox.mark_error(job, note, ALREADY_SIGNED)

    async def _take_covering_rule(self, job: Job, rule: RuleConfig, rules: Rules,
                                  record: SignableRecord) -> tuple[Job, RuleConfig] | Job:
        """A Send for Signature that named no rule got the object's first rule; the record is read now, so it
        takes the rule covering its type instead. That rule's slot may be taken: signed already (the record
        is told so, as the intake would have), or a signature in progress (nothing more is signed)."""
        try:
            covering = covering_rule(rule, rules, record)
        except RecordTypeNotRead as exc:
            raise TransientFailure(f"{exc}; fetching it again", "RECORD_TYPE_NOT_READ") from None
        if covering is None:
            return job, rule
        signed = await self.outbox.signed_job(job.sobject, job.record_id, covering.name)
        if signed is not None:
            return await self._tell_signed_before(job, signed.transaction_id)
        try:
            job = await self.outbox.take_rule(job, covering.name)
        except sqlite3.IntegrityError:  # the one-job-per-record-and-rule index: another job has it in hand
            why = (f"Not signed: rule {covering.name!r}, which covers this record's type, is already signing it "
                   "in another transaction.")
            await self.pending.before_record_write(job.id)
            await self.sf.update(job.sobject, job.record_id, note_fields(why))
            return await self.outbox.mark_skipped(job, why)
        log.info("Send for Signature named no rule: the rule covering the record's type signs it",
                 rule=covering.name, first_rule=rule.name)
        return job, covering

    async def _skip_other_record_type(self, job: Job, rule: RuleConfig, rules: Rules,
                                      record: SignableRecord) -> Job | None:
        """A record whose type the rule does not cover: no document and, for a stage change, no write on
        the record (the rule was never meant for it); a rep's Send for Signature gets a note saying which
        record types the rule covers. The audit trail and the log say why, either way."""
        try:
            why = uncovered_reason(rule, rules, record)
        except RecordTypeNotRead as exc:
            raise TransientFailure(f"{exc}; fetching it again", "RECORD_TYPE_NOT_READ") from None
        if why is None:
            return None
        if job.source in EXPLICIT_SOURCES:
            await self.pending.before_record_write(job.id)
            await self.sf.update(job.sobject, job.record_id, note_fields(why))
        log.info("record type not covered by the rule: nothing signed", source=job.source, reason=why)
        return await self.outbox.mark_skipped(job, why)

    async def _adopt_existing_file(self, job: Job, rule: RuleConfig, file: ContentVersionRef,
                                   record: SignableRecord | None) -> Job:
        """A file with this job's transaction id is in Salesforce already: the trigger was handled before
        this outbox knew of it (job rows purged, a fresh or restored data directory). Exactly one document
        per trigger does not rest on the outbox: nothing is signed or sent for signature again. The record (as
        read with the file, in the same call) is completed only when it shows no signature or this one (an
        upload whose write-back never happened); a record that shows a newer transaction is left as it is.
        A seal-only rule's file shows `Signed`; a rule with signers' shows what `adoption` finds it is."""
        shown = record.sign_transaction_id if record is not None else None
        status = record.sign_status if record is not None else None
        detail = f"file {file.content_document_id or file.id} with this transaction id is already in Salesforce: " \
                 "not signed again"
        adopted = Adopted(STATUS_SIGNED)
        if rule.signers is not None:
            adopted = await envelope_file(self.sf, self.in_pool, job.transaction_id, file)
            detail += f" nor sent for signature ({adopted.status})"
        if record is not None and (not shown or shown == job.transaction_id) and (
                status != adopted.status or adopted.note is not None):
            await self.pending.before_record_write(job.id)
            await self.sf.update(job.sobject, job.record_id, adopted_fields(
                job.transaction_id, self.instance_url(), file.content_document_id, status=adopted.status,
                note=adopted.note))
            detail += "; the record now shows it" + (f": {adopted.note}" if adopted.note else "")
        elif shown and shown != job.transaction_id:
            detail += f"; the record shows transaction {shown} and is left as it is"
        log.warning("trigger already handled before this outbox knew of it; not signed again",
                    content_version_id=file.id, record_transaction_id=shown, status=adopted.status)
        return await self.outbox.mark_adopted(job, version_id=file.id, document_id=file.content_document_id,
                                              detail=detail)

    # ---------------------------------------------------------------------------------- render, sign

    async def render_and_sign(self, job: Job, rules: Rules) -> Job:
        """A fetched job's document rendered and signed in one pool task; its signed PDF is the one file
        written. (A job an older version left `rendered` goes through `sign`.)"""
        template = rules.templates.get(job.rule)
        if template is None:
            raise PermanentFailure(f"rule {job.rule!r} is no longer in the rules file", "UNKNOWN_RULE")
        rule = _rule(job, rules)
        profile = rules.profiles[rule.profile]
        try:
            async with self._cpu:
                signed, notes = await asyncio.get_running_loop().run_in_executor(
                    self.cpu_pool, doc_jobs.render_and_sign_job, job.document_json or "{}", str(template),
                    signing_request(profile),
                )
        except doc_jobs.RenderFailure as exc:
            raise PermanentFailure(str(exc), "RENDER_FAILED") from None
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "SIGN_FAILED") from None
        for note in notes:
            log.warning("rendering changed the document", note=note)
        detail = self._signed_detail(signed, rule, profile)
        await self.artifacts.write(job.transaction_id, "signed.pdf", signed.pdf)
        return await self.outbox.mark_rendered_and_signed(job, signed, detail)

    async def sign(self, job: Job, rules: Rules) -> Job:
        rule = _rule(job, rules)
        profile = rules.profiles[rule.profile]
        pdf = await self.artifacts.read(job.transaction_id, "rendered.pdf")
        box_file = await self.artifacts.read(job.transaction_id, "boxes.json")
        if pdf is None or box_file is None:
            # The artifact vanished (disk wiped?): render again; nothing was signed yet.
            return await self.outbox.redo_from_fetched(job)
        boxes = json.loads(box_file)
        try:
            async with self._cpu:
                signed = await asyncio.get_running_loop().run_in_executor(
                    self.cpu_pool, doc_jobs.sign_job, pdf, boxes, signing_request(profile)
                )
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "TSA_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "SIGN_FAILED") from None
        detail = self._signed_detail(signed, rule, profile)
        await self.artifacts.write(job.transaction_id, "signed.pdf", signed.pdf)
        return await self.outbox.mark_signed(job, signed, detail)

    @staticmethod
    def _signed_detail(signed: doc_jobs.SignedResult, rule: RuleConfig, profile: ProfileConfig) -> str:
        """The `signed` audit row's detail (and the log's word on a downgrade)."""
        detail = (
            f"PAdES {signed.level}, SHA-256 {signed.sha256}, signer {signed.signer_subject} "
            f"(serial {signed.signer_serial}), timestamp {signed.timestamp_time or 'none'}, "
            f"eIDAS {profile.eidas_level} (declared), validation: {signed.validation}"
        )
        if signed.downgraded_because:
            log.warning("signed at B-B: no timestamp authority answered and the profile allows a downgrade",
                        profile=rule.profile, reason=signed.downgraded_because)
            detail += f"; DOWNGRADED to B-B (profile on_tsa_failure: downgrade): {signed.downgraded_because}"
        return detail

    # ---------------------------------------------------------------------------------------- upload

    async def upload(self, job: Job, rules: Rules) -> Job:
        signed_path = self.artifacts.path(job.transaction_id, "signed.pdf")
        if job.upload_uncertain or job.attempts > 0 or not signed_path.exists():
            # A previous insert may have reached Salesforce before the connection failed: look first.
            existing = await self.sf.find_file(job.transaction_id)
            if existing is not None:
                log.info("upload already happened; reusing it", content_version_id=existing.id)
                return await self.outbox.mark_upload_found(job, existing.id, existing.content_document_id)
        if not signed_path.exists():
            # Nothing of this transaction is in Salesforce (checked above when in doubt): sign afresh.
            log.warning("signed PDF missing from the data directory; rendering and signing again")
            return await self.outbox.redo_from_fetched(job, drop_signature=True)
        title, path_on_client = _file_of(job)
        cv_id = await self.guarded_upload(job, NewFile(
            title=title,
            path_on_client=path_on_client,
            path=signed_path,  # read into the request body, not held by every waiting job
            first_publish_location_id=job.record_id,
            transaction_id=job.transaction_id,
        ))
        return await self.outbox.mark_uploaded(job, cv_id)

    async def guarded_upload(self, job: Job, file: NewFile) -> str:
        """Upload with the job marked `upload_uncertain` first: a failure that may have reached Salesforce
        leaves the mark, so the next attempt looks for the file before uploading it again."""
        await self.outbox.set_upload_uncertain(job, True)
        try:
            return await self.sf.upload(file)
        except SalesforceError as exc:
            if not exc.uncertain:
                await self.outbox.set_upload_uncertain(job, False)
            raise

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the process pool, a bounded number of documents at once (`cpu_slots`)."""
        async with self._cpu:
            return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    # ------------------------------------------------------------------------------------ write back

    async def write_back(self, job: Job, rules: Rules) -> Job:
        profile = _profile(job, rules)
        fields = signed_fields(
            transaction_id=job.transaction_id, signed_at=job.signed_at, sha256=job.sha256, level=job.level,
            timestamp=job.timestamp_time, signer=job.signer_subject, signer_serial=job.signer_serial,
            validation=job.validation, eidas_level=profile.eidas_level,
        )
        upgrade = profile.upgrades and job.level == SignatureLevel.B_T.value
        event = OutcomeEvent(job.transaction_id, (JobState.LTV_PENDING if upgrade else JobState.DONE).value,
                             audit_time(), f"upgrade to {profile.level} pending" if upgrade else None)
        # The upload guard may have learnt the file's 069 already; else the write-back reads it.
        file = SignedFile(self.instance_url(), version_id=job.content_version_id,
                          document_id=job.content_document_id or None)
        await self.pending.before_record_write(job.id)
        written = await self.sf.write(job, fields, event, file=file)
        now = time.time()
        self.metrics.documents_signed.labels(job.rule).inc()
        if job.event_time_ms:
            latency = now * 1000 - job.event_time_ms
            self.metrics.end_to_end_seconds.observe(max(latency, 0) / 1000)
            log.info("signed document on the record", end_to_end_ms=round(latency), level=job.level)
        if upgrade:
            # The rep sees `Signed` now; the long-term validation data follows in the background.
            return await self.outbox.mark_ltv_pending(job, recorded(written), visible_at=now,
                                                      upgrade_at=now + self.config.ltv_delay_s,
                                                      document_id=written.document_id)
        job = await self.outbox.mark_done(job, recorded(written), at=now, signed_visible=True,
                                          document_id=written.document_id)
        await self.artifacts.remove(job.transaction_id)  # the signed file now lives in Salesforce
        return job

    # ------------------------------------------------------------- long-term validation (B-LT, B-LTA)

    async def ltv_upgrade(self, job: Job, rules: Rules) -> Job:
        if self.sf.constrained():
            # Non-urgent: the record already shows Signed. Wait for the API budget to recover.
            log.info("API budget tight; long-term validation upgrade deferred",
                     defer_s=self.config.governor_defer_s)
            return await self.outbox.defer(job, time.time() + self.config.governor_defer_s)
        profile = _profile(job, rules)
        pdf = await self.artifacts.read(job.transaction_id, "signed.pdf")
        if pdf is None:  # the data directory was wiped or moved: Salesforce has the signed file
            pdf = await self.sf.download(job.content_version_id)
        try:
            async with self._cpu:
                result = await asyncio.get_running_loop().run_in_executor(
                    self.cpu_pool, doc_jobs.upgrade_job, pdf, upgrade_request(profile)
                )
        except doc_jobs.TransientDocumentFailure as exc:
            raise TransientFailure(str(exc), "LTV_UNAVAILABLE") from None
        except doc_jobs.DocumentFailure as exc:
            raise PermanentFailure(str(exc), "LTV_FAILED") from None
        await self.artifacts.write(job.transaction_id, "ltv.pdf", result.pdf)
        return await self.outbox.mark_ltv_upgraded(job, result)

    async def ltv_upload(self, job: Job, rules: Rules) -> Job:
        data = await self.artifacts.read(job.transaction_id, "ltv.pdf")
        if job.upload_uncertain or job.attempts > 0 or data is None:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest() if data is not None else None
            if md5 is not None and job.content_document_id:
                existing = await self.sf.find_version(job.content_document_id, md5)
                if existing is not None:
                    return await self.outbox.mark_ltv_upload_found(job, existing)
        if data is None:
            log.warning("upgraded PDF missing from the data directory; upgrading again")
            return await self.outbox.redo_ltv_upgrade(job)
        title, path_on_client = _file_of(job)
        version_id = await self.guarded_upload(job, NewFile(
            title=title,
            path_on_client=path_on_client,
            data=data,
            transaction_id=job.transaction_id,
            content_document_id=job.content_document_id,
            reason_for_change=f"sfsign: PAdES {job.ltv_level} (long-term validation data)",
        ))
        return await self.outbox.mark_ltv_uploaded(job, version_id)

    async def ltv_write_back(self, job: Job, rules: Rules) -> Job:
        fields = upgraded_fields(level=job.ltv_level, sha256=job.ltv_sha256, validation=job.validation,
                                 archive_due=job.archive_due)
        event = OutcomeEvent(job.transaction_id, JobState.DONE.value, audit_time(),
                             f"PAdES {job.ltv_level} on the record; file version {job.ltv_version_id}")
        written = await self.sf.write(job, fields, event)
        job = await self.outbox.mark_done(job, recorded(written))
        await self.artifacts.remove(job.transaction_id)
        return job
