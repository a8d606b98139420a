"""A stage change in the emulated org becomes a signed File on the record: the whole path, real parts.

Emulator (own thread, real HTTPS) ⇄ daemon (our Bayeux client, simple-salesforce, httpx) ⇄ real SQLite
⇄ real Typst rendering and pyHanko signatures, checked by pyHanko's validator and by poppler's pdfsig.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

from e2e_support import REP, pdfsig_required, record_id, replay_position, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.documents.verify import validate_signed_pdf
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.outbox import JobState
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"


async def _assert_signed_file_on_record(
    control: ControlClient, rest: SalesforceRest, sobject: str, rid: str, record: dict[str, object],
    pki: DemoPki, tmp_path: Path,
) -> bytes:
    assert record["Sign_Status__c"] == "Signed", record
    assert record["Sign_Error__c"] is None
    document_id = str(record["Signed_Document_Id__c"])
    assert document_id.startswith("069")
    assert str(record["Signed_Document_Url__c"]).endswith(f"/lightning/r/ContentDocument/{document_id}/view")
    # The file is linked to the record and carries the transaction id.
    links = await rest.query(
        f"SELECT LinkedEntityId FROM ContentDocumentLink WHERE ContentDocumentId = '{document_id}'"
    )
    assert rid in {link["LinkedEntityId"] for link in links}
    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None and found.content_document_id == document_id
    # The bytes downloaded through REST are the signed PDF, whose hash is on the record.
    pdf = await rest.download_version_data(found.id)
    assert hashlib.sha256(pdf).hexdigest() == record["Sign_Document_Hash__c"]
    report = await asyncio.to_thread(validate_signed_pdf, pdf, [pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted, report
    assert record["Sign_Level__c"] == "B-B"
    if pdfsig_required():
        path = tmp_path / f"{rid}.pdf"
        await asyncio.to_thread(path.write_bytes, pdf)
        out = (await asyncio.to_thread(
            subprocess.run, ["pdfsig", str(path)], capture_output=True, text=True, check=False
        )).stdout
        assert "Signature is Valid." in out and "Total document signed" in out, out
    return pdf


async def test_opportunity_stage_change_becomes_a_signed_file_on_the_record(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest, pki: DemoPki, tmp_path: Path
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        await _assert_signed_file_on_record(control, rest, "Opportunity", opp, record, pki, tmp_path)
        jobs = await settled_jobs(daemon)
    [job] = jobs
    assert job.state is JobState.DONE and job.transaction_id == record["Sign_Transaction_Id__c"]
    assert job.source == "cdc" and job.replay_id is not None


async def test_quote_approval_and_sign_request_event_are_signed(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest, pki: DemoPki, tmp_path: Path
) -> None:
    quote = await record_id(control, "Quote", "Globex Enterprise Rollout - Proposal")
    opp = await record_id(control, "Opportunity", "Acme Industries - API Add-on")
    async with run_daemon(settings, rules):
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        published = await control.publish("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "asked"}, user=REP)
        assert published["eventUuid"]
        q_record = await wait_for_status(control, "Quote", quote)
        o_record = await wait_for_status(control, "Opportunity", opp)
    await _assert_signed_file_on_record(control, rest, "Quote", quote, q_record, pki, tmp_path)
    await _assert_signed_file_on_record(control, rest, "Opportunity", opp, o_record, pki, tmp_path)


async def test_records_that_cannot_be_rendered_get_an_error_and_the_daemon_keeps_going(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest, pki: DemoPki, tmp_path: Path
) -> None:
    no_lines = await record_id(control, "Opportunity", "Hanse Logistik - Data Migration")
    no_contact = await record_id(control, "Opportunity", "Lumière Santé - Pilot")
    good = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        for rid in (no_lines, no_contact, good):
            await control.update("Opportunity", rid, {"StageName": "Proposal/Price Quote"}, user=REP)
        first = await wait_for_status(control, "Opportunity", no_lines)
        second = await wait_for_status(control, "Opportunity", no_contact)
        third = await wait_for_status(control, "Opportunity", good)
        jobs = {j.record_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}
    assert first["Sign_Status__c"] == "Error" and "no products" in str(first["Sign_Error__c"])
    assert second["Sign_Status__c"] == "Error" and "no primary contact" in str(second["Sign_Error__c"])
    assert first["Sign_Transaction_Id__c"] == jobs[no_lines].transaction_id
    assert jobs[no_lines].state is JobState.ERROR and jobs[no_lines].error_code == "NOT_RENDERABLE"
    await _assert_signed_file_on_record(control, rest, "Opportunity", good, third, pki, tmp_path)


async def test_restart_replays_nothing_twice_and_a_repeated_trigger_is_a_noop(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        first = await wait_for_status(control, "Opportunity", opp)
    assert first["Sign_Status__c"] == "Signed"
    # While the daemon is down, the rep moves the stage away and back: the record is already signed.
    await control.update("Opportunity", opp, {"StageName": "Negotiation/Review"}, user=REP)
    await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
    async with run_daemon(settings, rules) as daemon:
        # A probe proves the restarted daemon caught up with everything published while it was away.
        probe = await record_id(control, "Quote", "Globex Enterprise Rollout - Proposal")
        await control.update("Quote", probe, {"Status": "Approved"}, user=REP)
        await wait_for_status(control, "Quote", probe)
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    files = [f for f in await control.files() if any(link["LinkedEntityId"] == opp for link in f["links"])]
    assert len(files) == 1, files
    assert [j.record_id for j in jobs] == [opp, probe]
    after = await control.get("Opportunity", opp, ["Sign_Transaction_Id__c"])
    assert after["Sign_Transaction_Id__c"] == first["Sign_Transaction_Id__c"]


async def test_bad_sign_request_is_logged_and_skipped(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    account = (await control.query("SELECT Id FROM Account LIMIT 1"))[0]["Id"]
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": account}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Rule__c": "no-such-rule"}, user=REP)
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        await wait_for_status(control, "Opportunity", opp)
        jobs = await daemon.outbox.call(lambda s: s.jobs())
        replay = daemon.outbox.committed_replay_id("/event/Sign_Request__e")
    assert [j.source for j in jobs] == ["cdc"]
    assert replay is not None  # the skipped events were acknowledged, not replayed forever
    await asyncio.sleep(0)


async def test_malformed_events_are_logged_skipped_and_never_stop_the_daemon(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        bad = await control.post("/_control/streaming/raw", {
            "channel": "/data/OpportunityChangeEvent", "data": {"schema": "x", "payload": {"no": "header"}},
        })
        await control.post("/_control/streaming/raw", {
            "channel": "/event/Sign_Request__e", "data": {"payload": "not an object"},
        })
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        replay = daemon.outbox.committed_replay_id("/data/OpportunityChangeEvent")
    assert record["Sign_Status__c"] == "Signed"
    assert replay_position(replay) > replay_position(bad["replayId"])  # either transport's id, as a bus position


async def test_gap_event_rereads_the_record_and_overflow_reconciles(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    gap_opp = await record_id(control, "Opportunity", ACME)
    missed_opp = await record_id(control, "Opportunity", "Initech - Onboarding Package")
    async with run_daemon(settings, rules) as daemon:
        # Changes applied without change events (as Salesforce does for some DB-level changes).
        await control.post("/_control/streaming/cdc-entities", {"entities": ["Quote"]})
        await control.update("Opportunity", gap_opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        await control.update("Opportunity", missed_opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        await control.post("/_control/streaming/cdc-entities", {"entities": ["Opportunity", "Quote"]})
        await control.post("/_control/streaming/gap", {"entity": "Opportunity", "recordIds": [gap_opp]})
        first = await wait_for_status(control, "Opportunity", gap_opp)
        await control.post("/_control/streaming/overflow", {"entity": "Opportunity"})
        second = await wait_for_status(control, "Opportunity", missed_opp)
        jobs = {j.record_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}
    assert first["Sign_Status__c"] == second["Sign_Status__c"] == "Signed"
    assert jobs[gap_opp].source == "gap" and jobs[missed_opp].source == "reconcile"
    assert len(jobs) == 2


async def test_every_step_leaves_an_audit_event_on_the_record(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        tx = record["Sign_Transaction_Id__c"]
        async with asyncio.timeout(30):
            while True:
                events = await rest.query(
                    "SELECT Name, Event_Type__c, Actor__c, Detail__c, Opportunity__c FROM Signature_Event__c "
                    f"WHERE Transaction_Id__c = '{tx}' ORDER BY Name"
                )
                if any(e["Event_Type__c"] == "done" for e in events):
                    break
                await asyncio.sleep(0.1)
    assert [e["Event_Type__c"] for e in events] == ["queued", "fetched", "rendered", "signed", "uploaded", "done"]
    assert all(e["Opportunity__c"] == opp and e["Name"].startswith("SE-") for e in events)
    assert events[0]["Actor__c"].startswith("005")  # the rep who moved the stage
    assert str(record["Sign_Document_Hash__c"]) in events[3]["Detail__c"]
