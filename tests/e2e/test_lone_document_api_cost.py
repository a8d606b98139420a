"""What a lone document costs the org, counted by the emulator as Salesforce counts it (one per REST request,
a `/composite` as one): the README's promise of 3 API calls (read, upload, write-back with its audit events),
with the File lookup by transaction id riding in the read. Real daemon, real SQLite file, emulator over HTTPS.
"""

from __future__ import annotations

import asyncio
import time

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import JobState, OutboxStore

ACME = "Acme Industries - Platform Renewal 2027"
EVENT_CHANNEL = "/event/Sign_Request__e"
DAYS = 86400.0


async def _quiet_usage(control: ControlClient, quiet_s: float = 3.0, within_s: float = 60.0) -> int:
    """The org's API usage once the daemon has made no call for `quiet_s` (start-up, flushes done)."""
    used, since = int((await control.api_usage())["used"]), time.monotonic()
    async with asyncio.timeout(within_s):
        while time.monotonic() - since < quiet_s:
            await asyncio.sleep(0.2)
            now = int((await control.api_usage())["used"])
            if now != used:
                used, since = now, time.monotonic()
    return used


async def _finished(daemon: Daemon, transaction_id: str) -> None:
    """Until the job is done and none of its audit events waits for Salesforce."""
    async with asyncio.timeout(60):
        while True:
            job = await daemon.outbox.call(lambda s: s.by_transaction(transaction_id))
            waiting = await daemon.outbox.call(OutboxStore.pending_audit)
            if job is not None and job.state is JobState.DONE and not waiting:
                return
            await asyncio.sleep(0.1)


async def test_a_lone_document_costs_exactly_three_api_calls(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        before = await _quiet_usage(control)
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        signed = await wait_for_status(control, "Opportunity", opp)
        await _finished(daemon, signed["Sign_Transaction_Id__c"])
        after = await _quiet_usage(control)
        [job] = await daemon.outbox.jobs()
        trail = await daemon.outbox.call(lambda s: s.db.execute(
            "SELECT event_type, detail, occurred_at FROM audit WHERE transaction_id = ? ORDER BY id",
            (job.transaction_id,)).fetchall())
    assert signed["Sign_Status__c"] == "Signed", signed
    # read (record + File by transaction id, one /composite), upload, write-back with the audit events
    assert after - before == 3
    assert job.pending_shown_at is None  # claimed at once: its record was never written Pending
    # The outcome event went with the write-back, naming the file the record shows; the outbox holds the same.
    document = signed["Signed_Document_Id__c"]
    assert document.startswith("069") and job.content_document_id == document
    assert signed["Signed_Document_Url__c"].endswith(f"/lightning/r/ContentDocument/{document}/view")
    events = await control.query(f"SELECT Event_Type__c, Detail__c, Occurred_At__c FROM Signature_Event__c "
                                 f"WHERE Transaction_Id__c = '{job.transaction_id}' AND Event_Type__c = 'done'")
    # (the same instant: Salesforce answers a datetime as …050+0000 where it was sent as …050Z)
    assert [(e["Detail__c"], e["Occurred_At__c"][:23]) for e in events] == [
        (f"Signed; file {document}", trail[-1][2][:23])]
    assert trail[-1][:2] == ("done", f"Signed; file {document}")


async def test_a_trigger_replayed_after_the_purge_finds_its_file_in_the_read_without_a_fourth_call(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """Exactly one document per trigger after the outbox forgot it (job rows purged and, as on a lost data
    directory, its signed-document memory gone too, so the intake cannot stop the replay): the replayed
    trigger's read finds the File by transaction id and the record as it stands, in one call; nothing is
    signed again and nothing else is read. Before, the File lookup and the record's status were two
    queries of their own: four calls with the audit events."""
    opp = await record_id(control, "Opportunity", ACME)
    quick_audit = settings.model_copy(update={"audit_flush_s": 1.0})
    async with run_daemon(quick_audit, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": opp}, user=REP)
        signed = await wait_for_status(control, "Opportunity", opp)
        tx = signed["Sign_Transaction_Id__c"]
        await _finished(daemon, tx)
        retained = (await control._json("GET", f"/_control/streaming/events?channel={EVENT_CHANNEL}"))["events"]
        original = retained[-1]["data"]
        # 31 days later the retention purge has removed the job's row (docs/operations.md).
        purged = await daemon.outbox.call(lambda s: s.purge(time.time() + 31 * DAYS, 30 * DAYS))
        assert purged.job_rows == 1 and await daemon.outbox.call(lambda s: s.by_transaction(tx)) is None
        forgotten = await daemon.outbox.call(lambda s: s.db.execute("DELETE FROM signed_documents").rowcount)
        assert forgotten == 1
        before = await _quiet_usage(control)
        # The same event again (same EventUuid), as a replay delivers it.
        await control.post("/_control/streaming/raw", {"channel": EVENT_CHANNEL, "data": original})
        await _finished(daemon, tx)
        after = await _quiet_usage(control)
        job = await daemon.outbox.call(lambda s: s.by_transaction(tx))
        audit = await daemon.outbox.call(lambda s: s.db.execute(
            "SELECT event_type, detail FROM audit WHERE transaction_id = ? ORDER BY id", (tx,)).fetchall())
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == tx]
    assert len(files) == 1, files  # signed once
    assert job is not None and job.sha256 is None and job.content_version_id == files[0]["Id"]
    assert [t for t, _ in audit][-2:] == ["queued", "done"] and "not signed again" in audit[-1][1]
    # the read (1) and the audit events (1, or 2 when the flusher passes between the two events)
    assert after - before <= 3, after - before
    record = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Transaction_Id__c"])
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Transaction_Id__c"] == tx
