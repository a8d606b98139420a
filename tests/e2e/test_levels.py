"""Every PAdES level end to end: stage change → signed File at the profile's level → evidence on the record.

The demo PKI's services (RFC 3161 TSA, OCSP responder, CRLs) run on 127.0.0.1 like a real CA's; the
daemon signs B-LT and B-LTA at B-T first (the rep sees `Signed` at once) and then uploads the upgraded
file as a new version of the same Salesforce File. Each final file is checked by pyHanko's validator at
its level and by poppler's pdfsig, and the B-LTA one again with the PKI services stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, pdfsig_required, record_id, run_cli, run_daemon

from sfsign.commands.demo_rules import PASSPHRASE_ENV, demo_rules_text
from sfsign.config import Rules, Settings, load_rules
from sfsign.documents.verify import validate_signed_pdf
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services
from sfsign.outbox import JobState
from sfsign.salesforce.rest import SalesforceRest

EVIDENCE = ["Sign_Status__c", "Sign_Level__c", "Sign_Error__c", "Sign_Document_Hash__c", "Signed_Document_Id__c",
            "Sign_Transaction_Id__c", "Sign_Timestamp__c", "Sign_Signer__c", "Sign_Signer_Serial__c",
            "Sign_Validation__c", "Sign_Eidas_Level__c", "Sign_Archive_Due__c", "Signed_At__c"]
# (record, how it gets to signature, the level its rule's profile asks for)
CASES = [
    ("Initech - Onboarding Package", "Closed Won", "B-B"),
    ("Globex - Enterprise Rollout", "Negotiation/Review", "B-LT"),
    ("Acme Industries - Platform Renewal 2027", "Proposal/Price Quote", "B-LTA"),
]


@pytest.fixture
def services_pki(tmp_path: Path) -> Iterator[tuple[DemoPki, PkiServices, str]]:
    """A PKI per test: one test stops its services, and URLs are baked into the certificates."""
    import secrets

    passphrase = secrets.token_urlsafe(18)
    pki, services = start_demo_pki_services(
        tmp_path / "pki", passphrase=passphrase, org_name="Northwind Cloud GmbH", key_algorithm="ec-p256"
    )
    try:
        yield pki, services, passphrase
    finally:
        services.stop()


@pytest.fixture
def services(services_pki: tuple[DemoPki, PkiServices, str]) -> PkiServices:
    return services_pki[1]


@pytest.fixture
def rules(tmp_path: Path, services_pki: tuple[DemoPki, PkiServices, str], monkeypatch: pytest.MonkeyPatch) -> Rules:
    """The demo's rules: one profile per level, all on the local TSA (overrides conftest's B-B rules)."""
    pki, services, passphrase = services_pki
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    path = tmp_path / "rules.yaml"
    path.write_text(demo_rules_text(pki, services.tsa_url))
    return load_rules(path)


@pytest.fixture
def settings(emulator: Any, tmp_path: Path, rules: Rules) -> Settings:
    from sfsign.commands.demo import daemon_settings

    return daemon_settings(emulator, tmp_path, rules.source, cpu_workers=1, shutdown_grace_s=10, log_level="INFO",
                           ltv_delay_s=0.1, retry_for_h=2 / 3600, retry_base_s=0.2, retry_cap_s=0.5)


async def _wait(control: ControlClient, sobject: str, rid: str, done: Any, within_s: float = 90.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            record = await control.get(sobject, rid, EVIDENCE)
            if done(record):
                return record
            await asyncio.sleep(0.1)


def _pdfsig(pdf: bytes, path: Path) -> str:
    path.write_bytes(pdf)
    return subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, check=False).stdout


async def test_each_level_reaches_the_record_with_its_evidence_and_validates(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str], services: PkiServices, tmp_path: Path,
) -> None:
    pki = services_pki[0]
    ids = {name: await record_id(control, "Opportunity", name) for name, _, _ in CASES}
    quote = await record_id(control, "Quote", "Enterprise Upgrade - Angebot")
    files: dict[str, bytes] = {}
    async with run_daemon(settings, rules) as daemon:
        for name, stage, _ in CASES:
            await control.update("Opportunity", ids[name], {"StageName": stage}, user=REP)
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        targets = [("Opportunity", ids[n], level) for n, _, level in CASES] + [("Quote", quote, "B-T")]
        for sobject, rid, level in targets:
            record = await _wait(control, sobject, rid, lambda r, lv=level: r["Sign_Level__c"] == lv
                                 or r["Sign_Status__c"] == "Error")
            assert record["Sign_Status__c"] == "Signed" and record["Sign_Error__c"] is None, record
            versions = await rest.query(
                "SELECT Id, IsLatest, ReasonForChange FROM ContentVersion "
                f"WHERE ContentDocumentId = '{record['Signed_Document_Id__c']}' ORDER BY VersionNumber"
            )
            # B-LT/B-LTA: the B-T file, then the upgraded one as version 2 of the same File.
            assert len(versions) == (2 if level in ("B-LT", "B-LTA") else 1), versions
            latest = next(v for v in versions if v["IsLatest"])
            pdf = await rest.download_version_data(str(latest["Id"]))
            files[level] = pdf
            # Evidence on the record matches the file.
            assert hashlib.sha256(pdf).hexdigest() == record["Sign_Document_Hash__c"]
            assert record["Sign_Eidas_Level__c"] == "AES"
            assert "Document Signing" in str(record["Sign_Signer__c"])
            assert record["Sign_Signer_Serial__c"]
            assert str(record["Sign_Validation__c"]).startswith(f"TRUSTED INTACT {level}"), record
            assert (record["Sign_Timestamp__c"] is None) == (level == "B-B"), record
            assert (record["Sign_Archive_Due__c"] is not None) == (level == "B-LTA"), record
            report = await asyncio.to_thread(validate_signed_pdf, pdf, [pki.root_cert_pem_path])
            assert report.intact and report.valid and report.trusted and report.level == level, report
            assert report.pdfa == "2B"
            if pdfsig_required():
                out = await asyncio.to_thread(_pdfsig, pdf, tmp_path / f"{level}.pdf")
                assert "Signature is Valid." in out, out
        jobs = await daemon.outbox.call(lambda s: s.jobs())
        assert {j.state for j in jobs} == {JobState.DONE}
        audit = await daemon.outbox.call(lambda s: s.db.execute("SELECT detail FROM audit").fetchall())
    details = " | ".join(str(row[0]) for row in audit)
    assert "eIDAS AES (declared)" in details and "PAdES B-LTA, SHA-256" in details

    # The archival file still validates with every CA service gone: revocation data and the document
    # timestamp's chain come from the file itself.
    services.stop()
    offline = await asyncio.to_thread(validate_signed_pdf, files["B-LTA"], [pki.root_cert_pem_path])
    assert offline.trusted and offline.intact and offline.level == "B-LTA", offline


async def test_tsa_outage_errors_after_retries_and_never_downgrades_then_retry_signs_at_b_t(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest, services: PkiServices,
) -> None:
    rid = await record_id(control, "Quote", "Enterprise Upgrade - Angebot")
    services.tsa_down = True
    async with run_daemon(settings, rules):
        await control.update("Quote", rid, {"Status": "Approved"}, user=REP)
        record = await _wait(control, "Quote", rid, lambda r: r["Sign_Status__c"] == "Error")
    assert "no timestamp authority answered" in str(record["Sign_Error__c"]), record
    assert "Gave up after" in str(record["Sign_Error__c"]) and "sfsign retry" in str(record["Sign_Error__c"])
    assert record["Sign_Level__c"] is None and record["Signed_Document_Id__c"] is None
    assert await rest.query("SELECT Id FROM ContentVersion WHERE FirstPublishLocationId = "
                            f"'{rid}'") == []  # nothing was signed, nothing uploaded

    services.tsa_down = False
    result = await asyncio.to_thread(run_cli, ["retry", "--all-errors"], settings)
    assert result.returncode == 0, result.stderr
    async with run_daemon(settings, rules):
        record = await _wait(control, "Quote", rid, lambda r: r["Sign_Status__c"] == "Signed")
    assert record["Sign_Level__c"] == "B-T" and record["Sign_Timestamp__c"] is not None


async def test_downgrade_policy_signs_at_b_b_and_says_so_when_no_tsa_answers(
    settings: Settings, rules: Rules, control: ControlClient, services: PkiServices,
) -> None:
    text = rules.source.read_text().replace("    level: B-T\n", "    level: B-T\n    on_tsa_failure: downgrade\n")
    rules.source.write_text(text)
    downgrading = load_rules(rules.source)
    rid = await record_id(control, "Quote", "Enterprise Upgrade - Angebot")
    services.tsa_down = True
    async with run_daemon(settings, downgrading) as daemon:
        await control.update("Quote", rid, {"Status": "Approved"}, user=REP)
        record = await _wait(control, "Quote", rid, lambda r: r["Sign_Status__c"] in ("Signed", "Error"))
        audit = await daemon.outbox.call(lambda s: s.db.execute("SELECT detail FROM audit").fetchall())
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Level__c"] == "B-B", record
    assert any("DOWNGRADED to B-B" in str(row[0]) for row in audit)


async def test_ltv_refresh_adds_an_archive_timestamp_as_a_third_version_exactly_once(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str], tmp_path: Path,
) -> None:
    from pyhanko.pdf_utils.reader import PdfFileReader

    pki = services_pki[0]
    rid = await record_id(control, "Opportunity", "Acme Industries - Platform Renewal 2027")
    async with run_daemon(settings, rules):
        await control.update("Opportunity", rid, {"StageName": "Proposal/Price Quote"}, user=REP)
        first = await _wait(control, "Opportunity", rid, lambda r: r["Sign_Level__c"] == "B-LTA")
        # Nothing is due within the default 90 days: the demo TSA certificate is valid for years.
        assert "0 B-LTA file(s)" in (await asyncio.to_thread(run_cli, ["ltv-refresh"], settings)).stdout
        # An operator renews early: everything expiring within 20 years is due. Twice: queued once.
        for expected in ("1 B-LTA file(s)", "0 B-LTA file(s)"):
            result = await asyncio.to_thread(run_cli, ["ltv-refresh", "--within-days", "7300"], settings)
            assert result.returncode == 0 and expected in result.stdout, (result.stdout, result.stderr)
        renewed = await _wait(control, "Opportunity", rid,
                              lambda r: r["Sign_Document_Hash__c"] != first["Sign_Document_Hash__c"])
    versions = await rest.query(
        f"SELECT Id, IsLatest FROM ContentVersion WHERE ContentDocumentId = '{first['Signed_Document_Id__c']}'"
    )
    assert len(versions) == 3, versions
    latest = next(v for v in versions if v["IsLatest"])
    pdf = await rest.download_version_data(str(latest["Id"]))
    assert hashlib.sha256(pdf).hexdigest() == renewed["Sign_Document_Hash__c"]
    assert renewed["Sign_Status__c"] == "Signed" and renewed["Sign_Level__c"] == "B-LTA"
    assert renewed["Sign_Transaction_Id__c"] == first["Sign_Transaction_Id__c"]
    from io import BytesIO

    kinds = [s.sig_object_type for s in PdfFileReader(BytesIO(pdf)).embedded_signatures]
    assert kinds.count("/DocTimeStamp") == 2, kinds
    report = await asyncio.to_thread(validate_signed_pdf, pdf, [pki.root_cert_pem_path])
    assert report.trusted and report.intact and report.level == "B-LTA", report
