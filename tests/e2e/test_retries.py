"""Failure classes against the emulator's fault injection: transient failures are retried, permanent ones
are written on the record and wait for `sfsign retry`, and `sfsign reconcile` finds what events missed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from e2e_support import REP, record_id, run_cli, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import Job, JobState, OutboxStore

ACME = "Acme Industries - Platform Renewal 2027"
OPP_PATH = "/services/data/v68.0/sobjects/Opportunity/"


def _cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    return run_cli(args, settings)


async def _fault(control: ControlClient, **body: object) -> str:
    return str((await control.post("/_control/faults/errors", body))["id"])


async def test_row_lock_on_the_write_back_is_retried_and_the_record_is_signed(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    await _fault(control, prefix=OPP_PATH + opp, method="PATCH", status=400, errorCode="UNABLE_TO_LOCK_ROW",
                 message=f"unable to obtain exclusive access to this record or 1 records: {opp}", count=2)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        [job] = await settled_jobs(daemon)
    assert record["Sign_Status__c"] == "Signed" and job.state is JobState.DONE
    assert len([f for f in await control.files() if f["Sign_Transaction_Id__c"] == job.transaction_id]) == 1


async def test_validation_rule_failure_shows_on_the_record_and_sfsign_retry_finishes_the_job(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    message = "Signed proposals need a close date in the future"
    # The rule refuses the record's write-back once (a lone document is never written Pending first); the
    # Error it then shows is the next update, which the fixed rule lets through.
    await _fault(control, prefix=OPP_PATH + opp, method="PATCH", status=400,
                 errorCode="FIELD_CUSTOM_VALIDATION_EXCEPTION", message=message, count=1)
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        failed = await wait_for_status(control, "Opportunity", opp)
        [job] = await daemon.outbox.call(lambda s: s.jobs())
        assert failed["Sign_Status__c"] == "Error" and message in str(failed["Sign_Error__c"])
        assert job.state is JobState.ERROR and job.error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        # The admin fixes the rule; ops re-queue the job while the daemon runs.
        result = await asyncio.to_thread(_cli, ["retry", "--all-errors"], settings)
        assert result.returncode == 0, result.stderr
        assert f"re-queued {job.transaction_id}" in result.stdout and "at step uploaded" in result.stdout
        signed = await wait_for_status(control, "Opportunity", opp, ("Signed",))
    assert signed["Sign_Transaction_Id__c"] == job.transaction_id
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == job.transaction_id]
    assert len(files) == 1  # the document signed before the failure, not a second one


async def test_request_limit_exceeded_waits_long_and_never_logs_in_again(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        # Once the start check's own queries are through: the fetch step's call carries two queries (the
        # record, a File by transaction id), each refused: 3 tries.
        await _fault(control, prefix="/services/data/v68.0/query", status=403, errorCode="REQUEST_LIMIT_EXCEEDED",
                     message="TotalRequests Limit exceeded.", count=6)
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        async with asyncio.timeout(30):
            while True:
                jobs = await daemon.outbox.call(lambda s: s.jobs())
                if jobs and jobs[0].attempts >= 1:
                    break
                await asyncio.sleep(0.05)
        logins = daemon.authenticator.logins if daemon.authenticator else -1
    [job] = jobs
    assert logins == 1 and job.error_code == "REQUEST_LIMIT_EXCEEDED" and job.state is JobState.QUEUED
    assert job.next_attempt_at - time.time() > 300  # the long backoff (15 min ± jitter), not seconds


async def test_sfsign_reconcile_queues_records_that_moved_while_no_daemon_listened(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opps = [await record_id(control, "Opportunity", n)
            for n in (ACME, "Globex - Enterprise Rollout")]
    for opp in opps:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
    result = await asyncio.to_thread(_cli, ["reconcile"], settings)
    assert result.returncode == 0, result.stderr
    assert "2 job(s) queued" in result.stdout
    again = await asyncio.to_thread(_cli, ["reconcile", "--since", "2020-01-01"], settings)
    assert "0 job(s) queued" in again.stdout  # already queued: no duplicates
    async with run_daemon(settings, rules):
        for opp in opps:
            assert (await wait_for_status(control, "Opportunity", opp))["Sign_Status__c"] == "Signed"


async def test_sigterm_mid_upload_parks_the_job_and_the_next_start_uploads_exactly_once(
    settings: Settings, rules: Rules, control: ControlClient, tmp_path: Path
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    await control.post("/_control/faults/latency", {"prefix": "/services/data/v68.0/sobjects/ContentVersion",
                                                     "ms": 3000, "method": "POST"})
    quick = settings.model_copy(update={"shutdown_grace_s": 0.2})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        async with asyncio.timeout(30):
            while True:
                jobs = await daemon.outbox.call(lambda s: s.jobs())
                if jobs and jobs[0].upload_uncertain:
                    break
                await asyncio.sleep(0.02)
    [parked] = await _jobs(settings)
    assert parked.state is JobState.SIGNED and parked.upload_uncertain == 1
    async with asyncio.timeout(60):  # the interrupted upload still lands in the org (after its 3 s latency)
        while not [f for f in await control.files() if f["Sign_Transaction_Id__c"] == parked.transaction_id]:  # noqa: ASYNC110 - the org is elsewhere
            await asyncio.sleep(0.1)
    async with run_daemon(settings, rules):
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed"
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == parked.transaction_id]
    assert len(files) == 1, files


async def _jobs(settings: Settings) -> list[Job]:
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        return store.jobs()
    finally:
        store.close()


async def test_third_failed_attempt_raises_the_alert_metric_and_the_job_still_completes(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    fast = settings.model_copy(update={"retry_base_s": 0.05, "retry_cap_s": 0.2})
    async with run_daemon(fast, rules) as daemon:
        # Once the start check's own queries are through: 3 in-step tries per attempt, each a /composite with
        # two queries (the record, a File by transaction id) that both fail: 18 failures = 3 failed attempts.
        await _fault(control, prefix="/services/data/v68.0/query", status=503, errorCode="SERVER_UNAVAILABLE",
                     message="Server Unavailable", count=18)
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        alerts = daemon.metrics.registry.get_sample_value(
            "sfsign_job_failure_alerts_total", {"error_code": "SERVER_UNAVAILABLE"})
        retries = daemon.metrics.registry.get_sample_value("sfsign_retries_total", {"error_code": "SERVER_UNAVAILABLE"})
        signed = daemon.metrics.registry.get_sample_value("sfsign_documents_signed_total",
                                                          {"rule": "opportunity-proposal"})
    assert record["Sign_Status__c"] == "Signed"
    assert retries == 3 and alerts == 1 and signed == 1
