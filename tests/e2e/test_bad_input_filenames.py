"""Bad input, file names: one record must not fail the batch it rides in.

The daemon uploads a burst's files in one sObject Collections request. Salesforce refuses a malformed
request as a whole (400, nothing applied), so one record that makes a part malformed used to fail every
record of the batch. File names are now built from an allow-list (the title stays as written), and a
batch refused as a whole is sent again record by record, so only the record at fault gets `Error`.
"""

from __future__ import annotations

import re
from typing import Any

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient

API = "/services/data/v68.0"
TRIGGER = {"StageName": "Proposal/Price Quote"}
# Renderable opportunities of the seed (line items and a primary contact), moved together.
PLAIN = ("Brandt & Söhne - Premium Support", "Initech - Onboarding Package")
ODD = "Acme Industries - API Add-on"
# DEL is not allowed in an HTTP header (RFC 9110 field-vchar): as a multipart filename it makes the
# part, and with it the whole batch request, malformed.
ODD_NAME = "Acme Launch\x7f Ölwechsel (Brüssel/Köln)"


def _burst_settings(settings: Settings) -> Settings:
    """Uploads wait for the whole burst, so the files share one collections request (no API calls spent on
    latency: a burst's first document would go alone, and the next ones in halves)."""
    return settings.model_copy(update={"batch_linger_s": 5.0, "api_latency_share": 0.0})


async def _move_together(control: ControlClient, ids: list[str]) -> None:
    """One mass edit, as a list view does: every record's CDC event comes from the same transaction."""
    await control.bulk_update("Opportunity", ids, TRIGGER, user=REP)


async def _files_of(control: ControlClient, rid: str) -> list[dict[str, Any]]:
    return await control.query(
        f"SELECT Id, Title, PathOnClient FROM ContentVersion WHERE FirstPublishLocationId = '{rid}'")


async def test_a_name_no_upload_can_carry_leaves_no_record_of_the_batch_without_its_signature(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    odd = await record_id(control, "Opportunity", ODD)
    await control.update("Opportunity", odd, {"Name": ODD_NAME}, user=REP)
    plain = [await record_id(control, "Opportunity", name) for name in PLAIN]
    async with run_daemon(_burst_settings(settings), rules) as daemon:
        await _move_together(control, [odd, *plain])
        records = {rid: await wait_for_status(control, "Opportunity", rid) for rid in [odd, *plain]}
        uploader = daemon.worker.gateway.uploader if daemon.worker else None
    assert {rid: r["Sign_Status__c"] for rid, r in records.items()} == dict.fromkeys([odd, *plain], "Signed"), records
    assert uploader is not None and uploader.items > uploader.calls, "the files did not share a request"
    (file,) = await _files_of(control, odd)
    # The title reps see stays as written; the file name keeps allow-listed characters only.
    assert re.fullmatch(r"Proposal Acme Launch Ölwechsel \(Brüssel/Köln\) \d{4}-\d\d-\d\d", file["Title"]), file
    assert re.fullmatch(r"[A-Za-z0-9 \-_.()]+\.pdf", file["PathOnClient"]), file
    assert file["PathOnClient"].startswith("Proposal Acme Launch Olwechsel (Brussel-Koln) "), file


async def test_a_batch_refused_as_a_whole_for_one_record_is_retried_record_by_record(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    # Salesforce answers a malformed batch with 400 and applies none of it. The emulator refuses every
    # upload request that carries the bad record (as a batch, then alone); its neighbours must go on.
    bad = await record_id(control, "Opportunity", ODD)
    plain = [await record_id(control, "Opportunity", name) for name in PLAIN]
    for prefix in (f"{API}/composite/sobjects", f"{API}/sobjects/ContentVersion"):
        await control.post("/_control/faults/errors", {
            "prefix": prefix, "method": "POST", "status": 400, "errorCode": "INVALID_MULTIPART_REQUEST",
            "message": "Invalid multipart request: a part could not be read", "bodyContains": bad})
    async with run_daemon(_burst_settings(settings), rules):
        await _move_together(control, [bad, *plain])
        records = {rid: await wait_for_status(control, "Opportunity", rid) for rid in [bad, *plain]}
    armed = (await control._json("GET", "/_control/faults"))["errors"]
    faults = {f["prefix"].rsplit("/", 1)[-1]: f["hits"] for f in armed}
    assert faults["sobjects"] >= 1, "the batch upload never met the refusal"
    assert faults["ContentVersion"] == 1  # the bad record, sent alone once, refused again: permanent
    assert [records[rid]["Sign_Status__c"] for rid in plain] == ["Signed", "Signed"], records
    assert records[bad]["Sign_Status__c"] == "Error"
    assert "a part could not be read" in str(records[bad]["Sign_Error__c"])
    assert await _files_of(control, bad) == []
    for rid in plain:
        assert len(await _files_of(control, rid)) == 1
