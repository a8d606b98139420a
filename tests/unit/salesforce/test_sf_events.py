"""Event parsing on the envelopes quoted in reference/salesforce-facts.md (§2.3, §2.6, §3)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, parse_event

CREATE = {"data": {"schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
  "payload": {"ChangeEventHeader": {"entityName": "Account", "recordIds": ["001xx000003DGb2AAG"],
     "changeType": "CREATE", "changeOrigin": "com.salesforce.core",
     "transactionKey": "001b7375-0086-250e-e6ca-b99bc3a8b69f", "sequenceNumber": 1, "isTransactionEnd": True,
     "commitTimestamp": 1501010206653, "commitNumber": 92847272780, "commitUser": "005xx000001SwiUAAS"},
   "Name": "Acme", "Description": "Everyone is talking about the cloud. But what does it mean?",
   "OwnerId": "005xx000001SwiUAAS", "CreatedDate": "2017-07-25T19:16:44Z", "CreatedById": "005xx000001SwiUAAS",
   "LastModifiedDate": "2017-07-25T19:16:44Z", "LastModifiedById": "005xx000001SwiUAAS"},
  "event": {"replayId": 6421}},
 "channel": "/data/ChangeEvents"}

UPDATE_DATA = {"schema": "I8b-dYxvxs5wOtCBr4qsew",
 "payload": {"LastModifiedDate": "2020-12-15T23:09:18.000Z", "Industry": "Biotechnology",
  "External_Account_ID__c": "1ABC", "Fax": "4155551212",
  "ChangeEventHeader": {"commitNumber": 74487681550, "commitUser": "005RM000001hv4SYAQ", "sequenceNumber": 1,
   "entityName": "Account", "changeType": "UPDATE", "changedFields": ["Fax", "LastModifiedDate"],
   "changeOrigin": "com/salesforce/api/soap/51.0;client=SfdcInternalAPI/",
   "transactionKey": "0005e192-9e62-2554-3880-3c3718bd6308", "commitTimestamp": 1608073758000,
   "recordIds": ["001RM000004UF9sYAG"]}},
 "event": {"replayId": 12}}

DELETE_DATA = {"schema": "I8b-dYxvxs5wOtCBr4qsew",
 "payload": {"ChangeEventHeader": {"commitNumber": 74487681551, "commitUser": "005RM000001hv4SYAQ",
   "sequenceNumber": 1, "entityName": "Account", "changeType": "DELETE", "changedFields": [],
   "changeOrigin": "", "transactionKey": "0005e192-9e62-2554-3880-3c3718bd6309",
   "commitTimestamp": 1608073759000, "recordIds": ["001RM000004UF9sYAG"]}},
 "event": {"replayId": 13}}

GAP_PAYLOAD = {"ChangeEventHeader": {"entityName": "Account", "recordIds": ["001ZM000001n4n5YAA"],
 "changeType": "GAP_CREATE", "changeOrigin": "", "transactionKey": "000a50de-05dd-07c4-22fb-44b7f9e72ab5",
 "sequenceNumber": 19, "commitTimestamp": 1714417112000, "commitNumber": 72784468115,
 "commitUser": "005ZM000000Q6ipYAC", "nulledFields": [], "diffFields": [], "changedFields": []}}

OVERFLOW_PAYLOAD = {"ChangeEventHeader": {"entityName": "Account", "recordIds": ["000000000000000AAA"],
 "changeType": "GAP_OVERFLOW", "changeOrigin": "com/salesforce/api/soap/61.0;client=Workbench/",
 "transactionKey": "000a5148-405c-21fe-86ce-03205d7404ad", "sequenceNumber": 6,
 "commitTimestamp": 1714417568000, "commitNumber": 72784848482, "commitUser": "005ZM000000M6o1YAC",
 "nulledFields": [], "diffFields": [], "changedFields": []}}

PLATFORM = {"data": {"schema": "dffQ2QLzDNHqwB8_sHMxdA",
  "payload": {"CreatedDate": "2023-04-09T18:31:40.517Z", "CreatedById": "005D0000001cSZs",
             "Printer_Model__c": "XZO-5", "Serial_Number__c": "12345", "Ink_Percentage__c": 0.2},
  "event": {"EventUuid": "2ec0e371-1395-457f-9275-be1b527a72f7", "replayId": 2112}},
 "channel": "/event/Low_Ink__e"}


def test_create_event_on_the_generic_channel() -> None:
    event = parse_event(CREATE)
    assert isinstance(event, ChangeEvent)
    assert (event.channel, event.replay_id, event.entity, event.change_type) == (
        "/data/ChangeEvents", 6421, "Account", "CREATE")
    assert event.record_ids == ("001xx000003DGb2AAG",)
    assert event.changed_fields == ()
    assert event.fields["Name"] == "Acme" and "ChangeEventHeader" not in event.fields
    assert (event.commit_timestamp_ms, event.commit_user, event.sequence_number) == (
        1501010206653, "005xx000001SwiUAAS", 1)
    assert event.transaction_key == "001b7375-0086-250e-e6ca-b99bc3a8b69f"
    assert event.schema_id == "IeRuaY6cbI_HsV8Rv1Mc5g"
    assert not event.is_gap and not event.is_overflow


def test_update_event_carries_changed_fields_only() -> None:
    event = parse_event({"data": UPDATE_DATA, "channel": "/data/AccountChangeEvent"})
    assert isinstance(event, ChangeEvent)
    assert event.change_type == "UPDATE" and event.replay_id == 12
    assert event.changed_fields == ("Fax", "LastModifiedDate")
    assert event.fields == {"LastModifiedDate": "2020-12-15T23:09:18.000Z", "Industry": "Biotechnology",
                            "External_Account_ID__c": "1ABC", "Fax": "4155551212"}
    assert event.change_origin == "com/salesforce/api/soap/51.0;client=SfdcInternalAPI/"


def test_delete_event_has_no_fields() -> None:
    event = parse_event({"data": DELETE_DATA, "channel": "/data/AccountChangeEvent"})
    assert isinstance(event, ChangeEvent)
    assert (event.change_type, event.fields, event.record_ids) == ("DELETE", {}, ("001RM000004UF9sYAG",))


def test_gap_event() -> None:
    event = parse_event({"channel": "/data/AccountChangeEvent",
                         "data": {"schema": "x", "payload": GAP_PAYLOAD, "event": {"replayId": 77}}})
    assert isinstance(event, ChangeEvent)
    assert event.is_gap and not event.is_overflow and event.base_change_type == "CREATE"
    assert event.record_ids == ("001ZM000001n4n5YAA",)


def test_overflow_event() -> None:
    event = parse_event({"channel": "/data/AccountChangeEvent",
                         "data": {"schema": "x", "payload": OVERFLOW_PAYLOAD, "event": {"replayId": 78}}})
    assert isinstance(event, ChangeEvent)
    assert event.is_overflow and not event.is_gap
    assert event.record_ids == ("000000000000000AAA",)


def test_platform_event() -> None:
    event = parse_event(PLATFORM)
    assert isinstance(event, PlatformEvent)
    assert (event.channel, event.replay_id, event.name) == ("/event/Low_Ink__e", 2112, "Low_Ink__e")
    assert event.event_uuid == "2ec0e371-1395-457f-9275-be1b527a72f7"
    assert event.created_date == datetime(2023, 4, 9, 18, 31, 40, 517000, tzinfo=UTC)
    assert event.created_by_id == "005D0000001cSZs"
    assert event.fields["Printer_Model__c"] == "XZO-5"


def _broken(path: list[str | int], value: Any, base: dict[str, Any] = CREATE) -> dict[str, Any]:
    message = copy.deepcopy(base)
    target: Any = message
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return message


@pytest.mark.parametrize(
    ("message", "channel", "replay_id"),
    [
        ("not a dict", None, None),
        ([CREATE], None, None),
        ({"channel": "/data/ChangeEvents"}, "/data/ChangeEvents", None),
        (_broken(["data", "event", "replayId"], KeyError), "/data/ChangeEvents", None),
        (_broken(["data", "event", "replayId"], "abc"), "/data/ChangeEvents", None),
        (_broken(["data", "event", "replayId"], True), "/data/ChangeEvents", None),
        (_broken(["data", "payload"], None), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader"], "x"), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader", "changeType"], "RENAME"), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader", "recordIds"], []), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader", "recordIds"], "001"), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader", "entityName"], None), "/data/ChangeEvents", 6421),
        (_broken(["data", "payload", "ChangeEventHeader", "commitTimestamp"], {"x": 1}), "/data/ChangeEvents",
         6421),
        (_broken(["channel"], 5), None, 6421),
        (_broken(["data", "payload", "CreatedDate"], "yesterday", PLATFORM), "/event/Low_Ink__e", 2112),
        (_broken(["channel"], "/topic/Foo", PLATFORM), "/topic/Foo", 2112),
    ],
)
def test_malformed_messages_raise_malformed_event(message: Any, channel: str | None, replay_id: int | None) -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(message)
    assert (caught.value.channel, caught.value.replay_id) == (channel, replay_id)
    assert caught.value.reason
