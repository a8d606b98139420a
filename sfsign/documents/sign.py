"""PAdES signing of rendered contracts with pyHanko.

Shape of the module, and why:
- The key and its signer come from `keys.py` (parsed once per process, one private-key operation per
  document); the visible stamp from `appearance.py`. This module is the signing itself: pyHanko's
  interrupted-signing flow with our own signing time, the signature field(s), and the room reserved
  for the CMS container. The size-estimation dry run runs once per certificate, level and TSA list:
  later documents reuse its size (`_reserved`).
- `sign_pdf_bytes` is synchronous with picklable arguments and result, for a process pool; it runs
  `async_sign_pdf_bytes` on one background event loop per process (pitfall 6) so the cached TSA
  clients and their HTTP sessions (`tsa.py`, pitfall 4) serve every document of that process.
- B-T adds an RFC 3161 signature timestamp from the first TSA that answers; if none does, signing
  fails closed with `TimestampUnavailable` (never a silent B-B). B-LT/B-LTA are reached by `ltv.py`.
- Certificate validity is checked before signing so an expired certificate is a clear, permanent
  error instead of a signature every validator rejects.
- Keys on a PKCS#11 token go through the same flow: `load_signer` dispatches on the spec type, and
  everything after it only uses pyHanko's `Signer` interface. Loading runs in an executor on the
  async path, since opening a token session blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from asn1crypto import x509 as asn1_x509
from pydantic import BaseModel, ConfigDict
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko.sign.timestamps import TimeStamper

from sfsign.documents import hexstrings

# Re-exported (`X as X`): callers import the signing API from here, the keys and the stamp included.
from sfsign.documents.appearance import STAMP_STYLE, stamp_params, stamp_text
from sfsign.documents.appearance import Appearance as Appearance
from sfsign.documents.appearance import StampFontFactory as StampFontFactory
from sfsign.documents.errors import SigningError as SigningError
from sfsign.documents.errors import TimestampUnavailable as TimestampUnavailable
from sfsign.documents.keys import KeySource as KeySource
from sfsign.documents.keys import KeySpec as KeySpec
from sfsign.documents.keys import load_signer as load_signer
from sfsign.documents.pkcs11 import Pkcs11KeySpec as Pkcs11KeySpec
from sfsign.documents.render import SignatureBox
from sfsign.documents.specs import CUSTOMER_FIELD as CUSTOMER_FIELD
from sfsign.documents.specs import SIGNATURE_FIELD as SIGNATURE_FIELD
from sfsign.documents.specs import SignatureLevel as SignatureLevel
from sfsign.documents.specs import customer_field as customer_field
from sfsign.documents.tsa import TsaAuth as TsaAuth
from sfsign.documents.tsa import get_timestamper, run_on_process_loop

hexstrings.install()  # this module reads PDFs with pyHanko


class SignedPdf(BaseModel):
    model_config = ConfigDict(frozen=True)

    pdf: bytes
    sha256_hex: str
    level: str
    signer_subject: str
    signer_serial: str  # hex
    signing_time: dt.datetime  # UTC, whole seconds (what /M in the signature says)
    timestamp_time: dt.datetime | None = None  # genTime of the signature timestamp token (B-T and up)


def _subject(cert: asn1_x509.Certificate) -> str:
    return str(cert.subject.human_friendly)


def check_certificate_validity(cert: asn1_x509.Certificate, at: dt.datetime) -> None:
    validity = cert["tbs_certificate"]["validity"]
    not_before: dt.datetime = validity["not_before"].native
    not_after: dt.datetime = validity["not_after"].native
    if at < not_before:
        problem = "is not yet valid"
    elif at > not_after:
        problem = "has expired"
    else:
        return
    raise SigningError(
        f"signer certificate '{_subject(cert)}' {problem}: valid from {not_before.isoformat()} "
        f"to {not_after.isoformat()}, now {at.isoformat()}; refusing to sign"
    )


def _check_level(level: SignatureLevel, tsa_urls: Sequence[str]) -> None:
    if level is SignatureLevel.B_B:
        return
    if not tsa_urls:
        raise SigningError(f"level {level.value} requires a TSA URL; not configured")
    if level is not SignatureLevel.B_T:
        raise SigningError(f"level {level.value} is not supported yet; configure level B-B or B-T")


def _tsa_list(tsa_url: str | None, tsa_urls: Sequence[str]) -> tuple[str, ...]:
    """`tsa_url` is the older single-URL parameter: it goes first, then `tsa_urls`, without repeats."""
    if isinstance(tsa_urls, str):
        raise TypeError("tsa_urls must be a sequence of URLs, not one string")
    urls = ([tsa_url] if tsa_url else []) + [u for u in tsa_urls if u]
    return tuple(dict.fromkeys(urls))


class _RecordingTimeStamper(TimeStamper):
    """Wraps the process's cached timestamper for one signature and keeps the token it got.

    The token's genTime is the evidence `Sign_Timestamp__c` needs; reading it here saves re-parsing
    the whole signed PDF for it (about 15 ms per document). The size estimate's dummy token still
    comes from the cached timestamper, so it is fetched once per process, not per document.
    """

    def __init__(self, inner: TimeStamper) -> None:
        super().__init__()
        self._inner = inner
        self.token: Any = None

    async def async_dummy_response(self, md_algorithm: str) -> Any:
        return await self._inner.async_dummy_response(md_algorithm)

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> Any:
        self.token = await self._inner.async_timestamp(message_digest, md_algorithm)
        return self.token

    def gen_time(self) -> dt.datetime | None:
        if self.token is None:
            return None
        gen_time: dt.datetime = self.token["content"]["encap_content_info"]["content"].parsed["gen_time"].native
        return gen_time.astimezone(dt.UTC)


class MetadataPreservingWriter(IncrementalPdfFileWriter):
    """Leaves the document's XMP and Info dictionary exactly as Typst wrote them.

    pyHanko otherwise re-serialises the XMP packet on every incremental update (to add itself as
    Producer and bump ModDate), which rewrites Typst's PDF/A identification and extension schemas
    through its own XMP model (pyHanko issues #223, #755). PDF/A only needs XMP and Info to agree,
    and untouched they do; the signature records its own time. Overriding `_update_meta` is the
    approach the pyHanko maintainer suggests for this, though the hook is internal.
    """

    def _update_meta(self) -> None:
        return None


def field_rect(box: SignatureBox) -> Any:
    """pyHanko annotates SigFieldSpec.box as ints but writes floats fine; keep the exact box."""
    return box.as_tuple()


@dataclasses.dataclass(frozen=True)
class _Claimed:
    """What a signature says about a person signing through us: when they signed (their click, not our
    clock; the timestamp token proves when the signature existed) and how long before that they proved
    who they are (/Prop_AuthTime). Both None for the seller's seal, which is signed now."""

    signing_time: dt.datetime | None = None
    auth_seconds: int | None = None


@dataclasses.dataclass
class _Prepared:
    signer: signers.Signer
    pdf_signer: signers.PdfSigner
    writer: MetadataPreservingWriter
    now: dt.datetime
    text_params: dict[str, str]
    bytes_reserved: int = 0


def _prepare(
    pdf: bytes,
    box: SignatureBox,
    signer: signers.Signer,
    appearance: Appearance,
    level: SignatureLevel,
    timestamper: TimeStamper | None,
    empty_fields: tuple[tuple[str, SignatureBox], ...],
    field_name: str,
    claimed: _Claimed,
) -> _Prepared:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = signer.signing_cert
    assert cert is not None
    check_certificate_validity(cert, now)
    if claimed.signing_time is not None:
        now = claimed.signing_time.astimezone(dt.UTC).replace(microsecond=0)
    try:
        writer = MetadataPreservingWriter(BytesIO(pdf))
    except Exception as exc:  # pyHanko raises several types for unreadable input
        raise SigningError(f"input is not a readable PDF: {exc}") from None
    # Pitfall 7: every field a later party will sign must exist before the first signature.
    existing = {str(name) for name, _, _ in fields.enumerate_sig_fields(writer)}
    for name, empty_box in empty_fields:
        if name in existing:  # created earlier (seal after the signers): filled or not, it stays as it is
            continue
        fields.append_signature_field(
            writer,
            fields.SigFieldSpec(name, on_page=empty_box.page, box=field_rect(empty_box)),
        )
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        name=appearance.name,
        reason=appearance.reason or None,
        location=appearance.location or None,
        contact_info=appearance.contact_info or None,
        prop_auth_time=claimed.auth_seconds,
    )
    style = dataclasses.replace(STAMP_STYLE, stamp_text=stamp_text(appearance))
    pdf_signer = signers.PdfSigner(
        meta,
        signer=signer,
        stamp_style=style,
        timestamper=timestamper,
        new_field_spec=fields.SigFieldSpec(field_name, on_page=box.page, box=field_rect(box)),
    )
    return _Prepared(signer, pdf_signer, writer, now, stamp_params(appearance))


# Room reserved for the CMS container, per (signer certificate, level, TSAs), as first estimated.
# pyHanko estimates it by building the whole container once without signing (a dry run, ~9 ms of
# asn1crypto encoding per document); its estimate already carries a 50 % margin for TSA answers
# that vary, so one estimate serves every later document of the same profile.
_reserved: dict[tuple[bytes, SignatureLevel, tuple[str, ...]], int] = {}


async def _sign_once(prep: _Prepared, bytes_reserved: int | None) -> BytesIO:
    """pyHanko's interrupted-signing steps on a fresh `_prepare`; `bytes_reserved=None` estimates the
    container size."""
    session = prep.pdf_signer.init_signing_session(prep.writer)
    session.system_time = prep.now
    validation_info = await session.perform_presign_validation(prep.writer)
    if bytes_reserved is None:
        bytes_reserved = await session.estimate_signature_container_size(validation_info)
    prep.bytes_reserved = bytes_reserved
    tbs = session.prepare_tbs_document(
        validation_info=validation_info,
        bytes_reserved=bytes_reserved,
        appearance_text_params=prep.text_params,
    )
    buffer = BytesIO()
    prepared_digest, output = tbs.digest_tbs_document(output=buffer)
    post = await tbs.perform_signature(
        document_digest=prepared_digest.document_digest,
        pdf_cms_signed_attrs=PdfCMSSignedAttributes(
            signing_time=prep.now,
            cades_signed_attrs=prep.pdf_signer.signature_meta.cades_signed_attr_spec,
        ),
    )
    await post.post_signature_processing(output)
    return buffer


async def async_sign_pdf_bytes(
    pdf: bytes,
    box: SignatureBox,
    spec: KeySource,
    appearance: Appearance,
    *,
    level: SignatureLevel = SignatureLevel.B_B,
    tsa_url: str | None = None,
    tsa_urls: Sequence[str] = (),
    tsa_auth: TsaAuth | None = None,
    empty_fields: tuple[tuple[str, SignatureBox], ...] = (),
    field_name: str = SIGNATURE_FIELD,
    signing_time: dt.datetime | None = None,
    auth_seconds: int | None = None,
) -> SignedPdf:
    """Sign `pdf` with a visible PAdES signature on `box`, as an incremental update.

    The steps are pyHanko's documented interrupted-signing flow (what `async_sign_pdf` does),
    spelled out so the claimed signing time is ours: the stamp, /M and the result agree, in UTC.
    B-B is pure CPU work (~15 ms: stamp layout, CMS encoding, one key operation, hashing), so
    on an event loop this coroutine blocks; prefer `sign_pdf_bytes` in a process pool for now.

    B-T asks the TSAs (`tsa_url`, then `tsa_urls`) in order with `tsa_auth`; if every one fails it
    raises `TimestampUnavailable` and produces nothing. The TSA clients are cached per event loop.
    `signing_time` (default: now) and `auth_seconds` (/Prop_AuthTime) are what a signature made on a
    person's behalf claims (`signer_signature.py`).
    """
    urls = _tsa_list(tsa_url, tsa_urls)
    _check_level(level, urls)
    timestamper = (
        _RecordingTimeStamper(get_timestamper(urls, tsa_auth)) if level is not SignatureLevel.B_B else None
    )
    signer = await asyncio.get_running_loop().run_in_executor(None, load_signer, spec)
    cert = signer.signing_cert
    assert cert is not None
    size_key = (cert.sha256, level, urls)
    claimed = _Claimed(signing_time, auth_seconds)
    prepare = functools.partial(_prepare, pdf, box, signer, appearance, level, timestamper, empty_fields, field_name,
                                claimed)
    prep = prepare()
    try:
        buffer = await _sign_once(prep, _reserved.get(size_key))
    except PyHankoSigningError as exc:
        if size_key not in _reserved or "larger than expected" not in str(exc):
            raise
        # A remembered size was too small (say a fail-over TSA answered with a longer token):
        # measure again for this document.
        _reserved.pop(size_key, None)
        prep = prepare()
        buffer = await _sign_once(prep, None)
    if size_key not in _reserved:
        _reserved[size_key] = prep.bytes_reserved
    signed = buffer.getvalue()
    return SignedPdf(
        pdf=signed,
        sha256_hex=hashlib.sha256(signed).hexdigest(),
        level=level.value,
        signer_subject=_subject(cert),
        signer_serial=format(cert.serial_number, "x"),
        signing_time=prep.now,
        timestamp_time=timestamper.gen_time() if timestamper is not None else None,
    )


def sign_pdf_bytes(
    pdf: bytes,
    box: SignatureBox,
    spec: KeySource,
    appearance: Appearance,
    *,
    level: SignatureLevel = SignatureLevel.B_B,
    tsa_url: str | None = None,
    tsa_urls: Sequence[str] = (),
    tsa_auth: TsaAuth | None = None,
    empty_fields: tuple[tuple[str, SignatureBox], ...] = (),
    field_name: str = SIGNATURE_FIELD,
    signing_time: dt.datetime | None = None,
    auth_seconds: int | None = None,
) -> SignedPdf:
    """Synchronous `async_sign_pdf_bytes`, for a process-pool worker. It runs on this process's
    background event loop (so TSA sessions are reused) and blocks the calling thread meanwhile."""
    return run_on_process_loop(
        async_sign_pdf_bytes(
            pdf,
            box,
            spec,
            appearance,
            level=level,
            tsa_url=tsa_url,
            tsa_urls=tsa_urls,
            tsa_auth=tsa_auth,
            empty_fields=empty_fields,
            field_name=field_name,
            signing_time=signing_time,
            auth_seconds=auth_seconds,
        )
    )
