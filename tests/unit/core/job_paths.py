"""Test setup: jobs walked to a state by the outbox's own named steps, so a row in a state holds what those
steps leave there (its audit rows, its signed-document memory), never columns set by hand."""

from __future__ import annotations

from dataclasses import replace

from sfsign.documents.jobs import SignedResult, UpgradedResult
from sfsign.outbox import Job, OutboxStore, StepAudit

SIGNED = SignedResult(pdf=b"%PDF", sha256="ab" * 32, level="B-T", signer_subject="CN=Seller", signer_serial="0f",
                      signed_at="2026-03-14T15:00:00.000Z", timestamp_time="2026-03-14T15:00:01.000Z",
                      validation="valid")
UPGRADED = UpgradedResult(pdf=b"%PDF", sha256="cd" * 32, level="B-LTA", validation="valid, LTV",
                          archive_due="2036-03-14T00:00:00Z")
VERSION = "068000000000001AAA"


def rendered(store: OutboxStore, job: Job) -> Job:
    job = store.mark_fetched(job, document_json="{}", file_title="Quote", file_name="Quote.pdf")
    return store.mark_rendered(job)


def signed(store: OutboxStore, job: Job, signed_at: str | None = None) -> Job:
    evidence = SIGNED if signed_at is None else replace(SIGNED, signed_at=signed_at)
    return store.mark_signed(rendered(store, job), evidence, "PAdES B-T")


def uploaded(store: OutboxStore, job: Job, version: str = VERSION, signed_at: str | None = None) -> Job:
    return store.mark_uploaded(signed(store, job, signed_at), version)


def done(store: OutboxStore, job: Job, *, document_id: str | None = None, at: float | None = None,
         signed_at: str | None = None, version: str = VERSION) -> Job:
    """Signed, uploaded and shown on the record (at `at`, default now), with the file's 069."""
    job = uploaded(store, job, version, signed_at)
    return store.mark_done(job, StepAudit("Signed"), at=at, signed_visible=True, document_id=document_id)


def ltv_pending(store: OutboxStore, job: Job, *, at: float = 1.0) -> Job:
    """Signed at B-T and shown on the record at `at`; the long-term upgrade still to come."""
    return store.mark_ltv_pending(uploaded(store, job), StepAudit("Signed"), visible_at=at, upgrade_at=at)
