"""Entry points the worker runs in its process pool: plain functions with picklable arguments.

They keep the pool boundary narrow: JSON and bytes go in, bytes and small records come out, and
every failure a person must fix becomes one picklable `DocumentFailure` with a readable message.
Keys are parsed once per pool process (cached in `sign.load_signer`), not once per document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sfsign.documents.render import RenderError, SignatureBox, render_pdf
from sfsign.documents.sign import Appearance, KeySpec, SignatureLevel, SigningError, sign_pdf_bytes


class DocumentFailure(Exception):
    """Rendering or signing failed for a reason retrying cannot fix (template, data, key)."""


@dataclass(frozen=True)
class SigningRequest:
    key: KeySpec
    appearance: Appearance
    level: SignatureLevel = SignatureLevel.B_B


@dataclass(frozen=True)
class SignedResult:
    pdf: bytes
    sha256: str
    level: str
    signer_subject: str
    signer_serial: str
    signed_at: str  # ISO 8601 UTC, as Salesforce's datetime fields want it


def render_job(document_json: str, template: str) -> tuple[bytes, dict[str, Any]]:
    """Render one document; return the PDF and the signature box (as a dict, for the outbox)."""
    try:
        rendered = render_pdf(json.loads(document_json), template)
    except RenderError as exc:
        raise DocumentFailure(f"could not render the document: {exc}") from None
    return rendered.pdf, rendered.signature_box.model_dump()


def sign_job(pdf: bytes, box: dict[str, Any], request: SigningRequest) -> SignedResult:
    """Sign one rendered document on its signature box."""
    try:
        signed = sign_pdf_bytes(
            pdf, SignatureBox.model_validate(box), request.key, request.appearance, level=request.level
        )
    except SigningError as exc:
        raise DocumentFailure(f"could not sign the document: {exc}") from None
    return SignedResult(
        pdf=signed.pdf,
        sha256=signed.sha256_hex,
        level=signed.level,
        signer_subject=signed.signer_subject,
        signer_serial=signed.signer_serial,
        signed_at=signed.signing_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
