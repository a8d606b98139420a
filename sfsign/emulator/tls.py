"""The emulator's own certificate authority and server certificate.

Clients must trust the emulator exactly as a customer trusts a corporate proxy CA (a CA file setting),
never by switching verification off; so the emulator mints a throw-away CA at start and writes only the
public CA certificate where clients can find it. The server key stays in the emulator's data directory
(0600) so that a restart with the same directory keeps the CA the clients already trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
SAN_DNS = ("localhost",)
SAN_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the CA certificate (for clients) and the server certificate and key (for the server)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA (for tests and tools)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _reusable(material: TlsMaterial) -> bool:
    """True when the files exist, the CA signed the server cert and it is valid for another day."""
    try:
        ca = x509.load_pem_x509_certificate(material.ca_file.read_bytes())
        cert = x509.load_pem_x509_certificate(material.cert_file.read_bytes())
        serialization.load_pem_private_key(material.key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if cert.issuer != ca.subject:
        return False
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return cert.not_valid_after_utc > soon and ca.not_valid_after_utc > soon


def ensure_tls(directory: Path) -> TlsMaterial:
    """Reuse the CA and server certificate in `directory`, or create new ones.

    Blocking (key generation, file I/O): call it from an executor when a loop is running.
    """
    directory.mkdir(parents=True, exist_ok=True)
    material = TlsMaterial(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
    if _reusable(material):
        return material
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sfsign emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sfsign emulator test CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in SAN_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SAN_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    material.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    material.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        material.key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return material
