"""Change Data Capture and platform events as a CometD subscriber receives them (exact envelopes)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from sfsign.emulator.server import Emulator

OPP = "/data/OpportunityChangeEvent"
QUOTE = "/data/QuoteChangeEvent"
GENERIC = "/data/ChangeEvents"
PE = "/event/Sign_Request__e"
HEADER_KEYS = {"entityName", "recordIds", "changeType", "changeOrigin", "transactionKey", "sequenceNumber",
               "commitTimestamp", "commitNumber", "commitUser", "changedFields"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _user_id(emulator: Emulator, username: str) -> str:
    user = emulator.org.store.user_by_username(username)
    assert user is not None
    return str(user["Id"])


def _check_envelope(message: dict[str, Any], channel: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shape shared by every CDC message; returns (body fields, header)."""
    assert set(message) == {"data", "channel"}
    assert message["channel"] == channel
    data = message["data"]
    assert set(data) == {"schema", "payload", "event"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", data["schema"])
    assert set(data["event"]) == {"replayId"} and isinstance(data["event"]["replayId"], int)
    payload = dict(data["payload"])
    header = payload.pop("ChangeEventHeader")
    assert set(header) == HEADER_KEYS  # no nulledFields / diffFields over CometD
    assert isinstance(header["commitTimestamp"], int) and isinstance(header["commitNumber"], int)
    assert isinstance(header["sequenceNumber"], int) and header["sequenceNumber"] >= 1
    assert re.fullmatch(r"[0-9a-f-]{36}", header["transactionKey"])
    return payload, header


async def test_update_carries_only_the_changed_fields(
    emulator: Emulator, bayeux: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    rep = emulator.rep_username
    assert rep is not None
    await bayeux.start((OPP, -1))
    await ctl.update("Opportunity", opp, {"StageName": "Negotiation/Review"}, user=rep)
    [message] = await bayeux.events(1)
    payload, header = _check_envelope(message, OPP)
    assert header["entityName"] == "Opportunity" and header["recordIds"] == [opp]
    assert header["changeType"] == "UPDATE" and header["changeOrigin"] == ""
    assert header["commitUser"] == _user_id(emulator, rep)
    assert {"StageName", "LastModifiedDate"} <= set(header["changedFields"])
    assert set(payload) == set(header["changedFields"])
    assert payload["StageName"] == "Negotiation/Review"
    assert ISO_Z.match(payload["LastModifiedDate"])
    assert "Name" not in payload and "SystemModstamp" not in payload


async def test_create_carries_the_non_empty_fields(emulator: Emulator, bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    created = await ctl.post("/_control/records/Opportunity", {"fields": {
        "Name": "CDC create", "StageName": "Prospecting", "CloseDate": "2030-01-31"}})
    [message] = await bayeux.events(1)
    payload, header = _check_envelope(message, OPP)
    assert header["changeType"] == "CREATE" and header["recordIds"] == [created["id"]]
    assert header["changedFields"] == []
    assert payload["Name"] == "CDC create" and payload["CloseDate"] == "2030-01-31"
    assert ISO_Z.match(payload["CreatedDate"]) and payload["CreatedById"] == header["commitUser"]
    assert all(value is not None for value in payload.values())
    assert not {"Id", "IsDeleted", "SystemModstamp"} & set(payload)


async def test_delete_carries_the_header_only(emulator: Emulator, bayeux: Any, ctl: Any, http: httpx.AsyncClient
                                              ) -> None:
    created = await ctl.post("/_control/records/Opportunity", {"fields": {
        "Name": "to delete", "StageName": "Prospecting", "CloseDate": "2030-01-31"}})
    await bayeux.start((OPP, -1))
    response = await http.request("DELETE", f"/_control/records/Opportunity/{created['id']}", json={},
                                  headers={"X-Control-Token": emulator.control_token})
    assert response.status_code == 200, response.text
    [message] = await bayeux.events(1)
    payload, header = _check_envelope(message, OPP)
    assert payload == {}
    assert header["changeType"] == "DELETE" and header["changedFields"] == []


async def test_quote_changes_on_the_quote_channel(emulator: Emulator, bayeux: Any, ctl: Any) -> None:
    [quote] = await ctl.query("SELECT Id FROM Quote LIMIT 1")
    await bayeux.start((QUOTE, -1))
    await ctl.update("Quote", quote["Id"], {"Status": "In Review"})
    [message] = await bayeux.events(1)
    payload, header = _check_envelope(message, QUOTE)
    assert header["entityName"] == "Quote" and header["changeType"] == "UPDATE"
    assert payload["Status"] == "In Review"
    assert set(payload) == set(header["changedFields"])


async def test_generic_channel_carries_every_selected_entity_under_its_own_name(
    emulator: Emulator, bayeux: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    [quote] = await ctl.query("SELECT Id FROM Quote LIMIT 1")
    await bayeux.start((GENERIC, -1))
    await ctl.touch(opp, 1)
    await ctl.update("Quote", quote["Id"], {"Status": "Approved"})
    messages = await bayeux.events(2)
    assert [m["channel"] for m in messages] == [GENERIC, GENERIC]
    entities = [_check_envelope(m, GENERIC)[1]["entityName"] for m in messages]
    assert entities == ["Opportunity", "Quote"]
    opp_ids = [e.replay_id for e in emulator.org.bus.retained(OPP)]
    assert messages[0]["data"]["event"]["replayId"] == opp_ids[-1]


async def test_platform_event_from_control_carries_event_uuid(
    emulator: Emulator, bayeux: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    rep = emulator.rep_username
    await bayeux.start((PE, -1))
    published = await ctl.post("/_control/events/Sign_Request__e", {"user": rep, "fields": {
        "RecordId__c": opp, "Reason__c": "manual"}})
    [message] = await bayeux.events(1)
    assert set(message) == {"data", "channel"} and message["channel"] == PE
    data = message["data"]
    assert set(data) == {"schema", "payload", "event"}
    assert set(data["event"]) == {"EventUuid", "replayId"}
    assert data["event"]["EventUuid"] == published["eventUuid"]
    assert re.fullmatch(r"[0-9a-f-]{36}", data["event"]["EventUuid"])
    payload = data["payload"]
    assert payload["RecordId__c"] == opp and payload["Reason__c"] == "manual"
    assert ISO_Z.match(payload["CreatedDate"])
    assert _user_id(emulator, str(rep)).startswith(payload["CreatedById"])


async def test_platform_event_published_over_rest(
    emulator: Emulator, bayeux: Any, ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((PE, -1))
    response = await http.post("/services/data/v68.0/sobjects/Sign_Request__e/", json={"RecordId__c": opp},
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    [enqueued] = body["errors"]
    assert enqueued["statusCode"] == "OPERATION_ENQUEUED"
    [message] = await bayeux.events(1)
    assert message["data"]["event"]["EventUuid"] == enqueued["message"]


async def test_rest_writes_carry_the_rest_change_origin(
    emulator: Emulator, bayeux: Any, ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    response = await http.patch(f"/services/data/v68.0/sobjects/Opportunity/{opp}",
                                json={"Description": "over REST"},
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204, response.text
    [message] = await bayeux.events(1)
    _, header = _check_envelope(message, OPP)
    assert header["changeOrigin"] == "com/salesforce/api/rest/68.0"
    assert header["commitUser"] == _user_id(emulator, emulator.login.username)


async def test_gap_and_overflow_events_carry_no_field_values(
    emulator: Emulator, bayeux: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    await ctl.post("/_control/streaming/gap", {"entity": "Opportunity", "recordIds": [opp],
                                               "changeType": "GAP_UPDATE"})
    await ctl.post("/_control/streaming/overflow", {"entity": "Opportunity"})
    gap, overflow = await bayeux.events(2)
    gap_payload, gap_header = _check_envelope(gap, OPP)
    assert gap_payload == {}
    assert gap_header["changeType"] == "GAP_UPDATE" and gap_header["recordIds"] == [opp]
    overflow_payload, overflow_header = _check_envelope(overflow, OPP)
    assert overflow_payload == {}
    assert overflow_header["changeType"] == "GAP_OVERFLOW"
    assert overflow_header["recordIds"] == ["000000000000000AAA"]


async def test_only_selected_entities_have_change_events(
    emulator: Emulator, bayeux: Any, ctl: Any
) -> None:
    [account] = await ctl.query("SELECT Id FROM Account LIMIT 1")
    await bayeux.start((GENERIC, -1))
    refused = await bayeux.subscribe("/data/AccountChangeEvent", -1)
    assert refused["successful"] is False
    await ctl.update("Account", account["Id"], {"Phone": "+49 30 1"})
    assert (await bayeux.connect())[1] == []
    selected = await ctl.post("/_control/streaming/cdc-entities",
                              {"entities": ["Opportunity", "Quote", "Account"]})
    assert selected["entities"] == ["Account", "Opportunity", "Quote"]
    assert (await bayeux.subscribe("/data/AccountChangeEvent", -1))["successful"] is True
    await ctl.update("Account", account["Id"], {"Phone": "+49 30 2"})
    messages = await bayeux.events(2)
    assert sorted(m["channel"] for m in messages) == ["/data/AccountChangeEvent", GENERIC]


async def test_at_most_five_entities_can_be_selected(emulator: Emulator, http: httpx.AsyncClient) -> None:
    response = await http.post("/_control/streaming/cdc-entities",
                               json={"entities": ["Opportunity", "Quote", "Account", "Contact", "Product2",
                                                  "Pricebook2"]},
                               headers={"X-Control-Token": emulator.control_token})
    assert response.status_code == 400


async def test_one_transaction_shares_its_key_and_numbers_its_changes(
    emulator: Emulator, bayeux: Any, ctl: Any, http: httpx.AsyncClient, token: str
) -> None:
    opps = await ctl.query("SELECT Id FROM Opportunity WHERE IsClosed = false LIMIT 2")
    assert len(opps) == 2
    await bayeux.start((OPP, -1))
    response = await http.patch(
        "/services/data/v68.0/composite/sobjects",
        json={"allOrNone": True, "records": [
            {"attributes": {"type": "Opportunity"}, "id": o["Id"], "Description": "batch"} for o in opps]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    messages = await bayeux.events(2)
    headers = [_check_envelope(m, OPP)[1] for m in messages]
    assert headers[0]["transactionKey"] == headers[1]["transactionKey"]
    assert [h["sequenceNumber"] for h in headers] == [1, 2]
    assert [h["recordIds"][0] for h in headers] == [o["Id"] for o in opps]
