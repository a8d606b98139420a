"""The certificate of completion: rendered by Typst as PDF/A-2b, sealed at B-T, and validated like a contract.

Real parts throughout: Typst, pyHanko with the demo PKI's key, the TSA over HTTP on 127.0.0.1, and
poppler's pdfsig, pdffonts, pdftotext and pdftoppm on the result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sfsign.documents.completion_certificate import (
    SEAL_FIELD,
    CompletionCertificate,
    RecipientEvent,
    RecipientSummary,
    render_certificate,
)
from sfsign.documents.completion_check import check_completed
from sfsign.documents.signer_jobs import certificate_job
from sfsign.documents.verify import validate_signed_pdf
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services

SENT = dt.datetime(2026, 11, 27, 9, 0, 0, tzinfo=dt.UTC)
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
JANA = "Jana Novák <j.novak@mueller-soehne.example>"
CERTIFICATE = CompletionCertificate(
    organisation="Nordlicht Software GmbH",
    transaction_id="sfs-demo-0000000000000001",
    envelope_id="env-0042",
    document_title="Quote Q-2025-00042: Platform subscription and services",
    sender="Katrin Albers <k.albers@nordlicht.example>",
    status="completed",
    sent_at=SENT,
    completed_at=SENT + dt.timedelta(hours=2),
    sha256_before="0f" * 32,
    sha256_after="a7" * 32,
    recipients=(RecipientSummary(1, "Jana Novák", "j.novak@mueller-soehne.example", "email_otp", "signed"),
                RecipientSummary(2, "#panic(\"x\") *Paul*", "p.weber@mueller-soehne.example", "email_otp", "signed")),
    events=(
        RecipientEvent(SENT + dt.timedelta(minutes=30), "signed", JANA, "203.0.113.7", CHROME, "email_otp"),
        RecipientEvent(SENT, "invited", JANA),
        RecipientEvent(SENT + dt.timedelta(minutes=20), "code_failed", JANA, "203.0.113.7", CHROME, "email_otp"),
        RecipientEvent(SENT + dt.timedelta(hours=2), "completed", ""),
    ),
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install -y poppler-utils); CI installs it")
    return path


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Iterator[tuple[DemoPki, PkiServices]]:
    pki, svc = start_demo_pki_services(tmp_path_factory.mktemp("certificate-pki"), passphrase=passphrase,
                                       key_algorithm="ec-p256", org_name="Certificate Org")
    yield pki, svc
    svc.stop()


@pytest.fixture(scope="module")
def sealed(services: tuple[DemoPki, PkiServices], tmp_path_factory: pytest.TempPathFactory) -> Path:
    pki, svc = services
    pdf, sha256 = certificate_job(CERTIFICATE, pki.pem_key_spec(), (svc.tsa_url,))
    assert len(sha256) == 64
    path = tmp_path_factory.mktemp("certificate") / "completion.pdf"
    path.write_bytes(pdf)
    return path


def test_the_certificate_is_sealed_at_b_t_and_validates(sealed: Path, services: tuple[DemoPki, PkiServices]) -> None:
    pki, _ = services
    pdf = sealed.read_bytes()
    verdict = check_completed(pdf, [pki.root_cert_pem_path], (SEAL_FIELD,),
                              require_pdfsig=shutil.which("pdfsig") is not None)
    assert verdict.ok, verdict.lines()
    report = validate_signed_pdf(pdf, [pki.root_cert_pem_path])
    assert report.level == "B-T" and report.trusted and report.signer_subject is not None


def test_the_certificate_declares_pdfa_2b_and_embeds_every_font(sealed: Path, services: tuple[DemoPki, PkiServices]
                                                                ) -> None:
    assert validate_signed_pdf(sealed.read_bytes(), [services[0].root_cert_pem_path]).pdfa == "2B"
    fonts = subprocess.run([_tool("pdffonts"), str(sealed)], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()[2:]
    assert fonts and all(line.split()[-5:-2] == ["yes", "yes", "yes"] for line in fonts), fonts  # emb sub uni


def test_the_certificate_lists_the_envelope_hashes_and_events_in_time_order(sealed: Path) -> None:
    text = subprocess.run([_tool("pdftotext"), "-layout", str(sealed), "-"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    for value in ("Certificate of completion", "sfs-demo-0000000000000001", "env-0042", "Katrin Albers",
                  "0f" * 32, "a7" * 32, "203.0.113.7", "Chrome/120.0.0.0", "email_otp", '#panic("x") *Paul*'):
        assert value in text, value
    events = text[text.index("Time (UTC)"):]
    order = [events.index(event) for event in ("invited", "code_failed", "signed", "completed")]
    assert order == sorted(order)


def test_the_certificate_renders_to_an_image(sealed: Path, tmp_path: Path) -> None:
    subprocess.run([_tool("pdftoppm"), "-r", "40", "-f", "1", "-l", "1", "-png", str(sealed), str(tmp_path / "page")],
                   check=True, timeout=60)
    image = next(tmp_path.glob("page-*.png")).read_bytes()
    assert image.startswith(b"\x89PNG") and len(image) > 5000


def test_the_certificate_speaks_german(page_texts: Callable[[bytes], list[str]]) -> None:
    pdf, box = render_certificate(dataclasses.replace(CERTIFICATE, language="de"))
    assert box.page == 0
    text = page_texts(pdf)[0]
    assert "Abschlusszertifikat" in text and "Zeit (UTC)" in text
