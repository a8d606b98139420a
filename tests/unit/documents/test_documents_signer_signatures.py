"""Signers' signatures in their own boxes, both seal orders, the completion verdict (pyHanko and pdfsig).

Real parts: Typst renders, pyHanko signs with the demo PKI's key, the TSA, OCSP and CRL answer over HTTP
from `PkiServices` on 127.0.0.1 (ec-p256: the key type does not matter here and RSA generation is slow).
Each document is signed once per module and examined by several tests.
"""

from __future__ import annotations

import datetime as dt
import pickle
import shutil
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.documents.completion_check import ALLOWED_MODIFICATIONS, check_completed
from sfsign.documents.jobs import DocumentFailure, SigningRequest, render_job, sign_job
from sfsign.documents.model import DocumentSigner, sample_contract
from sfsign.documents.render import RenderedPdf, render_pdf
from sfsign.documents.sign import CUSTOMER_FIELD, SIGNATURE_FIELD, Appearance, SignatureLevel, customer_field
from sfsign.documents.signer_jobs import (
    CompletedResult,
    CompletionRequest,
    SignerRequest,
    complete_job,
    fields_job,
    signer_sign_job,
)
from sfsign.documents.signer_signature import FieldAlreadySigned, SignerEvidence, signature_fields
from sfsign.documents.verify import ValidationError, validate_signed_pdf
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services

SELLER = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg")
SIGNED_AT = dt.datetime(2026, 11, 27, 16, 2, 11, tzinfo=dt.UTC)
JANA = SignerEvidence(name="Jana Novák", email="j.novak@mueller-soehne.example", auth_method="email_otp",
                      signed_at=SIGNED_AT, ip="203.0.113.7", authenticated_at=SIGNED_AT - dt.timedelta(seconds=42))
PAUL = SignerEvidence(name="Paul Weber", email="p.weber@mueller-soehne.example", auth_method="email_otp",
                      signed_at=SIGNED_AT + dt.timedelta(minutes=5), ip="198.51.100.23", language="de")
TWO_SIGNERS = [DocumentSigner(name="Jana Novák", role="Head of Procurement"), DocumentSigner(name="Paul Weber")]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install -y poppler-utils); CI installs it")
    return path


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Iterator[tuple[DemoPki, PkiServices]]:
    pki, svc = start_demo_pki_services(tmp_path_factory.mktemp("signers-pki"), passphrase=passphrase,
                                       key_algorithm="ec-p256", org_name="Signers Org")
    yield pki, svc
    svc.stop()


def _seal_request(pki: DemoPki, svc: PkiServices) -> SigningRequest:
    return SigningRequest(key=pki.pem_key_spec(), appearance=SELLER, level=SignatureLevel.B_T,
                          tsa_urls=(svc.tsa_url,), trust_roots=(pki.root_cert_pem_path,))


def _signer(pki: DemoPki, svc: PkiServices, index: int, evidence: SignerEvidence) -> SignerRequest:
    return SignerRequest(key=pki.pem_key_spec(), field_name=customer_field(index), evidence=evidence,
                         tsa_urls=(svc.tsa_url,))


def _complete(pki: DemoPki, svc: PkiServices, pdf: bytes, fields: tuple[str, ...]) -> CompletedResult:
    request = CompletionRequest(expected_fields=fields, trust_roots=(pki.root_cert_pem_path,),
                                tsa_urls=(svc.tsa_url,), require_pdfsig=shutil.which("pdfsig") is not None)
    return complete_job(pdf, request)


@pytest.fixture(scope="module")
def two_signers_rendered() -> tuple[bytes, dict[str, Any]]:
    doc = sample_contract(line_count=3).model_copy(update={"signers": TWO_SIGNERS})
    pdf, boxes, _ = render_job(doc.model_dump_json(), "quote")
    return pdf, boxes


@pytest.fixture(scope="module")
def sealed_two(two_signers_rendered: tuple[bytes, dict[str, Any]],
               services: tuple[DemoPki, PkiServices]) -> bytes:
    pdf, boxes = two_signers_rendered
    return sign_job(pdf, boxes, _seal_request(*services)).pdf


@pytest.fixture(scope="module")
def first_signed(sealed_two: bytes, services: tuple[DemoPki, PkiServices]) -> bytes:
    return signer_sign_job(sealed_two, _signer(*services, 0, JANA)).pdf


@pytest.fixture(scope="module")
def completed_two(first_signed: bytes, services: tuple[DemoPki, PkiServices]) -> CompletedResult:
    second = signer_sign_job(first_signed, _signer(*services, 1, PAUL)).pdf
    return _complete(*services, second, (SIGNATURE_FIELD, customer_field(0), customer_field(1)))


@pytest.fixture(scope="module")
def seal_after(two_signers_rendered: tuple[bytes, dict[str, Any]], services: tuple[DemoPki, PkiServices]) -> bytes:
    """Customers first, the seal after the last signature."""
    pdf, boxes = two_signers_rendered
    prepared = fields_job(pdf, boxes)
    for index, evidence in enumerate((JANA, PAUL)):
        prepared = signer_sign_job(prepared, _signer(*services, index, evidence)).pdf
    return sign_job(prepared, boxes, _seal_request(*services)).pdf


def _sig_dict(pdf: bytes, field: str) -> Any:
    reader = PdfFileReader(BytesIO(pdf))
    return next(s.sig_object for s in reader.embedded_regular_signatures if s.field_name == field)


# -- boxes ------------------------------------------------------------------------------------


def test_a_document_without_signers_keeps_its_one_customer_box(rendered_short: RenderedPdf) -> None:
    assert rendered_short.customer_boxes == (rendered_short.customer_box,)


def test_one_box_per_signer_beside_and_below_the_sellers() -> None:
    signers = [*TWO_SIGNERS, DocumentSigner(name="Lea Stein", role="Legal", organisation="Nordlicht Software GmbH")]
    rendered = render_pdf(sample_contract(line_count=3).model_copy(update={"signers": signers}), "quote")
    boxes = [rendered.signature_box, *rendered.customer_boxes]
    assert len(rendered.customer_boxes) == 3 and rendered.customer_box == rendered.customer_boxes[0]
    first_row = boxes[0].page == boxes[1].page and boxes[0].y1 == boxes[1].y1 and boxes[0].x2 < boxes[1].x1
    assert first_row  # seller and first signer side by side, as before signers existed
    later = boxes[2:]
    assert all((b.page, -b.y1) > (boxes[0].page, -boxes[0].y1) for b in later)  # further rows below


def test_the_seal_creates_every_signers_field_empty(sealed_two: bytes) -> None:
    assert signature_fields(sealed_two) == {SIGNATURE_FIELD: True, CUSTOMER_FIELD: False, "CustomerSignature2": False}


# -- one signer ---------------------------------------------------------------------------------


def test_a_signers_signature_carries_their_evidence(first_signed: bytes) -> None:
    sig = _sig_dict(first_signed, CUSTOMER_FIELD)
    assert str(sig["/Name"]) == "Jana Novák"
    assert str(sig["/ContactInfo"]) == "j.novak@mueller-soehne.example"
    reason = str(sig["/Reason"])
    assert "e-mail code" in reason and "authentication: email_otp" in reason and "IP address: 203.0.113.7" in reason
    assert int(sig["/Prop_AuthTime"]) == 42
    assert str(sig["/M"]).startswith("D:20261127160211")  # the signer's click, not the worker's clock


def test_the_signers_stamp_shows_name_email_method_and_time(first_signed: bytes, tmp_path: Path) -> None:
    path = tmp_path / "signed.pdf"
    path.write_bytes(first_signed)
    text = subprocess.run([_tool("pdftotext"), "-f", "1", "-l", "1", str(path), "-"], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    for line in ("Jana Novák", "j.novak@mueller-soehne.example", "Signed electronically via e-mail code",
                 "2026-11-27 16:02:11 UTC"):
        assert line in text


def test_the_stamp_speaks_the_rules_language_and_the_reason_stays_english(completed_two: CompletedResult,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "completed.pdf"
    path.write_bytes(completed_two.pdf)
    text = subprocess.run([_tool("pdftotext"), str(path), "-"], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert "Elektronisch signiert per E-Mail-Code" in text
    assert "via e-mail code" in str(_sig_dict(completed_two.pdf, "CustomerSignature2")["/Reason"])


def test_one_signer_validates_with_the_seal_still_intact(first_signed: bytes,
                                                           services: tuple[DemoPki, PkiServices]) -> None:
    report = validate_signed_pdf(first_signed, [services[0].root_cert_pem_path])
    by_field = {r.field_name: r for r in report.signatures}
    assert by_field[SIGNATURE_FIELD].modification_level == "FORM_FILLING"
    assert by_field[CUSTOMER_FIELD].modification_level == "NONE" and by_field[CUSTOMER_FIELD].level == "B-T"
    assert all(r.intact and r.valid and r.trusted for r in report.signatures), report.summary
    assert report.unsigned_fields == ("CustomerSignature2",)


def test_a_second_attempt_on_a_signed_field_is_refused(
    first_signed: bytes, services: tuple[DemoPki, PkiServices]
) -> None:
    with pytest.raises(FieldAlreadySigned, match="CustomerSignature") as caught:
        signer_sign_job(first_signed, _signer(*services, 0, JANA))
    assert isinstance(pickle.loads(pickle.dumps(caught.value)), FieldAlreadySigned)  # crosses the pool


def test_a_field_the_document_lacks_is_refused_not_created(sealed_two: bytes,
                                                            services: tuple[DemoPki, PkiServices]) -> None:
    with pytest.raises(DocumentFailure, match="no signature field 'CustomerSignature3'"):
        signer_sign_job(sealed_two, _signer(*services, 2, PAUL))


# -- completion ----------------------------------------------------------------------------------


def test_two_signers_then_b_lta_every_signature_holds(completed_two: CompletedResult) -> None:
    verdict = completed_two.verdict
    assert completed_two.level == "B-LTA" and verdict.document_timestamps == 1
    assert verdict.ok, verdict.lines()
    assert [s.field_name for s in verdict.signatures] == [SIGNATURE_FIELD, CUSTOMER_FIELD, "CustomerSignature2"]
    for signature in verdict.signatures:
        assert signature.intact and signature.valid and signature.trusted and signature.level == "B-LTA"
        assert signature.modification_level in ALLOWED_MODIFICATIONS
    assert completed_two.archive_due is not None


def test_pdfsig_reports_each_signer_valid(completed_two: CompletedResult) -> None:
    _tool("pdfsig")
    assert all(s.pdfsig == "Signature is Valid." for s in completed_two.verdict.signatures)


def test_seal_after_the_signers_validates(seal_after: bytes, services: tuple[DemoPki, PkiServices]) -> None:
    pki, _ = services
    verdict = check_completed(seal_after, [pki.root_cert_pem_path], (SIGNATURE_FIELD, CUSTOMER_FIELD,
                                                                       "CustomerSignature2"))
    assert verdict.ok, verdict.lines()
    assert [s.field_name for s in verdict.signatures][-1] == SIGNATURE_FIELD  # the seal is the newest
    assert signature_fields(seal_after) == dict.fromkeys((SIGNATURE_FIELD, CUSTOMER_FIELD, "CustomerSignature2"), True)


def test_a_changed_page_fails_the_verdict(first_signed: bytes, services: tuple[DemoPki, PkiServices]) -> None:
    """An incremental update that rewrites the page's content after the signatures is OTHER, not allowed."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(BytesIO(first_signed))
    page_ref = writer.find_page_for_modification(0)[0]
    page = page_ref.get_object()
    page["/Contents"] = writer.add_object(generic.StreamObject(stream_data=b"BT ET"))
    writer.update_container(page)
    out = BytesIO()
    writer.write(out)
    verdict = check_completed(out.getvalue(), [services[0].root_cert_pem_path], (SIGNATURE_FIELD, CUSTOMER_FIELD))
    assert not verdict.ok
    assert {s.modification_level for s in verdict.signatures} - ALLOWED_MODIFICATIONS


def test_missing_signatures_fail_the_verdict(sealed_two: bytes, services: tuple[DemoPki, PkiServices]) -> None:
    verdict = check_completed(sealed_two, [services[0].root_cert_pem_path], (SIGNATURE_FIELD, CUSTOMER_FIELD))
    assert not verdict.ok and verdict.missing == (CUSTOMER_FIELD,)
    assert "not signed: CustomerSignature" in verdict.lines()[-1]


def test_the_completed_result_crosses_the_pool_boundary(completed_two: CompletedResult) -> None:
    assert pickle.loads(pickle.dumps(completed_two)) == completed_two


def test_without_pdfsig_installed_the_verdict_says_so_or_refuses(
    first_signed: bytes, services: tuple[DemoPki, PkiServices], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pdfsig faked absent (PATH without it): pyHanko alone decides, and each line says pdfsig was absent."""
    monkeypatch.setenv("PATH", "/nonexistent")
    roots = [services[0].root_cert_pem_path]
    verdict = check_completed(first_signed, roots, (SIGNATURE_FIELD, CUSTOMER_FIELD))
    assert verdict.ok and all(line.endswith("pdfsig absent") for line in verdict.lines())
    with pytest.raises(ValidationError, match="pdfsig"):
        check_completed(first_signed, roots, (SIGNATURE_FIELD,), require_pdfsig=True)
