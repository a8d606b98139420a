"""Every line item, every time: records whose line items Salesforce pages (a child subquery longer than
one batch comes with its own `nextRecordsUrl`) are signed with every line, in order, and with totals
equal to the record's; a child batch that cannot be read makes the job retry, never sign a shorter
document."""

from __future__ import annotations

import asyncio
import re
import subprocess
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from e2e_support import REP, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.documents.render import format_money
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import Job, JobState
from sfsign.salesforce.record_parsing import fetch_records
from sfsign.salesforce.records import chunk_ids, opportunity_select, quote_select
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
QUERY_MORE = "/services/data/v68.0/query/01g"  # locators only: the query itself is /query/?q=...
MARKER = re.compile(r"LN\d{5}")
MONEY = re.compile(r"\u2212?€[\d,]+\.\d{2}")

pytestmark = pytest.mark.skipif(subprocess.run(["which", "pdftotext"], capture_output=True).returncode != 0,
                                reason="pdftotext (poppler-utils) is needed to read the signed PDF")


def _marker(n: int) -> str:
    return f"LN{n:05d}"


async def _acme(control: ControlClient) -> dict[str, Any]:
    [opp] = await control.query(f"SELECT Id, AccountId, Pricebook2Id FROM Opportunity WHERE Name = '{ACME}'")
    [role] = await control.query(
        f"SELECT ContactId FROM OpportunityContactRole WHERE OpportunityId = '{opp['Id']}' AND IsPrimary = true")
    entries = await control.query("SELECT Id FROM PricebookEntry WHERE CurrencyIsoCode = 'EUR' ORDER BY Id")
    return {"account": opp["AccountId"], "pricebook": opp["Pricebook2Id"], "contact": role["ContactId"],
            "entries": [e["Id"] for e in entries]}


def _lines(parent_field: str, parent_id: str, count: int, entries: list[str]) -> list[dict[str, Any]]:
    """`count` lines, inserted last first: only the subquery's ORDER BY SortOrder puts them in order."""
    lines = []
    for n in reversed(range(1, count + 1)):
        line: dict[str, Any] = {parent_field: parent_id, "PricebookEntryId": entries[n % len(entries)],
                                "Quantity": 1 + n % 4, "UnitPrice": 10 + (n % 13) * 2.5, "SortOrder": n,
                                "Description": _marker(n)}
        if n % 5 == 0:
            line["Discount"] = 10.0
        lines.append(line)
    return lines


async def _opportunity_with_lines(control: ControlClient, acme: dict[str, Any], count: int) -> str:
    opp = await control.create("Opportunity", {
        "Name": f"Acme - Fleet Rollout ({count} lines)", "AccountId": acme["account"], "StageName": "Qualification",
        "CloseDate": "2027-03-31", "CurrencyIsoCode": "EUR", "Pricebook2Id": acme["pricebook"]}, user=REP)
    await control.create("OpportunityContactRole", {"OpportunityId": opp, "ContactId": acme["contact"],
                                                    "Role": "Decision Maker", "IsPrimary": True}, user=REP)
    await control.bulk_create("OpportunityLineItem", _lines("OpportunityId", opp, count, acme["entries"]), user=REP)
    return opp


async def _quote_with_lines(control: ControlClient, acme: dict[str, Any], opp: str, count: int) -> str:
    quote = await control.create("Quote", {
        "Name": f"Acme - Fleet Rollout Quote ({count} lines)", "OpportunityId": opp, "Status": "Draft",
        "ContactId": acme["contact"], "Pricebook2Id": acme["pricebook"],
        "BillingName": "Acme Industries", "BillingCity": "Stuttgart", "BillingCountry": "Germany"}, user=REP)
    await control.bulk_create("QuoteLineItem", _lines("QuoteId", quote, count, acme["entries"]), user=REP)
    return quote


async def _assert_paged_by_the_org(rest: SalesforceRest, sobject: str, record: str, relationship: str) -> None:
    """The org answers the daemon's own query with the lines paged (else this test would prove nothing)."""
    select = opportunity_select() if sobject == "Opportunity" else quote_select()
    url = rest.subrequest_url("query/?" + urlencode({"q": f"{select} WHERE Id = '{record}'"}))
    [answer] = await rest.composite([{"method": "GET", "url": url, "referenceId": "q"}], all_or_none=False,
                                    write=False)
    lines = answer.body["records"][0][relationship]
    assert lines["done"] is False and len(lines["records"]) == 200 and lines["nextRecordsUrl"]


async def _signed_text(rest: SalesforceRest, control: ControlClient, job: Job) -> str:
    [version] = [f for f in await control.files()
                 if f["Sign_Transaction_Id__c"] == job.transaction_id and f["IsLatest"]]
    pdf = await rest.download_version_data(version["Id"])
    extracted = await asyncio.to_thread(subprocess.run, ["pdftotext", "-", "-"], input=pdf, capture_output=True,
                                        check=True)
    return extracted.stdout.decode("utf-8")


def _assert_every_line_in_order(text: str, count: int) -> None:
    """Each line's description is its marker: every one in the signed PDF, once, in SortOrder."""
    assert MARKER.findall(text) == [_marker(n) for n in range(1, count + 1)]


def _printed_total(text: str) -> str:
    """The grand total of the totals block (subtotal, discount, tax, total: the last amount of the block)."""
    block = text[text.rindex("Total (EUR)"):text.index("Terms and conditions")]
    return MONEY.findall(block)[-1]


async def test_a_quote_with_1000_lines_and_an_opportunity_with_2500_are_signed_with_every_line(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    acme = await _acme(control)
    opp = await _opportunity_with_lines(control, acme, 2500)
    quote = await _quote_with_lines(control, acme, opp, 1000)
    await _assert_paged_by_the_org(rest, "Opportunity", opp, "OpportunityLineItems")
    await _assert_paged_by_the_org(rest, "Quote", quote, "QuoteLineItems")
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        signed_opp = await wait_for_status(control, "Opportunity", opp, within_s=240)
        signed_quote = await wait_for_status(control, "Quote", quote, within_s=240)
        jobs = {j.record_id: j for j in await settled_jobs(daemon)}
    assert signed_opp["Sign_Status__c"] == signed_quote["Sign_Status__c"] == "Signed", (signed_opp, signed_quote)
    opp_values = await control.get("Opportunity", opp, ["Amount"])
    quote_values = await control.get("Quote", quote, ["GrandTotal"])

    proposal = await _signed_text(rest, control, jobs[opp])
    _assert_every_line_in_order(proposal, 2500)
    # The proposal's total is the sum of the lines it printed; the org's Amount is the sum of all lines.
    assert _printed_total(proposal) == format_money(Decimal(str(opp_values["Amount"])), "EUR")

    offer = await _signed_text(rest, control, jobs[quote])
    _assert_every_line_in_order(offer, 1000)
    assert _printed_total(offer) == format_money(Decimal(str(quote_values["GrandTotal"])), "EUR")


async def test_a_line_batch_that_cannot_be_read_makes_the_job_retry_and_the_document_is_complete(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    acme = await _acme(control)
    opp = await _opportunity_with_lines(control, acme, 3)
    quote = await _quote_with_lines(control, acme, opp, 450)
    await _assert_paged_by_the_org(rest, "Quote", quote, "QuoteLineItems")
    # Three in-step tries per attempt: the whole first attempt of the fetch step fails at a line batch.
    fault = await control.post("/_control/faults/errors", {
        "prefix": QUERY_MORE, "method": "GET", "status": 503, "errorCode": "SERVER_UNAVAILABLE",
        "message": "Server Unavailable", "count": 3})
    fast = settings.model_copy(update={"retry_base_s": 0.05, "retry_cap_s": 0.2})
    async with run_daemon(fast, rules) as daemon:
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        record = await wait_for_status(control, "Quote", quote, within_s=120)
        [job] = await settled_jobs(daemon)
        retries = daemon.metrics.registry.get_sample_value("sfsign_retries_total",
                                                           {"error_code": "SERVER_UNAVAILABLE"})
        signed = daemon.metrics.registry.get_sample_value("sfsign_documents_signed_total",
                                                          {"rule": "quote-approved"})
    hits = {f["id"]: f["hits"] for f in (await control._json("GET", "/_control/faults"))["errors"]}
    assert record["Sign_Status__c"] == "Signed" and job.state is JobState.DONE
    assert hits[fault["id"]] == 3 and job.attempts == 1 and retries == 1 and signed == 1
    _assert_every_line_in_order(await _signed_text(rest, control, job), 450)
    files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == job.transaction_id]
    assert len(files) == 1  # one document, signed once, from the complete record


async def test_a_batch_fetch_reads_the_line_batches_of_every_record_in_it(
    control: ControlClient, rest: SalesforceRest
) -> None:
    """The worker's batched fetch: 205 quotes are more than one query holds, so their queries go in one
    /composite call, and the paged lines of the quotes in each query are read with queryMore."""
    acme = await _acme(control)
    opp = await _opportunity_with_lines(control, acme, 1)
    quotes = await control.bulk_create("Quote", [
        {"Name": f"Acme - Batch {n:03d}", "OpportunityId": opp, "Status": "Draft", "ContactId": acme["contact"],
         "Pricebook2Id": acme["pricebook"]} for n in range(205)], user=REP)
    counts = {quotes[0]: 450, quotes[150]: 201, quotes[204]: 300, quotes[7]: 3}
    for quote, count in counts.items():
        await control.bulk_create("QuoteLineItem", _lines("QuoteId", quote, count, acme["entries"]), user=REP)
    assert len(chunk_ids(quote_select(), quotes)) > 1  # several queries: the /composite path
    records = await fetch_records(rest, "Quote", quotes)
    assert len(records) == 205
    for quote, count in counts.items():
        assert [line.description for line in records[quote].lines] == [_marker(n) for n in range(1, count + 1)]
    assert all(not records[q].lines for q in quotes if q not in counts)
