"""PAdES B-LT / B-LTA: upgrade an already signed B-T PDF, and renew it with archive timestamps.

Why an upgrade and not signing at B-LTA directly: the request path stays as fast as B-T, and the
OCSP/CRL round trips and the document timestamp happen later in the daemon, where an OCSP outage
delays an upgrade instead of a contract (DESIGN: B-T on the request path, LTV asynchronously).

What each step writes, always as incremental updates so every existing signature stays valid and
the customer's empty signature field stays signable:
- B-LT: one revision with a DSS holding the certificates and OCSP responses/CRLs for every
  signature's chain and for the chain of its signature-timestamp TSA.
- B-LTA: then a document timestamp (from the failover TSA list of `tsa.py`), then, if that TSA's
  chain brought anything new, a DSS revision for it, so even the newest timestamp validates from
  the file alone.
- Archive timestamp: fresh validation data for the newest document timestamp's chain, a new
  document timestamp over it, and the DSS for the new one (ETSI EN 319 142-1, PAdES-LTA renewal).

Fail closed: revocation data is fetched live with hard-fail rules; if it cannot be fetched the
upgrade raises `ValidationInfoUnavailable` (transient, retried), a TSA failure raises
`TimestampUnavailable`, and a revoked, untrusted or broken signature raises `SigningError` — nothing
is ever written with a "revoked" or missing status silently embedded.

Sessions: the fetchers share one aiohttp session per event loop (signing-notes.md, pitfalls 4/5),
like the TSA clients; the sync entry points run on `tsa.run_on_process_loop`, i.e. one loop and
one session per process.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import hashlib
import threading
import weakref
from collections.abc import Iterable, Sequence
from io import BytesIO
from pathlib import Path

import aiohttp
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from pydantic import BaseModel, ConfigDict
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.general import extract_certificate_info
from pyhanko.sign.signers.pdf_signer import PdfTimeStamper
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko.sign.validation.generic_cms import extract_tst_data_iter
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature, async_validate_pdf_signature
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    InsufficientRevinfoError,
    PathBuildingError,
    PathValidationError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
from pyhanko_certvalidator.path import ValidationPath
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy

from sfsign.documents import tsa
from sfsign.documents.errors import SigningError, ValidationInfoUnavailable
from sfsign.documents.sign import MetadataPreservingWriter, SignatureLevel
from sfsign.documents.tsa import TsaAuth, get_timestamper, redact_url, run_on_process_loop
from sfsign.documents.verify import ValidationError as UnreadableInput
from sfsign.documents.verify import load_trust_roots

FETCH_TIMEOUT_SECONDS = 10.0
DOC_TIMESTAMP_MD = "sha256"


class UpgradedPdf(BaseModel):
    model_config = ConfigDict(frozen=True)

    pdf: bytes
    sha256_hex: str
    level: str  # "B-LT" | "B-LTA"
    timestamp_time: dt.datetime | None  # genTime of the newest document timestamp (B-LTA), else None
    newest_timestamp_expiry: dt.datetime | None  # notAfter of the newest timestamp's TSA certificate


# ---------------------------------------------------------------------------------------------
# One fetcher session per event loop
# ---------------------------------------------------------------------------------------------

_backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AIOHttpFetcherBackend] = weakref.WeakKeyDictionary()
_backends_lock = threading.Lock()


def _fetcher_backend() -> AIOHttpFetcherBackend:
    """The running loop's OCSP/CRL/caIssuers fetcher backend, with its own long-lived session."""
    loop = asyncio.get_running_loop()
    with _backends_lock:
        backend = _backends.get(loop)
        if backend is None:
            backend = _backends[loop] = AIOHttpFetcherBackend(
                session=aiohttp.ClientSession(), per_request_timeout=FETCH_TIMEOUT_SECONDS
            )
    return backend


async def aclose_fetchers() -> None:
    """Close the running loop's fetcher session (daemon shutdown, tests); it is re-created on demand."""
    with _backends_lock:
        backend = _backends.pop(asyncio.get_running_loop(), None)
    if backend is not None and isinstance(backend.session, aiohttp.ClientSession):
        await backend.session.close()


@atexit.register  # registered after tsa's handler, so it runs first, while the process loop still runs
def _close_process_loop_fetchers() -> None:
    entry = tsa._process_loop
    if entry is None or not entry[1].is_running():
        return
    try:
        asyncio.run_coroutine_threadsafe(aclose_fetchers(), entry[1]).result(timeout=5)
    except Exception:  # best effort at interpreter exit
        pass


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _load_roots(paths: Sequence[Path]) -> list[asn1_x509.Certificate]:
    try:
        return load_trust_roots(paths)
    except UnreadableInput as exc:
        raise SigningError(f"{exc} (the profile's trust_roots, needed for the LTV upgrade)") from None


def _reader(pdf: bytes) -> PdfFileReader:
    try:
        return PdfFileReader(BytesIO(pdf))
    except Exception as exc:  # pyHanko raises several types for unreadable input
        raise SigningError(f"input is not a readable PDF: {exc}") from None


def _fetching_context(roots: list[asn1_x509.Certificate], reader: PdfFileReader) -> ValidationContext:
    """Hard-fail revocation checking with live fetching; certificates already in the DSS help path building."""
    try:
        known = list(DocumentSecurityStore.read_dss(reader).load_certs())
    except Exception:  # no DSS yet (or an unreadable one, which the new revision supersedes)
        known = []
    return ValidationContext(
        trust_roots=roots,
        other_certs=known,
        allow_fetching=True,
        fetcher_backend=_fetcher_backend(),
        revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
    )


def _revocation_urls(certs: Iterable[asn1_x509.Certificate]) -> list[str]:
    urls: list[str] = []
    for cert in certs:
        urls.extend(str(u) for u in cert.ocsp_urls)
        for point in cert.crl_distribution_points:
            url = point.url
            if url:
                urls.append(str(url))
    return [redact_url(u) for u in dict.fromkeys(urls)]


def _subject(cert: asn1_x509.Certificate) -> str:
    return str(cert.subject.human_friendly)


async def _chain_paths(signed_data: cms.SignedData, vc: ValidationContext, what: str) -> ValidationPath:
    """Validate the chain of `signed_data`'s signer now, fetching revocation data into `vc`."""
    info = extract_certificate_info(signed_data)
    cert = info.signer_cert
    validator = CertificateValidator(cert, intermediate_certs=info.other_certs, validation_context=vc)
    try:
        path: ValidationPath = await validator.async_validate_usage(key_usage=set())
        return path
    except RevokedError as exc:
        raise SigningError(f"{what}: certificate '{_subject(cert)}' is revoked ({exc}); not upgrading") from None
    except InsufficientRevinfoError as exc:
        urls = _revocation_urls([cert, *info.other_certs])
        raise ValidationInfoUnavailable(
            f"{what}: revocation information for '{_subject(cert)}' could not be obtained "
            f"({_short(exc)}); tried: {', '.join(urls) or 'no OCSP/CRL URL in the certificates'}"
        ) from None
    except PathBuildingError as exc:
        raise SigningError(f"{what}: certificate '{_subject(cert)}' does not chain to a trusted root ({exc})") from None
    except (PathValidationError, ValidationError) as exc:
        raise SigningError(f"{what}: certificate '{_subject(cert)}' is not valid now ({exc})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _has_signature_timestamp(sig: EmbeddedPdfSignature) -> bool:
    return any(True for _ in extract_tst_data_iter(sig.signer_info, signed=False))


def _tst_info(signed_data: cms.SignedData) -> cms.ContentInfo:
    return signed_data["encap_content_info"]["content"].parsed


def _signer_not_after(signed_data: cms.SignedData) -> dt.datetime:
    not_after: dt.datetime = extract_certificate_info(signed_data).signer_cert.not_valid_after
    return not_after.astimezone(dt.UTC)


def _newest_timestamp_data(reader: PdfFileReader) -> cms.SignedData | None:
    doc_timestamps = reader.embedded_timestamp_signatures
    if doc_timestamps:
        return doc_timestamps[-1].signed_data
    for sig in reversed(reader.embedded_regular_signatures):
        tokens = list(extract_tst_data_iter(sig.signer_info, signed=False))
        if tokens:
            token: cms.SignedData = tokens[-1]
            return token
    return None


def newest_timestamp_expiry(pdf: bytes) -> dt.datetime | None:
    """notAfter of the TSA certificate of the newest timestamp (document timestamp if any, else the
    last signature's timestamp token): an archive timestamp is due well before this moment."""
    data = _newest_timestamp_data(_reader(pdf))
    return _signer_not_after(data) if data is not None else None


def _result(pdf: bytes, level: SignatureLevel) -> UpgradedPdf:
    reader = _reader(pdf)
    doc_timestamps = reader.embedded_timestamp_signatures
    ts_time: dt.datetime | None = None
    if doc_timestamps:
        gen_time: dt.datetime = _tst_info(doc_timestamps[-1].signed_data)["gen_time"].native
        ts_time = gen_time.astimezone(dt.UTC)
    data = _newest_timestamp_data(reader)
    return UpgradedPdf(
        pdf=pdf,
        sha256_hex=hashlib.sha256(pdf).hexdigest(),
        level=level.value,
        timestamp_time=ts_time,
        newest_timestamp_expiry=_signer_not_after(data) if data is not None else None,
    )


def _write_dss(pdf: bytes, paths: Sequence[ValidationPath], vc: ValidationContext, *, force: bool) -> bytes:
    """Add the paths' certificates and every OCSP response/CRL `vc` fetched, as one new revision.

    No VRI entries: they are optional in PAdES baseline, and one DSS revision then serves all
    signatures. Written through the metadata-preserving writer so the PDF/A identification stays.
    """
    writer = MetadataPreservingWriter(BytesIO(pdf))
    dss = DocumentSecurityStore.supply_dss_in_writer(writer, None, paths=paths, validation_context=vc)
    if not (force or dss.modified):
        return pdf
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


async def _add_document_timestamp(pdf: bytes, urls: Sequence[str], auth: TsaAuth | None) -> bytes:
    timestamper = get_timestamper(urls, auth)
    writer = MetadataPreservingWriter(BytesIO(pdf))
    out = BytesIO()
    await PdfTimeStamper(timestamper).async_timestamp_pdf(writer, DOC_TIMESTAMP_MD, output=out)
    return out.getvalue()


async def _add_timestamp_with_validation_info(
    pdf: bytes, urls: Sequence[str], auth: TsaAuth | None, roots: list[asn1_x509.Certificate]
) -> bytes:
    """Document timestamp, then the validation data of its TSA chain (skipped if already embedded)."""
    stamped = await _add_document_timestamp(pdf, urls, auth)
    reader = _reader(stamped)
    vc = _fetching_context(roots, reader)
    path = await _chain_paths(reader.embedded_timestamp_signatures[-1].signed_data, vc, "document timestamp")
    return _write_dss(stamped, [path], vc, force=False)


def _tsa_urls(urls: Sequence[str]) -> tuple[str, ...]:
    if isinstance(urls, str):
        raise TypeError("tsa_urls must be a sequence of URLs, not one string")
    return tuple(dict.fromkeys(u for u in urls if u))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


async def async_upgrade_pdf(
    pdf: bytes,
    target: SignatureLevel,
    *,
    trust_roots: Sequence[Path],
    tsa_urls: Sequence[str] = (),
    tsa_auth: TsaAuth | None = None,
) -> UpgradedPdf:
    """Upgrade every B-T signature of `pdf` to `target` (B-LT or B-LTA); see the module docstring.

    Every approval signature must carry a signature timestamp, be intact and chain to one of
    `trust_roots` with an unrevoked certificate; its chain and its TSA's chain get OCSP/CRL data.
    """
    if target not in (SignatureLevel.B_LT, SignatureLevel.B_LTA):
        raise SigningError(f"upgrade target must be B-LT or B-LTA, not {target.value}")
    urls = _tsa_urls(tsa_urls)
    if target is SignatureLevel.B_LTA and not urls:
        raise SigningError("level B-LTA requires a TSA URL for the document timestamp; not configured")
    roots = _load_roots(trust_roots)
    reader = _reader(pdf)
    signatures = reader.embedded_regular_signatures
    if not signatures:
        raise SigningError("the document carries no signature to upgrade")
    vc = _fetching_context(roots, reader)
    paths: list[ValidationPath] = []
    for sig in signatures:
        what = f"signature '{sig.field_name}'"
        if not _has_signature_timestamp(sig):
            raise SigningError(f"{what} has no signature timestamp (it is B-B); only B-T signatures can be upgraded")
        paths.append(await _chain_paths(sig.signed_data, vc, what))
        for token in extract_tst_data_iter(sig.signer_info, signed=False):
            paths.append(await _chain_paths(token, vc, f"timestamp of {what}"))
        # Revocation data is cached in `vc` now, so this checks integrity and trust without fetching.
        status = await async_validate_pdf_signature(sig, signer_validation_context=vc)
        if not (status.intact and status.valid and status.bottom_line):
            raise SigningError(f"{what} does not validate ({status.summary()}); not upgrading")
    upgraded = _write_dss(pdf, paths, vc, force=True)
    if target is SignatureLevel.B_LTA:
        upgraded = await _add_timestamp_with_validation_info(upgraded, urls, tsa_auth, roots)
    return _result(upgraded, target)


def upgrade_pdf(
    pdf: bytes,
    target: SignatureLevel,
    *,
    trust_roots: Sequence[Path],
    tsa_urls: Sequence[str] = (),
    tsa_auth: TsaAuth | None = None,
) -> UpgradedPdf:
    """Synchronous `async_upgrade_pdf` for a process-pool worker (runs on the process's signing loop)."""
    return run_on_process_loop(
        async_upgrade_pdf(pdf, target, trust_roots=trust_roots, tsa_urls=tsa_urls, tsa_auth=tsa_auth)
    )


async def async_add_archive_timestamp(
    pdf: bytes,
    *,
    trust_roots: Sequence[Path],
    tsa_urls: Sequence[str],
    tsa_auth: TsaAuth | None = None,
) -> UpgradedPdf:
    """Renew a B-LTA file: fresh validation data for its newest document timestamp, then a new one.

    Run it before `newest_timestamp_expiry(pdf)` (and before the hash or key algorithms in use
    weaken); once the newest timestamp's TSA certificate has expired it can no longer be renewed.
    """
    urls = _tsa_urls(tsa_urls)
    if not urls:
        raise SigningError("an archive timestamp requires a TSA URL; not configured")
    roots = _load_roots(trust_roots)
    reader = _reader(pdf)
    doc_timestamps = reader.embedded_timestamp_signatures
    if not doc_timestamps:
        raise SigningError("the document has no document timestamp (not B-LTA); upgrade it to B-LTA first")
    newest = doc_timestamps[-1]
    vc = _fetching_context(roots, reader)
    path = await _chain_paths(newest.signed_data, vc, "newest document timestamp")
    refreshed = _write_dss(pdf, [path], vc, force=True)
    renewed = await _add_timestamp_with_validation_info(refreshed, urls, tsa_auth, roots)
    return _result(renewed, SignatureLevel.B_LTA)


def add_archive_timestamp(
    pdf: bytes,
    *,
    trust_roots: Sequence[Path],
    tsa_urls: Sequence[str],
    tsa_auth: TsaAuth | None = None,
) -> UpgradedPdf:
    """Synchronous `async_add_archive_timestamp` for a process-pool worker."""
    return run_on_process_loop(
        async_add_archive_timestamp(pdf, trust_roots=trust_roots, tsa_urls=tsa_urls, tsa_auth=tsa_auth)
    )
