"""The chaos harness's own parts: the emulator's fault hooks it relies on, and that its verdict can fail."""

from __future__ import annotations

import pytest
from chaos_support import CONTENT_VERSION_PATH, REP, ChaosOrg, rest_client

from sfsign.salesforce.errors import SalesforceError, UncertainOutcome


async def test_row_lock_endpoint_makes_rest_writes_fail_until_released(org: ChaosOrg) -> None:
    [opp, other] = await org.create_opportunities(2)
    locked = await org.control_post("/_control/faults/row-locks", {"recordIds": [opp]})
    assert locked == {"locked": [opp]}
    async with rest_client(org) as rest:
        with pytest.raises(SalesforceError) as caught:
            await rest.update("Opportunity", opp, {"Description": "locked"})
        assert caught.value.error_code == "UNABLE_TO_LOCK_ROW" and caught.value.transient
        await rest.update("Opportunity", other, {"Description": "not locked"})  # only the chosen record
        assert (await rest.get("Opportunity", opp, ["Description"]))["Description"] is None  # reads work
        released = await org.control_call("DELETE", "/_control/faults/row-locks", {"recordIds": [opp]})
        assert released == {"locked": []}
        await rest.update("Opportunity", opp, {"Description": "released"})
        # Clearing every fault releases row locks too.
        await org.control_post("/_control/faults/row-locks", {"recordIds": [opp, other]})
        await org.control_call("DELETE", "/_control/faults")
        assert await org.control_call("GET", "/_control/faults/row-locks") == {"locked": []}
        await rest.update("Opportunity", other, {"Description": "released too"})


async def test_row_lock_endpoint_rejects_a_body_without_record_ids(org: ChaosOrg) -> None:
    with pytest.raises(RuntimeError, match="HTTP 400"):
        await org.control_post("/_control/faults/row-locks", {"recordIds": []})


async def test_hold_after_fault_applies_the_insert_and_never_answers(org: ChaosOrg) -> None:
    [opp] = await org.create_opportunities(1)
    await org.control_post("/_control/faults/errors", {
        "prefix": CONTENT_VERSION_PATH, "method": "POST", "mode": "hold_after", "count": 1})
    async with rest_client(org, http_timeout=(5.0, 2.0)) as rest:
        with pytest.raises(UncertainOutcome):
            await rest.insert_content_version(title="held", path_on_client="held.pdf", data=b"%PDF-1.7 held",
                                              first_publish_location_id=opp, transaction_id="tx-held")
        found = await rest.find_content_version("tx-held")
        assert found is not None  # the write happened although no answer came
        second = await rest.insert_content_version(title="answered", path_on_client="a.pdf", data=b"%PDF-1.7 a",
                                                   first_publish_location_id=opp, transaction_id="tx-answered")
        assert second.startswith("068")
    files = await org.control.files()
    assert sorted(f["Sign_Transaction_Id__c"] for f in files if f["Id"] not in org.baseline_files) == [
        "tx-answered", "tx-held"]


async def test_verdict_reports_a_duplicated_upload_and_a_lost_record(org: ChaosOrg) -> None:
    """The invariant check itself: it must notice two files for one transaction and a record never signed."""
    signed, never = await org.create_opportunities(2)
    await org.trigger([signed, never])
    async with rest_client(org) as rest:
        for n in range(2):
            await rest.insert_content_version(title=f"copy {n}", path_on_client=f"c{n}.pdf", data=b"%PDF-1.7 x",
                                              first_publish_location_id=signed, transaction_id="tx-dup")
        first = await rest.find_content_version("tx-dup")
    assert first is not None
    await org.control.update("Opportunity", signed, {
        "Sign_Status__c": "Signed", "Sign_Transaction_Id__c": "tx-dup",
        "Signed_Document_Id__c": first.content_document_id}, user=REP)
    verdict = await org.verify([signed, never])
    assert (verdict.lost, verdict.duplicated, verdict.signed, verdict.files) == (1, 1, 1, 2)
    assert not verdict.ok
    rows = await org.statuses([never])
    assert rows[never]["Sign_Status__c"] is None
