"""The certificates of the demo PKI: a CA, a document signer, a TSA and an OCSP responder, each with the
extensions and key usages a PDF validator checks, optionally pointing at `pkiserver`'s revocation services.

Apart from `pki.py`, which decides what to issue and writes the files, so that each certificate profile
can be read (and compared with a real CA's) on its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID, ObjectIdentifier

KeyAlgorithm = Literal["rsa-3072", "ec-p256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# RFC 9336 id-kp-documentSigning; emailProtection is what NSS/Acrobat-era validators look for.
DOCUMENT_SIGNING_EKU = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
CLOCK_SKEW = dt.timedelta(minutes=5)
ROOT_SLUG = "root"  # the path segment naming a CA in the services' URLs (/ocsp/root, /crl/root.crl, ...)
ISSUING_SLUG = "issuing"


def new_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def distinguished_name(org_name: str, common_name: str) -> x509.Name:
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


def ca_cert(
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


def signer_cert(
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


def tsa_cert(
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


def ocsp_responder_cert(
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
