"""Chaos: a long outage, with the retry window scaled down to seconds (SFSIGN_RETRY_FOR_H).

A job whose file is already uploaded when Salesforce stops taking write-backs must never be given up:
the file is in Salesforce, only its record is missing it. It keeps retrying and finishes once the outage
ends. A job that fails for the whole window before it uploaded anything goes `dead`, and both its record
and `sfsign status` say what a person must do; once they do it (`sfsign retry`), it is signed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from chaos_support import REST_PREFIX, ChaosOrg, ChaosResult, _finish, _until

WINDOW_S = 4.0  # the retry window, scaled down from 72 h
OUTAGE_ENV = {
    "SFSIGN_RETRY_FOR_H": str(WINDOW_S / 3600),
    "SFSIGN_RETRY_BASE_S": "0.2",
    "SFSIGN_RETRY_CAP_S": "1",
}


def _row(org: ChaosOrg, record_id: str) -> dict[str, Any] | None:
    return next((r for r in org.outbox_rows() if r["record_id"] == record_id), None)


async def _cli(org: ChaosOrg, *args: str) -> str:
    """`sfsign ARGS` as an operator runs it beside the daemon (same data directory)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfsign.cli", *args, env=org.daemon_env(**OUTAGE_ENV), cwd=org.work,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    sys.stdout.write(out.decode())  # into pytest's capture, where the secret scan reads it
    sys.stderr.write(err.decode())
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_long_outage_uploaded_job_finishes_its_write_back_and_a_job_past_the_window_says_what_to_do(
    org: ChaosOrg, rng: random.Random
) -> None:
    uploaded, failing = await org.create_opportunities(2, tag="Outage")
    result = ChaosResult("long outage", 2)
    started = time.monotonic()
    daemon = await org.start_daemon(env=OUTAGE_ENV)

    # The write-back route goes down: the first job uploads its file, then cannot write its record. Only
    # composites that update records (PATCH): the fetch step reads through /composite too.
    await org.control_post("/_control/faults/errors", {
        "prefix": f"{REST_PREFIX}composite", "method": "POST", "status": 503, "errorCode": "SERVER_UNAVAILABLE",
        "bodyContains": '"PATCH"'})
    await org.trigger([uploaded])

    async def write_back_failing() -> bool:
        row = await asyncio.to_thread(_row, org, uploaded)
        return row is not None and row["state"] == "uploaded" and row["attempts"] >= 1

    await _until(write_back_failing, 90.0, "the uploaded job to fail its write-back")

    # Queries go down too; record updates still get through, so a job past its window can say so.
    await org.control_post("/_control/faults/errors", {
        "prefix": f"{REST_PREFIX}query", "status": 503, "errorCode": "SERVER_UNAVAILABLE"})
    await org.trigger([failing])

    async def dead() -> bool:
        row = await asyncio.to_thread(_row, org, failing)
        return row is not None and row["state"] == "dead"

    await _until(dead, 90.0, "the job that never fetched its record to go dead")
    tx = (await asyncio.to_thread(_row, org, failing) or {})["transaction_id"]
    record = (await org.statuses([failing]))[failing]
    assert record["Sign_Status__c"] == "Error" and record["Sign_Transaction_Id__c"] == tx, record
    assert "Gave up after" in record["Sign_Error__c"] and f"sfsign retry {tx}" in record["Sign_Error__c"], record

    async def uploaded_past_its_window() -> bool:
        row = await asyncio.to_thread(_row, org, uploaded)
        assert row is not None and row["state"] == "uploaded", row  # never dead, never anything else
        return row["failing_since"] is not None and row["updated_at"] > row["failing_since"] + WINDOW_S

    await _until(uploaded_past_its_window, 90.0, "the uploaded job to fail again after its window")

    status = json.loads(await _cli(org, "status", "--json"))
    assert status["dead"] == 1 and status["counts"]["uploaded"] == 1, status
    [dead_job] = status["dead_jobs"]
    assert dead_job["transaction_id"] == tx and dead_job["record_id"] == failing
    assert f"sfsign retry {tx}" in dead_job["action"] and "Gave up after" in dead_job["reason"], dead_job
    result.faults["503 on write-backs and queries"] = 1

    # Salesforce is back: the uploaded job finishes with the file it uploaded before the outage.
    await org.control_call("DELETE", "/_control/faults")
    if await org.wait_settled([uploaded], daemon, within_s=90.0) != 1:
        raise AssertionError(f"the uploaded job did not finish after the outage: {_row(org, uploaded)}")
    # The person acts: the dead job is retried and signed.
    assert "re-queued" in await _cli(org, "retry", tx)
    await _finish(org, result, [uploaded, failing], daemon, started, settle_s=90.0)
    print(result.row(), result.notes)
    result.assert_invariant()
