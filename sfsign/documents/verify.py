"""Offline validation of signed PDFs against explicit trust roots.

Used by the tests and by `sfsign check`: it answers "is this file what we signed, signed by a
certificate that chains to a root we trust, and at which PAdES level?" without any network access
(allow_fetching=False), so a check never depends on a CA's OCSP responder being up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from pydantic import BaseModel, ConfigDict
from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature, async_validate_pdf_signature
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext

PADES_SUBFILTER = "/ETSI.CAdES.detached"
# A document signature is acceptable if the certificate allows either of these (RFC 5280 names).
_KEY_USAGE = KeyUsageConstraints(key_usage={"digital_signature", "non_repudiation"}, match_all_key_usages=False)
_PDFA_RE = re.compile(
    rb"pdfaid:part(?:>|=\")(?P<part>\d)(?:</pdfaid:part>|\")[\s\S]*?"
    rb"pdfaid:conformance(?:>|=\")(?P<conf>[A-Za-z])"
)


class ValidationError(Exception):
    """The input could not be examined at all (not a PDF, unreadable trust roots)."""


class SignatureReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    field_name: str
    intact: bool
    valid: bool
    trusted: bool
    coverage: str
    level: str | None
    signer_subject: str
    signing_time: dt.datetime | None
    timestamp_time: dt.datetime | None = None  # genTime of the signature timestamp token, if any
    timestamp_trusted: bool | None = None  # the token is intact and its TSA chains to a trust root
    summary: str


class ValidationReport(BaseModel):
    """Verdict on the document's most recent (approval) signature, plus every signature found."""

    model_config = ConfigDict(frozen=True)

    intact: bool
    valid: bool
    trusted: bool
    coverage: str  # ENTIRE_FILE, ENTIRE_REVISION, ... or NONE when the file carries no signature
    level: str | None  # B-B, B-T, B-LT, B-LTA as detected; None if not a PAdES signature
    signer_subject: str | None
    signing_time: dt.datetime | None
    summary: str
    timestamp_time: dt.datetime | None = None  # of the most recent signature; set from B-T on
    timestamp_trusted: bool | None = None
    pdfa: str | None = None  # declared PDF/A conformance, e.g. "2B"
    signatures: tuple[SignatureReport, ...] = ()
    unsigned_fields: tuple[str, ...] = ()


def _load_roots(paths: Sequence[Path]) -> list[asn1_x509.Certificate]:
    roots: list[asn1_x509.Certificate] = []
    for path in paths:
        try:
            roots.extend(load_certs_from_pemder_data(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ValidationError(f"cannot read trust root {path}: {exc}") from None
    if not roots:
        raise ValidationError("no trust roots given")
    return roots


def _declared_pdfa(reader: PdfFileReader) -> str | None:
    try:
        meta = reader.root["/Metadata"].get_object()
        data = meta.data
    except (KeyError, AttributeError):
        return None
    match = _PDFA_RE.search(data)
    return f"{match.group('part').decode()}{match.group('conf').decode().upper()}" if match else None


def _pades_level(
    sig: EmbeddedPdfSignature, status: PdfSignatureStatus, reader: PdfFileReader, has_doc_ts_after: bool
) -> str | None:
    """Baseline level from what the file carries (presence, not a full ETSI conformance check)."""
    if sig.sig_object.get("/SubFilter") != PADES_SUBFILTER:
        return None
    if status.timestamp_validity is None:
        return "B-B"
    dss = reader.root.get("/DSS")
    has_revinfo = dss is not None and ("/OCSPs" in dss or "/CRLs" in dss)
    if not has_revinfo:
        return "B-T"
    return "B-LTA" if has_doc_ts_after else "B-LT"


async def _report_one(
    sig: EmbeddedPdfSignature, vc: ValidationContext, reader: PdfFileReader, timestamps_after: bool
) -> SignatureReport:
    status = await async_validate_pdf_signature(sig, signer_validation_context=vc, key_usage_settings=_KEY_USAGE)
    coverage = status.coverage.name if status.coverage is not None else "UNCLEAR"
    ts = status.timestamp_validity
    return SignatureReport(
        field_name=str(sig.field_name),
        intact=status.intact,
        valid=status.valid,
        trusted=status.trusted,
        coverage=coverage,
        level=_pades_level(sig, status, reader, timestamps_after),
        signer_subject=str(status.signing_cert.subject.human_friendly),
        signing_time=sig.self_reported_timestamp,
        timestamp_time=ts.timestamp.astimezone(dt.UTC) if ts is not None else None,
        timestamp_trusted=(ts.intact and ts.valid and ts.trusted) if ts is not None else None,
        summary=status.summary(),
    )


def validate_signed_pdf(
    pdf: bytes, trust_roots: Sequence[Path], *, validation_time: dt.datetime | None = None
) -> ValidationReport:
    """Validate every approval signature in `pdf` against `trust_roots` (PEM or DER files).

    `validation_time` validates as of another moment (point-in-time validation), which keeps
    tests about certificate lifetimes deterministic. Runs its own event loop: on a running loop
    use `async_validate_signed_pdf`.
    """
    return asyncio.run(async_validate_signed_pdf(pdf, trust_roots, validation_time=validation_time))


async def async_validate_signed_pdf(
    pdf: bytes, trust_roots: Sequence[Path], *, validation_time: dt.datetime | None = None
) -> ValidationReport:
    """`validate_signed_pdf` for use on an event loop (CPU-bound: hashing the document)."""
    roots = _load_roots(trust_roots)
    try:
        reader = PdfFileReader(BytesIO(pdf))
        all_sigs = list(reader.embedded_signatures)
    except Exception as exc:  # pyHanko raises several types for malformed files
        raise ValidationError(f"not a readable PDF: {exc}") from None
    vc = ValidationContext(trust_roots=roots, allow_fetching=False, moment=validation_time)
    regular = [s for s in all_sigs if s.sig_object_type == "/Sig"]
    doc_ts_revisions = [s.signed_revision for s in all_sigs if s.sig_object_type == "/DocTimeStamp"]
    reports = tuple(
        [await _report_one(s, vc, reader, any(rev > s.signed_revision for rev in doc_ts_revisions)) for s in regular]
    )
    unsigned = _unsigned_fields(reader)
    pdfa = _declared_pdfa(reader)
    if not reports:
        return ValidationReport(
            intact=False,
            valid=False,
            trusted=False,
            coverage="NONE",
            level=None,
            signer_subject=None,
            signing_time=None,
            summary="the document carries no signature",
            pdfa=pdfa,
            unsigned_fields=unsigned,
        )
    last = reports[-1]
    return ValidationReport(
        intact=all(r.intact for r in reports),
        valid=all(r.valid for r in reports),
        trusted=all(r.trusted for r in reports),
        coverage=last.coverage,
        level=last.level,
        signer_subject=last.signer_subject,
        signing_time=last.signing_time,
        timestamp_time=last.timestamp_time,
        timestamp_trusted=last.timestamp_trusted,
        summary="; ".join(f"{r.field_name}: {r.summary} ({r.coverage})" for r in reports),
        pdfa=pdfa,
        signatures=reports,
        unsigned_fields=unsigned,
    )


def _unsigned_fields(reader: PdfFileReader) -> tuple[str, ...]:
    from pyhanko.sign.fields import enumerate_sig_fields

    return tuple(str(name) for name, value, _ in enumerate_sig_fields(reader) if value is None)
