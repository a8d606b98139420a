"""Exactly one document per trigger does not rest on the local outbox alone: a trigger replayed or reconciled into an
outbox that no longer knows its job (a restored backup, purged rows, a fresh data directory) finds the File
by transaction id in Salesforce and signs nothing again. Real daemon, real SQLite file, emulator over HTTPS."""

from __future__ import annotations

import asyncio
import shutil

from e2e_support import REP, record_id, run_cli, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import JobState

TRIGGER = {"StageName": "Proposal/Price Quote"}


OUTBOX_FILES = ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm")
# What the write-back puts on the record: cleared, the record looks as if it never arrived.
WRITTEN_BACK = ("Sign_Status__c", "Sign_Transaction_Id__c", "Signed_Document_Id__c", "Signed_Document_Url__c",
                "Signed_At__c", "Sign_Error__c", "Sign_Document_Hash__c", "Sign_Level__c")


async def test_a_trigger_replayed_into_a_restored_outbox_finds_the_file_and_does_not_sign_again(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    first = await record_id(control, "Opportunity", "Acme Industries - Platform Renewal 2027")
    second = await record_id(control, "Opportunity", "Globex - Enterprise Rollout")
    async with run_daemon(settings, rules):
        await control.update("Opportunity", first, TRIGGER, user=REP)  # gives the channel a stored position
        await wait_for_status(control, "Opportunity", first)
    backup = settings.data_dir.parent / "backup"
    backup.mkdir()
    for name in OUTBOX_FILES:
        if (settings.data_dir / name).exists():
            shutil.copy2(settings.data_dir / name, backup / name)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", second, TRIGGER, user=REP)
        signed = await wait_for_status(control, "Opportunity", second)
    tx = signed["Sign_Transaction_Id__c"]
    # The operator restores the backup (docs/operations.md): the event of `second` is replayed into an
    # outbox that never heard of its job.
    for name in OUTBOX_FILES:
        (settings.data_dir / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, settings.data_dir / name)
    async with run_daemon(settings, rules) as daemon:
        async with asyncio.timeout(60):
            while True:
                job = await daemon.outbox.call(lambda s: s.by_transaction(tx))
                if job is not None and job.state in (JobState.DONE, JobState.ERROR, JobState.DEAD):
                    break
                await asyncio.sleep(0.1)
        audit = await daemon.outbox.call(lambda s: s.db.execute(
            "SELECT event_type, detail FROM audit WHERE transaction_id = ? ORDER BY id", (tx,)).fetchall())
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == tx]
    assert len(files) == 1, files  # signed once, whatever the outbox forgot
    assert job.state is JobState.DONE and job.sha256 is None  # nothing rendered or signed this time
    assert job.content_version_id == files[0]["Id"]
    assert [t for t, _ in audit] == ["queued", "done"]
    assert "already in Salesforce: not signed again" in audit[-1][1]
    after = await control.get("Opportunity", second, ["Sign_Transaction_Id__c", "Signed_Document_Id__c"])
    assert after["Sign_Transaction_Id__c"] == tx and after["Signed_Document_Id__c"] == signed["Signed_Document_Id__c"]


async def test_a_reconciled_trigger_on_a_fresh_data_directory_finds_the_file_and_does_not_sign_again(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """A record moved while no daemon listened is queued by reconciliation (`sfsign reconcile`), signed, and
    its write-back is lost together with the data directory (the daemon died between upload and write-back,
    and its volume went too): the record still sits in its trigger state without a transaction id, so the
    next reconciliation queues it again. The job derives the same transaction id, finds the File by it and
    signs nothing."""
    opp = await record_id(control, "Opportunity", "Globex - Enterprise Rollout")
    await control.update("Opportunity", opp, TRIGGER, user=REP)
    queued = await asyncio.to_thread(run_cli, ["reconcile"], settings)
    assert queued.returncode == 0 and "1 job(s) queued" in queued.stdout, queued.stdout + queued.stderr
    async with run_daemon(settings, rules):
        signed = await wait_for_status(control, "Opportunity", opp)
    assert signed["Sign_Status__c"] == "Signed", signed
    tx = signed["Sign_Transaction_Id__c"]
    await control.update("Opportunity", opp, dict.fromkeys(WRITTEN_BACK), user=REP)
    shutil.rmtree(settings.data_dir)
    again = await asyncio.to_thread(run_cli, ["reconcile"], settings)
    assert again.returncode == 0 and "1 job(s) queued" in again.stdout, again.stdout + again.stderr
    async with run_daemon(settings, rules) as daemon:
        record = await wait_for_status(control, "Opportunity", opp)
        [job] = await settled_jobs(daemon)
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == tx]
    assert len(files) == 1 and len([f for f in await control.files() if f.get("FirstPublishLocationId") == opp]) == 1
    assert job.transaction_id == tx and job.state is JobState.DONE and job.sha256 is None  # found, not signed
    assert record["Sign_Status__c"] == "Signed" and record["Sign_Transaction_Id__c"] == tx
    assert record["Signed_Document_Id__c"] == signed["Signed_Document_Id__c"]
