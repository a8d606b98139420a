"""The already-signed rule outlives the retention purge: the job rows of a signed record go after
`job_retention_days` (they name the requester), but the minimal memory of its current document stays, so
moving the stage away and back still signs nothing, and a Re-issue still signs a new version that
supersedes it. Against the emulator over HTTPS, with the real daemon, a real outbox file and the real
retention function (run with a `now` past the retention period, between two daemon runs)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.ops.retention import DAY_S, purge
from sfsign.outbox import OutboxStore
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
TRIGGER = {"StageName": "Proposal/Price Quote"}
AWAY = {"StageName": "Prospecting"}


async def _events(rest: SalesforceRest, opp: str, wanted: str, count: int = 1,
                  within_s: float = 60.0) -> list[dict[str, Any]]:
    """The record's Signature_Event__c rows (oldest first), once `count` of type `wanted` are there."""
    async with asyncio.timeout(within_s):
        while True:
            events = await rest.query(
                "SELECT Name, Event_Type__c, Transaction_Id__c, Actor__c, Detail__c FROM Signature_Event__c "
                f"WHERE Opportunity__c = '{opp}' ORDER BY Name"
            )
            if len([e for e in events if e["Event_Type__c"] == wanted]) >= count:
                return events
            await asyncio.sleep(0.1)


async def _files_of(control: ControlClient, opp: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if f.get("FirstPublishLocationId") == opp]


def _purge_everything_finished(settings: Settings) -> int:
    """The retention purge as the daemon runs it, on a day after every finished job has expired."""
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        later = time.time() + (settings.job_retention_days + 1) * DAY_S
        result = purge(store, settings, now=later)
        assert store.jobs() == [], "every finished job row is purged"
        return result.rows.job_rows
    finally:
        store.close()


async def _signed_once(settings: Settings, rules: Rules, control: ControlClient, opp: str) -> dict[str, Any]:
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        first = await wait_for_status(control, "Opportunity", opp)
    assert first["Sign_Status__c"] == "Signed", first
    return first


async def test_after_the_purge_a_stage_moved_away_and_back_signs_no_second_document(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    first = await _signed_once(quick, rules, control, opp)
    tx = first["Sign_Transaction_Id__c"]
    assert await asyncio.to_thread(_purge_everything_finished, quick) == 1
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", opp, AWAY, user=REP)
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        events = await _events(rest, opp, "already_signed")
        record = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c", "Sign_Error__c"])
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    assert jobs == []  # no job, so nothing can be signed
    assert [f["Sign_Transaction_Id__c"] for f in await _files_of(control, opp)] == [tx]
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Transaction_Id__c"] == tx
    assert f"Already signed on {first['Signed_At__c'][:10]}" in record["Sign_Error__c"]
    assert tx in record["Sign_Error__c"] and "Re-issue" in record["Sign_Error__c"]
    [told] = [e for e in events if e["Event_Type__c"] == "already_signed"]
    assert told["Transaction_Id__c"] == tx and told["Detail__c"].startswith("cdc ")


async def test_after_the_purge_reissue_signs_a_new_version_that_supersedes_the_remembered_one(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    first = await _signed_once(quick, rules, control, opp)
    old_tx = first["Sign_Transaction_Id__c"]
    await asyncio.to_thread(_purge_everything_finished, quick)
    async with run_daemon(quick, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Action__c": "Reissue",
                                                  "Reason__c": "Customer changed the billing address"}, user=REP)
        async with asyncio.timeout(90):
            while True:
                second = await wait_for_status(control, "Opportunity", opp)
                if second["Sign_Transaction_Id__c"] != old_tx:
                    break
                await asyncio.sleep(0.1)
        new_tx = second["Sign_Transaction_Id__c"]
        events = await _events(rest, opp, "superseded")
        # The new version is now the one remembered: a stage moved away and back is told about it.
        await control.update("Opportunity", opp, AWAY, user=REP)
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        events = await _events(rest, opp, "already_signed")
        record = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c", "Sign_Error__c"])
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    assert second["Sign_Status__c"] == "Signed" and second["Signed_Document_Id__c"] != first["Signed_Document_Id__c"]
    assert sorted(f["Sign_Transaction_Id__c"] for f in await _files_of(control, opp)) == sorted([old_tx, new_tx])
    assert [j.transaction_id for j in jobs] == [new_tx]  # the stage change made no job
    [superseded] = [e for e in events if e["Event_Type__c"] == "superseded"]
    assert superseded["Transaction_Id__c"] == old_tx
    assert new_tx in superseded["Detail__c"] and "Customer changed the billing address" in superseded["Detail__c"]
    [queued] = [e for e in events if e["Event_Type__c"] == "queued" and e["Transaction_Id__c"] == new_tx]
    assert f"supersedes transaction {old_tx}" in queued["Detail__c"]
    [told] = [e for e in events if e["Event_Type__c"] == "already_signed"]
    assert told["Transaction_Id__c"] == new_tx
    assert record["Sign_Transaction_Id__c"] == new_tx and new_tx in record["Sign_Error__c"]


async def test_on_a_fresh_data_directory_a_new_trigger_for_a_signed_record_signs_nothing(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    """The outbox is gone (a new data directory): the record's own `Signed` and transaction id, read at
    fetch, decide it, since the object has one rule. A Re-issue still signs a new version, and the signature
    the record showed is superseded in its audit trail."""
    assert len(rules.for_object("Opportunity")) == 1
    opp = await record_id(control, "Opportunity", ACME)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    first = await _signed_once(quick, rules, control, opp)
    tx = first["Sign_Transaction_Id__c"]
    fresh = quick.model_copy(update={"data_dir": quick.data_dir.parent / "fresh-data"})
    async with run_daemon(fresh, rules) as daemon:
        await control.update("Opportunity", opp, AWAY, user=REP)
        await control.update("Opportunity", opp, TRIGGER, user=REP)
        events = await _events(rest, opp, "already_signed")
        record = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c", "Sign_Error__c"])
        [job] = await daemon.outbox.call(lambda s: s.jobs())
        await control.publish("Sign_Request__e", {"RecordId__c": opp, "Action__c": "Reissue",
                                                  "Reason__c": "Customer changed the billing address"}, user=REP)
        async with asyncio.timeout(90):
            while True:
                second = await wait_for_status(control, "Opportunity", opp)
                if second["Sign_Transaction_Id__c"] not in (tx, job.transaction_id):
                    break
                await asyncio.sleep(0.1)
        trail = await _events(rest, opp, "superseded")
    assert job.state.value == "error" and job.error_code == "ALREADY_SIGNED" and job.sha256 is None
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Transaction_Id__c"] == tx
    assert f"Already signed on {first['Signed_At__c'][:10]}" in record["Sign_Error__c"]
    assert tx in record["Sign_Error__c"] and "Re-issue" in record["Sign_Error__c"]
    [told] = [e for e in events if e["Event_Type__c"] == "already_signed"]
    assert told["Transaction_Id__c"] == tx and told["Actor__c"].startswith("005")
    assert second["Sign_Status__c"] == "Signed"
    files = sorted(f["Sign_Transaction_Id__c"] for f in await _files_of(control, opp))
    assert files == sorted([tx, second["Sign_Transaction_Id__c"]])  # the stage change signed nothing
    # The Re-issue superseded the signature the record showed, though this outbox never knew it.
    [superseded] = [e for e in trail if e["Event_Type__c"] == "superseded"]
    assert superseded["Transaction_Id__c"] == tx and second["Sign_Transaction_Id__c"] in superseded["Detail__c"]
    assert "Customer changed the billing address" in superseded["Detail__c"]
