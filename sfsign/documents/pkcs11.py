"""Signing keys on a PKCS#11 token (HSM, smart card, SoftHSM2) for `sign.load_signer`.

Why it looks like this:
- PKCS#11 login state belongs to the process and the token, not to a session: a second login
  fails with USER_ALREADY_LOGGED_IN and closing any session logs every session out. So there is
  one logged-in session per (module, token label) per process (`_TokenSession`), shared by the
  signers of every key on that token, and one cached signer per (module, token, key label, cert).
  A changed PIN (compared as a keyed hash, never stored in a cache key) logs in again.
- A session can die under us (token reset, HSM fail-over, someone closed it): a signature that
  fails with a session-level error reopens the session, fetches the key handle again and retries
  once, so the daemon recovers without a restart.
- Everything that talks to the token runs in the caller's thread; `async_sign_raw` moves the
  private-key operation to an executor so the event loop never waits for the HSM. The token lock
  serialises operations on the shared session (PKCS#11 sessions are single-threaded).
- When the signer is built it makes one probe signature and verifies it with the certificate's
  public key: this proves the key belongs to the certificate (token objects cannot be compared
  portably, e.g. SoftHSM2 keeps no EC point on private keys) and that the token supports the
  mechanism, at load time instead of on the first customer's document.
- SoftHSM2 (and many HSMs) lack hash-then-sign ECDSA mechanisms: the raw mechanism on a digest
  computed here is used whenever the token does not list the combined one.
- Errors become `SigningError` naming the module, token and labels, never the PIN.
- Not fork-safe (no PKCS#11 library is): worker pools use forkserver/spawn (render.POOL_START_METHOD).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import x509 as asn1_x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pydantic import SecretStr
from pyhanko.keys import load_certs_from_pemder
from pyhanko.sign.pkcs11 import PKCS11Signer

from sfsign.documents.errors import SigningError
from sfsign.documents.specs import Pkcs11KeySpec as Pkcs11KeySpec

_PROCESS_SALT = secrets.token_bytes(32)
_PROBE = b"sfsign: does this key belong to its certificate?"

# The session (or login) is gone: reopen and retry once.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
    p11e.KeyHandleInvalid,
    p11e.ObjectHandleInvalid,
)
_HASHED_MECHANISM = {"rsa": Mechanism.SHA256_RSA_PKCS, "ec": Mechanism.ECDSA_SHA256}
_RAW_MECHANISM = {"rsa": Mechanism.RSA_PKCS, "ec": Mechanism.ECDSA}


def _pin_tag(pin: SecretStr | None) -> bytes | None:
    return hmac.new(_PROCESS_SALT, pin.get_secret_value().encode(), hashlib.sha256).digest() if pin else None


def _labels(objects: Iterable[Any]) -> str:
    labels = sorted({str(obj[Attribute.LABEL]) for obj in objects})
    return ", ".join(repr(label) for label in labels) if labels else "none"


def _load_library(module_path: Path) -> Any:
    if not module_path.is_file():
        raise SigningError(f"PKCS#11 module {module_path} not found")
    try:
        return pkcs11.lib(str(module_path))
    except p11e.PKCS11Error as exc:
        raise SigningError(f"cannot load PKCS#11 module {module_path}: {exc}") from None


def _find_token(module_path: Path, token_label: str) -> Any:
    lib = _load_library(module_path)
    present: list[Any] = []
    try:
        for slot in lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
            except (p11e.TokenNotPresent, p11e.TokenNotRecognised):
                continue
            if token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
                present.append(token)
    except p11e.PKCS11Error as exc:
        raise SigningError(f"PKCS#11 module {module_path} cannot list its tokens: {type(exc).__name__}") from None
    matches = [t for t in present if t.label == token_label]
    if not matches:
        labels = ", ".join(repr(t.label) for t in present) or "none"
        raise SigningError(
            f"no PKCS#11 token labelled {token_label!r} in module {module_path}; tokens present: {labels}"
        )
    if len(matches) > 1:
        raise SigningError(f"several PKCS#11 tokens are labelled {token_label!r} in module {module_path}")
    return matches[0]


def _login(token: Any, pin: SecretStr | None) -> Any:
    where = f"PKCS#11 token {token.label!r}"
    try:
        return token.open(user_pin=pin.get_secret_value() if pin else None)
    except p11e.UserAlreadyLoggedIn:
        # Another session of this process is logged in (login is per process): share that login.
        return token.open()
    except p11e.PinIncorrect:
        raise SigningError(f"PIN incorrect for {where}") from None
    except p11e.PinLocked:
        raise SigningError(
            f"PIN locked for {where}: too many wrong attempts, the security officer must unblock it"
        ) from None
    except p11e.PinExpired:
        raise SigningError(f"PIN expired for {where}: set a new one") from None
    except (p11e.PinLenRange, p11e.PinInvalid):
        raise SigningError(f"PIN has an invalid length or characters for {where}") from None
    except p11e.UserPinNotInitialized:
        raise SigningError(f"{where} has no user PIN yet (initialise it with the SO PIN)") from None
    except p11e.PKCS11Error as exc:
        raise SigningError(f"cannot open a session on {where}: {type(exc).__name__}") from None


class _TokenSession:
    """The one logged-in session of this process on a token; `generation` counts reopenings so
    signers know when their key handles belong to a dead session."""

    def __init__(self, module_path: Path, token_label: str):
        self.module_path = module_path
        self.token_label = token_label
        self.lock = threading.RLock()
        self.generation = 0
        self.token: Any = None
        self._session: Any = None
        self._pin: SecretStr | None = None  # the last PIN that logged in (for reopening)
        self._pin_tag: bytes | None = None

    def ensure(self, pin: SecretStr | None) -> None:
        """Open (or re-login with a changed PIN). A failed login leaves no session, and the next
        reopen uses the last PIN that worked."""
        tag = _pin_tag(pin)
        with self.lock:
            if self._session is not None and tag == self._pin_tag:
                return
            self._pin_tag = None
            self._open(pin)
            self._pin, self._pin_tag = pin, tag

    def session(self) -> Any:
        with self.lock:
            if self._session is None:
                self._open(self._pin)
                self._pin_tag = _pin_tag(self._pin)
            return self._session

    def reopen(self) -> None:
        with self.lock:
            self._open(self._pin)
            self._pin_tag = _pin_tag(self._pin)

    def close(self) -> None:
        with self.lock:
            self._close_quietly()

    def _open(self, pin: SecretStr | None) -> None:
        self._close_quietly()
        token = _find_token(self.module_path, self.token_label)
        self._session = _login(token, pin)
        self.token = token
        self.generation += 1

    def _close_quietly(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except p11e.PKCS11Error:
                pass  # already closed or invalid: nothing left to release


def _max_signature_length(cert: asn1_x509.Certificate) -> int:
    bits = int(cert.public_key.bit_size)
    if cert.public_key.algorithm == "rsa":
        return (bits + 7) // 8
    # DER ECDSA-Sig-Value: SEQUENCE of two INTEGERs, each at most n+1 bytes (sign byte).
    n = (bits + 7) // 8
    content = 2 * (2 + n + 1)
    return content + (2 if content < 128 else 3)


class Pkcs11TokenSigner(PKCS11Signer):
    """pyHanko's PKCS11Signer on a shared `_TokenSession`, with reopen-and-retry and an exact
    dry-run size (pyHanko's default reserves 512 bytes whatever the key)."""

    def __init__(
        self,
        token: _TokenSession,
        spec: Pkcs11KeySpec,
        *,
        cert: asn1_x509.Certificate,
        chain: list[asn1_x509.Certificate],
        use_raw_mechanism: bool,
    ):
        super().__init__(
            token.session(),
            key_label=spec.key_label,
            cert_label=spec.cert_label or spec.key_label,
            signing_cert=cert,
            ca_chain=chain,
            other_certs_to_pull=(),
            use_raw_mechanism=use_raw_mechanism,
        )
        self._token = token
        self._where = f"key {spec.key_label!r} on PKCS#11 token {spec.token_label!r}"
        self._generation = -1  # no key handle yet
        self._loaded = True  # certificate given, key handle fetched by _key() below

    def _key(self) -> Any:
        """The key handle of the current session (fetched again after a reopen). Token lock held."""
        if self._generation != self._token.generation or self._key_handle is None:
            session = self._token.session()
            self.pkcs11_session = session
            self._key_handle = find_private_key(session, self.key_label, self._token.token_label)
            self._generation = self._token.generation
        return self._key_handle

    def key_type(self) -> Any:
        with self._token.lock:
            return self._key()[Attribute.KEY_TYPE]

    def sign_blocking(self, data: bytes, digest_algorithm: str) -> bytes:
        """One private-key operation on the token; call it from a worker thread."""
        op = self._select_pkcs11_signing_params(digest_algorithm, sign_kwargs=self.sign_kwargs(data))
        payload = op.pre_sign_transform(data) if op.pre_sign_transform is not None else data
        for attempt in (1, 2):
            with self._token.lock:
                try:
                    signature = bytes(self._key().sign(payload, **op.sign_kwargs))
                except _SESSION_LOST as exc:
                    if attempt == 2:
                        raise SigningError(
                            f"{self._where}: session lost again after reopening ({type(exc).__name__})"
                        ) from None
                    self._token.reopen()
                    continue
                except p11e.PKCS11Error as exc:
                    raise SigningError(f"{self._where} refused to sign: {type(exc).__name__}") from None
            return op.post_sign_transform(signature) if op.post_sign_transform is not None else signature
        raise AssertionError("unreachable")

    async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        if dry_run:
            return bytes(_max_signature_length(self.signing_cert))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.sign_blocking, data, digest_algorithm)

    def check_key_matches_certificate(self) -> None:
        cert = self.signing_cert
        subject = cert.subject.human_friendly
        algorithm = cert.public_key.algorithm
        expected = {"rsa": KeyType.RSA, "ec": KeyType.EC}.get(algorithm)
        if expected is None:
            raise SigningError(f"certificate '{subject}': only RSA and ECDSA keys are supported")
        if self.key_type() != expected:
            raise SigningError(f"{self._where} does not match the certificate '{subject}' (different key type)")
        signature = self.sign_blocking(_PROBE, "sha256")
        public = serialization.load_der_public_key(cert.public_key.dump())
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, _PROBE, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, _PROBE, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SigningError(f"{self._where} does not match the certificate '{subject}'") from None


def find_private_key(session: Any, key_label: str, token_label: str) -> Any:
    try:
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key_label}))
        if not found:
            present = _labels(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
            raise SigningError(
                f"no private key labelled {key_label!r} on PKCS#11 token {token_label!r}; "
                f"private keys present: {present}"
            )
    except p11e.PKCS11Error as exc:
        raise SigningError(f"cannot search PKCS#11 token {token_label!r}: {type(exc).__name__}") from None
    if len(found) > 1:
        raise SigningError(f"several private keys are labelled {key_label!r} on PKCS#11 token {token_label!r}")
    if not found[0][Attribute.SIGN]:
        raise SigningError(f"private key {key_label!r} on PKCS#11 token {token_label!r} is not allowed to sign")
    return found[0]


def _token_certificates(session: Any) -> list[tuple[str, asn1_x509.Certificate]]:
    objects = session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
    return [(str(o[Attribute.LABEL]), asn1_x509.Certificate.load(bytes(o[Attribute.VALUE]))) for o in objects]


def _file_certificates(path: Path) -> list[asn1_x509.Certificate]:
    try:
        certs = list(load_certs_from_pemder([str(path)]))
    except OSError as exc:
        raise SigningError(f"cannot read certificate file {path}: {exc.strerror or exc}") from None
    except Exception:  # asn1crypto/pyHanko raise various types for malformed input
        raise SigningError(f"{path} does not contain a readable X.509 certificate") from None
    if not certs:
        raise SigningError(f"{path} does not contain a readable X.509 certificate")
    return certs


def _issuer_chain(cert: asn1_x509.Certificate, candidates: list[asn1_x509.Certificate]) -> list[asn1_x509.Certificate]:
    """The token's certificates that lie on `cert`'s issuer path (other certificates stay out of the CMS)."""
    chain: list[asn1_x509.Certificate] = []
    current = cert
    while current.issuer != current.subject and len(chain) < 10:
        issuer = next((c for c in candidates if c.subject == current.issuer and c.dump() != current.dump()), None)
        if issuer is None or any(issuer.dump() == c.dump() for c in chain):
            break
        chain.append(issuer)
        current = issuer
    return chain


def _certificates(session: Any, spec: Pkcs11KeySpec) -> tuple[asn1_x509.Certificate, list[asn1_x509.Certificate]]:
    try:
        on_token = _token_certificates(session)
    except p11e.PKCS11Error as exc:
        raise SigningError(
            f"cannot read certificates from PKCS#11 token {spec.token_label!r}: {type(exc).__name__}"
        ) from None
    extra: list[asn1_x509.Certificate] = []
    if spec.cert_path is not None:
        cert, *extra = _file_certificates(spec.cert_path)
    else:
        label = spec.cert_label or spec.key_label
        matches = [c for lbl, c in on_token if lbl == label]
        if not matches:
            present = ", ".join(sorted({repr(lbl) for lbl, _ in on_token})) or "none"
            raise SigningError(
                f"no certificate labelled {label!r} on PKCS#11 token {spec.token_label!r} "
                f"(certificates present: {present}); or configure cert_path"
            )
        if len(matches) > 1:
            raise SigningError(f"several certificates are labelled {label!r} on PKCS#11 token {spec.token_label!r}")
        cert = matches[0]
    for path in spec.chain_paths:
        extra.extend(_file_certificates(path))
    return cert, extra + _issuer_chain(cert, [c for _, c in on_token])


def _needs_raw_mechanism(token: Any, cert: asn1_x509.Certificate) -> bool:
    algorithm = cert.public_key.algorithm
    try:
        mechanisms = set(token.slot.get_mechanisms())
    except p11e.PKCS11Error:
        return False
    hashed, raw = _HASHED_MECHANISM.get(algorithm), _RAW_MECHANISM.get(algorithm)
    return hashed not in mechanisms and raw in mechanisms


def _build(token: _TokenSession, spec: Pkcs11KeySpec) -> Pkcs11TokenSigner:
    with token.lock:
        session = token.session()
        find_private_key(session, spec.key_label, spec.token_label)  # clear error before anything else
        cert, chain = _certificates(session, spec)
        raw = _needs_raw_mechanism(token.token, cert)
    signer = Pkcs11TokenSigner(token, spec, cert=cert, chain=chain, use_raw_mechanism=raw)
    signer.check_key_matches_certificate()
    return signer


_tokens: dict[tuple[str, str], _TokenSession] = {}
_signers: dict[tuple[Any, ...], tuple[tuple[Any, ...], Pkcs11TokenSigner]] = {}
_cache_lock = threading.Lock()


def _file_versions(spec: Pkcs11KeySpec) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in spec.files():
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SigningError(f"cannot read {path}: {exc.strerror or exc}") from None
        stamps.append((st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def load_pkcs11_signer(spec: Pkcs11KeySpec) -> Pkcs11TokenSigner:
    """The signer for `spec`: one per (module, token, key, certificate source) and process.

    Blocking (token I/O, one probe signature on first use): call it from a worker thread when on
    an event loop. A changed PIN or certificate file builds a new signer.
    """
    module = str(spec.module_path.resolve())
    token_key = (module, spec.token_label)
    signer_key = (
        module,
        spec.token_label,
        spec.key_label,
        spec.cert_label,
        str(spec.cert_path.resolve()) if spec.cert_path else None,
        tuple(str(p.resolve()) for p in spec.chain_paths),
    )
    version = (_file_versions(spec), _pin_tag(spec.pin))
    with _cache_lock:
        token = _tokens.setdefault(token_key, _TokenSession(spec.module_path, spec.token_label))
        cached = _signers.get(signer_key)
    token.ensure(spec.pin)
    if cached is not None and cached[0] == version:
        return cached[1]
    signer = _build(token, spec)
    with _cache_lock:
        _signers[signer_key] = (version, signer)
    return signer


def close_pkcs11_sessions() -> None:
    """Log out and close every token session of this process and forget the signers (shutdown, tests)."""
    with _cache_lock:
        tokens = list(_tokens.values())
        _tokens.clear()
        _signers.clear()
    for token in tokens:
        token.close()
