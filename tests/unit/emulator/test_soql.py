"""SOQL: parsing, evaluation against the store, REST result shape and Salesforce's errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sfsign.emulator.errors import ApiError
from sfsign.emulator.seed import SeedInfo, seed_org
from sfsign.emulator.soql import CDL_RESTRICTION, parse
from sfsign.emulator.store import OrgStore

NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def seeded() -> tuple[OrgStore, SeedInfo]:
    store = OrgStore(clock=lambda: NOW)
    return store, seed_org(store)


@pytest.fixture
def store(seeded: tuple[OrgStore, SeedInfo]) -> OrgStore:
    return seeded[0]


@pytest.fixture
def info(seeded: tuple[OrgStore, SeedInfo]) -> SeedInfo:
    return seeded[1]


def names(store: OrgStore, soql: str) -> list[str]:
    return [r["Name"] for r in store.query(soql).records]


def fails(store: OrgStore, soql: str) -> ApiError:
    with pytest.raises(ApiError) as exc:
        store.query(soql)
    return exc.value


# ---------------------------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("Name = 'Globex Corporation'", ["Globex Corporation"]),
        ("Name = 'globex corporation'", ["Globex Corporation"]),
        ("Name != 'Globex Corporation' AND BillingCountry = 'France'", ["Acme Industries SAS", "Lumière Santé SA"]),
        ("Name <> 'Globex Corporation' AND BillingCountry = 'United States'", []),
        ("Name < 'B'", ["Acme Industries SAS"]),
        ("Name <= 'Brandt & Söhne Maschinenbau GmbH'", ["Acme Industries SAS", "Brandt & Söhne Maschinenbau GmbH"]),
        ("Name > 'L'", ["Lumière Santé SA"]),
        ("Name >= 'Initech Ltd' AND Name < 'L'", ["Initech Ltd"]),
        ("BillingCountry IN ('Germany', 'united kingdom')",
         ["Brandt & Söhne Maschinenbau GmbH", "Initech Ltd", "Hanse Logistik AG"]),
        ("BillingCountry NOT IN ('Germany', 'France', 'United Kingdom')", ["Globex Corporation"]),
        ("Name LIKE 'acme%'", ["Acme Industries SAS"]),
        ("Name LIKE '%_td'", ["Initech Ltd"]),
        ("Name LIKE 'Initech_Ltd'", ["Initech Ltd"]),
        ("Name LIKE '100\\%'", []),
        ("BillingState = null AND BillingCountry = 'United Kingdom'", ["Initech Ltd"]),
        ("BillingState != null AND BillingCountry = 'Germany'",
         ["Brandt & Söhne Maschinenbau GmbH", "Hanse Logistik AG"]),
        ("NOT Name LIKE 'A%' AND BillingCountry = 'France'", ["Lumière Santé SA"]),
        ("(BillingCountry = 'France' OR BillingCountry = 'Germany') AND Industry = 'Healthcare'",
         ["Lumière Santé SA"]),
        ("BillingCountry = 'France' OR (BillingCountry = 'Germany' AND Industry = 'Machinery')",
         ["Acme Industries SAS", "Brandt & Söhne Maschinenbau GmbH", "Lumière Santé SA"]),
        ("NOT (BillingCountry = 'France' OR BillingCountry = 'Germany')", ["Globex Corporation", "Initech Ltd"]),
        ("Name = 'Brandt & S\\u00f6hne Maschinenbau GmbH'", ["Brandt & Söhne Maschinenbau GmbH"]),
    ],
)
def test_where_operators(store: OrgStore, where: str, expected: list[str]) -> None:
    assert names(store, f"SELECT Name FROM Account WHERE {where}") == expected


def test_numbers_booleans_dates(store: OrgStore) -> None:
    assert names(store, "SELECT Name FROM Opportunity WHERE Amount > 50000 ORDER BY Amount") == [
        "Brandt & Söhne - Enterprise Upgrade", "Globex - Enterprise Rollout"]
    assert names(store, "SELECT Name FROM Opportunity WHERE Amount = null") == ["Hanse Logistik - Data Migration"]
    assert names(store, "SELECT Name FROM Opportunity WHERE Amount < 7500.5 AND Amount >= -1") == [
        "Brandt & Söhne - Premium Support"]
    assert names(store, "SELECT Name FROM Opportunity WHERE CloseDate = 2026-12-18") == [
        "Acme Industries - Platform Renewal 2027"]
    assert len(names(store, "SELECT Name FROM Opportunity WHERE CloseDate < 2027-01-01")) == 2
    assert names(store, "SELECT Name FROM Product2 WHERE IsActive = false") == []
    assert len(names(store, "SELECT Name FROM Product2 WHERE IsActive = TRUE")) == 8


def test_datetime_literals_with_offsets(store: OrgStore) -> None:
    assert store.query("SELECT Id FROM Opportunity WHERE CreatedDate = 2026-11-27T09:30:00Z").total_size == 8
    assert store.query("SELECT Id FROM Opportunity WHERE CreatedDate = 2026-11-27T10:30:00+01:00").total_size == 8
    assert store.query("SELECT Id FROM Opportunity WHERE LastModifiedDate > 2026-11-27T09:30:00.000Z").total_size == 0
    assert store.query("SELECT Id FROM Opportunity WHERE LastModifiedDate >= 2026-11-20T00:00:00Z").total_size == 8


@pytest.mark.parametrize(
    ("literal", "count"),
    [("TODAY", 8), ("YESTERDAY", 0), ("LAST_N_DAYS:3", 8), ("NEXT_N_DAYS:3", 0), ("THIS_MONTH", 8),
     ("LAST_YEAR", 0), ("THIS_WEEK", 8)],
)
def test_relative_date_literals(store: OrgStore, literal: str, count: int) -> None:
    assert store.query(f"SELECT Id FROM Opportunity WHERE CreatedDate = {literal}").total_size == count


def test_close_date_relative_range(store: OrgStore) -> None:
    assert names(store, "SELECT Name FROM Opportunity WHERE CloseDate = NEXT_N_DAYS:30 ORDER BY CloseDate") == [
        "Acme Industries - Platform Renewal 2027"]
    assert store.query("SELECT Id FROM Opportunity WHERE CloseDate > NEXT_MONTH").total_size == 6


def test_id_comparisons_accept_15_and_18_characters(store: OrgStore, info: SeedInfo) -> None:
    opp = info.opportunities["acme-renewal"]
    assert store.query(f"SELECT Id FROM Opportunity WHERE Id = '{opp[:15]}'").records[0]["Id"] == opp
    assert store.query(f"SELECT Id FROM Opportunity WHERE Id IN ('{opp.lower()}')").total_size == 1
    lines = store.query(f"SELECT Id FROM OpportunityLineItem WHERE OpportunityId = '{opp}'")
    assert lines.total_size == 3


def test_semi_join(store: OrgStore) -> None:
    found = names(store, "SELECT Name FROM Opportunity WHERE Id NOT IN (SELECT OpportunityId FROM OpportunityLineItem)")
    assert found == ["Hanse Logistik - Data Migration"]


# ---------------------------------------------------------------------------------------------- shape


def test_daemon_opportunity_query(store: OrgStore, info: SeedInfo) -> None:
    ids = info.opportunities["acme-renewal"], info.opportunities["lumiere-pilot"]
    soql = (
        "SELECT Id, Name, StageName, Amount, CloseDate, CurrencyIsoCode, Description, Sign_Transaction_Id__c, "
        "Sign_Status__c, Account.Name, Account.BillingStreet, Account.BillingCity, Account.BillingPostalCode, "
        "Account.BillingState, Account.BillingCountry, Account.Phone, Owner.Name, Owner.Email, Owner.Title, "
        "(SELECT Id, Name, ProductCode, Product2.Name, Product2.ProductCode, Description, Quantity, UnitPrice, "
        "ListPrice, Discount, TotalPrice, SortOrder FROM OpportunityLineItems ORDER BY SortOrder, Name), "
        "(SELECT Contact.Name, Contact.Title, Contact.Email, Contact.Phone, Role FROM OpportunityContactRoles "
        f"WHERE IsPrimary = true LIMIT 1) FROM Opportunity WHERE Id IN ('{ids[0]}','{ids[1]}')"
    )
    result = store.query(soql).as_json()
    assert result["totalSize"] == 2 and result["done"] is True
    acme, lumiere = sorted(result["records"], key=lambda r: r["Name"])
    assert list(acme)[:3] == ["attributes", "Id", "Name"]
    assert acme["CloseDate"] == "2026-12-18" and acme["Sign_Transaction_Id__c"] is None
    assert acme["Account"] == {
        "attributes": {"type": "Account", "url": f"/services/data/v68.0/sobjects/Account/{info.accounts['acme-fr']}"},
        "Name": "Acme Industries SAS", "BillingStreet": "12 Rue de la Paix", "BillingCity": "Paris",
        "BillingPostalCode": "75002", "BillingState": "Île-de-France", "BillingCountry": "France",
        "Phone": "+33 1 42 68 53 00"}
    assert acme["Owner"]["Name"] == "Marc Dubois" and acme["Owner"]["attributes"]["type"] == "User"
    lines = acme["OpportunityLineItems"]
    assert lines["totalSize"] == 3 and lines["done"] is True
    assert [r["SortOrder"] for r in lines["records"]] == [1, 2, 3]
    first = lines["records"][0]
    assert first["Product2"]["ProductCode"] == "NW-PLAT-STD" and first["TotalPrice"] == 12000.0
    roles = acme["OpportunityContactRoles"]
    assert roles["totalSize"] == 1 and roles["records"][0]["Role"] == "Economic Buyer"
    assert roles["records"][0]["Contact"]["Name"] == "Claire Lefèvre"
    assert lumiere["OpportunityContactRoles"] is None  # an empty subquery is null


def test_daemon_quote_query(store: OrgStore, info: SeedInfo) -> None:
    quote = info.quotes["globex-rollout-q1"]
    rec = store.query(
        "SELECT Id, Name, QuoteNumber, Status, ExpirationDate, CurrencyIsoCode, Subtotal, Discount, TotalPrice, Tax, "
        "GrandTotal, BillingName, BillingCity, Opportunity.Name, Opportunity.Owner.Name, Account.Name, "
        "Account.BillingCity, Contact.Name, Contact.Email, (SELECT Quantity, TotalPrice, Product2.Name FROM "
        f"QuoteLineItems ORDER BY SortOrder) FROM Quote WHERE Id = '{quote}'").records[0]
    assert rec["CurrencyIsoCode"] == "USD" and rec["Status"] == "Draft" and rec["QuoteNumber"] == "00000003"
    assert rec["Opportunity"]["Owner"] == {
        "attributes": {"type": "User", "url": f"/services/data/v68.0/sobjects/User/{info.users['emily']}"},
        "Name": "Emily Carter"}
    assert rec["Account"]["Name"] == "Globex Corporation" and rec["Contact"]["Email"] == "maria.gonzalez@globex.example"
    assert rec["QuoteLineItems"]["totalSize"] == 6
    assert rec["GrandTotal"] == rec["TotalPrice"] == sum(r["TotalPrice"] for r in rec["QuoteLineItems"]["records"])


def test_null_parent_is_null_and_nested_parent_keeps_attributes(store: OrgStore) -> None:
    recs = store.query("SELECT Name, Account.Name, Account.Owner.Name FROM Contact WHERE LastName = 'Gibbons'").records
    assert recs[0]["Account"]["Owner"]["Name"] == "Emily Carter"
    store.insert("Contact", {"LastName": "Orphan"}, user_id="")
    orphan = store.query("SELECT Account.Name, Account.Owner.Name FROM Contact WHERE LastName = 'Orphan'").records[0]
    assert orphan["Account"] is None


def test_case_insensitive_names_return_canonical_casing(store: OrgStore) -> None:
    rec = store.query("select NAME, account.name, (select quantity from opportunitylineitems limit 1) "
                      "from OPPORTUNITY where stagename = 'Value Proposition'").records[0]
    assert set(rec) == {"attributes", "Name", "Account", "OpportunityLineItems"}
    assert set(rec["Account"]) == {"attributes", "Name"}
    assert set(rec["OpportunityLineItems"]["records"][0]) == {"attributes", "Quantity"}


def test_order_by_directions_nulls_and_relationships(store: OrgStore) -> None:
    asc = names(store, "SELECT Name FROM Opportunity ORDER BY Amount")
    assert asc[0] == "Hanse Logistik - Data Migration"  # nulls first by default
    desc = names(store, "SELECT Name FROM Opportunity ORDER BY Amount DESC")
    assert desc[0] == "Hanse Logistik - Data Migration" and desc[1] == "Globex - Enterprise Rollout"
    last = names(store, "SELECT Name FROM Opportunity ORDER BY Amount DESC NULLS LAST")
    assert last[-1] == "Hanse Logistik - Data Migration" and last[0] == "Globex - Enterprise Rollout"
    by_account = names(store, "SELECT Name FROM Opportunity ORDER BY Account.Name DESC, Amount ASC LIMIT 3")
    assert by_account == ["Lumière Santé - Pilot", "Initech - Onboarding Package", "Hanse Logistik - Data Migration"]


def test_limit_offset_and_count(store: OrgStore) -> None:
    all_names = names(store, "SELECT Name FROM Account ORDER BY Name")
    assert names(store, "SELECT Name FROM Account ORDER BY Name LIMIT 2 OFFSET 1") == all_names[1:3]
    counted = store.query("SELECT COUNT() FROM Account WHERE BillingCountry = 'France'")
    assert (counted.total_size, counted.records) == (2, [])
    agg = store.query("SELECT COUNT(Id) FROM Opportunity WHERE Amount != null").records
    assert agg == [{"attributes": {"type": "AggregateResult"}, "expr0": 7}]


def test_query_all_includes_deleted(store: OrgStore) -> None:
    rid = store.insert("Account", {"Name": "Doomed"}, user_id="")
    store.delete("Account", rid, user_id="")
    assert store.query("SELECT Id FROM Account WHERE Name = 'Doomed'").total_size == 0
    rec = store.query("SELECT Id, IsDeleted FROM Account WHERE Name = 'Doomed'", include_deleted=True).records
    assert rec[0]["IsDeleted"] is True


def test_content_document_link_filters(store: OrgStore, info: SeedInfo) -> None:
    opp = info.opportunities["acme-api"]
    cv = store.insert("ContentVersion", {"PathOnClient": "x.pdf", "VersionData": "YQ==",
                                         "FirstPublishLocationId": opp}, user_id=info.integration_user_id)
    doc = store.get("ContentVersion", cv)["ContentDocumentId"]
    assert store.query(f"SELECT ContentDocumentId, LinkedEntityId FROM ContentDocumentLink "
                       f"WHERE LinkedEntityId = '{opp}'").records[0]["ContentDocumentId"] == doc
    assert store.query(f"SELECT Id FROM ContentDocumentLink WHERE ContentDocumentId IN ('{doc}') "
                       "AND ShareType = 'I'").total_size == 2
    found = store.query(f"SELECT Id, (SELECT ContentDocumentId FROM ContentDocumentLinks) FROM Opportunity "
                        f"WHERE Id = '{opp}'").records[0]
    assert found["ContentDocumentLinks"]["totalSize"] == 1
    for bad in ("SELECT Id FROM ContentDocumentLink",
                f"SELECT Id FROM ContentDocumentLink WHERE LinkedEntityId != '{opp}'",
                f"SELECT Id FROM ContentDocumentLink WHERE ShareType = 'I' OR LinkedEntityId = '{opp}'"):
        err = fails(store, bad)
        assert (err.status, err.error_code, err.message) == (400, "MALFORMED_QUERY", CDL_RESTRICTION)


# ---------------------------------------------------------------------------------------------- errors


def test_invalid_field_message_points_at_the_column(store: OrgStore) -> None:
    err = fails(store, "SELECT Id, Nmae FROM Opportunity")
    assert err.error_code == "INVALID_FIELD" and err.status == 400
    assert err.message == (
        "\nSELECT Id, Nmae FROM Opportunity\n           ^\nERROR at Row:1:Column:12\nNo such column 'Nmae' on entity "
        "'Opportunity'. If you are attempting to use a custom field, be sure to append the '__c' after the custom "
        "field name. Please reference your WSDL or the describe call for the appropriate names.")
    assert err.body() == [{"message": err.message, "errorCode": "INVALID_FIELD"}]


@pytest.mark.parametrize(
    ("soql", "code", "tail"),
    [
        ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY", "Column:33\nunexpected token: '<EOF>'"),
        ("SELECT Id FROM Opportunity WHERE A = 1 AND B = 2 OR C = 3", "MALFORMED_QUERY", "unexpected token: 'OR'"),
        ("SELECT Id FROM Opportunity LIMIT x", "MALFORMED_QUERY", "unexpected token: 'x'"),
        ("SELECT FROM Opportunity", "MALFORMED_QUERY", "Column:8\nunexpected token: 'FROM'"),
        ("SELECT Id FROM Opportunity WHERE Name = 'x", "MALFORMED_QUERY", "unexpected token: '<EOF>'"),
        ("SELECT Id FROM Opportunity WHERE Name = 'a\\qb'", "MALFORMED_QUERY",
         "Illegal character sequence '\\q' in string literal."),
        ("SELECT Id FROM Opportunity\nWHERE Nope = 1", "INVALID_FIELD", "Row:2:Column:7\nNo such column 'Nope'"),
        ("SELECT Id FROM Opportunty", "INVALID_TYPE", "sObject type 'Opportunty' is not supported. If you are "
         "attempting to use a custom object, be sure to append the '__c' after the entity name."),
        ("SELECT Id FROM Sign_Request__e", "INVALID_TYPE", "sObject type 'Sign_Request__e' is not supported."),
        ("SELECT Acount.Name FROM Opportunity", "INVALID_FIELD", "Didn't understand relationship 'Acount' in field "
         "path."),
        ("SELECT Account.Nope FROM Opportunity", "INVALID_FIELD", "No such column 'Nope' on entity 'Account'."),
        ("SELECT Id, (SELECT Id FROM LineItems) FROM Opportunity", "INVALID_TYPE",
         "Didn't understand relationship 'LineItems' in FROM part of query call."),
        ("SELECT Id FROM Opportunity WHERE CloseDate = '2026-01-01'", "INVALID_FIELD",
         "value of filter criterion for field 'CloseDate' must be of type date and should not be enclosed in quotes"),
        ("SELECT Id FROM Opportunity WHERE LastModifiedDate > 2026-01-01", "INVALID_FIELD",
         "must be of type dateTime and should not be enclosed in quotes"),
        ("SELECT Id FROM Opportunity WHERE Name = 5", "INVALID_FIELD",
         "value of filter criterion for field 'Name' must be of type string and should be enclosed in quotes"),
        ("SELECT Id FROM Opportunity WHERE IsClosed = 'false'", "INVALID_FIELD", "must be of type boolean"),
        ("SELECT Id FROM Opportunity WHERE Id = '006abc'", "INVALID_QUERY_FILTER_OPERATOR",
         "invalid ID field: 006abc"),
        ("SELECT Id FROM Opportunity WHERE Description = 'x'", "INVALID_FIELD",
         "field 'Description' can not be filtered in a query call"),
        ("SELECT Id, Name, name FROM Opportunity", "MALFORMED_QUERY", "duplicate field selected: Name"),
        ("SELECT Id FROM Opportunity OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000"),
    ],
)
def test_errors(store: OrgStore, soql: str, code: str, tail: str) -> None:
    err = fails(store, soql)
    assert err.status == 400 and err.error_code == code
    assert tail in err.message
    if code not in ("NUMBER_OUTSIDE_VALID_RANGE",):
        assert "ERROR at Row:" in err.message


def test_parser_keeps_like_escapes_and_decodes_others() -> None:
    query = parse("SELECT Id FROM Account WHERE Name LIKE 'a\\%b\\'c\\nd'")
    cond: Any = query.where
    assert cond.value.value == "a\\%b'c\nd"


def test_type_error_echo_matches_salesforce(store: OrgStore) -> None:
    # Real response (EloquentSalesForce issue #68): the echo starts 32 characters before the error column,
    # which is the column of the field compared with a literal of the wrong type.
    err = fails(store, "select Id, ProductCode from Product2 where ProductCode = 3999")
    assert err.error_code == "INVALID_FIELD"
    assert err.message == ("\nProductCode from Product2 where ProductCode = 3999\n" + " " * 32 + "^\n"
                           "ERROR at Row:1:Column:44\nvalue of filter criterion for field 'ProductCode' must be of "
                           "type string and should be enclosed in quotes")
