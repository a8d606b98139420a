"""A TLS server certificate from the demo PKI's issuing CA, for the local services that speak TLS (the
embedded SMTP server).

Why from the demo PKI rather than a self-signed certificate: the mailer verifies its relay exactly as in
production (hostname, chain to a trusted root given as a CA bundle), so the tests prove that path and not
a switched-off check. The root to trust is the PKI's root certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from sfsign.localpki.certificates import CLOCK_SKEW, PrivateKey, distinguished_name, new_key
from sfsign.localpki.pki import DemoPki, _pem, _write_private

LOOPBACK_HOSTNAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class TlsServerFiles:
    """`cert_file`: the server certificate then the issuing CA (what a server presents); `key_file`: its key,
    unencrypted, readable by its owner only; `ca_file`: the root a client trusts (a CA bundle setting)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def tls_server_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    hostnames: tuple[str, ...],
    addresses: tuple[str, ...],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """The CA/Browser-forum shape of a server certificate: names in the SAN, serverAuth only."""
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def issue_tls_server(
    pki: DemoPki,
    directory: Path,
    *,
    hostnames: tuple[str, ...] = LOOPBACK_HOSTNAMES,
    addresses: tuple[str, ...] = LOOPBACK_ADDRESSES,
    name: str = "smtp",
) -> TlsServerFiles:
    """Issue a server certificate for `hostnames`/`addresses` (default: this host) under `directory`.

    Blocking (key generation, file I/O): call it from an executor when a loop is running.
    """
    if pki.issuing_key_path is None:
        raise ValueError("this demo PKI kept no issuing CA key: create it with create_demo_pki")
    password = pki.passphrase.get_secret_value().encode() if pki.passphrase is not None else None
    issuing_key = serialization.load_pem_private_key(pki.issuing_key_path.read_bytes(), password=password)
    if not isinstance(issuing_key, PrivateKey):
        raise ValueError("the issuing CA key is neither RSA nor EC")
    issuing = x509.load_pem_x509_certificate(pki.issuing_cert_pem_path.read_bytes())
    org = issuing.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
    now = dt.datetime.now(dt.UTC)
    key = new_key("ec-p256")
    cert = tls_server_cert(distinguished_name(str(org), hostnames[0] if hostnames else addresses[0]), key, issuing,
                           issuing_key, hostnames=hostnames, addresses=addresses, not_before=now - CLOCK_SKEW,
                           not_after=now + dt.timedelta(days=397))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TlsServerFiles(directory / f"{name}-cert.pem", directory / f"{name}-key.pem", pki.root_cert_pem_path)
    _write_private(files.cert_file, _pem(cert) + _pem(issuing))
    _write_private(files.key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return files
