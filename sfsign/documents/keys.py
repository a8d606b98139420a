"""Signing keys: where they live (a PKCS#12 file, PEM/DER files, or a PKCS#11 token via `pkcs11.py`) and
the pyHanko signer made from them, parsed once per process.

Why it is its own module: parsing and validating a key (~120 ms for RSA) is the costly, security-relevant
part, and it is shared by signing, the certificate expiry watcher and `sfsign check`. `load_signer`
caches the signer keyed by the files' identity and mtimes (and a keyed hash of the passphrase), so a
rotated certificate is picked up without a restart. `PreparedKeySigner` keeps the parsed key and answers
pyHanko's size-estimation dry run without signing, so each document costs exactly one private-key
operation (signing-notes.md, pitfall 1).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from pyhanko.keys.internal import (
    translate_pyca_cryptography_cert_to_asn1,
    translate_pyca_cryptography_key_to_asn1,
)
from pyhanko.sign import signers
from pyhanko.sign.general import get_pyca_cryptography_hash
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import process_pss_params

from sfsign.documents.errors import SigningError
from sfsign.documents.pkcs11 import Pkcs11KeySpec, load_pkcs11_signer
from sfsign.documents.specs import KeySource as KeySource
from sfsign.documents.specs import KeySpec as KeySpec

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PreparedKeySigner(signers.SimpleSigner):
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


def _build_signer(spec: KeySpec) -> PreparedKeySigner:
    key, cert, others = _load_pkcs12(spec) if spec.pkcs12_path else _load_pem(spec)
    for chain_file in spec.chain_paths:
        others.extend(_load_certs(chain_file))
    if _public_der(key) != _public_der(cert):
        raise SigningError(f"the private key does not belong to the certificate {cert.subject.rfc4514_string()}")
    return PreparedKeySigner(private_key=key, cert=cert, others=others)


_PROCESS_SALT = secrets.token_bytes(32)
_signer_cache: dict[tuple[str, ...], tuple[tuple[Any, ...], PreparedKeySigner]] = {}
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
