"""A trigger of a rule with signers replayed into an outbox that lost its job (the operator restored a backup
from before it): its File is in Salesforce already, so the fetch step adopts it and signs and sends nothing
again. What the record shows depends on what is there (`sfsign.adoption`): the completed document with its
certificate of completion → `Completed`, as the record showed before; the completed document without its
certificate (the daemon stopped between the two uploads) → `Completed` with a note; a document sealed while
the rule had no signers yet → `Signed` with a note. In every case: no envelope, no mail, no second File.

Real daemon, real SQLite files, the emulator over HTTPS, the demo PKI's TSA and OCSP responder, real
signatures; the customer signs through the outbox library, as the signing pages record it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.adoption import NO_CERTIFICATE, SEALED_ONLY
from sfsign.commands.demo import MAILBOX, daemon_settings
from sfsign.commands.demo_rules import PASSPHRASE_ENV, demo_rules_text
from sfsign.config import Rules, Settings, load_rules
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services
from sfsign.outbox import Job, JobState
from sfsign.outbox.envelope_models import SignerEvidence, SignResult, Visit

ACME = "Acme Industries - Platform Renewal 2027"  # primary contact role: Claire
INITECH = "Initech - Onboarding Package"  # its Closed Won (seal-only) gives the channel a stored position
STAGE = "Proposal/Price Quote"  # the rule `opportunity-proposal`, profile B-LTA
ONE_SIGNER = """\
    signers:
      authentication: none
      steps:
        - [{contact_role: primary}]
"""
OUTBOX_FILES = ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm")
FIELDS = ["Sign_Status__c", "Sign_Transaction_Id__c", "Signed_Document_Id__c", "Sign_Error__c", "Sign_Progress__c"]


@pytest.fixture
def services_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DemoPki, PkiServices]]:
    import secrets

    passphrase = secrets.token_urlsafe(18)
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    pki, services = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase,
                                            org_name="Northwind Cloud GmbH", key_algorithm="ec-p256")
    try:
        yield pki, services
    finally:
        services.stop()


def _rules(tmp_path: Path, services_pki: tuple[DemoPki, PkiServices], name: str, signers: str) -> Rules:
    """The demo's rules, the B-LTA proposal rule with `signers` (empty: seal only)."""
    text = demo_rules_text(services_pki[0], services_pki[1].tsa_url)
    anchor = "  - name: opportunity-negotiation\n"
    assert anchor in text
    path = tmp_path / name
    path.write_text(text.replace(anchor, signers + anchor))
    return load_rules(path)


@pytest.fixture
def rules(tmp_path: Path, services_pki: tuple[DemoPki, PkiServices]) -> Rules:
    return _rules(tmp_path, services_pki, "rules.yaml", ONE_SIGNER)


@pytest.fixture
def settings(emulator: Any, tmp_path: Path, rules: Rules) -> Settings:
    return daemon_settings(emulator, tmp_path, rules.source, cpu_workers=1, shutdown_grace_s=10, log_level="INFO",
                           retry_base_s=0.2, retry_cap_s=0.5, audit_flush_s=0.2)


async def _job(daemon: Daemon, rule: str, states: tuple[JobState, ...], within_s: float = 90.0) -> Job:
    async with asyncio.timeout(within_s):
        while True:
            for job in await daemon.outbox.jobs():
                if job.rule == rule and job.state in states:
                    return job
            await asyncio.sleep(0.05)


async def _backup_after_a_first_trigger(settings: Settings, rules: Rules, control: ControlClient) -> Path:
    """A seal-only document on another record, so the channel has a stored position; then the outbox is
    copied, as an operator's backup would be, before the trigger the test is about."""
    initech = await record_id(control, "Opportunity", INITECH)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", initech, {"StageName": "Closed Won"}, user=REP)
        await wait_for_status(control, "Opportunity", initech)
    backup = settings.data_dir.parent / "backup"
    backup.mkdir()
    for name in OUTBOX_FILES:
        if (settings.data_dir / name).exists():
            shutil.copy2(settings.data_dir / name, backup / name)
    return backup


def _restore(settings: Settings, backup: Path) -> None:
    for name in OUTBOX_FILES:
        (settings.data_dir / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, settings.data_dir / name)


async def _sign_as_the_customer(daemon: Daemon) -> str:
    """The envelope out; its one signer signs (as the signing pages record it). The transaction id."""
    job = await _job(daemon, "opportunity-proposal", (JobState.AWAITING_SIGNATURES,))
    envelope = await daemon.outbox.envelope(job.transaction_id)
    assert envelope is not None
    [claire] = await daemon.outbox.recipients(envelope.id)
    outcome = await daemon.outbox.mark_recipient_signed(
        claire.id, SignerEvidence(claire.name, True, Visit(ip="198.51.100.4", user_agent="e2e")), time.time())
    assert outcome.result is SignResult.SIGNED, outcome
    return job.transaction_id


async def _replayed(settings: Settings, rules: Rules, backup: Path, tx: str) -> tuple[Job, list[str], int]:
    """The backup restored and the daemon started on it: the trigger of `tx` is replayed. The job as it ends,
    its audit details, and how many mails the daemon sent meanwhile."""
    _restore(settings, backup)
    mailbox = Mailbox(settings.data_dir / MAILBOX)
    before = len(mailbox.messages())
    async with run_daemon(settings, rules) as daemon:
        async with asyncio.timeout(90):
            while True:
                job = await daemon.outbox.call(lambda s: s.by_transaction(tx))
                if job is not None and job.state in (JobState.DONE, JobState.ERROR, JobState.DEAD):
                    break
                await asyncio.sleep(0.1)
        assert await daemon.outbox.envelope(tx) is None  # nothing sent for signature again
        audit = await daemon.outbox.call(lambda s: s.db.execute(
            "SELECT detail FROM audit WHERE transaction_id = ? ORDER BY id", (tx,)).fetchall())
        sent = len(mailbox.messages()) - before
    return job, [d or "" for (d,) in audit], sent


async def _files(control: ControlClient, record: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if any(link["LinkedEntityId"] == record for link in f["links"])]


async def _uploaded_but_the_certificate(control: ControlClient, opportunity: str, fault: str) -> None:
    """Until the document is on the record and the certificate's upload was refused."""
    async with asyncio.timeout(120):
        while True:
            refused = [f for f in (await control.faults())["errors"] if f["id"] == fault and f["hits"]]
            if refused and await _files(control, opportunity):
                return
            await asyncio.sleep(0.1)


async def _completed(control: ControlClient, opportunity: str, within_s: float = 120.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while (record := await control.get("Opportunity", opportunity, FIELDS))["Sign_Status__c"] != "Completed":
            assert record["Sign_Status__c"] != "Error", record
            await asyncio.sleep(0.1)
    return record


async def test_a_completed_envelope_replayed_into_a_restored_outbox_stays_completed_and_nothing_is_sent(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    backup = await _backup_after_a_first_trigger(settings, rules, control)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        tx = await _sign_as_the_customer(daemon)
        completed = await _completed(control, opportunity)
        await _job(daemon, "opportunity-proposal", (JobState.DONE,))
    files = await _files(control, opportunity)
    assert sorted(f["Sign_Transaction_Id__c"] for f in files) == [tx, f"{tx}-certificate"]

    job, audit, sent = await _replayed(settings, rules, backup, tx)
    assert await control.get("Opportunity", opportunity, FIELDS) == completed  # not downgraded to Signed
    assert job.state is JobState.DONE and job.sha256 is None  # adopted: nothing rendered or signed
    assert "not signed again nor sent for signature (Completed)" in audit[-1], audit
    assert sent == 0
    assert len(await _files(control, opportunity)) == 2


async def test_a_completed_document_without_its_certificate_is_adopted_completed_with_a_note(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """The daemon stopped between the two uploads (the certificate's refused, then shut down), and the outbox
    was restored from before the trigger: the document alone is on the record."""
    opportunity = await record_id(control, "Opportunity", ACME)
    backup = await _backup_after_a_first_trigger(settings, rules, control)
    fault = await control.add_error_fault(prefix="/services/data/", method="POST", bodyContains="-certificate")
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        tx = await _sign_as_the_customer(daemon)
        await _uploaded_but_the_certificate(control, opportunity, fault)
    await control.remove_fault(fault)
    [document] = await _files(control, opportunity)
    assert document["Sign_Transaction_Id__c"] == tx
    assert (await control.get("Opportunity", opportunity, FIELDS))["Sign_Status__c"] != "Completed"

    job, audit, sent = await _replayed(settings, rules, backup, tx)
    assert job.state is JobState.DONE and job.sha256 is None
    assert sent == 0
    record = await control.get("Opportunity", opportunity, FIELDS)
    assert record["Sign_Status__c"] == "Completed" and record["Sign_Error__c"] == NO_CERTIFICATE, record
    assert record["Sign_Transaction_Id__c"] == tx and record["Signed_Document_Id__c"] == document["ContentDocumentId"]
    assert NO_CERTIFICATE in audit[-1], audit
    assert [f["Sign_Transaction_Id__c"] for f in await _files(control, opportunity)] == [tx]


async def test_a_document_sealed_before_the_rule_had_signers_is_adopted_signed_and_not_sent(
    settings: Settings, rules: Rules, control: ControlClient, tmp_path: Path,
    services_pki: tuple[DemoPki, PkiServices],
) -> None:
    """The trigger was sealed while the rule had no signers; the operator added `signers:` and restored a
    backup from before it. The replayed trigger finds the sealed File (its customer field empty): `Signed`
    stays, with a note saying it was not sent for signature and how to send it; no envelope, no mail."""
    seal_only = _rules(tmp_path, services_pki, "seal-only.yaml", "")
    opportunity = await record_id(control, "Opportunity", ACME)
    backup = await _backup_after_a_first_trigger(settings, seal_only, control)
    async with run_daemon(settings, seal_only) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        job = await _job(daemon, "opportunity-proposal", (JobState.DONE,), within_s=120)
    sealed = await control.get("Opportunity", opportunity, FIELDS)
    assert sealed["Sign_Status__c"] == "Signed" and sealed["Sign_Transaction_Id__c"] == job.transaction_id

    job, audit, sent = await _replayed(settings, rules, backup, job.transaction_id)  # now with signers
    assert job.state is JobState.DONE and job.sha256 is None
    assert sent == 0
    record = await control.get("Opportunity", opportunity, FIELDS)
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Error__c"] == SEALED_ONLY, record
    assert record["Signed_Document_Id__c"] == sealed["Signed_Document_Id__c"]
    assert SEALED_ONLY in audit[-1], audit
    assert {f["ContentDocumentId"] for f in await _files(control, opportunity)} == {
        sealed["Signed_Document_Id__c"]}  # one File (its B-LTA version beside the first)
