"""Record types over real HTTPS, as Salesforce has them: describe's `recordTypeInfos` (Master always, with
its fixed id), the `RecordType` sObject queryable, and an object's `RecordTypeId` field only once it has a
record type besides Master (before that, SOQL naming it is INVALID_FIELD)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

V = "/services/data/v68.0"
MASTER = "012000000000000AAA"
INFO_KEYS = ["active", "available", "defaultRecordTypeMapping", "developerName", "master", "name", "recordTypeId",
             "urls"]


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def _infos(api: httpx.AsyncClient, sobject: str) -> list[dict[str, object]]:
    response = await api.get(f"{V}/sobjects/{sobject}/describe")
    assert response.status_code == 200, response.text
    return list(response.json()["recordTypeInfos"])


async def test_describe_lists_only_master_while_the_object_has_no_record_type(api: httpx.AsyncClient) -> None:
    [master] = await _infos(api, "Opportunity")
    assert sorted(master) == INFO_KEYS
    assert master == {"active": True, "available": True, "defaultRecordTypeMapping": True, "developerName": "Master",
                      "master": True, "name": "Master", "recordTypeId": MASTER,
                      "urls": {"layout": f"{V}/sobjects/Opportunity/describe/layouts/{MASTER}"}}
    fields = {f["name"] for f in (await api.get(f"{V}/sobjects/Opportunity/describe")).json()["fields"]}
    assert "RecordTypeId" not in fields


async def test_record_type_field_is_invalid_until_the_first_record_type(api: httpx.AsyncClient,
                                                                         ctl: Any) -> None:
    before = await api.get(f"{V}/query", params={"q": "SELECT Id, RecordTypeId FROM Opportunity"})
    assert before.status_code == 400
    [error] = before.json()
    assert error["errorCode"] == "INVALID_FIELD"
    assert "No such column 'RecordTypeId' on entity 'Opportunity'" in error["message"]
    by_name = await api.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity WHERE "
                                                         "RecordType.DeveloperName = 'Enterprise'"})
    assert by_name.status_code == 400 and by_name.json()[0]["errorCode"] == "INVALID_FIELD"

    enterprise = (await ctl.post("/_control/record-types", {"sobject": "Opportunity", "developerName": "Enterprise",
                                                            "name": "Enterprise Deal"}))["id"]
    assert enterprise.startswith("012") and len(enterprise) == 18
    opp = await ctl.an_opportunity()
    await ctl.update("Opportunity", opp, {"RecordTypeId": enterprise})
    rows = (await api.get(f"{V}/query", params={
        "q": "SELECT Id, RecordTypeId, RecordType.DeveloperName FROM Opportunity "
             "WHERE RecordType.DeveloperName IN ('Enterprise')"})).json()["records"]
    assert [(r["Id"], r["RecordTypeId"], r["RecordType"]["DeveloperName"]) for r in rows] == [
        (opp, enterprise, "Enterprise")]
    quote = await api.get(f"{V}/query", params={"q": "SELECT Id, RecordTypeId FROM Quote"})
    assert quote.status_code == 400, "a record type of Opportunity gives Quote no RecordTypeId"


async def test_describe_lists_record_types_and_master_last(api: httpx.AsyncClient, ctl: Any) -> None:
    renewal = (await ctl.post("/_control/record-types", {"sobject": "Opportunity", "developerName": "Renewal"}))["id"]
    legacy = (await ctl.post("/_control/record-types", {"sobject": "Opportunity", "developerName": "Legacy",
                                                        "active": False}))["id"]
    infos = await _infos(api, "Opportunity")
    assert [i["developerName"] for i in infos] == ["Legacy", "Renewal", "Master"]
    by_name = {i["developerName"]: i for i in infos}
    assert all(sorted(i) == INFO_KEYS for i in infos)
    assert by_name["Renewal"] == {"active": True, "available": True, "defaultRecordTypeMapping": True,
                                  "developerName": "Renewal", "master": False, "name": "Renewal",
                                  "recordTypeId": renewal,
                                  "urls": {"layout": f"{V}/sobjects/Opportunity/describe/layouts/{renewal}"}}
    assert by_name["Legacy"]["active"] is False and by_name["Legacy"]["available"] is False
    assert by_name["Legacy"]["recordTypeId"] == legacy
    assert by_name["Master"]["master"] is True and by_name["Master"]["defaultRecordTypeMapping"] is False
    rows = (await api.get(f"{V}/query", params={
        "q": "SELECT Id, DeveloperName, IsActive, SobjectType FROM RecordType WHERE SobjectType = 'Opportunity' "
             "ORDER BY DeveloperName"})).json()["records"]
    assert [(r["DeveloperName"], r["IsActive"]) for r in rows] == [("Legacy", False), ("Renewal", True)]
    fields = {f["name"]: f for f in (await api.get(f"{V}/sobjects/Opportunity/describe")).json()["fields"]}
    assert fields["RecordTypeId"]["type"] == "reference"
    assert fields["RecordTypeId"]["referenceTo"] == ["RecordType"]
    assert fields["RecordTypeId"]["relationshipName"] == "RecordType"


async def test_record_type_must_exist_to_be_set(api: httpx.AsyncClient, ctl: Any) -> None:
    await ctl.post("/_control/record-types", {"sobject": "Opportunity", "developerName": "Enterprise"})
    opp = await ctl.an_opportunity()
    response = await api.patch(f"{V}/sobjects/Opportunity/{opp}", json={"RecordTypeId": "012000000000099AAA"})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_CROSS_REFERENCE_KEY"


async def test_only_an_active_record_type_of_the_same_object_can_be_applied(api: httpx.AsyncClient,
                                                                            ctl: Any) -> None:
    legacy = (await ctl.post("/_control/record-types", {"sobject": "Opportunity", "developerName": "Legacy",
                                                        "active": False}))["id"]
    other = (await ctl.post("/_control/record-types", {"sobject": "Account", "developerName": "Partner"}))["id"]
    opp = await ctl.an_opportunity()
    for rt in (legacy, other):
        response = await api.patch(f"{V}/sobjects/Opportunity/{opp}", json={"RecordTypeId": rt})
        assert response.status_code == 400, rt
        [error] = response.json()
        assert error == {"errorCode": "INVALID_CROSS_REFERENCE_KEY", "fields": ["RecordTypeId"],
                         "message": f"Record Type ID: this ID value isn't valid for the user: {rt}"}
