"""The emulated org's store: validation as Salesforce does it, automation, files, events, Change records."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from sfsign.emulator.errors import ApiError
from sfsign.emulator.store import Change, OrgStore


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 27, 10, 0, 0, 250_000, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


USER = {"TimeZoneSidKey": "Europe/Berlin", "LocaleSidKey": "de_DE", "EmailEncodingKey": "UTF-8",
        "LanguageLocaleKey": "de"}


class Org:
    """A small org built through the store's own API."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.store = OrgStore(clock=self.clock)
        self.batches: list[list[Change]] = []
        self.events: list[tuple[str, dict[str, Any], str]] = []
        s = self.store
        with s.transaction(user_id="", system=True, emit=False) as txn:
            txn.insert("CurrencyType", {"IsoCode": "EUR", "ConversionRate": 1, "IsActive": True, "IsCorporate": True})
            txn.insert("CurrencyType", {"IsoCode": "USD", "ConversionRate": 1.08, "IsActive": True})
            self.rep = txn.insert("User", {**USER, "Username": "rep@x.example", "FirstName": "Rita", "LastName": "Rep",
                                           "Email": "rep@x.example", "Alias": "rrep"})
            self.api = txn.insert("User", {**USER, "Username": "api@x.example", "LastName": "Integration",
                                           "Email": "api@x.example", "Alias": "api"})
        self.account = s.insert("Account", {"Name": "Acme", "BillingCity": "Paris", "BillingCountry": "France"},
                                user_id=self.rep)
        self.contact = s.insert("Contact", {"AccountId": self.account, "FirstName": "Jean", "LastName": "Dupont",
                                            "Email": "jean@acme.example"}, user_id=self.rep)
        self.product = s.insert("Product2", {"Name": "Widget", "ProductCode": "W-1", "IsActive": True},
                                user_id=self.rep)
        self.pbe = s.insert("PricebookEntry", {"Pricebook2Id": s.standard_pricebook_id, "Product2Id": self.product,
                                               "UnitPrice": 100, "IsActive": True, "CurrencyIsoCode": "EUR"},
                            user_id=self.rep)
        self.pbe_usd = s.insert("PricebookEntry", {"Pricebook2Id": s.standard_pricebook_id, "Product2Id": self.product,
                                                   "UnitPrice": 110, "IsActive": True, "CurrencyIsoCode": "USD"},
                                user_id=self.rep)
        self.opp = s.insert("Opportunity", {"Name": "Acme Deal", "StageName": "Prospecting", "CloseDate": "2026-12-31",
                                            "AccountId": self.account}, user_id=self.rep)
        s.add_listener(self.batches.append)
        s.add_event_listener(lambda *args: self.events.append(args))

    @property
    def changes(self) -> list[Change]:
        return [c for batch in self.batches for c in batch]

    def line(self, **values: Any) -> str:
        return self.store.insert("OpportunityLineItem", {"OpportunityId": self.opp, "PricebookEntryId": self.pbe,
                                                         "Quantity": 2, "UnitPrice": 100, **values}, user_id=self.rep)


@pytest.fixture
def org() -> Org:
    return Org()


def error(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, str, list[str]]:
    return exc.value.status, exc.value.error_code, exc.value.message, exc.value.fields


# ---------------------------------------------------------------------------------------------- records


def test_get_returns_rest_form_with_system_fields(org: Org) -> None:
    rec = org.store.get("opportunity", org.opp)
    assert next(iter(rec)) == "attributes"
    assert rec["attributes"] == {"type": "Opportunity", "url": f"/services/data/v68.0/sobjects/Opportunity/{org.opp}"}
    assert rec["CreatedDate"] == "2026-11-27T10:00:00.000+0000"  # system stamps have second precision
    assert rec["CreatedById"] == org.rep and rec["OwnerId"] == org.rep
    assert rec["IsDeleted"] is False and rec["CloseDate"] == "2026-12-31"
    assert rec["Probability"] == 10 and rec["ForecastCategoryName"] == "Pipeline" and rec["IsClosed"] is False
    assert rec["CurrencyIsoCode"] == "EUR"


def test_get_with_fields_and_compound_address(org: Org) -> None:
    rec = org.store.get("Account", org.account[:15], ["name", "BillingAddress"])
    assert rec["Name"] == "Acme"
    assert rec["BillingAddress"]["city"] == "Paris" and rec["BillingAddress"]["street"] is None
    with pytest.raises(ApiError) as exc:
        org.store.get("Account", org.account, ["Nope"])
    assert error(exc)[:3] == (400, "INVALID_FIELD", "No such column 'Nope' on sobject of type Account")


def test_contact_name_is_derived(org: Org) -> None:
    assert org.store.get("Contact", org.contact)["Name"] == "Jean Dupont"
    org.store.update("Contact", org.contact, {"FirstName": None}, user_id=org.rep)
    assert org.store.get("Contact", org.contact)["Name"] == "Dupont"


def test_unknown_object_is_not_found(org: Org) -> None:
    with pytest.raises(ApiError) as exc:
        org.store.insert("Nope__c", {}, user_id=org.rep)
    assert error(exc)[:3] == (404, "NOT_FOUND", "The requested resource does not exist")


@pytest.mark.parametrize(
    ("sobject", "values", "expected"),
    [
        ("Account", {"Nope": 1}, (400, "INVALID_FIELD", "No such column 'Nope' on sobject of type Account", [])),
        ("Contact", {"LastName": "X", "Name": "Y"},
         (400, "INVALID_FIELD_FOR_INSERT_UPDATE",
          "Unable to create/update fields: Name. Please check the security settings of this field and verify "
          "that it is read/write for your profile or permission set.", ["Name"])),
        ("Account", {"Name": "x" * 256},
         (400, "STRING_TOO_LONG", f"Account Name: data value too large: {'x' * 256} (max length=255)", ["Name"])),
        ("Opportunity", {"Name": "X", "StageName": "Won?", "CloseDate": "2026-01-01"},
         (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "Stage: bad value for restricted picklist field: Won?",
          ["StageName"])),
        ("Opportunity", {"Name": "X"},
         (400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [StageName, CloseDate]",
          ["StageName", "CloseDate"])),
        ("Contact", {"LastName": "X", "AccountId": "garbage"},
         (400, "MALFORMED_ID", "Account ID: id value of incorrect type: garbage", ["AccountId"])),
        ("Contact", {"LastName": "X", "Email": "not-an-email"},
         (400, "INVALID_EMAIL_ADDRESS", "Email: invalid email address: not-an-email", ["Email"])),
        ("Opportunity", {"Name": "X", "StageName": "Prospecting", "CloseDate": "next week"},
         (400, "JSON_PARSER_ERROR", "Cannot deserialize instance of date from VALUE_STRING value next week or "
          "request may be missing a required field", [])),
        ("Opportunity", {"Name": "X", "StageName": "Prospecting", "CloseDate": "2026-01-01", "Amount": "lots"},
         (400, "JSON_PARSER_ERROR", "Cannot deserialize instance of double from VALUE_STRING value lots or "
          "request may be missing a required field", [])),
        ("Opportunity", {"Name": "X", "StageName": "Prospecting", "CloseDate": "2026-01-01", "CurrencyIsoCode": "GBP"},
         (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "Opportunity Currency: invalid currency code: GBP",
          ["CurrencyIsoCode"])),
        ("Account", {"Name": "X", "Id": "001000000000000AAA"},
         (400, "INVALID_FIELD_FOR_INSERT_UPDATE", "Record ID: cannot specify Id in an insert call", ["Id"])),
        ("ContentDocument", {"Title": "x"},
         (400, "INVALID_TYPE_FOR_OPERATION", "entity type cannot be inserted: Content Document", [])),
    ],
)
def test_insert_validation_errors(org: Org, sobject: str, values: dict[str, Any],
                                  expected: tuple[int, str, str, list[str]]) -> None:
    before = org.store.snapshot()
    with pytest.raises(ApiError) as exc:
        org.store.insert(sobject, values, user_id=org.rep)
    assert error(exc) == expected
    assert org.changes == []
    after = org.store.snapshot()
    assert after["records"] == before["records"]


def test_reference_to_missing_or_deleted_record(org: Org) -> None:
    missing = "001Dn0000000999IAA"
    with pytest.raises(ApiError) as exc:
        org.store.insert("Contact", {"LastName": "X", "AccountId": missing}, user_id=org.rep)
    assert error(exc)[1:3] == ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
    with pytest.raises(ApiError) as exc:
        org.store.insert("Contact", {"LastName": "X", "AccountId": org.opp}, user_id=org.rep)
    assert error(exc)[1] == "MALFORMED_ID"


def test_unique_external_id_is_enforced_case_insensitively(org: Org) -> None:
    org.store.update("Opportunity", org.opp, {"Sign_Transaction_Id__c": "TX-1"}, user_id=org.api)
    other = org.store.insert("Opportunity", {"Name": "B", "StageName": "Prospecting", "CloseDate": "2026-12-01"},
                             user_id=org.rep)
    with pytest.raises(ApiError) as exc:
        org.store.update("Opportunity", other, {"Sign_Transaction_Id__c": "tx-1"}, user_id=org.api)
    assert error(exc)[:3] == (
        400, "DUPLICATE_VALUE",
        f"duplicate value found: Sign_Transaction_Id__c duplicates value on record with id: {org.opp}")


def test_unique_index_follows_changes_rollbacks_and_deletes(org: Org) -> None:
    """Unique fields are found through an index; it must track every way a value changes."""
    org.store.update("Opportunity", org.opp, {"Sign_Transaction_Id__c": "TX-A"}, user_id=org.api)
    org.store.update("Opportunity", org.opp, {"Sign_Transaction_Id__c": "TX-B"}, user_id=org.api)
    other = org.store.insert("Opportunity", {"Name": "B", "StageName": "Prospecting", "CloseDate": "2026-12-01",
                                             "Sign_Transaction_Id__c": "tx-a"}, user_id=org.api)  # freed by the change
    with pytest.raises(ApiError):
        with org.store.transaction(user_id=org.api) as txn:
            txn.update("Opportunity", other, {"Sign_Transaction_Id__c": "TX-C"})
            txn.update("Opportunity", org.opp, {"Sign_Transaction_Id__c": "tx-c"})  # duplicate: all rolled back
    q = "SELECT Id FROM Opportunity WHERE Sign_Transaction_Id__c IN ('Tx-A', 'TX-B', 'tx-c')"
    assert sorted(r["Id"] for r in org.store.query(q).records) == sorted([org.opp, other])
    org.store.delete("Opportunity", other, user_id=org.rep)
    assert [r["Id"] for r in org.store.query(q).records] == [org.opp]


def test_update_read_only_and_deleted(org: Org) -> None:
    with pytest.raises(ApiError) as exc:
        org.store.update("Opportunity", org.opp, {"IsWon": True}, user_id=org.rep)
    assert error(exc)[1] == "INVALID_FIELD_FOR_INSERT_UPDATE" and error(exc)[3] == ["IsWon"]
    org.store.delete("Opportunity", org.opp, user_id=org.rep)
    with pytest.raises(ApiError) as exc:
        org.store.update("Opportunity", org.opp, {"Name": "again"}, user_id=org.rep)
    assert error(exc) == (404, "ENTITY_IS_DELETED", "entity is deleted", [])
    with pytest.raises(ApiError) as exc:
        org.store.delete("Opportunity", org.opp, user_id=org.rep)
    assert error(exc)[1] == "ENTITY_IS_DELETED"
    with pytest.raises(ApiError) as exc:
        org.store.get("Opportunity", org.opp)
    assert error(exc)[:2] == (404, "NOT_FOUND")


def test_restricted_custom_picklist_from_metadata(org: Org) -> None:
    org.store.update("Opportunity", org.opp, {"Sign_Status__c": "Signed"}, user_id=org.api)
    with pytest.raises(ApiError) as exc:
        org.store.update("Opportunity", org.opp, {"Sign_Status__c": "Done"}, user_id=org.api)
    assert error(exc)[:3] == (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              "Signature Status: bad value for restricted picklist field: Done")


def test_malformed_id_on_update(org: Org) -> None:
    with pytest.raises(ApiError) as exc:
        org.store.update("Account", "xyz", {"Name": "n"}, user_id=org.rep)
    assert error(exc) == (400, "MALFORMED_ID", "Account ID: id value of incorrect type: xyz", ["Id"])


# ---------------------------------------------------------------------------------------------- automation


def test_line_item_prices_and_opportunity_rollup(org: Org) -> None:
    first = org.line(Quantity=3, UnitPrice=90, Discount=10)
    org.line(Quantity=1, TotalPrice=50, UnitPrice=None)
    item = org.store.get("OpportunityLineItem", first)
    assert item["Subtotal"] == 270 and item["TotalPrice"] == 243 and item["ListPrice"] == 100
    assert item["Name"] == "Acme Deal Widget" and item["ProductCode"] == "W-1" and item["Product2Id"] == org.product
    opp = org.store.get("Opportunity", org.opp)
    assert opp["Amount"] == 293 and opp["HasOpportunityLineItem"] is True
    assert opp["Pricebook2Id"] == org.store.standard_pricebook_id
    org.store.delete("OpportunityLineItem", first, user_id=org.rep)
    assert org.store.get("Opportunity", org.opp)["Amount"] == 50


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"PricebookEntryId": "USD"}, "field integrity exception: PricebookEntryId (pricebook entry currency code "
                                      "does not match opportunity currency code)"),
        ({"TotalPrice": 10}, "field integrity exception: TotalPrice (cannot specify both UnitPrice and TotalPrice)"),
        ({"Quantity": 0}, "field integrity exception: Quantity (quantity must be nonzero)"),
    ],
)
def test_line_item_integrity_errors(org: Org, values: dict[str, Any], message: str) -> None:
    if values.get("PricebookEntryId") == "USD":
        values["PricebookEntryId"] = org.pbe_usd
    with pytest.raises(ApiError) as exc:
        org.line(**values)
    assert error(exc)[1:3] == ("FIELD_INTEGRITY_EXCEPTION", message)


def test_quote_numbers_totals_and_account(org: Org) -> None:
    org.line()
    quote = org.store.insert("Quote", {"Name": "Q", "OpportunityId": org.opp, "Tax": 19, "ShippingHandling": 5},
                             user_id=org.rep)
    second = org.store.insert("Quote", {"Name": "Q2", "OpportunityId": org.opp}, user_id=org.rep)
    org.store.insert("QuoteLineItem", {"QuoteId": quote, "PricebookEntryId": org.pbe, "Quantity": 4,
                                       "UnitPrice": 50, "Discount": 25}, user_id=org.rep)
    q = org.store.get("Quote", quote)
    assert q["QuoteNumber"] == "00000001" and org.store.get("Quote", second)["QuoteNumber"] == "00000002"
    assert (q["Subtotal"], q["TotalPrice"], q["Discount"], q["GrandTotal"]) == (200, 150, 25, 174)
    assert q["AccountId"] == org.account and q["Status"] == "Draft" and q["CurrencyIsoCode"] == "EUR"


def test_primary_contact_role_is_unique_and_mirrored(org: Org) -> None:
    other = org.store.insert("Contact", {"LastName": "Other", "AccountId": org.account}, user_id=org.rep)
    first = org.store.insert("OpportunityContactRole", {"OpportunityId": org.opp, "ContactId": org.contact,
                                                        "IsPrimary": True}, user_id=org.rep)
    assert org.store.get("Opportunity", org.opp)["ContactId"] == org.contact
    org.store.insert("OpportunityContactRole", {"OpportunityId": org.opp, "ContactId": other, "IsPrimary": True},
                     user_id=org.rep)
    assert org.store.get("OpportunityContactRole", first)["IsPrimary"] is False
    assert org.store.get("Opportunity", org.opp)["ContactId"] == other


def test_marking_another_contact_role_primary_by_update_unmarks_the_first(org: Org) -> None:
    """As in the Contact Roles related list: the primary is edited, not only inserted (customer signing reads it)."""
    other = org.store.insert("Contact", {"LastName": "Other", "AccountId": org.account}, user_id=org.rep)
    first = org.store.insert("OpportunityContactRole", {"OpportunityId": org.opp, "ContactId": org.contact,
                                                        "IsPrimary": True, "Role": "Economic Buyer"}, user_id=org.rep)
    second = org.store.insert("OpportunityContactRole", {"OpportunityId": org.opp, "ContactId": other,
                                                         "Role": "Decision Maker"}, user_id=org.rep)
    assert org.store.get("OpportunityContactRole", second)["IsPrimary"] is False, "IsPrimary defaults to false"
    org.store.update("OpportunityContactRole", second, {"IsPrimary": True}, user_id=org.rep)
    assert [org.store.get("OpportunityContactRole", r)["IsPrimary"] for r in (first, second)] == [False, True]
    assert org.store.get("Opportunity", org.opp)["ContactId"] == other


def test_stage_change_sets_probability_and_closed_flags(org: Org) -> None:
    org.store.update("Opportunity", org.opp, {"StageName": "Closed Won"}, user_id=org.rep)
    opp = org.store.get("Opportunity", org.opp)
    assert (opp["Probability"], opp["IsClosed"], opp["IsWon"], opp["ForecastCategoryName"]) == (100, True, True,
                                                                                                 "Closed")


# ---------------------------------------------------------------------------------------------- Change records


def test_create_change_has_non_empty_fields_only(org: Org) -> None:
    rid = org.store.insert("Account", {"Name": "Globex", "BillingCity": "Springfield"}, user_id=org.rep,
                           origin="com/salesforce/api/rest/68.0")
    [change] = org.changes
    assert (change.entity, change.record_id, change.change_type) == ("Account", rid, "CREATE")
    assert change.changed_fields == [] and change.change_origin == "com/salesforce/api/rest/68.0"
    assert change.fields["Name"] == "Globex"
    assert change.fields["BillingAddress"] == {"City": "Springfield"}
    assert change.fields["CreatedDate"] == "2026-11-27T10:00:00.000Z"
    assert "Description" not in change.fields and "IsDeleted" not in change.fields
    assert "SystemModstamp" not in change.fields and "Id" not in change.fields
    assert change.commit_user == org.rep and change.sequence_number == 1
    # commitTimestamp keeps milliseconds (as in Salesforce's examples); record datetimes keep whole seconds.
    assert change.commit_timestamp_ms == int(dt.datetime(2026, 11, 27, 10, 0, 0, 250_000, tzinfo=dt.UTC).timestamp()
                                             * 1000)
    json.dumps(change.fields)


def test_update_change_has_changed_fields_only(org: Org) -> None:
    org.clock.advance(61)
    org.store.update("Opportunity", org.opp, {"StageName": "Proposal/Price Quote", "Name": "Acme Deal"},
                     user_id=org.rep)
    [change] = org.changes
    assert change.change_type == "UPDATE"
    assert change.changed_fields == ["StageName", "Probability", "LastModifiedDate"]
    assert change.fields == {"StageName": "Proposal/Price Quote", "Probability": 75.0,
                             "LastModifiedDate": "2026-11-27T10:01:01.000Z"}


def test_last_modified_by_only_when_user_differs(org: Org) -> None:
    org.store.update("Opportunity", org.opp, {"Description": "x"}, user_id=org.api)
    org.store.update("Opportunity", org.opp, {"Description": None}, user_id=org.api)
    first, second = org.changes
    assert first.fields["LastModifiedById"] == org.api and "LastModifiedById" in first.changed_fields
    assert "LastModifiedById" not in second.fields
    assert second.fields == {"Description": None, "LastModifiedDate": "2026-11-27T10:00:00.000Z"}


def test_compound_field_changes_use_dotted_names(org: Org) -> None:
    org.store.update("Account", org.account, {"BillingCity": "Lyon"}, user_id=org.rep)
    org.store.update("Contact", org.contact, {"LastName": "Durand"}, user_id=org.rep)
    account, contact = org.changes
    assert account.changed_fields == ["BillingAddress.City", "LastModifiedDate"]
    assert account.fields["BillingAddress"] == {"City": "Lyon"}
    assert contact.changed_fields == ["Name.LastName", "LastModifiedDate"]
    assert contact.fields["Name"] == {"LastName": "Durand"}


def test_delete_change_has_no_fields_and_cascades(org: Org) -> None:
    item = org.line()
    org.batches.clear()
    org.store.delete("Opportunity", org.opp, user_id=org.rep)
    [batch] = org.batches
    assert [(c.entity, c.record_id, c.change_type, c.fields) for c in batch] == [
        ("Opportunity", org.opp, "DELETE", {}), ("OpportunityLineItem", item, "DELETE", {})]
    assert org.store.query("SELECT Id FROM OpportunityLineItem").total_size == 0
    assert org.store.query("SELECT Id FROM OpportunityLineItem", include_deleted=True).total_size == 1


def test_undelete_restores_cascade(org: Org) -> None:
    item = org.line()
    org.store.delete("Opportunity", org.opp, user_id=org.rep)
    org.batches.clear()
    org.store.undelete("Opportunity", org.opp, user_id=org.rep)
    assert {(c.record_id, c.change_type) for c in org.changes} == {(org.opp, "UNDELETE"), (item, "UNDELETE")}
    assert org.store.get("OpportunityLineItem", item)["IsDeleted"] is False


def test_transaction_commits_once_with_shared_key(org: Org) -> None:
    with org.store.transaction(user_id=org.rep, origin="x") as txn:
        a = txn.insert("Account", {"Name": "A"})
        txn.update("Account", a, {"Name": "B"})
        assert org.batches == []
    [batch] = org.batches
    assert [c.change_type for c in batch] == ["CREATE", "UPDATE"]
    assert [c.sequence_number for c in batch] == [1, 2]
    assert len({c.transaction_key for c in batch}) == 1 and len({c.commit_number for c in batch}) == 1


def test_transaction_rolls_back_everything_on_error(org: Org) -> None:
    before = org.store.snapshot()["records"]
    with pytest.raises(ApiError), org.store.transaction(user_id=org.rep) as txn:
        txn.insert("Account", {"Name": "A"})
        org.line()  # joins the transaction
        txn.insert("Account", {"Nope": 1})
    assert org.store.snapshot()["records"] == before
    assert org.batches == []
    assert org.store.children("OpportunityLineItem", "OpportunityId", org.opp, include_deleted=True) == []
    subquery = org.store.query(f"SELECT (SELECT Id FROM OpportunityLineItems) FROM Opportunity WHERE Id = '{org.opp}'")
    assert subquery.records[0]["OpportunityLineItems"] is None


def test_failed_statement_inside_transaction_leaves_no_trace(org: Org) -> None:
    with org.store.transaction(user_id=org.rep) as txn:
        txn.insert("Account", {"Name": "kept"})
        with pytest.raises(ApiError):
            txn.insert("OpportunityLineItem", {"OpportunityId": org.opp, "PricebookEntryId": org.pbe_usd,
                                               "Quantity": 1, "UnitPrice": 1})
    assert org.store.get("Opportunity", org.opp)["Pricebook2Id"] is None
    assert [c.entity for c in org.changes] == ["Account"]


def test_emit_false_suppresses_listeners(org: Org) -> None:
    org.store.insert("Account", {"Name": "quiet"}, user_id=org.rep, emit=False)
    assert org.batches == []


def test_locked_record_refuses_writes_and_children(org: Org) -> None:
    org.store.lock_record(org.opp)
    with pytest.raises(ApiError) as exc:
        org.store.update("Opportunity", org.opp, {"Name": "x"}, user_id=org.rep)
    assert error(exc) == (400, "UNABLE_TO_LOCK_ROW",
                          f"unable to obtain exclusive access to this record or 1 records: {org.opp}", [])
    with pytest.raises(ApiError) as exc:
        org.line()  # the roll-up writes the locked opportunity
    assert error(exc)[1] == "UNABLE_TO_LOCK_ROW"
    org.store.unlock_record(org.opp)
    org.line()


# ---------------------------------------------------------------------------------------------- files


def test_content_version_creates_document_and_links(org: Org) -> None:
    data = b"%PDF-1.7 signed"
    cv = org.store.insert("ContentVersion", {"PathOnClient": "contract.pdf", "VersionData": data,
                                             "FirstPublishLocationId": org.opp, "Sign_Transaction_Id__c": "tx"},
                          user_id=org.api)
    rec = org.store.get("ContentVersion", cv)
    assert rec["Title"] == "contract" and rec["FileType"] == "PDF" and rec["FileExtension"] == "pdf"
    assert rec["ContentSize"] == len(data) and rec["Checksum"] == hashlib.md5(data).hexdigest()
    assert rec["VersionNumber"] == "1" and rec["IsLatest"] is True
    assert rec["VersionData"] == f"/services/data/v68.0/sobjects/ContentVersion/{cv}/VersionData"
    assert org.store.version_data(cv) == data
    doc = org.store.get("ContentDocument", rec["ContentDocumentId"])
    assert doc["LatestPublishedVersionId"] == cv and doc["Title"] == "contract" and doc["PublishStatus"] == "P"
    links = org.store.query(f"SELECT LinkedEntityId, ShareType, Visibility FROM ContentDocumentLink "
                            f"WHERE ContentDocumentId = '{doc['Id']}'").records
    assert {(lk["LinkedEntityId"], lk["ShareType"], lk["Visibility"]) for lk in links} == {
        (org.opp, "I", "AllUsers"), (org.api, "I", "AllUsers")}
    assert [c.entity for c in org.changes] == ["ContentVersion", "ContentDocument", "ContentDocumentLink",
                                               "ContentDocumentLink"]


def test_new_version_of_a_document(org: Org) -> None:
    cv1 = org.store.insert("ContentVersion", {"PathOnClient": "a.pdf", "VersionData": "YQ==",
                                              "FirstPublishLocationId": org.opp}, user_id=org.api)
    doc = org.store.get("ContentVersion", cv1)["ContentDocumentId"]
    cv2 = org.store.insert("ContentVersion", {"PathOnClient": "a-v2.docx", "VersionData": "YmI=",
                                              "ContentDocumentId": doc, "ReasonForChange": "fix"}, user_id=org.api)
    assert org.store.get("ContentVersion", cv1)["IsLatest"] is False
    v2 = org.store.get("ContentVersion", cv2)
    assert (v2["VersionNumber"], v2["IsLatest"], v2["FileType"], v2["ContentSize"]) == ("2", True, "WORD_X", 2)
    assert org.store.get("ContentDocument", doc)["LatestPublishedVersionId"] == cv2
    with pytest.raises(ApiError) as exc:
        org.store.insert("ContentVersion", {"PathOnClient": "b.pdf", "VersionData": "YQ==", "ContentDocumentId": doc,
                                            "FirstPublishLocationId": org.opp}, user_id=org.api)
    assert error(exc)[1] == "FIELD_INTEGRITY_EXCEPTION"


def test_content_version_requires_data(org: Org) -> None:
    with pytest.raises(ApiError) as exc:
        org.store.insert("ContentVersion", {"Title": "x"}, user_id=org.api)
    assert error(exc)[:3] == (400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [PathOnClient, VersionData]")


# ---------------------------------------------------------------------------------------------- platform events


def test_platform_event_goes_to_event_listeners_after_commit(org: Org) -> None:
    with org.store.transaction(user_id=org.rep) as txn:
        event_id = txn.insert("Sign_Request__e", {"RecordId__c": org.opp, "Reason__c": "now"})
        assert org.events == []
    assert event_id.startswith("e00")
    [(name, payload, event_uuid)] = org.events
    assert name == "Sign_Request__e" and org.store.event_uuid(event_id) == event_uuid
    assert payload["RecordId__c"] == org.opp and payload["Reason__c"] == "now" and payload["Rule__c"] is None
    assert payload["CreatedById"] == org.rep[:15] and payload["CreatedDate"] == "2026-11-27T10:00:00.250Z"
    assert org.changes == []


def test_platform_event_validation_and_rollback(org: Org) -> None:
    with pytest.raises(ApiError) as exc:
        org.store.insert("Sign_Request__e", {"Reason__c": "no record"}, user_id=org.rep)
    assert error(exc)[1:3] == ("REQUIRED_FIELD_MISSING", "Required fields are missing: [RecordId__c]")
    with pytest.raises(ApiError), org.store.transaction(user_id=org.rep) as txn:
        txn.insert("Sign_Request__e", {"RecordId__c": org.opp})
        txn.insert("Account", {})
    assert org.events == []


# ---------------------------------------------------------------------------------------------- state


def test_snapshot_restore_round_trip_keeps_ids_unique(org: Org) -> None:
    org.line()
    org.store.insert("ContentVersion", {"PathOnClient": "a.pdf", "VersionData": b"\x00\x01binary",
                                        "FirstPublishLocationId": org.opp}, user_id=org.api)
    snap = json.loads(json.dumps(org.store.snapshot()))
    restored = OrgStore.restore(snap, clock=org.clock)
    assert restored.snapshot() == snap
    assert restored.org_id == org.store.org_id
    assert restored.query("SELECT Amount FROM Opportunity").records[0]["Amount"] == 200
    cv = restored.query("SELECT Id FROM ContentVersion").records[0]["Id"]
    assert restored.version_data(cv) == b"\x00\x01binary"
    new = restored.insert("Account", {"Name": "after restart"}, user_id=org.rep)
    assert org.store.record(new) is None
    assert restored.insert("Quote", {"Name": "Q", "OpportunityId": org.opp}, user_id=org.rep)
    assert restored.query("SELECT QuoteNumber FROM Quote").records[0]["QuoteNumber"] == "00000001"


def test_users_and_describe(org: Org) -> None:
    assert org.store.user_by_username("REP@x.example")["Id"] == org.rep  # type: ignore[index]
    assert org.store.user_by_username("nobody@x.example") is None
    assert org.store.users[org.api]["Name"] == "Integration"
    describe = org.store.describe("Opportunity")
    currency = next(f for f in describe["fields"] if f["name"] == "CurrencyIsoCode")
    assert [p["value"] for p in currency["picklistValues"]] == ["EUR", "USD"]


def test_child_index_follows_reparenting_and_rollback(org: Org) -> None:
    other = org.store.insert("Account", {"Name": "Other"}, user_id=org.rep)
    org.store.update("Contact", org.contact, {"AccountId": other}, user_id=org.rep)
    assert [c["Id"] for c in org.store.children("Contact", "AccountId", other)] == [org.contact]
    assert org.store.children("Contact", "AccountId", org.account) == []
    with pytest.raises(ApiError), org.store.transaction(user_id=org.rep) as txn:
        txn.update("Contact", org.contact, {"AccountId": org.account})
        txn.insert("Account", {})
    found = org.store.query(f"SELECT Id FROM Contact WHERE AccountId = '{other}'").records
    assert [r["Id"] for r in found] == [org.contact]
    assert org.store.query(f"SELECT Id FROM Contact WHERE AccountId = '{org.account}'").total_size == 0
