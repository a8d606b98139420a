"""Signing with keys on a real SoftHSM2 token (PKCS#11), provisioned per session by conftest's `softhsm`.

Nothing on the PKCS#11 side is faked: the signatures come from the token and are checked by
pyHanko's validator and by poppler's `pdfsig`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from pydantic import SecretStr
from test_documents_timestamps import LocalTsa  # the RFC 3161 server of the B-T tests

from sfsign.documents import pkcs11 as pkcs11_module
from sfsign.documents.render import RenderedPdf
from sfsign.documents.sign import (
    Appearance,
    KeySource,
    SignatureLevel,
    SignedPdf,
    SigningError,
    async_sign_pdf_bytes,
    load_signer,
    sign_pdf_bytes,
)
from sfsign.documents.verify import async_validate_signed_pdf, validate_signed_pdf
from sfsign.localpki.pki import DemoPki

if TYPE_CHECKING:
    from conftest import SoftHsm

APPEARANCE = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg")


def _sign(rendered: RenderedPdf, spec: KeySource, **kwargs: Any) -> SignedPdf:
    return sign_pdf_bytes(rendered.pdf, rendered.signature_box, spec, APPEARANCE, **kwargs)


def _signing_error(rendered: RenderedPdf, spec: KeySource) -> str:
    """The error text as a log would show it (message and full traceback), checked for secrets."""
    with pytest.raises(SigningError) as info:
        _sign(rendered, spec)
    rendered_error = "".join(traceback.format_exception(info.value))
    if isinstance(spec, pkcs11_module.Pkcs11KeySpec) and spec.pin is not None:
        assert spec.pin.get_secret_value() not in rendered_error
    return str(info.value)


@pytest.fixture(scope="module")
def signed_b_b(rendered_short: RenderedPdf, softhsm: SoftHsm) -> SignedPdf:
    return _sign(rendered_short, softhsm.spec())


@pytest.fixture(scope="module")
def rsa_tsa(rsa_pki: DemoPki, passphrase: str) -> Iterator[LocalTsa]:
    """pyHanko's test TSA signs with RSA only, so it is the RSA demo PKI's; trust both roots."""
    server = LocalTsa(rsa_pki, passphrase).start()
    yield server
    server.stop()


def test_b_b_signature_with_a_token_key_validates_trusted_and_intact(signed_b_b: SignedPdf, softhsm: SoftHsm) -> None:
    report = validate_signed_pdf(signed_b_b.pdf, [softhsm.pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted, report.summary
    assert (report.coverage, report.level) == ("ENTIRE_FILE", "B-B")
    assert report.signer_subject == signed_b_b.signer_subject
    assert "Other Org Document Signing" in signed_b_b.signer_subject
    cert = x509.load_pem_x509_certificate(softhsm.pki.signer_cert_path.read_bytes())
    assert int(signed_b_b.signer_serial, 16) == cert.serial_number


def test_pdfsig_reports_the_token_signature_valid(signed_b_b: SignedPdf, tmp_path: Path) -> None:
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig not installed (apt-get install -y poppler-utils); CI installs it")
    path = tmp_path / "signed-hsm.pdf"
    path.write_bytes(signed_b_b.pdf)
    out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout
    assert "Signature is Valid." in out
    assert "Total document signed" in out


def test_b_t_signature_with_a_token_key_and_a_local_tsa(
    rendered_short: RenderedPdf, softhsm: SoftHsm, rsa_tsa: LocalTsa, rsa_pki: DemoPki
) -> None:
    signed = _sign(rendered_short, softhsm.spec(), level=SignatureLevel.B_T, tsa_urls=[rsa_tsa.url])
    report = validate_signed_pdf(signed.pdf, [softhsm.pki.root_cert_pem_path, rsa_pki.root_cert_pem_path])
    assert report.intact and report.trusted and report.level == "B-T", report.summary
    assert report.timestamp_trusted is True
    assert signed.timestamp_time is not None and report.timestamp_time == signed.timestamp_time


def test_two_documents_reuse_one_session_and_signer(
    rendered_short: RenderedPdf, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = softhsm.spec()
    signer = load_signer(spec)
    assert isinstance(signer, pkcs11_module.Pkcs11TokenSigner)
    _sign(rendered_short, spec)  # settles the session after whatever earlier tests did
    session = signer.pkcs11_session
    logins: list[object] = []
    real_login = pkcs11_module._login

    def counting_login(token: Any, pin: SecretStr | None) -> Any:
        logins.append(token)
        return real_login(token, pin)

    monkeypatch.setattr(pkcs11_module, "_login", counting_login)
    first = _sign(rendered_short, spec)
    second = _sign(rendered_short, spec)
    assert load_signer(spec) is signer
    assert signer.pkcs11_session is session
    assert logins == []
    assert first.sha256_hex != second.sha256_hex  # two real signatures (ECDSA is randomised)


def test_a_session_closed_under_the_signer_is_reopened(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    spec = softhsm.spec()
    signer = load_signer(spec)
    assert isinstance(signer, pkcs11_module.Pkcs11TokenSigner)
    _sign(rendered_short, spec)
    signer.pkcs11_session.close()  # as a token reset or HSM fail-over would
    signed = _sign(rendered_short, spec)
    assert load_signer(spec) is signer
    assert validate_signed_pdf(signed.pdf, [softhsm.pki.root_cert_pem_path]).trusted


def test_wrong_pin_says_pin_incorrect_without_the_pin(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    wrong = softhsm.spec(pin=SecretStr("9999-not-the-pin"))
    message = _signing_error(rendered_short, wrong)
    assert message == "PIN incorrect for PKCS#11 token 'sfsign-test'"
    assert "9999-not-the-pin" not in repr(wrong)
    # The configured PIN still works afterwards.
    assert _sign(rendered_short, softhsm.spec()).level == "B-B"


def test_missing_token_label_lists_the_tokens_present(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    message = _signing_error(rendered_short, softhsm.spec(token_label="no-such-token"))
    assert "no PKCS#11 token labelled 'no-such-token'" in message
    assert "'sfsign-test'" in message and "'sfsign-other'" in message
    assert str(softhsm.module_path) in message


def test_missing_key_label_lists_the_keys_present(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    message = _signing_error(rendered_short, softhsm.spec(key_label="nope"))
    assert message == (
        "no private key labelled 'nope' on PKCS#11 token 'sfsign-test'; private keys present: 'expired', 'signer'"
    )


def test_missing_certificate_label_is_named(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    message = _signing_error(rendered_short, softhsm.spec(cert_label="no-cert"))
    assert "no certificate labelled 'no-cert' on PKCS#11 token 'sfsign-test'" in message
    assert "'signer'" in message and "cert_path" in message


def test_missing_module_is_named(rendered_short: RenderedPdf, softhsm: SoftHsm, tmp_path: Path) -> None:
    missing = tmp_path / "libnothing.so"
    assert _signing_error(rendered_short, softhsm.spec(module_path=missing)) == f"PKCS#11 module {missing} not found"


@pytest.mark.parametrize("other", ["rsa", "ec"])
def test_key_that_does_not_match_the_certificate_is_refused(
    rendered_short: RenderedPdf, softhsm: SoftHsm, rsa_pki: DemoPki, other: str
) -> None:
    """RSA certificate: caught by key type; another EC certificate: caught by the probe signature."""
    cert = rsa_pki.signer_cert_path if other == "rsa" else softhsm.expired_pki.signer_cert_path
    message = _signing_error(rendered_short, softhsm.spec(cert_path=cert))
    assert "key 'signer' on PKCS#11 token 'sfsign-test' does not match the certificate" in message


def test_certificate_and_chain_from_files(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    pki = softhsm.pki
    spec = softhsm.spec(cert_path=pki.signer_cert_path, chain_paths=pki.chain_paths)
    report = validate_signed_pdf(_sign(rendered_short, spec).pdf, [pki.root_cert_pem_path])
    assert report.intact and report.trusted, report.summary


def test_expired_token_certificate_is_refused_before_signing(
    rendered_short: RenderedPdf, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = softhsm.spec("expired")
    load_signer(spec)  # loading makes its one probe signature; the document must make none
    operations: list[bytes] = []
    real = pkcs11_module.Pkcs11TokenSigner.sign_blocking

    def recording(self: Any, data: bytes, digest_algorithm: str) -> bytes:
        operations.append(data)
        return real(self, data, digest_algorithm)

    monkeypatch.setattr(pkcs11_module.Pkcs11TokenSigner, "sign_blocking", recording)
    message = _signing_error(rendered_short, spec)
    assert "Expired Org Document Signing" in message and "has expired" in message
    assert operations == []


def test_dry_run_reserves_at_least_the_real_signature_length(softhsm: SoftHsm) -> None:
    signer = load_signer(softhsm.spec())
    assert isinstance(signer, pkcs11_module.Pkcs11TokenSigner)
    placeholder = asyncio.run(signer.async_sign_raw(b"x", "sha256", dry_run=True))
    assert 0 < len(signer.sign_blocking(b"x", "sha256")) <= len(placeholder) < 512


async def test_async_signing_on_a_running_loop(rendered_short: RenderedPdf, softhsm: SoftHsm) -> None:
    signed = await async_sign_pdf_bytes(rendered_short.pdf, rendered_short.signature_box, softhsm.spec(), APPEARANCE)
    assert (await async_validate_signed_pdf(signed.pdf, [softhsm.pki.root_cert_pem_path])).trusted


def test_pin_is_not_in_the_spec_repr(softhsm: SoftHsm) -> None:
    spec = softhsm.spec()
    assert spec.pin is not None and spec.pin.get_secret_value()
    assert spec.pin.get_secret_value() not in repr(spec) and spec.pin.get_secret_value() not in str(spec)
