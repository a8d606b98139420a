"""The named steps of a job's life, one method each: what a step changes is written down here, not spread
over keyword arguments at the call site.

Each step writes its state change and that change's audit row in one SQLite transaction (through
`JobChanges._change`) and returns the job as it now is. The audit detail is built here when it follows from
the step's own values; a step whose detail needs the caller's knowledge (the profile's eIDAS level, why a
record was skipped) takes it as an argument.
"""

from __future__ import annotations

import time

from sfsign.outbox.changes import JobChanges
from sfsign.outbox.models import (
    Job,
    JobState,
    SignatureEvidence,
    StepAudit,
    UpgradeEvidence,
)

_NO_DETAIL = StepAudit()


class JobSteps(JobChanges):
    """Named state changes of a job, from `queued` to a final state (`IntakeStore.requeue` puts it back)."""

    # ------------------------------------------------------------------------- the first signature

    def mark_fetched(self, job: Job, *, document_json: str, file_title: str, file_name: str,
                     signers_json: str | None = None) -> Job:
        """The record is read and its document built: rendering is next. `signers_json`: a rule with signers
        keeps them as resolved now, so a restart does not read them again."""
        return self._change(job.id, {"state": JobState.FETCHED, "document_json": document_json,
                                     "file_title": file_title, "file_name": file_name,
                                     "signers_json": signers_json}, _NO_DETAIL)

    def redo_from_fetched(self, job: Job, *, drop_signature: bool = False) -> Job:
        """A rendered or signed file vanished from the data directory before its file reached Salesforce:
        render (and sign) again. `drop_signature` forgets the hash of the signature that is gone."""
        changes: dict[str, object] = {"state": JobState.FETCHED}
        if drop_signature:
            changes["sha256"] = None
        return self._change(job.id, changes, _NO_DETAIL)

    def mark_rendered(self, job: Job) -> Job:
        """The PDF and its signature boxes are on disk: signing is next."""
        return self._change(job.id, {"state": JobState.RENDERED}, _NO_DETAIL)

    def mark_signed(self, job: Job, evidence: SignatureEvidence, detail: str) -> Job:
        """The signed PDF is on disk; the row keeps what the record will show of the signature."""
        return self._change(job.id, _signed_changes(evidence), StepAudit(detail))

    def mark_rendered_and_signed(self, job: Job, evidence: SignatureEvidence, detail: str) -> Job:
        """Rendered and signed in one pool task (the signed PDF is on disk, the rendered one never was):
        both states, each with its audit row, in one transaction, as if the steps had run one by one."""
        with self._transaction() as conn:
            self._apply(conn, job.id, {"state": JobState.RENDERED}, _NO_DETAIL)
            return self._apply(conn, job.id, _signed_changes(evidence), StepAudit(detail))

    def take_rule(self, job: Job, rule: str) -> Job:
        """A Send for Signature that named no rule takes the rule covering the record's type, read at fetch.
        Raises `sqlite3.IntegrityError` when another job of the record holds that rule's slot."""
        return self._change(job.id, {"rule": rule}, None)

    def set_upload_uncertain(self, job: Job, uncertain: bool) -> Job:
        """The upload guard: set before an upload, cleared when its failure surely did not reach Salesforce.
        A job left marked looks for its file before uploading it again."""
        return self._change(job.id, {"upload_uncertain": int(uncertain)}, None)

    def mark_uploaded(self, job: Job, version_id: str) -> Job:
        """The signed file is in Salesforce: the write-back is next."""
        return self._change(job.id, {"state": JobState.UPLOADED, "content_version_id": version_id,
                                     "upload_uncertain": 0}, StepAudit(f"ContentVersion {version_id}"))

    def mark_upload_found(self, job: Job, version_id: str, document_id: str | None) -> Job:
        """An earlier attempt's upload reached Salesforce after all (found by transaction id): it is used."""
        return self._change(job.id, {"state": JobState.UPLOADED, "content_version_id": version_id,
                                     "content_document_id": document_id, "upload_uncertain": 0}, _NO_DETAIL)

    def mark_done(self, job: Job, audit: StepAudit, *, at: float | None = None, signed_visible: bool = False,
                  document_id: str | None = None) -> Job:
        """The record shows the document: the job is finished. `signed_visible` when this write-back is the
        one that showed `Signed` (not a long-term upgrade of a document shown before); the document's data
        then leaves the row. `document_id`: the file's ContentDocument (069), when the write-back read it."""
        now = time.time() if at is None else at
        changes: dict[str, object] = {"state": JobState.DONE, "done_at": now, "last_error": None}
        if signed_visible:
            changes.update(signed_visible_at=now, document_json=None)
        if document_id is not None:
            changes["content_document_id"] = document_id
        return self._change(job.id, changes, audit)

    def mark_ltv_pending(self, job: Job, audit: StepAudit, *, visible_at: float, upgrade_at: float,
                         document_id: str | None = None) -> Job:
        """The record shows `Signed` (B-T); the long-term validation upgrade runs from `upgrade_at`.
        `document_id`: the file's ContentDocument (069), when the write-back read it."""
        changes: dict[str, object] = {"state": JobState.LTV_PENDING, "signed_visible_at": visible_at,
                                      "document_json": None, "attempts": 0, "next_attempt_at": upgrade_at}
        if document_id is not None:
            changes["content_document_id"] = document_id
        return self._change(job.id, changes, audit)

    def mark_adopted(self, job: Job, *, version_id: str, document_id: str | None, detail: str) -> Job:
        """A file with this transaction id was already in Salesforce (the trigger was handled before this
        outbox knew of it): nothing is signed again and the job is done with that file."""
        now = time.time()
        return self._change(job.id, {"state": JobState.DONE, "done_at": now, "signed_visible_at": now,
                                     "content_version_id": version_id, "content_document_id": document_id},
                            StepAudit(detail))

    def mark_skipped(self, job: Job, why: str) -> Job:
        """The rule does not cover the record's type: nothing signed, nothing to retry."""
        return self._change(job.id, {"state": JobState.SKIPPED, "done_at": time.time()}, StepAudit(why))

    # ------------------------------------------------------------------ long-term validation (B-LT, B-LTA)

    def defer(self, job: Job, until: float) -> Job:
        """Not now (the API budget is tight): the job stays where it is and falls due at `until`."""
        return self._change(job.id, {"next_attempt_at": until}, None)

    def mark_ltv_upgraded(self, job: Job, evidence: UpgradeEvidence) -> Job:
        """The upgraded PDF is on disk: its upload as a new version of the same file is next."""
        detail = (f"PAdES {evidence.level}, SHA-256 {evidence.sha256}, validation: {evidence.validation}, "
                  f"archive timestamp due {evidence.archive_due or 'unknown'}")
        return self._change(job.id, {
            "state": JobState.LTV_UPGRADED, "ltv_sha256": evidence.sha256, "ltv_level": evidence.level,
            "validation": evidence.validation, "archive_due": evidence.archive_due,
        }, StepAudit(detail))

    def redo_ltv_upgrade(self, job: Job) -> Job:
        """The upgraded PDF vanished from the data directory before it reached Salesforce: upgrade again."""
        return self._change(job.id, {"state": JobState.LTV_PENDING, "ltv_sha256": None}, _NO_DETAIL)

    def mark_ltv_uploaded(self, job: Job, version_id: str) -> Job:
        """The upgraded file is a new version in Salesforce: the record's write-back is next."""
        return self._change(job.id, {"state": JobState.LTV_UPLOADED, "ltv_version_id": version_id,
                                     "upload_uncertain": 0},
                            StepAudit(f"ContentVersion {version_id} (PAdES {job.ltv_level})"))

    def mark_ltv_upload_found(self, job: Job, version_id: str) -> Job:
        """An earlier attempt's upgraded version reached Salesforce after all (same checksum): it is used."""
        return self._change(job.id, {"state": JobState.LTV_UPLOADED, "ltv_version_id": version_id,
                                     "upload_uncertain": 0}, _NO_DETAIL)

    # ------------------------------------------------------------------------------------ failures

    def note_failure(self, job: Job, reason: str, code: str) -> Job:
        """Keep why the job fails before the record is told, so a crash in between loses no reason."""
        return self._change(job.id, {"last_error": reason, "error_code": code}, None)

    def schedule_retry(self, job: Job, due_at: float, reason: str, code: str, *, attempts: int,
                       failing_since: float) -> Job:
        """A transient failure: the job stays in its state and falls due again at `due_at`."""
        return self._change(job.id, {"attempts": attempts, "next_attempt_at": due_at, "last_error": reason,
                                     "error_code": code, "failing_since": failing_since}, None)

    def reset_retry_window(self, job: Job) -> Job:
        """The job moved on after failures: its next failure starts a new retry window."""
        return self._change(job.id, {"failing_since": None}, None)

    def mark_error(self, job: Job, reason: str, code: str) -> Job:
        """A permanent failure, reported on the record: `sfsign retry` may put the job back."""
        return self._change(job.id, {"state": JobState.ERROR, "last_error": reason, "error_code": code},
                            StepAudit(f"{code}: {reason}"))

    def mark_dead(self, job: Job, *, attempts: int, message: str, reason: str, code: str) -> Job:
        """Failing for the whole retry window and the record says so (`message`): a person must act."""
        return self._change(job.id, {"state": JobState.DEAD, "attempts": attempts, "last_error": message,
                                     "error_code": code}, StepAudit(f"{code}: {reason}"))


def _signed_changes(evidence: SignatureEvidence) -> dict[str, object]:
    return {
        "state": JobState.SIGNED, "sha256": evidence.sha256, "level": evidence.level,
        "signer_subject": evidence.signer_subject, "signer_serial": evidence.signer_serial,
        "signed_at": evidence.signed_at, "timestamp_time": evidence.timestamp_time,
        "validation": evidence.validation,
    }
