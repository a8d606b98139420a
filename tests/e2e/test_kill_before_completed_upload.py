"""kill -9 of `sfsign run` after the customer's signature was applied and before the completed document's
upload was committed (issue 14 §8). The customer signs over HTTP from their mailbox, the daemon applies the
signature and completes the document, and its upload does not come back: either Salesforce refuses every
upload of a PDF (an outage), or it stores the document and never answers (the daemon cannot know it is
there). The daemon is killed (SIGKILL) there, the outage ends, and it is started again on the same data
directory. Nothing is lost and nothing happens twice: one completed File and one certificate File on
the record, which shows `Completed`; one customer signature in the PDF, valid by pyHanko (and pdfsig); each
mail once (a mail sent again would carry the same Message-ID); the audit trail without a duplicate.

Real `sfsign run` subprocesses, the embedded emulator over HTTPS, a real SMTP relay, the demo PKI's TSA and
OCSP responder, the demo's customer rule (`quote-presented`: e-mail code, B-LT).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from daemon_process import WAIT_S, kill, run_env, start_run, subscribed
from e2e_support import REP, pdfsig_required, record_id
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.commands.demo import daemon_settings, free_port
from sfsign.commands.demo_customer import DemoCustomer, quote_contact
from sfsign.commands.demo_rules import PASSPHRASE_ENV, demo_rules_text
from sfsign.config import Settings
from sfsign.documents.completion_check import check_completed, pdfsig_results
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localmail.server import LocalMailServer, ServerSecurity
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services
from sfsign.outbox import JobState, OutboxStore
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.model import MailKind

QUOTE = "Globex Enterprise Rollout - Proposal"  # the demo's customer document: its contact signs
FIELDS = ["Sign_Status__c", "Sign_Progress__c", "Sign_Transaction_Id__c", "Signed_Document_Id__c",
          "Sign_Document_Hash__c", "Sign_Level__c", "Sign_Error__c"]
SIGNATURE_FIELDS = ("SellerSignature", "CustomerSignature")


@dataclass(frozen=True)
class Outage:
    """An emulator fault on the completed document's upload, and whether the document reaches Salesforce."""

    fault: dict[str, Any]
    stored: bool


OUTAGES = {
    # Every ContentVersion insert carries the PDF's bytes (a lone file: sobjects/ContentVersion; a batch:
    # composite/sobjects), and no other request does: the outage hits the uploads only.
    "refused": Outage({"prefix": "/services/data/", "method": "POST", "bodyContains": "%PDF-"}, stored=False),
    # The first lone upload (the completed document's) is stored and its answer held until the kill.
    "stored-unanswered": Outage({"prefix": "/services/data/v68.0/sobjects/ContentVersion", "method": "POST",
                                 "mode": "hold_after", "count": 1}, stored=True),
}


@pytest.fixture
def services_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DemoPki, PkiServices]]:
    import secrets

    from secret_scan import register_secret

    passphrase = secrets.token_urlsafe(18)
    register_secret(passphrase)
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)  # `cli_env` passes it on to `sfsign run`
    pki, services = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase,
                                            org_name="Northwind Cloud GmbH", key_algorithm="ec-p256")
    try:
        yield pki, services
    finally:
        services.stop()


@pytest.fixture
def rules_file(tmp_path: Path, services_pki: tuple[DemoPki, PkiServices]) -> Path:
    pki, services = services_pki
    path = tmp_path / "rules.yaml"
    path.write_text(demo_rules_text(pki, services.tsa_url, customer=True))
    return path


@pytest.fixture
def settings(emulator: Any, tmp_path: Path, rules_file: Path) -> Settings:
    return daemon_settings(emulator, tmp_path, rules_file, cpu_workers=1, log_level="INFO")


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


def _applied(outbox: Path) -> bool:
    """Whether the daemon marked the customer's signature applied (read-only: the daemon owns the file)."""
    if not outbox.exists():
        return False
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT count(*) FROM recipients WHERE applied_at IS NOT NULL").fetchone()
    return bool(row and row[0])


async def _upload_failed(control: ControlClient, fault_id: str, outbox: Path, proc: Any, log: Path, quote: str,
                         stored: bool) -> None:
    """Until the signature is applied and the fault hit the completed document's upload (and, when the upload
    is stored, the document is on the record)."""
    async with asyncio.timeout(WAIT_S * 3):
        while True:
            assert proc.returncode is None, _tail(log)
            [fault] = [f for f in (await control.faults())["errors"] if f["id"] == fault_id]
            if fault["hits"] >= 1 and await asyncio.to_thread(_applied, outbox) and (
                    not stored or await _record_files(control, quote)):
                return
            await asyncio.sleep(0.1)


async def _record_files(control: ControlClient, record: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if any(link["LinkedEntityId"] == record for link in f["links"])]


async def _until_completed(control: ControlClient, quote: str, proc: Any, log: Path) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S * 3):
        while (record := await control.get("Quote", quote, FIELDS))["Sign_Status__c"] != "Completed":
            assert proc.returncode is None, _tail(log)
            assert record["Sign_Status__c"] != "Error", record
            await asyncio.sleep(0.1)
    return record


async def _audit(control: ControlClient, quote: str) -> list[dict[str, Any]]:
    return await control.query("SELECT Event_Type__c, Transaction_Id__c, Actor__c, Detail__c FROM Signature_Event__c "
                               f"WHERE Quote__c = '{quote}' ORDER BY Occurred_At__c")


async def _until_audited(control: ControlClient, quote: str, event_type: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(WAIT_S):
        while True:
            rows = await _audit(control, quote)
            if any(r["Event_Type__c"] == event_type for r in rows):
                return rows
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("outage", list(OUTAGES))
async def test_a_kill_9_between_the_applied_signature_and_the_upload_loses_nothing_and_signs_nothing_twice(
    settings: Settings, rules_file: Path, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices], tmp_path: Path, outage: str,
) -> None:
    quote = await record_id(control, "Quote", QUOTE)
    email, name = await quote_contact(control, quote)
    outbox_file = settings.data_dir / "outbox.sqlite"
    stored = OUTAGES[outage].stored
    fault_id = await control.add_error_fault(**OUTAGES[outage].fault)
    with LocalMailServer(tmp_path / "relay", security=ServerSecurity.PLAIN) as relay:
        env = run_env(settings, rules_file, relay, free_port(), tmp_path, SFSIGN_RETRY_BASE_S="0.2",
                      SFSIGN_RETRY_CAP_S="1", SFSIGN_AUDIT_FLUSH_S="0.2")
        log = tmp_path / "daemon.log"
        first = await start_run(env, log)
        try:
            await subscribed(first, log)
            await control.update("Quote", quote, {"Status": "Presented"}, user=REP)
            signed = await DemoCustomer(relay.directory, email, name, timeout_s=WAIT_S * 2).sign()
            assert signed.final_state in ("signed", "completed"), signed
            await _upload_failed(control, fault_id, outbox_file, first, log, quote, stored)
            await kill(first)
            assert first.returncode == -signal.SIGKILL
        finally:
            await kill(first)
        before = await _record_files(control, quote)  # the completed document only if stored, no certificate
        assert len(before) == stored and all(not f["Sign_Transaction_Id__c"].endswith("-certificate") for f in before)
        assert (await control.get("Quote", quote, FIELDS))["Sign_Status__c"] != "Completed"
        await control.remove_fault(fault_id)  # the outage is over

        second = await start_run(env, log)
        try:
            record = await _until_completed(control, quote, second, log)
            audit = await _until_audited(control, quote, "completed")
            mailbox = Mailbox(relay.directory)
            await asyncio.to_thread(mailbox.wait_for, lambda m: email in m.recipients and any(
                n.endswith(".pdf") for n, _ in m.attachments), timeout_s=WAIT_S)  # the completed copy
            second.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                assert await second.wait() == 0, log.read_text()[-3000:]
        finally:
            await kill(second)
    sys.stdout.write(log.read_text())  # into the capture the secret scan reads
    tx = record["Sign_Transaction_Id__c"]

    # One completed File and one certificate File on the record, which shows Completed.
    assert record["Sign_Progress__c"] == "1 of 1 signed" and record["Sign_Error__c"] is None, record
    files = await _record_files(control, quote)
    assert sorted(f["Sign_Transaction_Id__c"] for f in files) == sorted([tx, f"{tx}-certificate"]), files
    [final] = [f for f in files if f["Sign_Transaction_Id__c"] == tx]
    assert final["ContentDocumentId"] == record["Signed_Document_Id__c"]

    # The customer's signature once, in their field, valid; the seal beside it.
    pdf = await rest.download_version_data(str(final["Id"]))
    reader = PdfFileReader(BytesIO(pdf))
    assert Counter(s.field_name for s in reader.embedded_regular_signatures) == Counter(SIGNATURE_FIELDS)
    verdict = await asyncio.to_thread(check_completed, pdf, [services_pki[0].root_cert_pem_path], SIGNATURE_FIELDS)
    assert verdict.ok and not verdict.missing, verdict.lines()
    assert all(s.intact and s.valid and s.trusted for s in verdict.signatures), verdict.lines()
    assert verdict.level == record["Sign_Level__c"] == "B-LT"
    if pdfsig_required():
        by_field = await asyncio.to_thread(pdfsig_results, pdf)
        assert by_field is not None and all(by_field.get(f) == "Signature is Valid." for f in SIGNATURE_FIELDS)

    # Each mail once: one invitation, one code, one completed copy; a mail the relay got twice would carry
    # the same Message-ID (docs/signing-flow.md), so the mailbox holds no Message-ID the outbox does not know.
    store = OutboxStore(outbox_file)
    try:
        [envelope] = store.envelopes()
        [recipient] = store.recipients(envelope.id)
        assert recipient.applied_at is not None
        mails = [m for m in store.envelope_mails(envelope.id) if m.recipient_id == recipient.id]
        [job] = [j for j in store.jobs() if j.transaction_id == tx]
        assert job.state is JobState.DONE
    finally:
        store.close()
    assert sorted(m.kind.value for m in mails) == sorted(k.value for k in (MailKind.INVITATION, MailKind.CODE,
                                                                            MailKind.COMPLETED)), mails
    received = {m.message_id for m in Mailbox(relay.directory).to(email)}
    assert received == {m.message_id for m in mails}, (received, mails)

    # The audit trail: every row once (a step done again after the kill wrote nothing twice).
    rows = [(r["Event_Type__c"], r["Transaction_Id__c"], r["Detail__c"]) for r in audit]
    assert [row for row, n in Counter(rows).items() if n > 1] == [], rows
    # The envelope's own events once each; the customer's signature is the `signed` row they are the actor of
    # (the job's `signed` rows are the seal and the completed document, one each).
    [contact] = await control.query(f"SELECT ContactId FROM Quote WHERE Id = '{quote}'")
    kinds = Counter(r["Event_Type__c"] for r in audit if r["Transaction_Id__c"] == tx)
    assert {k: kinds[k] for k in ("sent", "viewed", "completed", "uploaded", "done")} == dict.fromkeys(
        ("sent", "viewed", "completed", "uploaded", "done"), 1), kinds
    by_customer = [r for r in audit if r["Event_Type__c"] == "signed" and r["Actor__c"] == contact["ContactId"]]
    assert len(by_customer) == 1 and kinds["signed"] == 3, audit
