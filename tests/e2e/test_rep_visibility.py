"""A rep's click or stage change is never silently ignored: a trigger for a record already signed signs
nothing and says so on the record and in its audit trail; Re-issue signs a new version that supersedes
the old one, with the rep's reason. Against the emulator, over HTTPS, with the real daemon."""

from __future__ import annotations

import asyncio
from typing import Any

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
TRIGGER = {"StageName": "Proposal/Price Quote"}
AWAY = {"StageName": "Prospecting"}


async def _audit(rest: SalesforceRest, opp: str, wanted: str, within_s: float = 30.0) -> list[dict[str, Any]]:
    """The record's Signature_Event__c rows (oldest first), once one of type `wanted` is there."""
    async with asyncio.timeout(within_s):
        while True:
            events = await rest.query(
                "SELECT Name, Event_Type__c, Transaction_Id__c, Actor__c, Detail__c FROM Signature_Event__c "
                f"WHERE Opportunity__c = '{opp}' ORDER BY Name"
            )
            if any(e["Event_Type__c"] == wanted for e in events):
                return events
            await asyncio.sleep(0.1)


async def _files_of(control: ControlClient, opp: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if f.get("FirstPublishLocationId") == opp]


async def test_a_trigger_for_a_signed_record_signs_nothing_and_says_so_on_the_record(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        first = await wait_for_status(control, "Opportunity", opp)
        assert first["Sign_Status__c"] == "Signed"
        tx = first["Sign_Transaction_Id__c"]
        # The stage moves away and back, and the rep clicks "Send for signature" (action Sign).
        await control.update("Opportunity", opp, AWAY, user=REP)
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "again, please"}, user=REP)
        events = await _audit(rest, opp, "already_signed")
        async with asyncio.timeout(30):
            while len([e for e in events if e["Event_Type__c"] == "already_signed"]) < 2:
                events = await _audit(rest, opp, "already_signed")
        record = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c", "Sign_Error__c"])
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    assert len(jobs) == 1 and len(await _files_of(control, opp)) == 1  # nothing signed twice
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Transaction_Id__c"] == tx
    assert f"Already signed on {first['Signed_At__c'][:10]}" in record["Sign_Error__c"]
    assert tx in record["Sign_Error__c"] and "Re-issue" in record["Sign_Error__c"]
    told = [e for e in events if e["Event_Type__c"] == "already_signed"]
    assert {e["Transaction_Id__c"] for e in told} == {tx}
    assert {e["Detail__c"].split(" ", 1)[0] for e in told} == {"cdc", "event"}
    assert any("again, please" in e["Detail__c"] for e in told)
    assert all(e["Actor__c"].startswith("005") for e in told)  # the rep, not sfsign


async def test_reissue_signs_a_new_version_that_supersedes_the_old_one_with_the_reason(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        first = await wait_for_status(control, "Opportunity", opp)
        old_tx = first["Sign_Transaction_Id__c"]
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Action__c": "Reissue",
                                                  "Reason__c": "Customer changed the billing address"}, user=REP)
        async with asyncio.timeout(90):
            while True:
                second = await wait_for_status(control, "Opportunity", opp)
                if second["Sign_Transaction_Id__c"] != old_tx:
                    break
                await asyncio.sleep(0.1)
        events = await _audit(rest, opp, "superseded")
        async with asyncio.timeout(30):
            while not any(e["Event_Type__c"] == "done" and e["Transaction_Id__c"] != old_tx for e in events):
                events = await _audit(rest, opp, "superseded")
        jobs = {j.transaction_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}
    new_tx = second["Sign_Transaction_Id__c"]
    assert second["Sign_Status__c"] == "Signed" and second["Signed_Document_Id__c"] != first["Signed_Document_Id__c"]
    files = {f["Sign_Transaction_Id__c"] for f in await _files_of(control, opp)}
    assert files == {old_tx, new_tx}  # the old document stays, the new one is on the record
    assert jobs[old_tx].superseded_by == new_tx and jobs[new_tx].reason == "Customer changed the billing address"
    [superseded] = [e for e in events if e["Event_Type__c"] == "superseded"]
    assert superseded["Transaction_Id__c"] == old_tx
    assert new_tx in superseded["Detail__c"] and "Customer changed the billing address" in superseded["Detail__c"]
    [queued] = [e for e in events if e["Event_Type__c"] == "queued" and e["Transaction_Id__c"] == new_tx]
    assert "source: reissue" in queued["Detail__c"] and f"supersedes transaction {old_tx}" in queued["Detail__c"]
    assert "Customer changed the billing address" in queued["Detail__c"]


async def test_an_unknown_action_is_refused_on_the_audit_trail_not_guessed(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Action__c": "Destroy"}, user=REP)
        events = await _audit(rest, opp, "refused")
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    assert jobs == []
    assert any("Action__c 'Destroy'" in e["Detail__c"] for e in events)


async def test_the_reason_the_rep_types_reaches_the_job_and_the_audit_trail_in_salesforce(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    reason = "Signed offer for the board meeting — Müller 🙂"
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Reason__c": f"  {reason} "}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        events = await _audit(rest, opp, "done")
        [job] = await daemon.outbox.call(lambda s: s.jobs())
    assert record["Sign_Status__c"] == "Signed" and job.reason == reason
    [queued] = [e for e in events if e["Event_Type__c"] == "queued"]
    assert queued["Detail__c"].endswith(f"reason: {reason}") and queued["Actor__c"].startswith("005")
