"""A throw-away three-level PKI for `sfsign demo` and the tests.

It also issues a timestamping (TSA) certificate from the same issuing CA, so tests can run an
RFC 3161 server on 127.0.0.1 whose tokens validate against the same root as the signature.
With `services_url`, every issued certificate also points (AIA OCSP + caIssuers, CRL distribution
point) at `pkiserver.PkiServices` on that URL, so B-LT/B-LTA upgrades fetch real revocation data
over HTTP exactly as they would from a public CA; the CA keys are kept (encrypted) for the server.

Real deployments bring their own signing certificate; the demo and the tests need one that looks
like a real one (root CA -> issuing CA -> signer, with the key usages a PDF validator checks), so
that the signing and validation code paths are the same ones production uses. Names are fixed so
output is recognisable; keys are fresh every time, so nothing secret is ever committed.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import SecretStr

from sfsign.localpki.certificates import (
    CLOCK_SKEW,
    ca_cert,
    distinguished_name,
    new_key,
    ocsp_responder_cert,
    signer_cert,
    tsa_cert,
)

# Re-exported (`X as X`): the PKI server and the tests import them from here.
from sfsign.localpki.certificates import DOCUMENT_SIGNING_EKU as DOCUMENT_SIGNING_EKU
from sfsign.localpki.certificates import ISSUING_SLUG as ISSUING_SLUG
from sfsign.localpki.certificates import ROOT_SLUG as ROOT_SLUG
from sfsign.localpki.certificates import KeyAlgorithm as KeyAlgorithm
from sfsign.localpki.certificates import PrivateKey as PrivateKey

if TYPE_CHECKING:
    from sfsign.documents.sign import KeySpec


@dataclass(frozen=True)
class DemoPki:
    """Paths of the generated files. The passphrase protects both the PKCS#12 file and the PEM key."""

    directory: Path
    root_cert_pem_path: Path
    issuing_cert_pem_path: Path
    chain_pem_path: Path  # issuing CA then root, PEM bundle
    signer_p12_path: Path
    signer_key_path: Path
    signer_cert_path: Path
    tsa_key_path: Path  # PKCS#8 PEM, encrypted with the passphrase like the signer key
    tsa_cert_path: Path
    passphrase: SecretStr | None = field(default=None, repr=False)
    root_key_path: Path | None = None  # PKCS#8 PEM, encrypted with the passphrase (for CRLs and OCSP)
    issuing_key_path: Path | None = None
    services_url: str | None = None  # where the certificates' OCSP/CRL/caIssuers URLs point, if anywhere
    # Delegated OCSP responders (id-kp-OCSPSigning + id-pkix-ocsp-nocheck), one per CA, if created.
    root_ocsp_cert_path: Path | None = None
    root_ocsp_key_path: Path | None = None
    issuing_ocsp_cert_path: Path | None = None
    issuing_ocsp_key_path: Path | None = None

    @property
    def chain_paths(self) -> tuple[Path, ...]:
        return (self.issuing_cert_pem_path, self.root_cert_pem_path)

    def pkcs12_key_spec(self) -> KeySpec:
        from sfsign.documents.sign import KeySpec

        return KeySpec(pkcs12_path=self.signer_p12_path, passphrase=self.passphrase)

    def pem_key_spec(self) -> KeySpec:
        from sfsign.documents.sign import KeySpec

        return KeySpec(
            key_path=self.signer_key_path,
            cert_path=self.signer_cert_path,
            chain_paths=self.chain_paths,
            passphrase=self.passphrase,
        )


def _write_private(path: Path, data: bytes) -> None:
    """Write with 0600 from the first byte (no window where the file is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the file may have existed with wider permissions
        os.write(fd, data)
    finally:
        os.close(fd)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_demo_pki(
    directory: Path,
    *,
    org_name: str = "sfsign demo",
    passphrase: str | SecretStr | None = None,
    key_algorithm: KeyAlgorithm = "rsa-3072",
    signer_not_before: dt.datetime | None = None,
    signer_not_after: dt.datetime | None = None,
    services_url: str | None = None,
    tsa_not_after: dt.datetime | None = None,
    ocsp_responders: bool | None = None,
) -> DemoPki:
    """Generate root CA, issuing CA, a document-signing and a TSA certificate under `directory`.

    `signer_not_before`/`signer_not_after` exist so tests can produce expired or not-yet-valid
    signer certificates; by default the signer is valid from now (minus clock skew) for two years.
    `tsa_not_after` does the same for the TSA certificate (default: five years), e.g. to test
    that an archive timestamp is due before the current one's TSA certificate expires.
    `services_url` (e.g. "http://127.0.0.1:PORT") makes every issued certificate carry OCSP,
    CRL and caIssuers URLs under it (see `certificates.service_urls`); `pkiserver.PkiServices` serves them.
    `ocsp_responders` (default: when `services_url` is given) also issues a delegated OCSP
    responder certificate per CA; without them the services sign OCSP answers with the CA key.
    """
    secret = SecretStr(passphrase) if isinstance(passphrase, str) else passphrase
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    cas = _issue_cas(org_name, key_algorithm, now, services_url)
    issuing, issuing_key = cas[ISSUING_SLUG]
    signer_key = new_key(key_algorithm)
    signer = signer_cert(
        distinguished_name(org_name, f"{org_name} Document Signing"),
        signer_key,
        issuing,
        issuing_key,
        not_before=signer_not_before or now - CLOCK_SKEW,
        not_after=signer_not_after or now + dt.timedelta(days=730),
        services_url=services_url,
    )
    tsa_key = new_key(key_algorithm)
    tsa = tsa_cert(
        distinguished_name(org_name, f"{org_name} Timestamping Authority"),
        tsa_key,
        issuing,
        issuing_key,
        not_before=now - CLOCK_SKEW,
        not_after=tsa_not_after or now + dt.timedelta(days=1825),
        services_url=services_url,
    )
    with_responders = services_url is not None if ocsp_responders is None else ocsp_responders
    responders = _issue_ocsp_responders(org_name, key_algorithm, now, cas) if with_responders else {}
    pki = _demo_pki_paths(directory, secret, services_url, with_ocsp_responders=bool(responders))
    _write_pki(pki, cas, (signer, signer_key), (tsa, tsa_key), responders)
    return pki


#: A CA's or a responder's certificate and key, by the slug that names its CA in the services' URLs.
Issued = dict[str, tuple[x509.Certificate, PrivateKey]]


def _issue_cas(org_name: str, key_algorithm: KeyAlgorithm, now: dt.datetime, services_url: str | None) -> Issued:
    """The self-signed root (ten years) and the issuing CA under it (five years)."""
    root_key = new_key(key_algorithm)
    root_name = distinguished_name(org_name, f"{org_name} Root CA")
    root = ca_cert(
        root_name,
        root_key,
        root_name,
        root_key,
        path_length=1,
        not_before=now - CLOCK_SKEW,
        not_after=now + dt.timedelta(days=3650),
    )
    issuing_key = new_key(key_algorithm)
    issuing_name = distinguished_name(org_name, f"{org_name} Issuing CA")
    issuing = ca_cert(
        issuing_name,
        issuing_key,
        root_name,
        root_key,
        path_length=0,
        not_before=now - CLOCK_SKEW,
        not_after=now + dt.timedelta(days=1825),
        services_url=services_url,
        issuer_slug=ROOT_SLUG,
    )
    return {ROOT_SLUG: (root, root_key), ISSUING_SLUG: (issuing, issuing_key)}


def _issue_ocsp_responders(org_name: str, key_algorithm: KeyAlgorithm, now: dt.datetime, cas: Issued) -> Issued:
    """A delegated OCSP responder certificate per CA, so the services need not sign with the CA keys."""
    responders: Issued = {}
    for slug, (ca, ca_key) in cas.items():
        responder_key = new_key(key_algorithm)
        responders[slug] = (
            ocsp_responder_cert(
                distinguished_name(org_name, f"{org_name} OCSP Responder ({slug})"),
                responder_key,
                ca,
                ca_key,
                not_before=now - CLOCK_SKEW,
                not_after=now + dt.timedelta(days=1825),
            ),
            responder_key,
        )
    return responders


def _demo_pki_paths(
    directory: Path, secret: SecretStr | None, services_url: str | None, *, with_ocsp_responders: bool
) -> DemoPki:
    """Where each file goes: fixed names, so a demo folder is recognisable."""

    def ocsp(name: str) -> Path | None:
        return directory / name if with_ocsp_responders else None

    return DemoPki(
        directory=directory,
        root_cert_pem_path=directory / "root-ca.pem",
        issuing_cert_pem_path=directory / "issuing-ca.pem",
        chain_pem_path=directory / "chain.pem",
        signer_p12_path=directory / "signer.p12",
        signer_key_path=directory / "signer-key.pem",
        signer_cert_path=directory / "signer-cert.pem",
        tsa_key_path=directory / "tsa-key.pem",
        tsa_cert_path=directory / "tsa-cert.pem",
        passphrase=secret,
        root_key_path=directory / "root-ca-key.pem",
        issuing_key_path=directory / "issuing-ca-key.pem",
        services_url=services_url,
        root_ocsp_cert_path=ocsp("root-ocsp-cert.pem"),
        root_ocsp_key_path=ocsp("root-ocsp-key.pem"),
        issuing_ocsp_cert_path=ocsp("issuing-ocsp-cert.pem"),
        issuing_ocsp_key_path=ocsp("issuing-ocsp-key.pem"),
    )


def _encryptions(
    secret: SecretStr | None,
) -> tuple[serialization.KeySerializationEncryption, serialization.KeySerializationEncryption]:
    """(PEM keys, PKCS#12 file): both under the passphrase when there is one, else unencrypted."""
    pw = secret.get_secret_value().encode() if secret is not None else None
    key_encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    )
    p12_encryption: serialization.KeySerializationEncryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(pw)
        if pw
        else serialization.NoEncryption()
    )
    return key_encryption, p12_encryption


def _write_pki(
    pki: DemoPki,
    cas: Issued,
    signer: tuple[x509.Certificate, PrivateKey],
    tsa: tuple[x509.Certificate, PrivateKey],
    responders: Issued,
) -> None:
    """Every certificate as PEM, every key as PKCS#8 PEM (encrypted under the passphrase), the signer's
    key with its chain as PKCS#12; each file readable by its owner only."""
    key_encryption, p12_encryption = _encryptions(pki.passphrase)
    (root, root_key), (issuing, issuing_key) = cas[ROOT_SLUG], cas[ISSUING_SLUG]
    _write_private(pki.root_cert_pem_path, _pem(root))
    _write_private(pki.issuing_cert_pem_path, _pem(issuing))
    _write_private(pki.chain_pem_path, _pem(issuing) + _pem(root))
    _write_private(pki.signer_cert_path, _pem(signer[0]))
    _write_private(pki.tsa_cert_path, _pem(tsa[0]))
    keys: list[tuple[Path | None, PrivateKey]] = [
        (pki.signer_key_path, signer[1]),
        (pki.tsa_key_path, tsa[1]),
        (pki.root_key_path, root_key),
        (pki.issuing_key_path, issuing_key),
    ]
    if responders:
        assert pki.root_ocsp_cert_path is not None and pki.issuing_ocsp_cert_path is not None
        _write_private(pki.root_ocsp_cert_path, _pem(responders[ROOT_SLUG][0]))
        _write_private(pki.issuing_ocsp_cert_path, _pem(responders[ISSUING_SLUG][0]))
        keys += [
            (pki.root_ocsp_key_path, responders[ROOT_SLUG][1]),
            (pki.issuing_ocsp_key_path, responders[ISSUING_SLUG][1]),
        ]
    for path, key in keys:
        assert path is not None
        _write_private(
            path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, key_encryption)
        )
    _write_private(
        pki.signer_p12_path,
        pkcs12.serialize_key_and_certificates(
            name=b"sfsign-signer",
            key=signer[1],
            cert=signer[0],
            cas=[issuing, root],
            encryption_algorithm=p12_encryption,
        ),
    )
