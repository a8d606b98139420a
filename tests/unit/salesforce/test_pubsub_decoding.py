"""Pub/Sub CDC bitmaps → field names, Avro payloads → the CometD-shaped message events.py reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pubsub_schemas import ACCOUNT_CDC, SIGN_REQUEST, account, encode

from sfsign.salesforce.events import ChangeEvent, PlatformEvent, parse_event, update_header
from sfsign.salesforce.pubsub_bitmaps import BitmapError, SchemaFields
from sfsign.salesforce.pubsub_decoding import EventSchema, UndecodableEvent, cometd_message, header_message

CDC = "/data/AccountChangeEvent"
REPLAY = bytes.fromhex("00000000000a1b2c")


def flat_schema(count: int, compounds: dict[int, list[str]] | None = None) -> dict[str, Any]:
    """A record of `count` fields F0…, the positions in `compounds` being records with those children."""
    fields: list[dict[str, Any]] = []
    for i in range(count):
        kind: Any = "string"
        if compounds and i in compounds:
            kind = {"type": "record", "name": f"C{i}", "fields": [
                {"name": c, "type": ["null", "string"], "default": None} for c in compounds[i]]}
        fields.append({"name": f"F{i}", "type": ["null", kind], "default": None})
    return {"type": "record", "name": "X", "fields": fields}


def test_a_top_level_bitmap_marks_fields_by_position_from_the_least_significant_bit() -> None:
    # Salesforce's enrichment example: changedFields ["0x400080"] = the fields at positions 7 and 22.
    fields = SchemaFields(flat_schema(24))
    assert fields.decode(["0x400080"]) == ["F7", "F22"]
    assert fields.decode(["0x01"]) == ["F0"]
    assert fields.decode([]) == [] and fields.decode(None) == []


def test_the_documented_example_with_nested_compound_bitmaps() -> None:
    # "Event Deserialization Considerations": ['0x650004E0', '4-0x10', '7-0x06'].
    fields = SchemaFields(flat_schema(31, {4: ["A", "B", "C", "D", "E"], 7: ["S", "T", "U"]}))
    assert fields.decode(["0x650004E0", "4-0x10", "7-0x06"]) == [
        "F5", "F6", "F7", "F10", "F24", "F26", "F29", "F30", "F4.E", "F7.T", "F7.U"]


def test_a_nested_bitmap_names_compound_children_like_billing_address_city() -> None:
    fields = SchemaFields(ACCOUNT_CDC)
    assert fields.decode(["0x08", "3-0x02"]) == ["BillingAddress", "BillingAddress.City"]
    assert fields.decode(["3-0x01"]) == ["BillingAddress.Street"]
    # ShippingAddress refers to the Address record by name only: still a compound field.
    assert fields.decode(["0x10", "4-0x06"]) == ["ShippingAddress", "ShippingAddress.City", "ShippingAddress.State"]
    # Every child marked: the compound's own name stands for them (Salesforce's EventParser rule).
    assert fields.decode(["3-0x1F"]) == ["BillingAddress"]


@pytest.mark.parametrize("entries", [["0x1000"], ["12-0x01"], ["1-0x01"], ["0xZZ"], ["3-0x40"]])
def test_a_bitmap_that_does_not_fit_the_schema_is_refused(entries: list[str]) -> None:
    with pytest.raises(BitmapError):
        SchemaFields(ACCOUNT_CDC).decode(entries)


def schema() -> EventSchema:
    return EventSchema("IeRuaY6cbI_HsV8Rv1Mc5g", json.dumps(ACCOUNT_CDC))


def message(record: dict[str, Any]) -> dict[str, Any]:
    return cometd_message(CDC, schema(), encode(ACCOUNT_CDC, record), REPLAY, "e6f0b2b8-0000-4000-8000-000000000001")


def test_an_update_keeps_only_changed_and_nulled_fields_in_cometd_shape() -> None:
    # Stage__c (10) and LastModifiedDate (9) changed, Phone (5) set to null, BillingAddress.City changed.
    record = account("UPDATE", changed=["0x628", "3-0x02"], nulled=["0x20"], Stage__c="Closed Won",
                     LastModifiedDate=1712693965123, BillingAddress={"Street": None, "City": "Paris", "State": None,
                                                                     "PostalCode": None, "Country": None})
    msg = message(record)
    assert msg["channel"] == CDC
    assert msg["data"]["schema"] == "IeRuaY6cbI_HsV8Rv1Mc5g"
    assert msg["data"]["event"] == {"replayId": REPLAY}
    payload = msg["data"]["payload"]
    assert set(payload) == {"ChangeEventHeader", "Stage__c", "LastModifiedDate", "Phone", "BillingAddress"}
    assert payload["Phone"] is None
    assert payload["BillingAddress"] == {"City": "Paris"}
    assert payload["LastModifiedDate"] == "2024-04-09T20:19:25.123Z"  # epoch ms → CometD's ISO form
    head = payload["ChangeEventHeader"]
    assert head["changedFields"] == ["BillingAddress", "Phone", "LastModifiedDate", "Stage__c", "BillingAddress.City"]
    assert head["nulledFields"] == ["Phone"]
    assert head["commitTimestamp"] == 1712693965000  # epoch ms in both transports

    event = parse_event(msg)
    assert isinstance(event, ChangeEvent)
    assert event.change_type == "UPDATE" and event.entity == "Account"
    assert event.replay_id == REPLAY
    assert "Stage__c" in event.changed_fields and event.fields["Stage__c"] == "Closed Won"
    assert event.commit_timestamp_ms == 1712693965000


def test_a_create_drops_empty_fields_and_writes_dates_as_cometd_does() -> None:
    record = account("CREATE", Name="Acme", OwnerId="0055f000005mc66AAA", CreatedDate=1712693965000,
                     Signed_On__c=19822)
    payload = message(record)["data"]["payload"]
    assert set(payload) == {"ChangeEventHeader", "Name", "OwnerId", "CreatedDate", "Signed_On__c"}
    assert payload["CreatedDate"] == "2024-04-09T20:19:25.000Z"
    assert payload["Signed_On__c"] == "2024-04-09"  # epoch days
    assert payload["ChangeEventHeader"]["changedFields"] == []


def test_a_diff_field_keeps_its_name_but_not_its_diff_as_a_value() -> None:
    record = account("UPDATE", changed=["0x40"], diff=["0x40"], Description="@@ -1 +1 @@\n-a\n+b")
    payload = message(record)["data"]["payload"]
    assert "Description" not in payload
    assert payload["ChangeEventHeader"]["changedFields"] == ["Description"]
    assert payload["ChangeEventHeader"]["diffFields"] == ["Description"]


def test_a_delete_and_a_gap_event_carry_only_the_header() -> None:
    for change_type in ("DELETE", "GAP_UPDATE"):
        payload = message(account(change_type))["data"]["payload"]
        assert set(payload) == {"ChangeEventHeader"}
        assert parse_event(message(account(change_type))).change_type == change_type  # type: ignore[union-attr]


def test_a_platform_event_keeps_its_fields_and_gets_its_event_uuid_from_the_event_id() -> None:
    pe = EventSchema("dffQ2QLzDNHqwB8_sHMxdA", json.dumps(SIGN_REQUEST))
    record = {"CreatedDate": 1680978700517, "CreatedById": "005D0000001cSZsIAM", "Record_Id__c": "006000000000001AAA",
              "Rule__c": None}
    msg = cometd_message("/event/Sign_Request__e", pe, encode(SIGN_REQUEST, record), REPLAY,
                         "2ec0e371-1395-457f-9275-be1b527a72f7")
    assert msg["data"]["event"] == {"replayId": REPLAY, "EventUuid": "2ec0e371-1395-457f-9275-be1b527a72f7"}
    assert msg["data"]["payload"]["CreatedDate"] == "2023-04-08T18:31:40.517Z"
    event = parse_event(msg)
    assert isinstance(event, PlatformEvent)
    assert event.event_uuid == "2ec0e371-1395-457f-9275-be1b527a72f7"
    assert event.created_date is not None and event.created_date.year == 2023
    assert event.fields["Record_Id__c"] == "006000000000001AAA"


def test_a_payload_or_bitmap_that_does_not_decode_is_undecodable() -> None:
    with pytest.raises(UndecodableEvent):
        cometd_message(CDC, schema(), b"\x01\x02", REPLAY, "")
    with pytest.raises(UndecodableEvent):
        message(account("UPDATE", changed=["0xFFFFFF"]))
    with pytest.raises(UndecodableEvent):
        EventSchema("x", "{not json")


def test_a_switchable_person_name_is_a_compound_field_too() -> None:
    # Person accounts: Name is [null, string, record] (Salesforce's "optional Switchable_PersonName").
    name = {"type": "record", "name": "Switchable_PersonName", "fields": [
        {"name": "Salutation", "type": ["null", "string"]}, {"name": "FirstName", "type": ["null", "string"]},
        {"name": "LastName", "type": ["null", "string"]}]}
    fields = SchemaFields({"type": "record", "name": "AccountChangeEvent", "fields": [
        {"name": "ChangeEventHeader", "type": "string"}, {"name": "Name", "type": ["null", "string", name]}]})
    assert fields.decode(["0x02", "1-0x02"]) == ["Name", "Name.FirstName"]


def test_the_header_alone_decodes_as_the_whole_event_s_header() -> None:
    """Intake passes its own write-backs over on the header: it must be the header the whole decode gives."""
    record = account("UPDATE", changed=["0x628", "3-0x02"], nulled=["0x20"], Stage__c="Closed Won",
                     LastModifiedDate=1712693965123, BillingAddress={"Street": None, "City": "Paris", "State": None,
                                                                     "PostalCode": None, "Country": None})
    payload = encode(ACCOUNT_CDC, record)
    head = header_message(CDC, schema(), payload, REPLAY)
    assert head is not None
    assert head == {"channel": CDC, "data": {"schema": "IeRuaY6cbI_HsV8Rv1Mc5g", "event": {"replayId": REPLAY},
                                             "payload": {"ChangeEventHeader": message(record)["data"]["payload"][
                                                 "ChangeEventHeader"]}}}
    header = update_header(head)
    assert header is not None
    assert list(header.changed_fields) == ["BillingAddress", "Phone", "LastModifiedDate", "Stage__c",
                                           "BillingAddress.City"]


def test_only_the_header_s_bytes_are_read() -> None:
    """A payload cut after its header: the header decodes, the whole event does not (it would be parked)."""
    full = encode(ACCOUNT_CDC, account("UPDATE", changed=["0x400"], Stage__c="Closed Won"))
    header_only = encode({**ACCOUNT_CDC, "fields": ACCOUNT_CDC["fields"][:1]},
                         {"ChangeEventHeader": account("UPDATE", changed=["0x400"])["ChangeEventHeader"]})
    assert full.startswith(header_only) and len(full) > len(header_only)
    head = header_message(CDC, schema(), header_only, REPLAY)
    assert head is not None and head["data"]["payload"]["ChangeEventHeader"]["changedFields"] == ["Stage__c"]
    with pytest.raises(UndecodableEvent):
        cometd_message(CDC, schema(), header_only, REPLAY, "")


def test_no_header_message_for_a_platform_event_or_a_schema_that_does_not_start_with_the_header() -> None:
    pe = EventSchema("dffQ2QLzDNHqwB8_sHMxdA", json.dumps(SIGN_REQUEST))
    record = {"CreatedDate": 1680978700517, "CreatedById": "005D0000001cSZsIAM", "Record_Id__c": "006000000000001AAA",
              "Rule__c": None}
    assert header_message("/event/Sign_Request__e", pe, encode(SIGN_REQUEST, record), REPLAY) is None
    fields = ACCOUNT_CDC["fields"]
    reordered = {**ACCOUNT_CDC, "fields": [*fields[1:], fields[0]]}
    late = EventSchema("late", json.dumps(reordered))
    assert header_message(CDC, late, encode(reordered, account("UPDATE", changed=["0x400"])), REPLAY) is None
