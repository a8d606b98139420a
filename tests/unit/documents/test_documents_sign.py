from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import pickle
import shutil
import subprocess
import traceback
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.documents import sign as sign_module
from sfsign.documents.keys import PreparedKeySigner
from sfsign.documents.render import POOL_START_METHOD, RenderedPdf
from sfsign.documents.sign import (
    CUSTOMER_FIELD,
    SIGNATURE_FIELD,
    Appearance,
    KeySpec,
    SignatureLevel,
    SignedPdf,
    SigningError,
    async_sign_pdf_bytes,
    load_signer,
    sign_pdf_bytes,
)
from sfsign.documents.verify import ValidationError, async_validate_signed_pdf, validate_signed_pdf
from sfsign.localpki.pki import DemoPki, create_demo_pki

APPEARANCE = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg", contact_info="+49 40 1")


def _sign(rendered: RenderedPdf, spec: KeySpec, **kwargs: Any) -> SignedPdf:
    return sign_pdf_bytes(rendered.pdf, rendered.signature_box, spec, APPEARANCE, **kwargs)


def _field(pdf: bytes, name: str) -> Any:
    reader = PdfFileReader(BytesIO(pdf))
    for ref in reader.root["/AcroForm"]["/Fields"]:
        field = ref.get_object()
        if field["/T"] == name:
            return field
    raise AssertionError(f"no field {name}")


@pytest.fixture(scope="module")
def signed_p12(rendered_quote: RenderedPdf, rsa_pki: DemoPki) -> SignedPdf:
    assert rendered_quote.customer_box is not None
    return _sign(
        rendered_quote, rsa_pki.pkcs12_key_spec(), empty_fields=((CUSTOMER_FIELD, rendered_quote.customer_box),)
    )


def test_pkcs12_b_b_signature_validates_intact_and_trusted(signed_p12: SignedPdf, rsa_pki: DemoPki) -> None:
    report = validate_signed_pdf(signed_p12.pdf, [rsa_pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted
    assert report.coverage == "ENTIRE_FILE"
    assert report.level == "B-B" == signed_p12.level
    assert report.signer_subject == signed_p12.signer_subject
    assert "sfsign demo Document Signing" in signed_p12.signer_subject
    assert report.signing_time == signed_p12.signing_time
    assert report.pdfa == "2B"
    assert report.unsigned_fields == (CUSTOMER_FIELD,)
    assert signed_p12.sha256_hex == hashlib.sha256(signed_p12.pdf).hexdigest()


def test_signer_serial_and_time_describe_the_certificate_used(signed_p12: SignedPdf, rsa_pki: DemoPki) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(rsa_pki.signer_cert_path.read_bytes())
    assert int(signed_p12.signer_serial, 16) == cert.serial_number
    assert signed_p12.signing_time.tzinfo is dt.UTC and signed_p12.signing_time.microsecond == 0
    assert abs(dt.datetime.now(dt.UTC) - signed_p12.signing_time) < dt.timedelta(minutes=10)


def test_pem_key_with_chain_files_signs_and_validates(rendered_short: RenderedPdf, ec_pki: DemoPki) -> None:
    signed = _sign(rendered_short, ec_pki.pem_key_spec())
    report = validate_signed_pdf(signed.pdf, [ec_pki.root_cert_pem_path])
    assert (report.intact, report.trusted, report.coverage, report.level) == (True, True, "ENTIRE_FILE", "B-B")
    assert "Other Org" in report.signer_subject  # type: ignore[operator]


def test_signature_is_an_incremental_update_that_keeps_pdfa_metadata(
    signed_p12: SignedPdf, rendered_quote: RenderedPdf
) -> None:
    assert signed_p12.pdf.startswith(rendered_quote.pdf)
    before = PdfFileReader(BytesIO(rendered_quote.pdf))
    after = PdfFileReader(BytesIO(signed_p12.pdf))
    assert after.root["/Metadata"].get_object().data == before.root["/Metadata"].get_object().data
    assert dict(after.trailer["/Info"]) == dict(before.trailer["/Info"])


def test_visible_field_sits_exactly_on_the_templates_box(signed_p12: SignedPdf, rendered_quote: RenderedPdf) -> None:
    field = _field(signed_p12.pdf, SIGNATURE_FIELD)
    assert [float(v) for v in field["/Rect"]] == pytest.approx(list(rendered_quote.signature_box.as_tuple()))
    reader = PdfFileReader(BytesIO(signed_p12.pdf))
    page_ref = reader.find_page_for_modification(rendered_quote.signature_box.page)[0]
    assert field["/P"].get_object() == page_ref.get_object()
    assert int(field["/F"]) & 0b100  # printable, as PDF/A requires
    customer = _field(signed_p12.pdf, CUSTOMER_FIELD)
    assert rendered_quote.customer_box is not None
    assert [float(v) for v in customer["/Rect"]] == pytest.approx(list(rendered_quote.customer_box.as_tuple()))
    assert "/V" not in customer and "/AP" in customer  # unsigned but with an appearance (PDF/A)


def test_stamp_uses_the_embedded_1000_upem_stamp_font(signed_p12: SignedPdf) -> None:
    appearance = _field(signed_p12.pdf, SIGNATURE_FIELD)["/AP"]["/N"].get_object()

    def fonts(xobject: Any) -> list[Any]:
        resources = xobject.get("/Resources", {})
        found = [f.get_object() for f in resources.get("/Font", {}).values()]
        for child in resources.get("/XObject", {}).values():
            found.extend(fonts(child.get_object()))
        return found

    stamp_fonts = fonts(appearance)
    assert stamp_fonts, "the stamp carries no font"
    for font in stamp_fonts:
        descendant = font["/DescendantFonts"][0].get_object()
        assert "sfsignStampSans" in str(descendant["/BaseFont"])
        assert "/FontFile2" in descendant["/FontDescriptor"].get_object()
        widths = [w for w in descendant["/W"] if not isinstance(w, int)]
        assert all(0 < float(x) <= 1100 for group in widths for x in group)  # 1000-unit widths


def test_pdfsig_reports_a_valid_signature_over_the_whole_document(signed_p12: SignedPdf, tmp_path: Path) -> None:
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig not installed (apt-get install -y poppler-utils); CI installs it")
    path = tmp_path / "signed.pdf"
    path.write_bytes(signed_p12.pdf)
    out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout
    assert "Signature is Valid." in out
    assert "Total document signed" in out
    assert "ETSI.CAdES.detached" in out


def test_tampering_is_detected(signed_p12: SignedPdf, rsa_pki: DemoPki) -> None:
    pdf = bytearray(signed_p12.pdf)
    index = pdf.index(b"Nordlicht Software GmbH")  # Info dictionary text, inside the signed range
    pdf[index] = ord("M")
    report = validate_signed_pdf(bytes(pdf), [rsa_pki.root_cert_pem_path])
    assert not report.intact and not report.trusted


def test_foreign_root_is_not_trusted(signed_p12: SignedPdf, ec_pki: DemoPki) -> None:
    report = validate_signed_pdf(signed_p12.pdf, [ec_pki.root_cert_pem_path])
    assert report.intact and report.valid and not report.trusted


def test_unsigned_pdf_and_bad_inputs_to_validation(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, tmp_path: Path
) -> None:
    report = validate_signed_pdf(rendered_short.pdf, [rsa_pki.root_cert_pem_path])
    assert not report.intact and report.coverage == "NONE" and report.level is None
    with pytest.raises(ValidationError, match="trust root"):
        validate_signed_pdf(rendered_short.pdf, [tmp_path / "missing.pem"])
    with pytest.raises(ValidationError, match="not a readable PDF"):
        validate_signed_pdf(b"hello", [rsa_pki.root_cert_pem_path])


@pytest.mark.parametrize(
    ("offset_start", "offset_end", "problem"),
    [(-400, -30, "has expired"), (30, 400, "is not yet valid")],
)
def test_certificate_outside_its_validity_is_refused(
    rendered_short: RenderedPdf, tmp_path: Path, offset_start: int, offset_end: int, problem: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    pki = create_demo_pki(
        tmp_path,
        key_algorithm="ec-p256",
        org_name="Dated",
        signer_not_before=now + dt.timedelta(days=offset_start),
        signer_not_after=now + dt.timedelta(days=offset_end),
    )
    with pytest.raises(SigningError) as info:
        _sign(rendered_short, pki.pkcs12_key_spec())
    message = str(info.value)
    assert problem in message
    assert "Dated Document Signing" in message
    assert (now + dt.timedelta(days=offset_start)).date().isoformat() in message
    assert (now + dt.timedelta(days=offset_end)).date().isoformat() in message


def test_wrong_pkcs12_passphrase_gives_a_clear_error_without_the_passphrase(
    rendered_short: RenderedPdf, rsa_pki: DemoPki
) -> None:
    wrong = "not-the-passphrase-Zq9"
    spec = KeySpec(pkcs12_path=rsa_pki.signer_p12_path, passphrase=SecretStr(wrong))
    with pytest.raises(SigningError) as info:
        _sign(rendered_short, spec)
    assert "wrong passphrase" in str(info.value) and str(rsa_pki.signer_p12_path) in str(info.value)
    rendered = "".join(traceback.format_exception(info.value))
    assert wrong not in rendered and (
        rsa_pki.passphrase is None or rsa_pki.passphrase.get_secret_value() not in rendered
    )


def test_missing_or_wrong_pem_passphrase(rendered_short: RenderedPdf, ec_pki: DemoPki) -> None:
    missing = ec_pki.pem_key_spec().model_copy(update={"passphrase": None})
    with pytest.raises(SigningError, match="no passphrase is configured"):
        _sign(rendered_short, missing)
    wrong = ec_pki.pem_key_spec().model_copy(update={"passphrase": SecretStr("nope-123")})
    with pytest.raises(SigningError, match="wrong passphrase") as info:
        _sign(rendered_short, wrong)
    assert "nope-123" not in "".join(traceback.format_exception(info.value))


def test_key_that_does_not_match_the_certificate_is_refused(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, ec_pki: DemoPki
) -> None:
    spec = KeySpec(key_path=ec_pki.signer_key_path, cert_path=rsa_pki.signer_cert_path, passphrase=ec_pki.passphrase)
    with pytest.raises(SigningError, match="does not belong to the certificate"):
        _sign(rendered_short, spec)


def test_unreadable_key_file_is_reported(rendered_short: RenderedPdf, tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot read"):
        _sign(rendered_short, KeySpec(pkcs12_path=tmp_path / "missing.p12"))


def test_key_spec_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either pkcs12_path or key_path"):
        KeySpec(pkcs12_path=tmp_path / "a.p12", key_path=tmp_path / "k.pem", cert_path=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="both key_path and cert_path"):
        KeySpec(key_path=tmp_path / "k.pem")


@pytest.mark.parametrize("level", [SignatureLevel.B_LT, SignatureLevel.B_LTA])  # B-T: test_documents_timestamps.py
def test_levels_beyond_b_b_are_refused_with_a_reason(
    rendered_short: RenderedPdf, ec_pki: DemoPki, level: SignatureLevel
) -> None:
    with pytest.raises(SigningError, match=f"level {level.value} requires a TSA URL; not configured"):
        _sign(rendered_short, ec_pki.pkcs12_key_spec(), level=level)
    with pytest.raises(SigningError, match="not supported yet"):
        _sign(rendered_short, ec_pki.pkcs12_key_spec(), level=level, tsa_url="http://127.0.0.1:9/tsa")


def test_signer_is_parsed_once_and_reloaded_when_the_file_changes(rendered_short: RenderedPdf, tmp_path: Path) -> None:
    """The same signer object serves every document until the key file changes; then a new one is made."""
    pki = create_demo_pki(tmp_path, key_algorithm="ec-p256", passphrase="pw-1")
    spec = pki.pkcs12_key_spec()
    first = load_signer(spec)
    _sign(rendered_short, spec)
    _sign(rendered_short, spec)
    assert load_signer(spec) is first
    stat = spec.pkcs12_path.stat()  # type: ignore[union-attr]
    os.utime(spec.pkcs12_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # type: ignore[arg-type]
    reloaded = load_signer(spec)
    assert reloaded is not first
    assert load_signer(spec) is reloaded


def test_each_signature_costs_one_real_private_key_operation(
    rendered_short: RenderedPdf, ec_pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyHanko sizes /Contents with a dry run; that must not be a second real signature, and once
    the size is known for a certificate and level, later documents skip the dry run altogether."""
    calls: list[bool] = []
    real = PreparedKeySigner.sign_raw

    def recording(self: Any, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        calls.append(dry_run)
        return real(self, data, digest_algorithm, dry_run=dry_run)

    monkeypatch.setattr(PreparedKeySigner, "sign_raw", recording)
    monkeypatch.setattr(sign_module, "_reserved", {})
    _sign(rendered_short, ec_pki.pkcs12_key_spec())
    assert calls.count(False) == 1
    assert calls.count(True) >= 1
    calls.clear()
    second = _sign(rendered_short, ec_pki.pkcs12_key_spec())
    assert calls == [False]
    assert validate_signed_pdf(second.pdf, [ec_pki.root_cert_pem_path]).intact


def test_a_remembered_container_size_that_is_too_small_is_measured_again(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fail-over TSA may answer with a longer token than the one the size was estimated with:
    the signature must still be made (with a fresh estimate), and the new size remembered."""
    monkeypatch.setattr(sign_module, "_reserved", {})
    spec = rsa_pki.pkcs12_key_spec()
    _sign(rendered_short, spec)
    (key, size), = sign_module._reserved.items()
    sign_module._reserved[key] = 600  # far smaller than an RSA-3072 CMS container
    signed = _sign(rendered_short, spec)
    report = validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path])
    assert report.intact and report.trusted
    assert sign_module._reserved[key] == size


def test_dry_run_placeholder_is_as_long_as_the_largest_real_signature(rsa_pki: DemoPki, ec_pki: DemoPki) -> None:
    for spec in (rsa_pki.pkcs12_key_spec(), ec_pki.pkcs12_key_spec()):
        signer = load_signer(spec)
        placeholder = signer.sign_raw(b"x", "sha256", dry_run=True)  # type: ignore[call-arg]
        real = signer.sign_raw(b"x", "sha256")
        assert len(placeholder) >= len(real) and not any(placeholder)


def test_appearance_values_are_data_not_template(rendered_short: RenderedPdf, ec_pki: DemoPki) -> None:
    odd = Appearance(name="100% Sales %(ts)s", reason="50% upfront %s", location="")
    signed = sign_pdf_bytes(rendered_short.pdf, rendered_short.signature_box, ec_pki.pkcs12_key_spec(), odd)
    assert validate_signed_pdf(signed.pdf, [ec_pki.root_cert_pem_path]).intact


async def test_async_variant_signs_on_a_running_loop(rendered_short: RenderedPdf, ec_pki: DemoPki) -> None:
    signed = await async_sign_pdf_bytes(
        rendered_short.pdf, rendered_short.signature_box, ec_pki.pkcs12_key_spec(), APPEARANCE
    )
    report = await async_validate_signed_pdf(signed.pdf, [ec_pki.root_cert_pem_path])
    assert report.trusted and report.level == "B-B"


def test_signing_runs_in_a_process_pool_and_results_pickle(rendered_short: RenderedPdf, rsa_pki: DemoPki) -> None:
    spec = rsa_pki.pkcs12_key_spec()
    context = multiprocessing.get_context(POOL_START_METHOD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        signed = pool.submit(sign_pdf_bytes, rendered_short.pdf, rendered_short.signature_box, spec, APPEARANCE).result(
            timeout=120
        )
        bad = spec.model_copy(update={"passphrase": SecretStr("wrong")})
        with pytest.raises(SigningError, match="wrong passphrase"):
            pool.submit(sign_pdf_bytes, rendered_short.pdf, rendered_short.signature_box, bad, APPEARANCE).result(
                timeout=120
            )
    assert validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path]).trusted
    assert pickle.loads(pickle.dumps(SigningError("x"))).args == ("x",)


def test_garbage_input_is_refused(rendered_short: RenderedPdf, ec_pki: DemoPki) -> None:
    with pytest.raises(SigningError, match="not a readable PDF"):
        sign_pdf_bytes(b"not a pdf", rendered_short.signature_box, ec_pki.pkcs12_key_spec(), APPEARANCE)
