"""PAdES signing of rendered contracts with pyHanko.

Shape of the module, and why:
- `load_signer` parses the key material once per process (RSA key validation alone costs ~120 ms)
  and caches the signer keyed by the files' identity and mtimes, so a rotated certificate is
  picked up without a restart. `_PreparedKeySigner` keeps the parsed key and answers pyHanko's
  size-estimation dry run without signing, so each document costs exactly one private-key
  operation (signing-notes.md, pitfall 1). That dry run runs once per certificate, level and TSA
  list: later documents reuse its size (`_reserved`).
- The visible stamp uses a pre-subset font rescaled to 1000 units/em shipped in `fonts/`
  (pitfalls 2 and 3); embedding a font also keeps the incremental update PDF/A-2b compatible,
  which the non-embedded Courier default would not. `stamp_font.py` parses it once per thread and
  embeds cached subsets.
- `sign_pdf_bytes` is synchronous with picklable arguments and result, for a process pool; it runs
  `async_sign_pdf_bytes` on one background event loop per process (pitfall 6) so the cached TSA
  clients and their HTTP sessions (`tsa.py`, pitfall 4) serve every document of that process.
- B-T adds an RFC 3161 signature timestamp from the first TSA that answers; if none does, signing
  fails closed with `TimestampUnavailable` (never a silent B-B). B-LT/B-LTA (revocation fetchers,
  DSS, document timestamp) will plug in here too.
- Certificate validity is checked before signing so an expired certificate is a clear, permanent
  error instead of a signature every validator rejects.
- Keys on a PKCS#11 token (`Pkcs11KeySpec`, see `pkcs11.py`) go through the same flow: `load_signer`
  dispatches on the spec type, and everything after it only uses pyHanko's `Signer` interface.
  Loading runs in an executor on the async path, since opening a token session blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from pyhanko.keys.internal import (
    translate_pyca_cryptography_cert_to_asn1,
    translate_pyca_cryptography_key_to_asn1,
)
from pyhanko.pdf_utils import layout
from pyhanko.pdf_utils.font.api import FontEngine, FontEngineFactory
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.general import get_pyca_cryptography_hash
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import process_pss_params

# Re-exported (`X as X`): callers import the errors from here, as before they moved to errors.py.
from sfsign.documents.errors import SigningError as SigningError
from sfsign.documents.errors import TimestampUnavailable as TimestampUnavailable
from sfsign.documents.pkcs11 import Pkcs11KeySpec as Pkcs11KeySpec
from sfsign.documents.pkcs11 import load_pkcs11_signer
from sfsign.documents.render import SignatureBox
from sfsign.documents.tsa import TsaAuth, get_timestamper, run_on_process_loop

STAMP_FONT = Path(__file__).resolve().parent / "fonts" / "sfsign-stamp-sans.ttf"
STAMP_FONT_SIZE = 9  # same value for the glyph accumulator and the text box (pitfall 2)
SIGNATURE_FIELD = "SellerSignature"
CUSTOMER_FIELD = "CustomerSignature"
_STAMP_COLOR = (0.12, 0.23, 0.37)


class SignatureLevel(enum.StrEnum):
    B_B = "B-B"
    B_T = "B-T"
    B_LT = "B-LT"
    B_LTA = "B-LTA"


class KeySpec(BaseModel):
    """Where the signing key lives: a PKCS#12 file, or a PEM/DER key + certificate (+ chain).

    `passphrase` decrypts the PKCS#12 file or the private key. `chain_paths` lists extra
    certificates (issuing CAs) to embed; PKCS#12 files usually carry them already.
    """

    model_config = ConfigDict(frozen=True)

    pkcs12_path: Path | None = None
    key_path: Path | None = None
    cert_path: Path | None = None
    chain_paths: tuple[Path, ...] = ()
    passphrase: SecretStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        pem = self.key_path is not None or self.cert_path is not None
        if self.pkcs12_path is not None and pem:
            raise ValueError("give either pkcs12_path or key_path + cert_path, not both")
        if self.pkcs12_path is None and (self.key_path is None or self.cert_path is None):
            raise ValueError("give pkcs12_path, or both key_path and cert_path")
        return self

    def files(self) -> tuple[Path, ...]:
        main = (self.pkcs12_path,) if self.pkcs12_path else (self.key_path, self.cert_path)
        return tuple(p for p in (*main, *self.chain_paths) if p is not None)


KeySource = KeySpec | Pkcs11KeySpec


class Appearance(BaseModel):
    """What the visible stamp and the signature dictionary say."""

    model_config = ConfigDict(frozen=True)

    name: str  # the person signing for the seller
    reason: str = ""
    location: str = ""
    contact_info: str = ""


class SignedPdf(BaseModel):
    model_config = ConfigDict(frozen=True)

    pdf: bytes
    sha256_hex: str
    level: str
    signer_subject: str
    signer_serial: str  # hex
    signing_time: dt.datetime  # UTC, whole seconds (what /M in the signature says)
    timestamp_time: dt.datetime | None = None  # genTime of the signature timestamp token (B-T and up)


# ---------------------------------------------------------------------------------------------
# Key loading
# ---------------------------------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class _PreparedKeySigner(signers.SimpleSigner):
    """SimpleSigner that keeps the parsed private key and skips real signing on dry runs.

    pyHanko's SimpleSigner re-parses (and for RSA re-validates) the key for every signature,
    and signs a dummy digest to size /Contents: two parses and two private-key operations per
    document. Here the size estimate gets zero bytes of the maximal signature length instead.
    """

    def __init__(self, *, private_key: PrivateKey, cert: x509.Certificate, others: list[x509.Certificate]):
        registry = SimpleCertificateStore()
        registry.register_multiple([translate_pyca_cryptography_cert_to_asn1(c) for c in others])
        super().__init__(
            signing_cert=translate_pyca_cryptography_cert_to_asn1(cert),
            signing_key=translate_pyca_cryptography_key_to_asn1(private_key),
            cert_registry=registry,
        )
        self._private_key = private_key
        self.pyca_cert = cert

    def _max_signature_length(self) -> int:
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return (key.key_size + 7) // 8
        # DER ECDSA-Sig-Value: SEQUENCE of two INTEGERs, each at most n+1 bytes (sign byte).
        n = (key.curve.key_size + 7) // 8
        content = 2 * (2 + n + 1)
        return content + (2 if content < 128 else 3)

    def sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        if dry_run:
            return bytes(self._max_signature_length())
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
        try:
            algo = mechanism.signature_algo
        except ValueError:
            algo = mechanism["algorithm"].native
        hash_algo = get_pyca_cryptography_hash(digest_algorithm)
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey) and algo == "rsassa_pkcs1v15":
            return key.sign(data, padding.PKCS1v15(), hash_algo)
        if isinstance(key, rsa.RSAPrivateKey) and algo == "rsassa_pss":
            pss_padding, pss_hash = process_pss_params(mechanism["parameters"])
            return key.sign(data, pss_padding, pss_hash)
        if isinstance(key, ec.EllipticCurvePrivateKey) and algo == "ecdsa":
            return key.sign(data, ec.ECDSA(hash_algo))
        raise SigningError(f"signature mechanism {algo} is not supported for this key")

    async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        return self.sign_raw(data, digest_algorithm, dry_run=dry_run)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate file")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise SigningError(f"{path} does not contain a readable X.509 certificate") from None


def _password(spec: KeySpec) -> bytes | None:
    return spec.passphrase.get_secret_value().encode() if spec.passphrase else None


def _load_pkcs12(spec: KeySpec) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    assert spec.pkcs12_path is not None
    data = _read(spec.pkcs12_path, "PKCS#12 file")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, _password(spec))
    except (ValueError, TypeError):
        hint = "passphrase missing" if spec.passphrase is None else "wrong passphrase"
        raise SigningError(f"cannot open PKCS#12 file {spec.pkcs12_path}: {hint}, or not a PKCS#12 file") from None
    if key is None or cert is None:
        raise SigningError(f"PKCS#12 file {spec.pkcs12_path} must contain a private key and its certificate")
    if not isinstance(key, PrivateKey):
        raise SigningError(f"{spec.pkcs12_path}: only RSA and ECDSA keys are supported")
    return key, cert, list(extra)


def _load_pem(spec: KeySpec) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    assert spec.key_path is not None and spec.cert_path is not None
    data = _read(spec.key_path, "private key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, _password(spec))
        else:
            key = serialization.load_der_private_key(data, _password(spec))
    except TypeError:
        hint = (
            "the key is encrypted but no passphrase is configured"
            if spec.passphrase is None
            else "a passphrase is configured but the key is not encrypted"
        )
        raise SigningError(f"cannot load private key {spec.key_path}: {hint}") from None
    except ValueError:
        raise SigningError(
            f"cannot load private key {spec.key_path}: wrong passphrase or not a PEM/DER private key"
        ) from None
    if not isinstance(key, PrivateKey):
        raise SigningError(f"{spec.key_path}: only RSA and ECDSA keys are supported")
    certs = _load_certs(spec.cert_path)
    return key, certs[0], certs[1:]


def _public_der(obj: Any) -> bytes:
    return bytes(
        obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _build_signer(spec: KeySpec) -> _PreparedKeySigner:
    key, cert, others = _load_pkcs12(spec) if spec.pkcs12_path else _load_pem(spec)
    for chain_file in spec.chain_paths:
        others.extend(_load_certs(chain_file))
    if _public_der(key) != _public_der(cert):
        raise SigningError(f"the private key does not belong to the certificate {cert.subject.rfc4514_string()}")
    return _PreparedKeySigner(private_key=key, cert=cert, others=others)


_PROCESS_SALT = secrets.token_bytes(32)
_signer_cache: dict[tuple[str, ...], tuple[tuple[Any, ...], _PreparedKeySigner]] = {}
_signer_cache_lock = threading.Lock()


def _file_identity(spec: KeySpec) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """(paths, version): version is mtimes and sizes plus a keyed hash of the passphrase, so a
    rotated file or a changed passphrase is re-checked; the passphrase itself is never stored."""
    paths: list[str] = []
    stamps: list[tuple[int, int]] = []
    for path in spec.files():
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SigningError(f"cannot read {path}: {exc.strerror or exc}") from None
        paths.append(str(path.resolve()))
        stamps.append((st.st_mtime_ns, st.st_size))
    pw = _password(spec)
    pw_tag = hmac.new(_PROCESS_SALT, pw, hashlib.sha256).digest() if pw is not None else None
    return tuple(paths), (tuple(stamps), pw_tag)


def load_signer(spec: KeySource) -> signers.Signer:
    """The signer for `spec`, parsed (or its token session opened) once per process and reloaded
    when a file or the PIN/passphrase changes. Blocking: on an event loop, run it in an executor."""
    if isinstance(spec, Pkcs11KeySpec):
        return load_pkcs11_signer(spec)
    paths, version = _file_identity(spec)
    with _signer_cache_lock:
        cached = _signer_cache.get(paths)
    if cached is not None and cached[0] == version:
        return cached[1]
    signer = _build_signer(spec)
    with _signer_cache_lock:
        _signer_cache[paths] = (version, signer)
    return signer


# ---------------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class StampFontFactory(FontEngineFactory):
    """The stamp's font engine (`stamp_font.py`), a drop-in for pyHanko's `GlyphAccumulatorFactory`.

    The engine module (fontTools, HarfBuzz: ~20 MB) is imported on first use, in the pool processes
    that sign, not in the daemon process that only describes what to sign."""

    font_file: Path
    font_size: int = 10

    def create_font_engine(self, writer: BasePdfFileWriter, obj_stream: Any = None) -> FontEngine:
        from sfsign.documents import stamp_font

        if obj_stream is None and writer.stream_xrefs:
            obj_stream = writer.prepare_object_stream()  # as GlyphAccumulatorFactory does by default
        return stamp_font.StampGlyphAccumulator(writer, stamp_font.parsed_font(self.font_file), self.font_size,
                                                obj_stream)


_STAMP_STYLE = TextStampStyle(
    stamp_text="%(ts)s",  # replaced per signature, see _stamp_text
    text_box_style=TextBoxStyle(
        font=StampFontFactory(STAMP_FONT, font_size=STAMP_FONT_SIZE),
        font_size=STAMP_FONT_SIZE,
        leading=STAMP_FONT_SIZE + 3,
        text_color=_STAMP_COLOR,
    ),
    border_width=1,
    border_color=_STAMP_COLOR,
    timestamp_format="%Y-%m-%d %H:%M:%S UTC",
    inner_content_layout=layout.SimpleBoxLayoutRule(
        x_align=layout.AxisAlignment.ALIGN_MIN,
        y_align=layout.AxisAlignment.ALIGN_MID,
        margins=layout.Margins.uniform(8),
    ),
)


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


def _rect(box: SignatureBox) -> Any:
    """pyHanko annotates SigFieldSpec.box as ints but writes floats fine; keep the exact box."""
    return box.as_tuple()


def _stamp_text(appearance: Appearance) -> str:
    """The stamp template holds only our own wording; user data arrives as %-parameters, so a
    '%' in a name cannot break or inject into the template."""
    lines = ["Digitally signed by %(signer)s", "Date: %(ts)s"]
    if appearance.reason:
        lines.append("Reason: %(reason)s")
    if appearance.location:
        lines.append("Location: %(location)s")
    return "\n".join(lines)


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
) -> _Prepared:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = signer.signing_cert
    assert cert is not None
    check_certificate_validity(cert, now)
    try:
        writer = MetadataPreservingWriter(BytesIO(pdf))
    except Exception as exc:  # pyHanko raises several types for unreadable input
        raise SigningError(f"input is not a readable PDF: {exc}") from None
    # Pitfall 7: every field a later party will sign must exist before the first signature.
    for name, empty_box in empty_fields:
        fields.append_signature_field(
            writer,
            fields.SigFieldSpec(name, on_page=empty_box.page, box=_rect(empty_box)),
        )
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        name=appearance.name,
        reason=appearance.reason or None,
        location=appearance.location or None,
        contact_info=appearance.contact_info or None,
    )
    style = dataclasses.replace(_STAMP_STYLE, stamp_text=_stamp_text(appearance))
    pdf_signer = signers.PdfSigner(
        meta,
        signer=signer,
        stamp_style=style,
        timestamper=timestamper,
        new_field_spec=fields.SigFieldSpec(field_name, on_page=box.page, box=_rect(box)),
    )
    params = {"signer": appearance.name, "reason": appearance.reason, "location": appearance.location}
    return _Prepared(signer, pdf_signer, writer, now, params)


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
) -> SignedPdf:
    """Sign `pdf` with a visible PAdES signature on `box`, as an incremental update.

    The steps are pyHanko's documented interrupted-signing flow (what `async_sign_pdf` does),
    spelled out so the claimed signing time is ours: the stamp, /M and the result agree, in UTC.
    B-B is pure CPU work (~15 ms: stamp layout, CMS encoding, one key operation, hashing), so
    on an event loop this coroutine blocks; prefer `sign_pdf_bytes` in a process pool for now.

    B-T asks the TSAs (`tsa_url`, then `tsa_urls`) in order with `tsa_auth`; if every one fails it
    raises `TimestampUnavailable` and produces nothing. The TSA clients are cached per event loop.
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
    prepare = functools.partial(_prepare, pdf, box, signer, appearance, level, timestamper, empty_fields, field_name)
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
        )
    )
