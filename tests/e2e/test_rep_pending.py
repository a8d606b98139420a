"""While a job is on its way or retrying, the record says so: `Pending`, with the last transient reason
while it retries, so a rep never sees nothing for minutes. Real daemon, emulator over HTTPS with its fault
injection."""

from __future__ import annotations

import asyncio

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient

UPLOAD = "/services/data/v68.0/sobjects/ContentVersion"


async def test_a_retrying_job_shows_pending_with_its_reason_then_signed(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", "Acme Industries - Platform Renewal 2027")
    fault = await control.post("/_control/faults/errors", {
        "prefix": UPLOAD, "method": "POST", "status": 503, "errorCode": "SERVER_UNAVAILABLE",
        "message": "Server Unavailable"})
    slow = settings.model_copy(update={"retry_base_s": 0.5, "retry_cap_s": 1.0})
    async with run_daemon(slow, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        pending = await wait_for_status(control, "Opportunity", opp, ("Pending",))
        async with asyncio.timeout(60):  # the first retry's note follows the "on its way" Pending
            while not str(pending.get("Sign_Error__c") or "").startswith("retrying: "):
                await asyncio.sleep(0.1)
                pending = await control.get("Opportunity", opp, ["Sign_Status__c", "Sign_Error__c",
                                                                  "Sign_Transaction_Id__c"])
        [job] = await daemon.outbox.call(lambda s: s.jobs())
        await control._json("DELETE", f"/_control/faults/{fault['id']}")
        signed = await wait_for_status(control, "Opportunity", opp, ("Signed",))
    assert pending["Sign_Status__c"] == "Pending" and pending["Sign_Transaction_Id__c"] == job.transaction_id
    assert "Server Unavailable" in pending["Sign_Error__c"] or "SERVER_UNAVAILABLE" in pending["Sign_Error__c"]
    assert signed["Sign_Transaction_Id__c"] == job.transaction_id and signed["Sign_Error__c"] is None
    assert len([f for f in await control.files() if f["Sign_Transaction_Id__c"] == job.transaction_id]) == 1
