"""Record models and their SOQL, with a fake querier standing in for SalesforceRest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from sfsign.salesforce.record_parsing import fetch_records, parse_opportunity
from sfsign.salesforce.records import (
    OpportunityRecord,
    QuoteRecord,
    RecordParseError,
    chunk_ids,
    find_records_in_state,
    opportunity_select,
)

OPP = "006000000000001AAA"


def attrs(kind: str, record_id: str = "x") -> dict[str, str]:
    return {"type": kind, "url": f"/services/data/v68.0/sobjects/{kind}/{record_id}"}


def opportunity_row(record_id: str = OPP, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "attributes": attrs("Opportunity", record_id), "Id": record_id, "Name": "Acme — 500 widgets",
        "StageName": "Proposal/Price Quote", "Amount": Decimal("12500.50"), "CloseDate": "2026-12-31",
        "CurrencyIsoCode": "EUR", "Description": None, "Sign_Transaction_Id__c": None, "Sign_Status__c": None,
        "Account": {"attributes": attrs("Account"), "Name": "Acme GmbH", "BillingStreet": "Hauptstr. 1",
                    "BillingCity": "Berlin", "BillingPostalCode": "10115", "BillingState": None,
                    "BillingCountry": "Germany", "Phone": "+49 30 1234"},
        "Owner": {"attributes": attrs("User"), "Name": "Rita Rep", "Email": "rita@example.com", "Title": "AE"},
        "OpportunityLineItems": {"totalSize": 2, "done": True, "records": [
            {"attributes": attrs("OpportunityLineItem"), "Id": "00k000000000001AAA", "Name": "Widget",
             "ProductCode": "W-1", "Product2": {"attributes": attrs("Product2"), "Name": "Widget",
                                                "ProductCode": "W-1"},
             "Description": "Blue", "Quantity": 500, "UnitPrice": 25.001, "ListPrice": 30, "Discount": 10,
             "TotalPrice": Decimal("11250.45"), "SortOrder": 1},
            {"attributes": attrs("OpportunityLineItem"), "Id": "00k000000000002AAA", "Name": None,
             "ProductCode": None, "Product2": {"attributes": attrs("Product2"), "Name": "Setup",
                                               "ProductCode": "S-1"},
             "Description": None, "Quantity": 1, "UnitPrice": 1250.05, "ListPrice": None, "Discount": None,
             "TotalPrice": 1250.05, "SortOrder": None},
        ]},
        "OpportunityContactRoles": {"totalSize": 1, "done": True, "records": [
            {"attributes": attrs("OpportunityContactRole"), "Role": "Decision Maker",
             "Contact": {"attributes": attrs("Contact"), "Name": "Dana Buyer", "Title": "CFO",
                         "Email": "dana@acme.example", "Phone": None}}]},
    }
    row.update(overrides)
    return row


def quote_row(record_id: str = "0Q0000000000001AAA") -> dict[str, Any]:
    return {
        "attributes": attrs("Quote", record_id), "Id": record_id, "Name": "Q for Acme", "QuoteNumber": "00000001",
        "Status": "Approved", "ExpirationDate": "2027-01-15", "CurrencyIsoCode": "USD", "Description": "d",
        "Subtotal": 1000, "Discount": 5, "TotalPrice": 950, "Tax": 47.5, "ShippingHandling": None,
        "GrandTotal": 997.5, "Email": "q@example.com", "Phone": None, "BillingName": "Acme Billing",
        "BillingStreet": "1 Main St", "BillingCity": "Springfield", "BillingPostalCode": "12345",
        "BillingState": "IL", "BillingCountry": "USA", "Sign_Transaction_Id__c": "tx-1", "Sign_Status__c": "Signed",
        "OpportunityId": OPP,
        "Opportunity": {"attributes": attrs("Opportunity"), "Name": "Acme deal",
                        "Owner": {"attributes": attrs("User"), "Name": "Rita Rep", "Email": "rita@example.com",
                                  "Title": None}},
        "Account": None,
        "Contact": {"attributes": attrs("Contact"), "Name": "Dana Buyer", "Title": None, "Email": None,
                    "Phone": "555"},
        "QuoteLineItems": {"totalSize": 1, "done": True, "records": [
            {"attributes": attrs("QuoteLineItem"), "Id": "0QL000000000001AAA", "LineNumber": "00000001",
             "Product2": {"attributes": attrs("Product2"), "Name": "Widget", "ProductCode": "W-1"},
             "Description": None, "Quantity": 2.0, "UnitPrice": 500, "ListPrice": 500, "Discount": 5,
             "TotalPrice": 950, "SortOrder": 1}]},
    }


class FakeQuerier:
    def __init__(self, rows_for: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.queries: list[str] = []
        self.rows_for: Callable[[str], list[dict[str, Any]]] = rows_for or (lambda soql: [])

        self.batches: list[int] = []  # queries per query_many call (one API call each in the real client)

    async def query(self, soql: str) -> list[dict[str, Any]]:
        self.queries.append(soql)
        return list(self.rows_for(soql))

    async def query_many(self, soqls: Sequence[str]) -> list[list[dict[str, Any]]]:
        self.batches.append(len(soqls))
        return [await self.query(s) for s in soqls]


def test_parse_opportunity_with_parents_lines_and_primary_contact() -> None:
    record = parse_opportunity(opportunity_row())
    assert record.amount == Decimal("12500.50") and record.close_date == date(2026, 12, 31)
    assert record.currency == "EUR" and record.stage == "Proposal/Price Quote"
    assert record.account is not None and record.account.billing_address.city == "Berlin"
    assert record.owner is not None and record.owner.email == "rita@example.com"
    assert record.primary_contact is not None
    assert (record.primary_contact.name, record.primary_contact.role) == ("Dana Buyer", "Decision Maker")
    first, second = record.lines
    assert (first.name, first.product_code, first.quantity) == ("Widget", "W-1", Decimal(500))
    assert first.unit_price == Decimal("25.001") and first.discount_percent == Decimal(10)
    assert (second.name, second.product_code, second.sort_order) == ("Setup", "S-1", None)
    assert second.total_price == Decimal("1250.05")


def test_parse_opportunity_with_null_parents_and_null_subqueries() -> None:
    record = parse_opportunity(opportunity_row(Account=None, Owner=None, OpportunityLineItems=None,
                                               OpportunityContactRoles=None, Amount=None, CloseDate=None))
    assert (record.account, record.owner, record.primary_contact, record.lines, record.amount) == (
        None, None, None, [], None)


@pytest.mark.parametrize("override", [{"Amount": "lots"}, {"Account": "Acme"}, {"OpportunityLineItems": [1]},
                                      {"CloseDate": 20261231}, {"Id": None}, {"Amount": True}])
def test_wrong_shapes_raise_record_parse_error(override: dict[str, Any]) -> None:
    with pytest.raises(RecordParseError):
        parse_opportunity(opportunity_row(**override))


async def test_fetch_records_uses_one_query_with_id_in_with_fake_querier() -> None:
    ids = [OPP, "006000000000002AAA", OPP]
    querier = FakeQuerier(lambda soql: [opportunity_row(OPP), opportunity_row("006000000000002AAA")])
    records = await fetch_records(querier, "Opportunity", ids)
    assert len(querier.queries) == 1
    soql = querier.queries[0]
    assert soql.startswith("SELECT Id, Name, StageName, Amount, CloseDate, CurrencyIsoCode, Description,")
    assert soql.endswith(f"FROM Opportunity WHERE Id IN ('{OPP}','006000000000002AAA')")
    assert "FROM OpportunityContactRoles WHERE IsPrimary = true LIMIT 1)" in soql
    assert "FROM OpportunityLineItems ORDER BY SortOrder, Name)" in soql
    assert set(records) == {OPP, "006000000000002AAA"}
    assert all(isinstance(r, OpportunityRecord) for r in records.values())


async def test_fetch_records_chunks_by_200_ids_with_fake_querier() -> None:
    ids = [f"006{n:012d}AAA" for n in range(450)]
    querier = FakeQuerier()
    assert await fetch_records(querier, "Opportunity", ids) == {}
    assert [q.count("'006") for q in querier.queries] == [200, 200, 50]
    assert querier.batches == [3]  # several IN lists go out together (one /composite call)


def test_chunking_respects_the_url_budget() -> None:
    chunks = chunk_ids("SELECT Id FROM Opportunity", [f"006{n:012d}AAA" for n in range(200)])
    assert len(chunks) == 1
    long_prefix = opportunity_select() + " " + "x" * 9000
    assert len(chunk_ids(long_prefix, [f"006{n:012d}AAA" for n in range(200)])) > 1


async def test_fifteen_character_ids_map_to_their_records_with_fake_querier() -> None:
    querier = FakeQuerier(lambda soql: [opportunity_row(OPP)])
    records = await fetch_records(querier, "Opportunity", [OPP[:15]])
    assert records[OPP[:15]].id == OPP and records[OPP].id == OPP


async def test_fetch_quote_with_opportunity_owner_and_contact_with_fake_querier() -> None:
    querier = FakeQuerier(lambda soql: [quote_row()])
    records = await fetch_records(querier, "Quote", ["0Q0000000000001AAA"], multi_currency=False)
    soql = querier.queries[0]
    assert "CurrencyIsoCode" not in soql
    assert "Opportunity.Owner.Name" in soql and "Contact.Email" in soql
    assert "FROM QuoteLineItems ORDER BY SortOrder)" in soql
    quote = records["0Q0000000000001AAA"]
    assert isinstance(quote, QuoteRecord)
    assert (quote.quote_number, quote.status, quote.expiration_date) == ("00000001", "Approved", date(2027, 1, 15))
    assert quote.grand_total == Decimal("997.5") and quote.tax == Decimal("47.5")
    assert quote.billing.name == "Acme Billing" and quote.billing.address.state == "IL"
    assert quote.opportunity_name == "Acme deal" and quote.owner is not None and quote.owner.name == "Rita Rep"
    assert quote.account is None and quote.contact is not None and quote.contact.phone == "555"
    assert quote.lines[0].name == "Widget" and quote.lines[0].quantity == Decimal("2.0")
    assert quote.sign_status == "Signed"


async def test_fetch_refuses_bad_ids_and_objects_before_querying() -> None:
    querier = FakeQuerier()
    with pytest.raises(ValueError):
        await fetch_records(querier, "Opportunity", ["006') OR (Id != '"])
    with pytest.raises(ValueError):
        await fetch_records(querier, "Account", [OPP])
    assert querier.queries == []


async def test_find_records_in_state_soql_with_fake_querier() -> None:
    querier = FakeQuerier(lambda soql: [{"attributes": attrs("Opportunity"), "Id": OPP,
                                         "StageName": "Proposal/Price Quote"}])
    ids = await find_records_in_state(querier, "Opportunity", "StageName", ["Proposal/Price Quote", "O'Neil"],
                                      since=datetime(2026, 11, 20, tzinfo=UTC), limit=50)
    assert ids == [OPP]
    assert querier.queries == [
        "SELECT Id, StageName FROM Opportunity WHERE StageName IN ('Proposal/Price Quote', 'O\\'Neil') "
        "AND Sign_Transaction_Id__c = null AND LastModifiedDate >= 2026-11-20T00:00:00Z "
        "ORDER BY LastModifiedDate LIMIT 50"]
    with pytest.raises(ValueError):
        await find_records_in_state(querier, "Opportunity", "StageName = null OR Name", ["x"])
