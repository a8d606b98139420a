"""The bad-input corpus, text part: an opportunity whose name, account name and product descriptions hold
what real customer data holds (emoji and their sequences, combining marks, Arabic and Hebrew with numbers,
CJK, control bytes pasted from legacy systems, a character no font has, a very long word) is signed, not
put in Error. Before the fallback fonts, Typst refused each of these ("could not be displayed with font")
and the record showed Error.

Real parts: the emulator over HTTPS, the daemon with its process pool, Typst, pyHanko; the signed PDF is
read back through REST and checked for real glyphs (no .notdef) and for its text layer.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from e2e_support import REP, record_id, run_daemon, settled_jobs, wait_for_status
from pdf_glyphs import assert_no_notdef, font_names, pdftotext, visible_characters

from sfsign.config import Rules, Settings
from sfsign.documents.verify import validate_signed_pdf
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.outbox import JobState
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
FLAGS = "\U0001f1e9\U0001f1ea\U0001f1ef\U0001f1f5"
THUMBS = "\U0001f44d\U0001f3fd"
ARABIC = "\u0634\u0631\u0643\u0629 \u0627\u0644\u0623\u0645\u0644 \u0662\u0660\u0662\u0665 - 2025"
HEBREW = "\u05d7\u05d1\u05e8\u05ea \u05e9\u05dc\u05d5\u05dd 456"
CJK = "\u682a\u5f0f\u4f1a\u793e\u3072\u3089\u304c\u306a"
THAI = "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35"
ZALGO = "Z\u0336\u0353a\u0337\u031bl\u0335\u0308g\u0334\u030ao\u0338"

OPPORTUNITY_NAME = f"Acme {FAMILY} {FLAGS} Jose\u0301 \x0eRenewal\x0f 2027"  # SO/SI from a legacy export
ACCOUNT_NAME = f"Acme {CJK} {HEBREW} {THUMBS}\x0b"  # a vertical tab from a spreadsheet paste
DESCRIPTIONS = [
    f"{ARABIC} \u2615\U0001f680 1\ufe0f\u20e3 \x1b[1mbold\x1b[0m \x07",
    f"{THAI} {ZALGO} \u00f1 e\u0301 unassigned:\u0378",
    "Licence key " + "ABCD1234" * 25,  # 200 characters without a space
]


async def _acme_lines(control: ControlClient, opp: str) -> list[str]:
    rows = await control.query(f"SELECT Id FROM OpportunityLineItem WHERE OpportunityId = '{opp}' ORDER BY Id")
    return [str(row["Id"]) for row in rows]


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
async def test_opportunity_with_emoji_rtl_cjk_and_control_bytes_is_signed(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest, pki: DemoPki, tmp_path: Path
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    [row] = await control.query(f"SELECT AccountId FROM Opportunity WHERE Id = '{opp}'")
    lines = await _acme_lines(control, opp)
    assert len(lines) >= len(DESCRIPTIONS), lines
    await control.update("Account", str(row["AccountId"]), {"Name": ACCOUNT_NAME}, user=REP)
    await control.update("Opportunity", opp, {"Name": OPPORTUNITY_NAME}, user=REP)
    for line, description in zip(lines, DESCRIPTIONS, strict=False):
        await control.update("OpportunityLineItem", line, {"Description": description}, user=REP)

    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        assert record["Sign_Status__c"] == "Signed", record["Sign_Error__c"]
        jobs = await settled_jobs(daemon)
    [job] = jobs
    assert job.state is JobState.DONE

    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None
    pdf = await rest.download_version_data(found.id)
    report = await asyncio.to_thread(validate_signed_pdf, pdf, [pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted and report.pdfa == "2B", report

    # Real glyphs from the fallback fonts, every font embedded, nothing drawn as a tofu box.
    assert_no_notdef(pdf)
    used = font_names(pdf)
    for family in ("NotoSansArabic", "DroidSansFallback", "NotoSansThai", "Type3"):
        assert any(name.startswith(family) for name in used), (family, used)

    # Everything printable is in the text layer; the control bytes are not, and the one character no
    # font has is a visible U+FFFD rather than an Error on the record.
    text = await asyncio.to_thread(pdftotext, pdf, tmp_path)
    printed = OPPORTUNITY_NAME + ACCOUNT_NAME + "".join(DESCRIPTIONS)
    expected = visible_characters(printed) - {"\u0378"} - {chr(c) for c in range(0x20)} - {"\x7f"}
    missing = expected - set(visible_characters(text))
    assert not missing, sorted(f"U+{ord(c):04X}" for c in missing)
    assert "\ufffd" in text
    assert not {"\x00", "\x07", "\x0b", "\x0e", "\x0f", "\x1b"} & set(text)
    assert "Renewal 2027" in text and "mbold" in text  # the control bytes went, the text around them stayed
