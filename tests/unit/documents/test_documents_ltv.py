"""PAdES B-LT / B-LTA by upgrading B-T files, archive timestamps, and offline long-term validation.

Everything talks real HTTP to `PkiServices` on 127.0.0.1 (TSA, OCSP, CRL, caIssuers), with an
ec-p256 demo PKI (the key type does not matter here and RSA key generation is slow). Validation
never fetches: the B-LTA checks run with the services stopped, and at moments years ahead.
"""

from __future__ import annotations

import datetime as dt
import pickle
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sfsign.documents.errors import SigningError, TimestampUnavailable, ValidationInfoUnavailable
from sfsign.documents.ltv import (
    UpgradedPdf,
    add_archive_timestamp,
    async_upgrade_pdf,
    newest_timestamp_expiry,
    upgrade_pdf,
)
from sfsign.documents.render import RenderedPdf
from sfsign.documents.sign import (
    CUSTOMER_FIELD,
    Appearance,
    SignatureLevel,
    SignedPdf,
    sign_pdf_bytes,
)
from sfsign.documents.verify import VERDICT_MAX_CHARS, validate_signed_pdf
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services

APPEARANCE = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg")
TSA_SOON_EXPIRES = dt.timedelta(days=40)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Iterator[tuple[DemoPki, PkiServices]]:
    """A PKI whose TSA certificate expires in 40 days, so archive timestamps have a reason to exist."""
    now = dt.datetime.now(dt.UTC)
    pki, svc = start_demo_pki_services(
        tmp_path_factory.mktemp("ltv-pki"),
        passphrase=passphrase,
        key_algorithm="ec-p256",
        org_name="LTV Org",
        tsa_not_after=now + TSA_SOON_EXPIRES,
    )
    yield pki, svc
    svc.stop()


@pytest.fixture(scope="module")
def second_services(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Iterator[tuple[DemoPki, PkiServices]]:
    """Another CA and TSA (e.g. the TSA the archive timestamps come from after a provider change)."""
    pki, svc = start_demo_pki_services(
        tmp_path_factory.mktemp("ltv-pki-2"), passphrase=passphrase, key_algorithm="ec-p256", org_name="Archive TSA"
    )
    yield pki, svc
    svc.stop()


def _sign(rendered: RenderedPdf, pki: DemoPki, svc: PkiServices, level: SignatureLevel) -> SignedPdf:
    assert rendered.customer_box is not None
    return sign_pdf_bytes(
        rendered.pdf,
        rendered.signature_box,
        pki.pem_key_spec(),
        APPEARANCE,
        level=level,
        tsa_urls=[svc.tsa_url],
        empty_fields=((CUSTOMER_FIELD, rendered.customer_box),),
    )


@pytest.fixture(scope="module")
def signed_b_t(rendered_quote: RenderedPdf, services: tuple[DemoPki, PkiServices]) -> SignedPdf:
    pki, svc = services
    return _sign(rendered_quote, pki, svc, SignatureLevel.B_T)


@pytest.fixture(scope="module")
def b_lt(signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]) -> UpgradedPdf:
    pki, _ = services
    return upgrade_pdf(signed_b_t.pdf, SignatureLevel.B_LT, trust_roots=[pki.root_cert_pem_path])


@pytest.fixture(scope="module")
def b_lta(signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]) -> UpgradedPdf:
    pki, svc = services
    return upgrade_pdf(
        signed_b_t.pdf, SignatureLevel.B_LTA, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]
    )


def _tsa_not_after(pki: DemoPki) -> dt.datetime:
    return x509.load_pem_x509_certificate(pki.tsa_cert_path.read_bytes()).not_valid_after_utc


# -- levels ----------------------------------------------------------------------------------


def test_b_lt_upgrade_validates_trusted_intact_with_revocation_data(
    b_lt: UpgradedPdf, signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, svc = services
    assert svc.counts["ocsp"] > 0  # revocation data really came over HTTP
    report = validate_signed_pdf(b_lt.pdf, [pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted, report.summary
    assert report.level == "B-LT" == b_lt.level
    assert report.revocation_checked and report.timestamp_trusted
    assert report.document_timestamps == 0 and b_lt.timestamp_time is None
    assert b_lt.pdf.startswith(signed_b_t.pdf)  # an incremental update: the signed bytes are untouched


def test_b_t_is_not_reported_as_revocation_checked(
    signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    report = validate_signed_pdf(signed_b_t.pdf, [services[0].root_cert_pem_path])
    assert report.trusted and report.level == "B-T" and not report.revocation_checked


def test_b_lta_upgrade_validates_trusted_intact_with_one_document_timestamp(
    b_lta: UpgradedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, _ = services
    report = validate_signed_pdf(b_lta.pdf, [pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted, report.summary
    assert report.level == "B-LTA" == b_lta.level
    assert report.revocation_checked
    assert report.document_timestamps == 1
    assert b_lta.timestamp_time is not None and report.document_timestamp_time == b_lta.timestamp_time
    stamp = b_lta.timestamp_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert report.verdict() == f"TRUSTED INTACT B-LTA; timestamp {stamp}; revocation checked"


def test_upgrades_keep_pdfa_identification_and_the_customer_field_signable(
    b_lta: UpgradedPdf, signed_b_t: SignedPdf, rendered_quote: RenderedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, _svc = services
    before = validate_signed_pdf(signed_b_t.pdf, [pki.root_cert_pem_path])
    report = validate_signed_pdf(b_lta.pdf, [pki.root_cert_pem_path])
    assert report.pdfa == before.pdfa == "2B"
    assert report.unsigned_fields == (CUSTOMER_FIELD,)
    assert rendered_quote.customer_box is not None
    countersigned = sign_pdf_bytes(
        b_lta.pdf,
        rendered_quote.customer_box,
        pki.pem_key_spec(),
        Appearance(name="Customer"),
        field_name=CUSTOMER_FIELD,
    )
    after = validate_signed_pdf(countersigned.pdf, [pki.root_cert_pem_path])
    assert [s.field_name for s in after.signatures] == ["SellerSignature", CUSTOMER_FIELD]
    assert all(s.intact and s.valid for s in after.signatures), after.summary
    assert after.unsigned_fields == ()


# -- offline, years later --------------------------------------------------------------------


def test_b_lta_validates_offline_after_the_services_stop(
    tmp_path: Path, passphrase: str, rendered_short: RenderedPdf
) -> None:
    pki, svc = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase, key_algorithm="ec-p256")
    try:
        signed = sign_pdf_bytes(
            rendered_short.pdf,
            rendered_short.signature_box,
            pki.pem_key_spec(),
            APPEARANCE,
            level=SignatureLevel.B_T,
            tsa_urls=[svc.tsa_url],
        )
        lta = upgrade_pdf(
            signed.pdf, SignatureLevel.B_LTA, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]
        )
    finally:
        svc.stop()
    report = validate_signed_pdf(lta.pdf, [pki.root_cert_pem_path])
    assert report.trusted and report.intact and report.level == "B-LTA" and report.revocation_checked, report.summary


def test_b_lta_still_validates_after_the_signer_certificate_expired_but_b_lt_does_not(
    b_lt: UpgradedPdf, tmp_path: Path, passphrase: str, rendered_short: RenderedPdf
) -> None:
    """Signer valid for 2 years, TSA for 5: at +3 years only the document timestamp keeps B-LTA valid."""
    pki, svc = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase, key_algorithm="ec-p256")
    try:
        signed = sign_pdf_bytes(
            rendered_short.pdf,
            rendered_short.signature_box,
            pki.pem_key_spec(),
            APPEARANCE,
            level=SignatureLevel.B_T,
            tsa_urls=[svc.tsa_url],
        )
        roots = [pki.root_cert_pem_path]
        lta = upgrade_pdf(signed.pdf, SignatureLevel.B_LTA, trust_roots=roots, tsa_urls=[svc.tsa_url])
        lt = upgrade_pdf(signed.pdf, SignatureLevel.B_LT, trust_roots=roots)
    finally:
        svc.stop()
    signer_expiry = x509.load_pem_x509_certificate(pki.signer_cert_path.read_bytes()).not_valid_after_utc
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3 * 365)
    assert signer_expiry < later < _tsa_not_after(pki)
    lta_report = validate_signed_pdf(lta.pdf, roots, validation_time=later)
    assert lta_report.trusted and lta_report.intact and lta_report.level == "B-LTA", lta_report.summary
    lt_report = validate_signed_pdf(lt.pdf, roots, validation_time=later)
    assert lt_report.level == "B-LT" and lt_report.intact and not lt_report.trusted
    assert lt_report.verdict().startswith("UNTRUSTED INTACT B-LT; timestamp ")
    assert len(lt_report.verdict()) <= VERDICT_MAX_CHARS


# -- archive timestamps ----------------------------------------------------------------------


def test_newest_timestamp_expiry_is_the_tsa_certificate_expiry(
    signed_b_t: SignedPdf, b_lta: UpgradedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    expiry = _tsa_not_after(services[0])
    assert newest_timestamp_expiry(signed_b_t.pdf) == expiry  # from the signature timestamp token
    assert newest_timestamp_expiry(b_lta.pdf) == expiry == b_lta.newest_timestamp_expiry  # document timestamp


def test_archive_timestamp_adds_a_second_document_timestamp_that_outlives_the_first_tsa(
    b_lta: UpgradedPdf, services: tuple[DemoPki, PkiServices], second_services: tuple[DemoPki, PkiServices]
) -> None:
    pki, _ = services
    pki2, svc2 = second_services
    roots = [pki.root_cert_pem_path, pki2.root_cert_pem_path]
    renewed = add_archive_timestamp(b_lta.pdf, trust_roots=roots, tsa_urls=[svc2.tsa_url])
    assert renewed.level == "B-LTA" and renewed.pdf.startswith(b_lta.pdf)
    assert renewed.newest_timestamp_expiry == newest_timestamp_expiry(renewed.pdf) == _tsa_not_after(pki2)
    assert renewed.timestamp_time is not None and b_lta.timestamp_time is not None
    assert renewed.timestamp_time > b_lta.timestamp_time
    report = validate_signed_pdf(renewed.pdf, roots)
    assert report.trusted and report.intact and report.level == "B-LTA", report.summary
    assert report.document_timestamps == 2 and report.document_timestamp_time == renewed.timestamp_time
    # After the first TSA certificate expired, only the renewed chain can carry the proof.
    after_first_tsa = dt.datetime.now(dt.UTC) + TSA_SOON_EXPIRES + dt.timedelta(days=30)
    late = validate_signed_pdf(renewed.pdf, roots, validation_time=after_first_tsa)
    assert late.trusted and late.level == "B-LTA", late.summary


def test_archive_timestamp_needs_a_b_lta_input(b_lt: UpgradedPdf, services: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = services
    with pytest.raises(SigningError, match="not B-LTA"):
        add_archive_timestamp(b_lt.pdf, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url])


# -- failing closed --------------------------------------------------------------------------


def test_tsa_down_during_b_lta_upgrade_raises_timestamp_unavailable(
    signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, svc = services
    svc.tsa_down = True
    try:
        with pytest.raises(TimestampUnavailable, match="HTTP 503"):
            upgrade_pdf(
                signed_b_t.pdf, SignatureLevel.B_LTA, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]
            )
    finally:
        svc.tsa_down = False
    assert svc.counts["tsa_refused"] >= 1


def test_ocsp_and_crl_down_during_upgrade_raises_validation_info_unavailable(
    tmp_path: Path, passphrase: str, rendered_short: RenderedPdf
) -> None:
    pki, svc = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase, key_algorithm="ec-p256")
    try:
        signed = sign_pdf_bytes(
            rendered_short.pdf,
            rendered_short.signature_box,
            pki.pem_key_spec(),
            APPEARANCE,
            level=SignatureLevel.B_T,
            tsa_urls=[svc.tsa_url],
        )
    finally:
        svc.stop()
    with pytest.raises(ValidationInfoUnavailable) as info:
        upgrade_pdf(signed.pdf, SignatureLevel.B_LT, trust_roots=[pki.root_cert_pem_path])
    message = str(info.value)
    assert f"{svc.base_url}/ocsp/issuing" in message and f"{svc.base_url}/crl/issuing.crl" in message
    assert isinstance(info.value, SigningError)
    assert passphrase not in message


def test_revoked_signer_certificate_fails_the_upgrade_clearly(
    signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, svc = services
    serial = x509.load_pem_x509_certificate(pki.signer_cert_path.read_bytes()).serial_number
    svc.revoked_serials.add(serial)
    try:
        with pytest.raises(SigningError, match=re.escape("LTV Org Document Signing") + ".*is revoked") as info:
            upgrade_pdf(signed_b_t.pdf, SignatureLevel.B_LT, trust_roots=[pki.root_cert_pem_path])
    finally:
        svc.revoked_serials.discard(serial)
    assert not isinstance(info.value, ValidationInfoUnavailable)  # permanent: no retry would help


def test_b_b_input_cannot_be_upgraded(rendered_short: RenderedPdf, services: tuple[DemoPki, PkiServices]) -> None:
    pki, _svc = services
    signed = sign_pdf_bytes(rendered_short.pdf, rendered_short.signature_box, pki.pem_key_spec(), APPEARANCE)
    with pytest.raises(SigningError, match=r"no signature timestamp \(it is B-B\)"):
        upgrade_pdf(signed.pdf, SignatureLevel.B_LT, trust_roots=[pki.root_cert_pem_path])


def test_untrusted_root_and_bad_targets_are_refused(
    signed_b_t: SignedPdf, ec_pki: DemoPki, services: tuple[DemoPki, PkiServices]
) -> None:
    pki, _ = services
    with pytest.raises(SigningError, match="does not chain to a trusted root"):
        upgrade_pdf(signed_b_t.pdf, SignatureLevel.B_LT, trust_roots=[ec_pki.root_cert_pem_path])
    with pytest.raises(SigningError, match="must be B-LT or B-LTA"):
        upgrade_pdf(signed_b_t.pdf, SignatureLevel.B_T, trust_roots=[pki.root_cert_pem_path])
    with pytest.raises(SigningError, match="requires a TSA URL"):
        upgrade_pdf(signed_b_t.pdf, SignatureLevel.B_LTA, trust_roots=[pki.root_cert_pem_path])


async def test_async_upgrade_on_a_running_loop(signed_b_t: SignedPdf, services: tuple[DemoPki, PkiServices]) -> None:
    from sfsign.documents import ltv, tsa

    pki, svc = services
    try:
        lta = await async_upgrade_pdf(
            signed_b_t.pdf, SignatureLevel.B_LTA, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]
        )
    finally:
        await ltv.aclose_fetchers()
        await tsa.aclose_timestampers()
    assert lta.level == "B-LTA" and lta.timestamp_time is not None


def test_validation_info_unavailable_survives_the_process_pool_boundary() -> None:
    error = pickle.loads(pickle.dumps(ValidationInfoUnavailable("revocation information unavailable")))
    assert isinstance(error, ValidationInfoUnavailable) and isinstance(error, SigningError)
    assert str(error) == "revocation information unavailable"


# -- pdfsig ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["B-B", "B-T", "B-LT", "B-LTA"])
def test_pdfsig_reports_the_seller_signature_valid_at_every_level(
    level: str,
    rendered_short: RenderedPdf,
    services: tuple[DemoPki, PkiServices],
    tmp_path: Path,
) -> None:
    """pdfsig checks the seller's CMS signature; it cannot check document timestamps (pitfall 9).
    After an upgrade the seller signature covers its own revision only, as every signature followed
    by an incremental update does, so "Total document signed" holds before the upgrade."""
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig not installed (apt-get install -y poppler-utils); CI installs it")
    pki, svc = services
    base = SignatureLevel.B_B if level == "B-B" else SignatureLevel.B_T
    signed = _sign(rendered_short, pki, svc, base)
    pdf = signed.pdf
    if level in ("B-LT", "B-LTA"):
        pdf = upgrade_pdf(pdf, SignatureLevel(level), trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]).pdf
    path = tmp_path / f"signed-{level}.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout
    blocks = re.split(r"^Signature #\d+:$", out, flags=re.M)
    (seller,) = [b for b in blocks if "Signature Field Name: SellerSignature" in b]
    assert "Signature is Valid." in seller
    if level in ("B-B", "B-T"):
        assert "Total document signed" in seller
    else:
        assert "Not total document signed" in seller
        assert validate_signed_pdf(pdf, [pki.root_cert_pem_path]).level == level
