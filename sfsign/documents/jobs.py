"""Entry points the worker runs in its process pool: plain functions with picklable arguments.

They keep the pool boundary narrow: JSON and bytes go in, bytes and small records come out, and
every failure a person must fix becomes one picklable `DocumentFailure` with a readable message.
Keys are parsed once per pool process (cached in `sign.load_signer`), not once per document.
The daemon process imports this module for the request types and to name the entry points; pyHanko is
imported by the entry points that sign or validate (the pool's fork server has it loaded already), so
the daemon process never loads it for them.
A failure that time can heal (no timestamp authority or revocation responder answered) is a
`TransientDocumentFailure` instead, which the worker retries with backoff and never turns into a
weaker signature unless the profile explicitly allows a downgrade.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsign.documents.errors import SigningError, TimestampUnavailable, ValidationInfoUnavailable
from sfsign.documents.model import sample_contract
from sfsign.documents.render import RenderError, SignatureBox, render_pdf
from sfsign.documents.specs import Appearance, KeySource, SignatureLevel, TsaAuth
from sfsign.salesforce.names import VALIDATION_LENGTH


class DocumentFailure(Exception):
    """Rendering or signing failed for a reason retrying cannot fix (template, data, key)."""


class RenderFailure(DocumentFailure):
    """The template could not be rendered with the record's data (as opposed to a signing failure)."""


class TransientDocumentFailure(Exception):
    """A timestamp authority or revocation responder did not answer: worth retrying later."""


@dataclass(frozen=True)
class SigningRequest:
    key: KeySource
    appearance: Appearance
    level: SignatureLevel = SignatureLevel.B_B  # the request path's level: B-B or B-T
    tsa_urls: tuple[str, ...] = ()
    tsa_auth: TsaAuth | None = None
    downgrade_on_tsa_failure: bool = False
    trust_roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SignedResult:
    pdf: bytes
    sha256: str
    level: str
    signer_subject: str
    signer_serial: str
    signed_at: str  # ISO 8601 UTC, as Salesforce's datetime fields want it
    timestamp_time: str | None = None  # genTime of the signature timestamp, ISO 8601 UTC
    validation: str = ""  # the validator's one-line verdict, for the record
    downgraded_because: str | None = None  # set when the profile allowed signing at B-B without a TSA


@dataclass(frozen=True)
class UpgradeRequest:
    target: SignatureLevel  # B-LT or B-LTA; a B-LTA input gets a new archive timestamp instead
    tsa_urls: tuple[str, ...]
    tsa_auth: TsaAuth | None
    trust_roots: tuple[Path, ...]


@dataclass(frozen=True)
class UpgradedResult:
    pdf: bytes
    sha256: str
    level: str
    validation: str
    archive_due: str | None  # when the newest timestamp's certificate expires, ISO 8601 UTC


def salesforce_datetime(moment: dt.datetime | None) -> str | None:
    """Salesforce's DateTime format (UTC, milliseconds, Z)."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _validate(pdf: bytes, trust_roots: Sequence[Path]) -> str:
    from sfsign.documents.verify import ValidationError, validate_signed_pdf

    if not trust_roots:
        return "not validated: no trust_roots configured in the signing profile"
    try:
        return validate_signed_pdf(pdf, trust_roots).verdict()
    except ValidationError as exc:
        return f"not validated: {exc}"[:VALIDATION_LENGTH]  # what the record's validation field holds


def warm_up(
    templates: tuple[str, ...] = ("proposal", "quote"), sample_fields: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Run once in each pool process at start, so the first real document does not pay for loading
    Typst, its fonts and each template's compiler (about 140 ms per template and process).

    Returns the templates that fail on sample data: worth a warning at start, but not fatal, since
    a template may only fail for some records (those then get `Error` with the reason).
    `sample_fields` names, per template, the fields its rules list: the sample carries each (its value
    is its name), as a real record would, so a template that prints them is not reported."""
    problems = []
    for template in templates:
        fields = {name: name for name in (sample_fields or {}).get(template, ())}
        try:
            render_pdf(sample_contract(kind="quote", line_count=1).model_copy(update={"fields": fields}), template)
        except RenderError as exc:
            problems.append(str(exc))
    return problems


def render_job(document_json: str, template: str) -> tuple[bytes, dict[str, Any], tuple[str, ...]]:
    """Render one document; return the PDF, its signature boxes (plain dicts, kept beside the PDF) and
    the notes for the job log (what rendering had to change, e.g. characters no font has)."""
    try:
        rendered = render_pdf(json.loads(document_json), template)
    except RenderError as exc:
        raise RenderFailure(f"could not render the document: {exc}") from None
    boxes = {
        "seller": rendered.signature_box.model_dump(),
        "customer": rendered.customer_box.model_dump() if rendered.customer_box else None,
        "customers": [box.model_dump() for box in rendered.customer_boxes],  # one per signer, in order
    }
    return rendered.pdf, boxes, rendered.notes


def sign_job(pdf: bytes, boxes: dict[str, Any], request: SigningRequest) -> SignedResult:
    """Sign one rendered document on the seller's box, then validate the result for the record.

    Every signer's box becomes an empty signature field *before* the seller signs: a field added
    after the first signature would invalidate it (signing-notes pitfall 7). Fields that exist already
    (signed by the customers first, `signer_jobs`) are left as they are.
    """
    from sfsign.documents.sign import sign_pdf_bytes
    from sfsign.documents.signer_signature import customer_fields

    empty = customer_fields(boxes)
    level, downgraded = request.level, None
    while True:
        try:
            signed = sign_pdf_bytes(
                pdf,
                SignatureBox.model_validate(boxes["seller"]),
                request.key,
                request.appearance,
                level=level,
                tsa_urls=request.tsa_urls,
                tsa_auth=request.tsa_auth,
                empty_fields=empty,
            )
            break
        except TimestampUnavailable as exc:
            if not request.downgrade_on_tsa_failure or level is SignatureLevel.B_B:
                raise TransientDocumentFailure(str(exc)) from None
            level, downgraded = SignatureLevel.B_B, str(exc)
        except SigningError as exc:
            raise DocumentFailure(f"could not sign the document: {exc}") from None
    return SignedResult(
        pdf=signed.pdf,
        sha256=signed.sha256_hex,
        level=signed.level,
        signer_subject=signed.signer_subject,
        signer_serial=signed.signer_serial,
        signed_at=signed.signing_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        timestamp_time=salesforce_datetime(signed.timestamp_time),
        validation=_validate(signed.pdf, request.trust_roots),
        downgraded_because=downgraded,
    )


def render_and_sign_job(document_json: str, template: str, request: SigningRequest
                        ) -> tuple[SignedResult, tuple[str, ...]]:
    """`render_job` then `sign_job` in one pool task: the rendered PDF never crosses back to the daemon
    and out again, nor touches the disk. Re-rendering after a crash or a timestamp authority that did
    not answer costs one render; the daemon's work per document (two hand-offs, two files, a transaction)
    cost more than that in a burst."""
    pdf, boxes, notes = render_job(document_json, template)
    return sign_job(pdf, boxes, request), notes


def upgrade_job(pdf: bytes, request: UpgradeRequest) -> UpgradedResult:
    """Bring a signed B-T file to B-LT/B-LTA, or give a B-LTA file a new archive timestamp."""
    from sfsign.documents import ltv
    from sfsign.documents.verify import ValidationError, validate_signed_pdf

    try:
        current = validate_signed_pdf(pdf, request.trust_roots)
        if current.level == SignatureLevel.B_LTA.value:
            upgraded = ltv.add_archive_timestamp(
                pdf, trust_roots=request.trust_roots, tsa_urls=request.tsa_urls, tsa_auth=request.tsa_auth
            )
        else:
            upgraded = ltv.upgrade_pdf(
                pdf, request.target, trust_roots=request.trust_roots, tsa_urls=request.tsa_urls,
                tsa_auth=request.tsa_auth,
            )
        report = validate_signed_pdf(upgraded.pdf, request.trust_roots)
    except (TimestampUnavailable, ValidationInfoUnavailable) as exc:
        raise TransientDocumentFailure(str(exc)) from None
    except (SigningError, ValidationError) as exc:
        raise DocumentFailure(f"could not add long-term validation data: {exc}") from None
    return UpgradedResult(
        pdf=upgraded.pdf,
        sha256=upgraded.sha256_hex,
        level=upgraded.level,
        validation=report.verdict(),
        # Only a B-LTA file is renewed by archive timestamps; a B-LT file just ages out.
        archive_due=salesforce_datetime(upgraded.newest_timestamp_expiry) if upgraded.level == "B-LTA" else None,
    )


def signature_fields_job(pdf: bytes) -> dict[str, bool]:
    """`signer_signature.signature_fields` in the pool: every signature field of `pdf`, signed or not."""
    from sfsign.documents.signer_signature import signature_fields

    return signature_fields(pdf)


def certificate_expiry_job(keys: Mapping[str, KeySource]) -> tuple[dict[str, dt.datetime], dict[str, str]]:
    """Each named key's certificate `not_after`, and why a key could not be loaded (`Type: message`), for
    the daemon's expiry gauge: loading a key takes pyHanko, which only the pool processes have."""
    from sfsign.documents.sign import load_signer

    found: dict[str, dt.datetime] = {}
    unreadable: dict[str, str] = {}
    for name, key in keys.items():
        try:
            signer = load_signer(key)
        except Exception as exc:  # any reason: the gauge leaves the profile out and the daemon logs why
            unreadable[name] = f"{type(exc).__name__}: {exc}"
            continue
        if signer.signing_cert is not None:
            found[name] = signer.signing_cert["tbs_certificate"]["validity"]["not_after"].native
    return found, unreadable
