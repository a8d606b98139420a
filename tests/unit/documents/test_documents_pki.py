from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from sfsign.localpki.pki import DOCUMENT_SIGNING_EKU, DemoPki, create_demo_pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_are_private_to_the_owner(rsa_pki: DemoPki) -> None:
    files = [
        rsa_pki.root_cert_pem_path,
        rsa_pki.issuing_cert_pem_path,
        rsa_pki.chain_pem_path,
        rsa_pki.signer_p12_path,
        rsa_pki.signer_key_path,
        rsa_pki.signer_cert_path,
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_chain_is_root_then_issuing_then_signer(rsa_pki: DemoPki) -> None:
    root = _cert(rsa_pki.root_cert_pem_path)
    issuing = _cert(rsa_pki.issuing_cert_pem_path)
    signer = _cert(rsa_pki.signer_cert_path)
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    signer.verify_directly_issued_by(issuing)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert signer.subject.rfc4514_string() == "CN=sfsign demo Document Signing,O=sfsign demo"
    public_key = signer.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072


def test_signer_certificate_is_fit_for_document_signing(rsa_pki: DemoPki) -> None:
    signer = _cert(rsa_pki.signer_cert_path)
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert not usage.key_cert_sign
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert DOCUMENT_SIGNING_EKU in eku and ExtendedKeyUsageOID.EMAIL_PROTECTION in eku


def test_key_files_need_the_passphrase(rsa_pki: DemoPki, passphrase: str) -> None:
    pem = rsa_pki.signer_key_path.read_bytes()
    assert b"ENCRYPTED" in pem
    with pytest.raises(TypeError):
        load_pem_private_key(pem, None)
    load_pem_private_key(pem, passphrase.encode())
    key, cert, extra = pkcs12.load_key_and_certificates(rsa_pki.signer_p12_path.read_bytes(), passphrase.encode())
    assert key is not None and cert == _cert(rsa_pki.signer_cert_path)
    assert len(extra) == 2  # issuing CA and root travel with the key


def test_passphrase_is_not_in_repr(rsa_pki: DemoPki, passphrase: str) -> None:
    assert passphrase not in repr(rsa_pki)
    assert passphrase not in repr(rsa_pki.pkcs12_key_spec())
    assert passphrase not in repr(rsa_pki.pem_key_spec())


def test_ec_pki_without_passphrase_and_custom_validity(tmp_path: Path) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    pki = create_demo_pki(tmp_path / "pki", key_algorithm="ec-p256", signer_not_before=start, signer_not_after=end)
    assert pki.passphrase is None
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    key = load_pem_private_key(pki.signer_key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signer = _cert(pki.signer_cert_path)
    assert signer.not_valid_before_utc == start and signer.not_valid_after_utc == end


def test_regenerating_over_existing_files_keeps_them_private(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir()
    loose = directory / "signer-key.pem"
    loose.write_text("old")
    loose.chmod(0o644)
    create_demo_pki(directory, key_algorithm="ec-p256")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
