"""Bad-input corpus, record ids: one record, one contract, however its id is spelled.

Salesforce ids are case-sensitive in their first 15 characters; the 18-character form adds a suffix
that encodes that case, so the 18-character id survives a spreadsheet's upper() or lower(). A
`Sign_Request__e` naming a signed record by its 15-character id, or by its 18-character id in another
case, used to produce a second and a third signed contract. And a `Rule__c` that is not exactly a rule
of the record's object is refused with a reason and an audit event, never guessed.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient

ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX = "Globex - Enterprise Rollout"
STAGE = {"StageName": "Proposal/Price Quote"}


async def _request_then_sign_globex(control: ControlClient, requests: list[dict[str, str]]) -> str:
    """Publish the requests, then one for Globex: the stream is handled in order, so once Globex is
    signed every request before it has been decided upon."""
    for fields in requests:
        await control.publish("Sign_Request__e", fields, user=REP)
    globex = await record_id(control, "Opportunity", GLOBEX)
    await control.publish("Sign_Request__e", {"RecordId__c": globex, "Rule__c": "opportunity-proposal"}, user=REP)
    assert (await wait_for_status(control, "Opportunity", globex))["Sign_Status__c"] == "Signed"
    return globex


async def _files_on(control: ControlClient, record: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if f.get("FirstPublishLocationId") == record]


async def test_a_signed_record_named_by_another_spelling_of_its_id_is_not_signed_again(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    acme = await record_id(control, "Opportunity", ACME)
    spellings = [acme[:15], acme.upper(), acme.lower(), acme[:15] + acme[15:].lower()]
    assert len({*spellings, acme}) == 5
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", acme, STAGE, user=REP)
        signed = await wait_for_status(control, "Opportunity", acme)
        await _request_then_sign_globex(control, [{"RecordId__c": s} for s in spellings])
        jobs = await settled_jobs(daemon)
        record = await control.get("Opportunity", acme, ["Sign_Transaction_Id__c", "Signed_Document_Id__c"])

    assert signed["Sign_Status__c"] == "Signed"
    assert [j.record_id for j in jobs].count(acme) == 1
    assert all(len(j.record_id) == 18 for j in jobs)
    assert record["Sign_Transaction_Id__c"] == signed["Sign_Transaction_Id__c"]
    assert record["Signed_Document_Id__c"] == signed["Signed_Document_Id__c"]
    assert len(await _files_on(control, acme)) == 1  # one ContentVersion: one contract


async def test_a_sign_request_by_the_15_character_id_is_signed_under_the_18_character_id(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    acme = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": acme[:15]}, user=REP)
        signed = await wait_for_status(control, "Opportunity", acme)
        # The record moving to the trigger stage afterwards is the same record: no second contract.
        await control.update("Opportunity", acme, STAGE, user=REP)
        await _request_then_sign_globex(control, [{"RecordId__c": acme.lower()}])
        jobs = await settled_jobs(daemon)
    assert signed["Sign_Status__c"] == "Signed"
    assert [(j.record_id, j.source) for j in jobs if j.record_id.startswith(acme[:15])] == [(acme, "event")]
    assert len(await _files_on(control, acme)) == 1


@pytest.mark.parametrize(
    "rule",
    [
        "quote-approved",  # a rule, but of another object
        "OPPORTUNITY-PROPOSAL",  # not the rule's name, only like it
        " opportunity-proposal",
        "opportunity-proposal'; DROP TABLE jobs; --",
    ],
)
async def test_a_rule_that_is_not_a_rule_of_the_records_object_is_refused_with_an_audit_event(
    settings: Settings, rules: Rules, control: ControlClient, logs: list[MutableMapping[str, Any]], rule: str
) -> None:
    settings = settings.model_copy(update={"audit_flush_s": 0.5})
    acme = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await _request_then_sign_globex(control, [{"RecordId__c": acme, "Rule__c": rule}])
        jobs = await settled_jobs(daemon)
        async with asyncio.timeout(30):
            while True:
                events = await control.query(
                    f"SELECT Event_Type__c, Detail__c, Transaction_Id__c FROM Signature_Event__c "
                    f"WHERE Opportunity__c = '{acme}'")
                if events:
                    break
                await asyncio.sleep(0.1)
        record = await control.get("Opportunity", acme, ["Sign_Status__c", "Sign_Transaction_Id__c"])

    assert acme not in [j.record_id for j in jobs]
    assert record["Sign_Status__c"] is None and record["Sign_Transaction_Id__c"] is None
    [event] = events
    assert event["Event_Type__c"] == "refused"
    assert repr(rule)[:40] in event["Detail__c"] and "not a rule for Opportunity" in event["Detail__c"]
    refusals = [e for e in logs if {"channel", "replay_id", "reason"} <= e.keys() and "Rule__c" in e["reason"]]
    assert len(refusals) == 1 and refusals[0]["log_level"] == "warning"
    assert repr(rule)[:40] in refusals[0]["reason"]
    assert not await _files_on(control, acme)
