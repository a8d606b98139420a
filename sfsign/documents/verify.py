"""Offline validation of signed PDFs against explicit trust roots.

Used by the tests and by `sfsign check`: it answers "is this file what we signed, signed by a
certificate that chains to a root we trust, and at which PAdES level?" without any network access
(allow_fetching=False), so a check never depends on a CA's OCSP responder being up.

Signatures of files that carry revocation data in a DSS (B-LT, B-LTA) are validated with pyHanko's
ETSI EN 319 102-1 long-term validation (`ades_lta_validation`) from the file's content only:
revocation data is required for every certificate, and document timestamps provide proof of
existence, so a B-LTA file still validates years later, after the signer certificate expired.
One deliberate leniency: the revocation data of timestamp (TSA) chains is accepted however old
it is, because the newest document timestamp can never have fresh data offline; everything the
timestamps protect (the signer's chain and older timestamps) is checked strictly at its POE time.
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
from pyhanko.sign.ades.report import AdESPassed
from pyhanko.sign.validation.ades import ades_lta_validation
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature, async_validate_pdf_signature
from pyhanko.sign.validation.policy_decl import (
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy, FreshnessReqType
from pyhanko_certvalidator.registry import SimpleTrustManager

from sfsign.documents import hexstrings
from sfsign.salesforce.names import VALIDATION_LENGTH

hexstrings.install()  # this module reads PDFs with pyHanko

PADES_SUBFILTER = "/ETSI.CAdES.detached"
# A document signature is acceptable if the certificate allows either of these (RFC 5280 names).
_KEY_USAGE = KeyUsageConstraints(key_usage={"digital_signature", "non_repudiation"}, match_all_key_usages=False)
VERDICT_MAX_CHARS = VALIDATION_LENGTH  # the verdict goes into the record's Sign_Validation__c
# "Any age" for TSA revocation data (see the module docstring): far beyond any certificate's life.
_TSA_REVINFO_FRESHNESS = dt.timedelta(days=365 * 100)
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
    revocation_checked: bool = False  # validated with required revocation data from the file (B-LT and up)
    # What later revisions changed, by pyHanko's difference analysis: NONE, LTA_UPDATES (DSS, document
    # timestamps), FORM_FILLING (filling fields, signing), ANNOTATIONS or OTHER (e.g. a page changed).
    modification_level: str | None = None
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
    revocation_checked: bool = False  # every signature was validated with required revocation data
    document_timestamps: int = 0  # document (archive) timestamps in the file
    document_timestamp_time: dt.datetime | None = None  # genTime of the newest document timestamp
    pdfa: str | None = None  # declared PDF/A conformance, e.g. "2B"
    signatures: tuple[SignatureReport, ...] = ()
    unsigned_fields: tuple[str, ...] = ()

    def verdict(self) -> str:
        """One line for a Salesforce field, e.g. "TRUSTED INTACT B-LTA; timestamp 2026-11-27T16:02:11Z"."""
        if not self.signatures:
            return "UNSIGNED; the document carries no signature"
        parts = [
            "TRUSTED" if self.trusted else "UNTRUSTED",
            "INTACT" if self.intact else "MODIFIED",
            self.level or "not PAdES",
        ]
        line = " ".join(parts)
        newest = self.document_timestamp_time or self.timestamp_time
        if newest is not None:
            line += "; timestamp " + newest.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.revocation_checked:
            line += "; revocation checked"
        if not self.trusted or not self.intact:
            line += "; " + self.summary
        return line if len(line) <= VERDICT_MAX_CHARS else line[: VERDICT_MAX_CHARS - 1] + "…"


def load_trust_roots(paths: Sequence[Path]) -> list[asn1_x509.Certificate]:
    """Certificates from PEM/DER files; `ValidationError` names an unreadable file or an empty list."""
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
    if not _has_revinfo(reader):
        return "B-T"
    return "B-LTA" if has_doc_ts_after else "B-LT"


def _has_revinfo(reader: PdfFileReader) -> bool:
    dss = reader.root.get("/DSS")
    if dss is None:
        return False
    dss = dss.get_object()
    return "/OCSPs" in dss or "/CRLs" in dss


def _ltv_spec(roots: list[asn1_x509.Certificate]) -> PdfSignatureValidationSpec:
    """Revocation data required for every certificate, from the file only (never fetched)."""
    trust = SimpleTrustManager.build(roots)
    return PdfSignatureValidationSpec(
        SignatureValidationSpec(
            cert_validation_policy=CertValidationPolicySpec(
                trust_manager=trust, revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO)
            ),
            ts_cert_validation_policy=CertValidationPolicySpec(
                trust_manager=trust,
                revinfo_policy=CertRevTrustPolicy(
                    REQUIRE_REVINFO,
                    freshness=_TSA_REVINFO_FRESHNESS,
                    freshness_req_type=FreshnessReqType.MAX_DIFF_REVOCATION_VALIDATION,
                ),
            ),
            revinfo_gathering_policy=RevocationInfoGatheringSpec(
                online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY
            ),
            key_usage_settings=_KEY_USAGE,
        )
    )


async def _ltv_status(
    sig: EmbeddedPdfSignature, spec: PdfSignatureValidationSpec, validation_time: dt.datetime | None
) -> tuple[PdfSignatureStatus | None, bool, str | None]:
    """(status, passed, failure message) of the ETSI long-term validation of `sig`."""
    moment = validation_time or dt.datetime.now(dt.UTC)
    timing = ValidationTimingInfo(
        validation_time=moment, best_signature_time=moment, point_in_time_validation=validation_time is not None
    )
    result = await ades_lta_validation(sig, spec, timing_info=timing)
    status = result.api_status
    return (
        status if isinstance(status, PdfSignatureStatus) else None,
        result.ades_subindic is AdESPassed.OK,
        result.failure_msg,
    )


async def _report_one(
    sig: EmbeddedPdfSignature,
    vc: ValidationContext,
    reader: PdfFileReader,
    timestamps_after: bool,
    ltv_spec: PdfSignatureValidationSpec | None,
    validation_time: dt.datetime | None,
    roots: list[asn1_x509.Certificate],
) -> SignatureReport:
    status: PdfSignatureStatus | None = None
    revocation_checked = False
    failure: str | None = None
    if ltv_spec is not None and timestamps_after:  # B-LTA: proof of existence from document timestamps
        status, revocation_checked, failure = await _ltv_status(sig, ltv_spec, validation_time)
    elif ltv_spec is not None:  # B-LT: the DSS's revocation data must cover the validation time
        hard_vc = DocumentSecurityStore.read_dss(reader).as_validation_context(
            {
                "trust_roots": roots,
                "moment": validation_time,
                "allow_fetching": False,
                "revinfo_policy": CertRevTrustPolicy(REQUIRE_REVINFO),
            }
        )
        status = await async_validate_pdf_signature(
            sig, signer_validation_context=hard_vc, key_usage_settings=_KEY_USAGE
        )
        revocation_checked = status.bottom_line
    if status is None:
        status = await async_validate_pdf_signature(sig, signer_validation_context=vc, key_usage_settings=_KEY_USAGE)
    trusted = status.trusted and (revocation_checked or ltv_spec is None)
    coverage = status.coverage.name if status.coverage is not None else "UNCLEAR"
    ts = status.timestamp_validity
    summary = status.summary()
    if ltv_spec is not None and not revocation_checked and failure:
        summary = f"{summary}; long-term validation: {failure}"
    return SignatureReport(
        field_name=str(sig.field_name),
        intact=status.intact,
        valid=status.valid,
        trusted=trusted,
        coverage=coverage,
        level=_pades_level(sig, status, reader, timestamps_after),
        signer_subject=str(status.signing_cert.subject.human_friendly),
        signing_time=sig.self_reported_timestamp,
        timestamp_time=ts.timestamp.astimezone(dt.UTC) if ts is not None else None,
        timestamp_trusted=(ts.intact and ts.valid and ts.trusted) if ts is not None else None,
        revocation_checked=revocation_checked,
        modification_level=status.modification_level.name if status.modification_level is not None else None,
        summary=summary,
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
    roots = load_trust_roots(trust_roots)
    try:
        reader = PdfFileReader(BytesIO(pdf))
        all_sigs = list(reader.embedded_signatures)
    except Exception as exc:  # pyHanko raises several types for malformed files
        raise ValidationError(f"not a readable PDF: {exc}") from None
    vc = ValidationContext(trust_roots=roots, allow_fetching=False, moment=validation_time)
    regular = [s for s in all_sigs if s.sig_object_type == "/Sig"]
    doc_ts_revisions = [s.signed_revision for s in all_sigs if s.sig_object_type == "/DocTimeStamp"]
    ltv_spec = _ltv_spec(roots) if _has_revinfo(reader) else None
    reports = tuple(
        [
            await _report_one(
                s,
                vc,
                reader,
                any(rev > s.signed_revision for rev in doc_ts_revisions),
                ltv_spec,
                validation_time,
                roots,
            )
            for s in regular
        ]
    )
    return _document_report(reader, reports)


def _document_report(reader: PdfFileReader, reports: tuple[SignatureReport, ...]) -> ValidationReport:
    """The whole document's verdict: every signature must hold; the last one (the newest) names the
    coverage, level and signer, as a reader's "signed by" does."""
    doc_timestamps = reader.embedded_timestamp_signatures
    doc_ts_time = _gen_time(doc_timestamps[-1]) if doc_timestamps else None
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
        revocation_checked=all(r.revocation_checked for r in reports),
        document_timestamps=len(doc_timestamps),
        document_timestamp_time=doc_ts_time,
        summary="; ".join(f"{r.field_name}: {r.summary} ({r.coverage})" for r in reports),
        pdfa=pdfa,
        signatures=reports,
        unsigned_fields=unsigned,
    )


def _gen_time(doc_timestamp: EmbeddedPdfSignature) -> dt.datetime:
    gen_time: dt.datetime = doc_timestamp.signed_data["encap_content_info"]["content"].parsed["gen_time"].native
    return gen_time.astimezone(dt.UTC)


def _unsigned_fields(reader: PdfFileReader) -> tuple[str, ...]:
    from pyhanko.sign.fields import enumerate_sig_fields

    return tuple(str(name) for name, value, _ in enumerate_sig_fields(reader) if value is None)
