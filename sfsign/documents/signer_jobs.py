"""Pool entry points for customer signing: plain functions with picklable arguments, like `jobs.py`.

The worker calls them in its process pool, in one of two orders (the rule's `seal`):
- `before_sending`: `jobs.render_and_sign_job` seals and creates every signer's empty field; then
  `signer_sign_job` once per signer; then `complete_job` after the last one.
- `after_signing`: `fields_job` adds the seller's and every signer's empty field to the rendered PDF (no
  signature yet); then `signer_sign_job` per signer; then `jobs.sign_job` seals (its fields exist, so
  nothing is added after a signature); then `complete_job`.
Neither order certifies (no DocMDP): a certification must be the first signature, which in the second
order is a customer's; every signature is an approval signature, and `complete_job` checks that later
revisions only filled fields, signed or added validation data.

Failures map as in `jobs.py`: `TransientDocumentFailure` when a TSA or responder did not answer (retry),
`DocumentFailure` for what retrying cannot fix. `FieldAlreadySigned` is passed through unchanged: the
signature was applied before (a retried job, a double click), which the worker records as done.

pyHanko is imported inside the entry points, not here: the daemon process imports this module for the
request and result types (see `jobs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsign.documents.completion_certificate import CompletionCertificate, sealed_certificate
from sfsign.documents.completion_check import CompletionVerdict, check_completed
from sfsign.documents.errors import FieldAlreadySigned, SigningError, TimestampUnavailable, ValidationInfoUnavailable
from sfsign.documents.jobs import (
    DocumentFailure,
    RenderFailure,
    TransientDocumentFailure,
    render_job,
    salesforce_datetime,
)
from sfsign.documents.render import RenderError, SignatureBox
from sfsign.documents.specs import SIGNATURE_FIELD, KeySource, SignatureLevel, SignerEvidence, TsaAuth


@dataclass(frozen=True)
class SignerRequest:
    key: KeySource  # the profile's signing key: the org signs on the signer's behalf
    field_name: str  # `sign.customer_field(index)` of the signer's position in the signing order
    evidence: SignerEvidence
    tsa_urls: tuple[str, ...]
    tsa_auth: TsaAuth | None = None


@dataclass(frozen=True)
class SignerResult:
    pdf: bytes
    sha256: str
    field_name: str
    signed_at: str  # ISO 8601 UTC, what /M says (the signer's click)
    timestamp_time: str | None  # genTime of the signature timestamp


@dataclass(frozen=True)
class CompletionRequest:
    expected_fields: tuple[str, ...]  # the seller's and every signer's field
    trust_roots: tuple[Path, ...]
    tsa_urls: tuple[str, ...]
    tsa_auth: TsaAuth | None = None
    target: SignatureLevel = SignatureLevel.B_LTA  # the profile's long-term level: B-LT or B-LTA
    require_pdfsig: bool = False


@dataclass(frozen=True)
class CompletedResult:
    pdf: bytes
    sha256: str
    level: str
    verdict: CompletionVerdict  # per signature; `verdict.ok` must hold before the record says Completed
    archive_due: str | None


def fields_job(pdf: bytes, boxes: Mapping[str, Any]) -> bytes:
    """Seal after the signers: the rendered PDF with the seller's and every signer's empty field."""
    from sfsign.documents.signer_signature import add_signature_fields, customer_fields

    wanted = ((SIGNATURE_FIELD, SignatureBox.model_validate(boxes["seller"])), *customer_fields(boxes))
    try:
        return add_signature_fields(pdf, wanted)
    except SigningError as exc:
        raise DocumentFailure(f"could not add the signature fields: {exc}") from None


def render_with_fields_job(document_json: str, template: str) -> tuple[bytes, dict[str, Any], tuple[str, ...]]:
    """Seal after the signers, in one pool task: `jobs.render_job` then `fields_job`. Returns the PDF with
    every empty field, its boxes (the seal needs the seller's later) and the rendering notes."""
    pdf, boxes, notes = render_job(document_json, template)
    return fields_job(pdf, boxes), boxes, notes


def signer_sign_job(pdf: bytes, request: SignerRequest) -> SignerResult:
    """One signer's signature in their field, B-T."""
    from sfsign.documents.signer_signature import sign_for_signer

    try:
        signed = sign_for_signer(pdf, request.field_name, request.key, request.evidence,
                                 tsa_urls=request.tsa_urls, tsa_auth=request.tsa_auth)
    except FieldAlreadySigned:
        raise
    except TimestampUnavailable as exc:
        raise TransientDocumentFailure(str(exc)) from None
    except SigningError as exc:
        raise DocumentFailure(f"could not apply the signature: {exc}") from None
    return SignerResult(
        pdf=signed.pdf,
        sha256=signed.sha256_hex,
        field_name=request.field_name,
        signed_at=signed.signing_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        timestamp_time=salesforce_datetime(signed.timestamp_time),
    )


def complete_job(pdf: bytes, request: CompletionRequest) -> CompletedResult:
    """After the last signature (and the seal): long-term validation data at the profile's level, then the
    verdict of pyHanko and pdfsig on every signature."""
    from sfsign.documents import ltv
    from sfsign.documents.verify import ValidationError

    try:
        upgraded = ltv.upgrade_pdf(pdf, request.target, trust_roots=request.trust_roots,
                                   tsa_urls=request.tsa_urls, tsa_auth=request.tsa_auth)
        verdict = check_completed(upgraded.pdf, request.trust_roots, request.expected_fields,
                                  require_pdfsig=request.require_pdfsig)
    except (TimestampUnavailable, ValidationInfoUnavailable) as exc:
        raise TransientDocumentFailure(str(exc)) from None
    except (SigningError, ValidationError) as exc:
        raise DocumentFailure(f"could not complete the document: {exc}") from None
    return CompletedResult(
        pdf=upgraded.pdf,
        sha256=upgraded.sha256_hex,
        level=upgraded.level,
        verdict=verdict,
        archive_due=salesforce_datetime(upgraded.newest_timestamp_expiry) if upgraded.level == "B-LTA" else None,
    )


def certificate_job(cert: CompletionCertificate, key: KeySource, tsa_urls: Sequence[str],
                    tsa_auth: TsaAuth | None = None) -> tuple[bytes, str]:
    """The sealed certificate of completion (B-T) and its SHA-256."""
    try:
        signed = sealed_certificate(cert, key, tsa_urls=tsa_urls, tsa_auth=tsa_auth)
    except RenderError as exc:
        raise RenderFailure(f"could not render the certificate of completion: {exc}") from None
    except TimestampUnavailable as exc:
        raise TransientDocumentFailure(str(exc)) from None
    except SigningError as exc:
        raise DocumentFailure(f"could not seal the certificate of completion: {exc}") from None
    return signed.pdf, hashlib.sha256(signed.pdf).hexdigest()
