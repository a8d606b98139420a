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
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pydantic import SecretStr

if TYPE_CHECKING:
    from sfsign.documents.sign import KeySpec

KeyAlgorithm = Literal["rsa-3072", "ec-p256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# RFC 9336 id-kp-documentSigning; emailProtection is what NSS/Acrobat-era validators look for.
DOCUMENT_SIGNING_EKU = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
_CLOCK_SKEW = dt.timedelta(minutes=5)
ROOT_SLUG = "root"  # the path segment naming a CA in the services' URLs (/ocsp/root, /crl/root.crl, ...)
ISSUING_SLUG = "issuing"


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


def _new_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def _name(org_name: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_name),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def service_urls(services_url: str, issuer_slug: str) -> tuple[str, str, str]:
    """(OCSP, CRL, caIssuers) URLs for certificates issued by the CA called `issuer_slug`."""
    base = services_url.rstrip("/")
    return f"{base}/ocsp/{issuer_slug}", f"{base}/crl/{issuer_slug}.crl", f"{base}/certs/{issuer_slug}.cer"


def _with_revocation_pointers(
    builder: x509.CertificateBuilder, services_url: str | None, issuer_slug: str
) -> x509.CertificateBuilder:
    """AIA + CRLDP, which is how validators (pyHanko's fetchers among them) find revocation data."""
    if services_url is None:
        return builder
    ocsp_url, crl_url, issuer_url = service_urls(services_url, issuer_slug)
    return builder.add_extension(
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)),
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(issuer_url)
                ),
            ]
        ),
        critical=False,
    ).add_extension(
        x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(crl_url)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        ),
        critical=False,
    )


def _ca_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    path_length: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    services_url: str | None = None,
    issuer_slug: str = ROOT_SLUG,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if issuer != subject:  # a self-signed root is a trust anchor: nothing to check it against
        builder = _with_revocation_pointers(builder, services_url, issuer_slug)
    return builder.sign(issuer_key, hashes.SHA256())


def _end_entity_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usages: list[x509.ObjectIdentifier],
    usages_critical: bool,
    services_url: str | None = None,
    issuer_slug: str = ISSUING_SLUG,
    ocsp_no_check: bool = False,
) -> x509.Certificate:
    """A leaf certificate for signing (digitalSignature + nonRepudiation) with the given extended usages."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,  # a.k.a. nonRepudiation
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=usages_critical)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    else:
        builder = _with_revocation_pointers(builder, services_url, issuer_slug)
    return builder.sign(issuer_key, hashes.SHA256())


def _signer_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    services_url: str | None = None,
) -> x509.Certificate:
    return _end_entity_cert(
        subject,
        key,
        issuer,
        issuer_key,
        not_before=not_before,
        not_after=not_after,
        usages=[DOCUMENT_SIGNING_EKU, ExtendedKeyUsageOID.EMAIL_PROTECTION],
        usages_critical=False,
        services_url=services_url,
    )


def _tsa_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    services_url: str | None = None,
) -> x509.Certificate:
    """RFC 3161 section 2.3: a TSA certificate carries exactly the timeStamping EKU, marked critical."""
    return _end_entity_cert(
        subject,
        key,
        issuer,
        issuer_key,
        not_before=not_before,
        not_after=not_after,
        usages=[ExtendedKeyUsageOID.TIME_STAMPING],
        usages_critical=True,
        services_url=services_url,
    )


def _ocsp_responder_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A delegated OCSP responder (RFC 6960 4.2.2.2) with id-pkix-ocsp-nocheck.

    Why not let each CA sign its own OCSP answers: ETSI past validation (pyHanko's time slide,
    used for B-LTA) then wants revocation data for the root acting as responder, which cannot
    exist; a no-check responder ends that recursion, as public CAs' responders do.
    """
    return _end_entity_cert(
        subject,
        key,
        issuer,
        issuer_key,
        not_before=not_before,
        not_after=not_after,
        usages=[ExtendedKeyUsageOID.OCSP_SIGNING],
        usages_critical=False,
        ocsp_no_check=True,
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
    CRL and caIssuers URLs under it (see `service_urls`); `pkiserver.PkiServices` serves them.
    `ocsp_responders` (default: when `services_url` is given) also issues a delegated OCSP
    responder certificate per CA; without them the services sign OCSP answers with the CA key.
    """
    secret = SecretStr(passphrase) if isinstance(passphrase, str) else passphrase
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)

    root_key = _new_key(key_algorithm)
    root_name = _name(org_name, f"{org_name} Root CA")
    root = _ca_cert(
        root_name,
        root_key,
        root_name,
        root_key,
        path_length=1,
        not_before=now - _CLOCK_SKEW,
        not_after=now + dt.timedelta(days=3650),
    )
    issuing_key = _new_key(key_algorithm)
    issuing_name = _name(org_name, f"{org_name} Issuing CA")
    issuing = _ca_cert(
        issuing_name,
        issuing_key,
        root_name,
        root_key,
        path_length=0,
        not_before=now - _CLOCK_SKEW,
        not_after=now + dt.timedelta(days=1825),
        services_url=services_url,
        issuer_slug=ROOT_SLUG,
    )
    signer_key = _new_key(key_algorithm)
    signer = _signer_cert(
        _name(org_name, f"{org_name} Document Signing"),
        signer_key,
        issuing,
        issuing_key,
        not_before=signer_not_before or now - _CLOCK_SKEW,
        not_after=signer_not_after or now + dt.timedelta(days=730),
        services_url=services_url,
    )
    tsa_key = _new_key(key_algorithm)
    tsa = _tsa_cert(
        _name(org_name, f"{org_name} Timestamping Authority"),
        tsa_key,
        issuing,
        issuing_key,
        not_before=now - _CLOCK_SKEW,
        not_after=tsa_not_after or now + dt.timedelta(days=1825),
        services_url=services_url,
    )

    responders: dict[str, tuple[PrivateKey, x509.Certificate]] = {}
    if services_url is not None if ocsp_responders is None else ocsp_responders:
        for slug, ca, ca_key in ((ROOT_SLUG, root, root_key), (ISSUING_SLUG, issuing, issuing_key)):
            responder_key = _new_key(key_algorithm)
            responders[slug] = (
                responder_key,
                _ocsp_responder_cert(
                    _name(org_name, f"{org_name} OCSP Responder ({slug})"),
                    responder_key,
                    ca,
                    ca_key,
                    not_before=now - _CLOCK_SKEW,
                    not_after=now + dt.timedelta(days=1825),
                ),
            )

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

    pki = DemoPki(
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
        root_ocsp_cert_path=directory / "root-ocsp-cert.pem" if responders else None,
        root_ocsp_key_path=directory / "root-ocsp-key.pem" if responders else None,
        issuing_ocsp_cert_path=directory / "issuing-ocsp-cert.pem" if responders else None,
        issuing_ocsp_key_path=directory / "issuing-ocsp-key.pem" if responders else None,
    )
    _write_private(pki.root_cert_pem_path, _pem(root))
    _write_private(pki.issuing_cert_pem_path, _pem(issuing))
    _write_private(pki.chain_pem_path, _pem(issuing) + _pem(root))
    _write_private(pki.signer_cert_path, _pem(signer))
    _write_private(
        pki.signer_key_path,
        signer_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, key_encryption),
    )
    _write_private(pki.tsa_cert_path, _pem(tsa))
    keys: list[tuple[Path | None, PrivateKey]] = [
        (pki.tsa_key_path, tsa_key),
        (pki.root_key_path, root_key),
        (pki.issuing_key_path, issuing_key),
    ]
    if responders:
        assert pki.root_ocsp_cert_path is not None and pki.issuing_ocsp_cert_path is not None
        _write_private(pki.root_ocsp_cert_path, _pem(responders[ROOT_SLUG][1]))
        _write_private(pki.issuing_ocsp_cert_path, _pem(responders[ISSUING_SLUG][1]))
        keys += [
            (pki.root_ocsp_key_path, responders[ROOT_SLUG][0]),
            (pki.issuing_ocsp_key_path, responders[ISSUING_SLUG][0]),
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
            key=signer_key,
            cert=signer,
            cas=[issuing, root],
            encryption_algorithm=p12_encryption,
        ),
    )
    return pki
