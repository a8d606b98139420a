"""Customer signing through the job state machine, end to end: a stage change on an Opportunity whose rule has
`signers:` makes an envelope (the job waits, the record has no file yet); a signature recorded through the
outbox library, as the signing listener records it, goes into the PDF in the daemon's process pool; the
last one completes the document (long-term validation data, both validators' verdict, the certificate of
completion) and the record shows `Completed` with two Files. A refusal ends the job without a file.

Real emulator over HTTPS, real outbox, real pool, real signatures against the demo PKI's TSA and OCSP
responder; the final PDF is validated by pyHanko and, each signature, by poppler's pdfsig.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, wait_for_status
from pyhanko.pdf_utils.reader import PdfFileReader
from signer_support import RECORD_FIELDS, check_final, record_files, signer_rules

from sfsign.commands.demo import MAILBOX, daemon_settings
from sfsign.commands.demo_customer import DemoCustomer
from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.documents.signer_signature import signature_fields
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices
from sfsign.outbox import Job, JobState
from sfsign.outbox.envelope_models import CodeResult, Envelope, MailState, Recipient, SignerEvidence, SignResult, Visit
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.model import MailKind
from sfsign.signing.tokens import LinkKeys

ACME = "Acme Industries - Platform Renewal 2027"  # primary contact role Claire (Economic Buyer), Thomas (Technical)
STAGE = "Proposal/Price Quote"  # the demo rule `opportunity-proposal`, profile B-LTA
VISIT = Visit(ip="198.51.100.4", user_agent="Mozilla/5.0 (e2e)")
ONE_SIGNER = """\
    signers:
      authentication: none
      steps:
        - [{contact_role: primary}]
"""
ONE_SIGNER_OTP_SEALED_AFTER = """\
    signers:
      authentication: email_otp
      seal: after_signing
      steps:
        - [{contact_role: primary}]
"""
TWO_SIGNERS = """\
    signers:
      authentication: none
      steps:
        - [{contact_role: primary}]
        - [{contact_role: "Technical Buyer"}]
"""
TWO_IN_PARALLEL = """\
    signers:
      authentication: none
      order: parallel
      steps:
        - [{contact_role: primary}]
        - [{contact_role: "Technical Buyer"}]
"""


@pytest.fixture
def rules(request: pytest.FixtureRequest, tmp_path: Path, services_pki: tuple[DemoPki, PkiServices, str],
          monkeypatch: pytest.MonkeyPatch) -> Rules:
    """The demo's rules on the local TSA, the B-LTA proposal rule with the test's `signers:` block."""
    return signer_rules(tmp_path / "rules.yaml", services_pki, getattr(request, "param", ONE_SIGNER), monkeypatch)


@pytest.fixture
def settings(emulator: Any, tmp_path: Path, rules: Rules) -> Settings:
    return daemon_settings(emulator, tmp_path, rules.source, cpu_workers=1, shutdown_grace_s=10, log_level="INFO",
                           retry_base_s=0.2, retry_cap_s=0.5)


async def _job_in(daemon: Daemon, states: tuple[JobState, ...], within_s: float = 90.0) -> Job:
    async with asyncio.timeout(within_s):
        while True:
            jobs = [j for j in await daemon.outbox.jobs() if j.rule == "opportunity-proposal"]
            for job in jobs:
                assert job.state not in (JobState.ERROR, JobState.DEAD), job.last_error
                if job.state in states:
                    return job
            await asyncio.sleep(0.05)


async def _envelope(daemon: Daemon, job: Job) -> tuple[Envelope, list[Recipient]]:
    envelope = await daemon.outbox.envelope(job.transaction_id)
    assert envelope is not None
    return envelope, await daemon.outbox.recipients(envelope.id)


async def _sign(daemon: Daemon, recipient: Recipient) -> None:
    outcome = await daemon.outbox.mark_recipient_signed(recipient.id, SignerEvidence(recipient.name, True, VISIT),
                                                        time.time())
    assert outcome.result is SignResult.SIGNED, outcome


async def _applied(daemon: Daemon, recipient: Recipient, within_s: float = 60.0) -> Recipient:
    """The recipient once the worker put their signature in the PDF and the job waits again."""
    async with asyncio.timeout(within_s):
        while True:
            [now] = [r for r in await daemon.outbox.recipients(recipient.envelope_id) if r.id == recipient.id]
            job = await daemon.outbox.call(lambda s: s.db.execute(
                "SELECT j.state FROM jobs j JOIN envelopes e ON e.job_id = j.id WHERE e.id = ?",
                (recipient.envelope_id,)).fetchone()[0])
            if now.applied_at is not None and job == JobState.AWAITING_SIGNATURES.value:
                return now
            await asyncio.sleep(0.05)


def _signature_order(pdf: bytes) -> list[str]:
    """The approval signatures' fields in the order they were made (each covers more of the file)."""
    reader = PdfFileReader(BytesIO(pdf))
    signatures = sorted(reader.embedded_regular_signatures, key=lambda s: s.signed_revision)
    return [s.field_name for s in signatures]


@pytest.mark.parametrize("rules", [ONE_SIGNER, ONE_SIGNER_OTP_SEALED_AFTER], indirect=True,
                         ids=["no-code-sealed-first", "email-code-sealed-after"])
async def test_one_signer_gets_an_envelope_and_their_signature_completes_the_record(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    [signers] = [r.signers for r in rules.rules if r.name == "opportunity-proposal"]
    assert signers is not None
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        job = await _job_in(daemon, (JobState.AWAITING_SIGNATURES,))
        envelope, [claire] = await _envelope(daemon, job)
        assert claire.email == "claire.lefevre@acme-industries.example" and envelope.auth_method.value == (
            signers.authentication.value)
        assert job.signers_json and "claire.lefevre@acme-industries.example" in job.signers_json
        assert await record_files(control, opportunity) == []  # nothing on the record until it is completed
        about = settings.data_dir / "artifacts" / f"{job.transaction_id}.about.json"
        assert "Marc Dubois" in about.read_text()  # the record owner: the rep the page names
        if signers.authentication.value == "email_otp":
            keys = LinkKeys.load(settings.data_dir)  # the daemon's: the mailer unseals the code with it
            refused = await daemon.outbox.mark_recipient_signed(claire.id, SignerEvidence(claire.name, True, VISIT),
                                                                time.time())
            assert refused.result is SignResult.NOT_AUTHENTICATED
            assert (await daemon.outbox.issue_code(claire.id, time.time(), keys, VISIT)).result is CodeResult.SENT
            [mail] = [m for m in await daemon.outbox.envelope_mails(envelope.id)
                      if m.kind is MailKind.CODE and m.state is MailState.PENDING]
            assert mail.sealed is not None
            code = keys.unseal(mail.sealed, mail.message_id)
            checked = await daemon.outbox.check_code(claire.id, code, time.time(), keys, VISIT)
            assert checked.result is CodeResult.VERIFIED
        await _sign(daemon, claire)
        pdf = await check_final(control, rest, services_pki[0], opportunity,
                                 ("SellerSignature", "CustomerSignature"), 1)
        order = _signature_order(pdf)
        assert order == (["CustomerSignature", "SellerSignature"] if signers.seal == "after_signing"
                         else ["SellerSignature", "CustomerSignature"])
        # The record shows the final signature: the customer's (when they pressed Sign), or the seal after it.
        [signed] = await daemon.outbox.recipients(envelope.id)
        clicked = datetime.fromtimestamp(signed.signed_at or 0, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        record = await control.get("Opportunity", opportunity, RECORD_FIELDS)
        assert record["Sign_Timestamp__c"], record
        if signers.seal == "after_signing":
            assert str(record["Signed_At__c"])[:19] >= clicked, record
        else:
            assert str(record["Signed_At__c"])[:19] == clicked, record
        done = await _job_in(daemon, (JobState.DONE,))
        assert done.certificate_version_id and done.content_version_id
        # The completed copy stays for the signing page's download link.
        assert (settings.data_dir / "artifacts" / f"{job.transaction_id}.ltv.pdf").read_bytes() == pdf
        envelope = await daemon.outbox.envelope(job.transaction_id)
        assert envelope is not None and envelope.document_sha256_after


@pytest.mark.parametrize("rules", [TWO_SIGNERS], indirect=True)
async def test_two_signers_in_sequence_each_signature_once_even_when_its_step_runs_again(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        job = await _job_in(daemon, (JobState.AWAITING_SIGNATURES,))
        _env, [claire, thomas] = await _envelope(daemon, job)
        assert (claire.step, thomas.step) == (1, 2)
        assert (await daemon.outbox.mark_recipient_signed(thomas.id, SignerEvidence(thomas.name, True, VISIT),
                                                          time.time())).result is SignResult.NOT_YOUR_TURN
        await _sign(daemon, claire)
        await _applied(daemon, claire)
        signed_file = settings.data_dir / "artifacts" / f"{job.transaction_id}.signed.pdf"
        after_first = signed_file.read_bytes()
        assert signature_fields(after_first) == {"SellerSignature": True, "CustomerSignature": True,
                                                 "CustomerSignature2": False}

        # A crash after the PDF was written and before the applied mark: the job is due again and the
        # recipient unmarked. The step runs again, finds the field signed and only marks it.
        await daemon.outbox.call(lambda s: s.db.execute("UPDATE recipients SET applied_at = NULL WHERE id = ?",
                                                        (claire.id,)))
        await daemon.outbox.call(lambda s: s.db.execute(
            "UPDATE jobs SET state = ?, next_attempt_at = ? WHERE id = ?",
            (JobState.SIGNATURES_DUE.value, time.time(), job.id)))
        assert daemon.worker is not None
        daemon.worker.wake()
        await _applied(daemon, claire)
        assert signed_file.read_bytes() == after_first  # nothing signed a second time
        assert _signature_order(after_first) == ["SellerSignature", "CustomerSignature"]

        await _sign(daemon, thomas)
        pdf = await check_final(control, rest, services_pki[0], opportunity,
                                 ("SellerSignature", "CustomerSignature", "CustomerSignature2"), 2)
        assert _signature_order(pdf) == ["SellerSignature", "CustomerSignature", "CustomerSignature2"]
        assert pdf.startswith(after_first)  # the second signature is an increment on the first


@pytest.mark.parametrize("rules", [TWO_IN_PARALLEL], indirect=True)
async def test_two_signers_in_parallel_are_invited_at_once_and_sign_in_either_order(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        job = await _job_in(daemon, (JobState.AWAITING_SIGNATURES,))
        envelope, [claire, thomas] = await _envelope(daemon, job)
        invited = [m.recipient_id for m in await daemon.outbox.envelope_mails(envelope.id)
                   if m.kind is MailKind.INVITATION]
        assert sorted(invited) == sorted([claire.id, thomas.id])  # both at once, once each
        await _sign(daemon, thomas)  # the second in the list signs first: nobody waits for anybody
        await _applied(daemon, thomas)
        await _sign(daemon, claire)
        pdf = await check_final(control, rest, services_pki[0], opportunity,
                                 ("SellerSignature", "CustomerSignature", "CustomerSignature2"), 2)
        # Each signature in its signer's own field, applied in the order they signed.
        assert _signature_order(pdf) == ["SellerSignature", "CustomerSignature2", "CustomerSignature"]


async def test_a_refusal_ends_the_job_and_puts_no_file_on_the_record(
    settings: Settings, rules: Rules, control: ControlClient,
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        job = await _job_in(daemon, (JobState.AWAITING_SIGNATURES,))
        _env, [claire] = await _envelope(daemon, job)
        outcome = await daemon.outbox.mark_recipient_refused(claire.id, "Budget moved to next year", time.time(),
                                                             VISIT)
        assert outcome.result is SignResult.REFUSED
        ended = await _job_in(daemon, (JobState.ENVELOPE_ENDED,))
        assert ended.id == job.id and ended.content_version_id is None
        assert await daemon.outbox.signed_unapplied(job.transaction_id) == []
        assert await daemon.outbox.claim_due(time.time() + 3600, 10) == []
    assert await record_files(control, opportunity) == []
    record = await control.get("Opportunity", opportunity, RECORD_FIELDS)
    assert record["Sign_Status__c"] != "Completed" and record["Signed_Document_Id__c"] is None, record


@pytest.mark.parametrize("rules", [TWO_SIGNERS], indirect=True)
async def test_a_record_that_names_no_signer_is_an_error_saying_what_to_fix(
    settings: Settings, rules: Rules, control: ControlClient,
) -> None:
    # A primary contact (the document renders), but no contact with the role "Technical Buyer".
    opportunity = await record_id(control, "Opportunity", "Acme Industries - API Add-on")
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        record = await wait_for_status(control, "Opportunity", opportunity, ("Error", "Completed", "Signed"))
        assert record["Sign_Status__c"] == "Error", record
        assert "has no contact role 'Technical Buyer'" in str(record["Sign_Error__c"]), record
        [job] = await daemon.outbox.jobs()
        assert (job.state, job.error_code, job.signers_json) == (JobState.ERROR, "NOT_RENDERABLE", None)
        assert await daemon.outbox.envelope(job.transaction_id) is None
    assert await record_files(control, opportunity) == []


@pytest.mark.parametrize("rules", [ONE_SIGNER_OTP_SEALED_AFTER], indirect=True)
async def test_the_customer_signs_from_their_mailbox_over_http_and_the_record_is_completed(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    """Every part at once, as the demo runs it: the stage change sends the invitation through the embedded
    relay; the customer (`DemoCustomer`, plain HTTP like a browser without script) follows the mail's link, asks
    for a code, reads it from the next mail, signs; the record ends Completed and the completed copy arrives."""
    opportunity = await record_id(control, "Opportunity", ACME)
    claire = "claire.lefevre@acme-industries.example"
    async with run_daemon(settings, rules) as daemon:
        mailbox = daemon.settings.data_dir / MAILBOX
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        signed = await DemoCustomer(mailbox, claire, "Claire Lefèvre", timeout_s=90).sign()
        assert signed.steps == ("code", "code", "sign", "completed") or signed.steps[-1] == "signed", signed
        assert signed.link.startswith(f"{daemon.settings.signing_url}/s/")
        final = await check_final(control, rest, services_pki[0], opportunity,
                                   ("SellerSignature", "CustomerSignature"), 1)
        box = Mailbox(mailbox)
        completed = await asyncio.to_thread(
            box.wait_for, lambda m: claire in m.recipients and any(n.endswith(".pdf") for n, _ in m.attachments),
            timeout_s=60)
        [(_name, attached)] = [(n, c) for n, c in completed.attachments if n.endswith(".pdf")]
        job = await _job_in(daemon, (JobState.DONE,))
        assert attached == final, (len(attached), len(final))  # the completed copy is the document on the record
        kinds = [m.kind for m in await daemon.outbox.envelope_mails(
            (await _envelope(daemon, job))[0].id) if m.recipient_id is not None]
        assert kinds.count(MailKind.INVITATION) == 1 and kinds.count(MailKind.CODE) == 1
