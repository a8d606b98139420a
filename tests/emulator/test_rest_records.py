"""REST record resources over real HTTPS: status codes, bodies and headers as Salesforce sends them."""

from __future__ import annotations

import httpx
import pytest

from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def first_id(api: httpx.AsyncClient, soql: str) -> str:
    response = await api.get(f"{V}/query", params={"q": soql})
    assert response.status_code == 200, response.text
    return str(response.json()["records"][0]["Id"])


async def test_version_list_is_public_and_uncounted(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await http.get("/services/data/")
    assert response.status_code == 200 and "Sforce-Limit-Info" not in response.headers
    versions = response.json()
    assert versions[0] == {"label": "Summer '14", "url": "/services/data/v31.0", "version": "31.0"}
    assert {"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"} in versions
    assert versions[-1] == {"label": "Winter '27", "url": "/services/data/v68.0", "version": "68.0"}
    assert emulator.org.api_calls == 0


async def test_invalid_session_is_a_json_list(http: httpx.AsyncClient) -> None:
    response = await http.get(f"{V}/sobjects", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


async def test_every_call_counts_and_carries_the_limit_header(api: httpx.AsyncClient, emulator: Emulator) -> None:
    first = await api.get(f"{V}/sobjects/")
    second = await api.get(f"{V}/nope")
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    assert second.status_code == 404 and second.headers["Sforce-Limit-Info"] == "api-usage=2/15000"
    assert second.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
    limits = (await api.get(f"{V}/limits/")).json()
    assert limits["DailyApiRequests"] == {"Max": 15000, "Remaining": 15000 - 3}


async def test_unsupported_version_and_method(api: httpx.AsyncClient) -> None:
    assert (await api.get("/services/data/v30.0/sobjects")).status_code == 410  # retired in Summer '25
    assert (await api.get("/services/data/v69.0/sobjects")).status_code == 404  # not released yet
    response = await api.put(f"{V}/sobjects/Account", json={})
    assert response.status_code == 405
    assert response.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"
    assert (await api.get("/services/data/v68.0/")).json()["query"] == "/services/data/v68.0/query"


async def test_create_read_update_delete(api: httpx.AsyncClient, emulator: Emulator) -> None:
    created = await api.post(f"{V}/sobjects/Account/", json={"Name": "Initrode", "BillingCity": "Austin"})
    assert created.status_code == 201
    body = created.json()
    assert body == {"id": body["id"], "success": True, "errors": []} and body["id"].startswith("001")
    rid = body["id"]
    got = await api.get(f"{V}/sobjects/Account/{rid}", params={"fields": "Name,BillingCity,CreatedDate"})
    assert got.json() == {"attributes": {"type": "Account", "url": f"{V}/sobjects/Account/{rid}"},
                          "Name": "Initrode", "BillingCity": "Austin", "CreatedDate": got.json()["CreatedDate"]}
    assert got.json()["CreatedDate"].endswith(".000+0000")
    patched = await api.patch(f"{V}/sobjects/Account/{rid}", json={"Name": "Initrode Inc"})
    assert patched.status_code == 204 and patched.content == b""
    via_post = await api.post(f"{V}/sobjects/Account/{rid}?_HttpMethod=PATCH", json={"Phone": "+1 512 555 0100"})
    assert via_post.status_code == 204
    full = (await api.get(f"{V}/sobjects/Account/{rid}")).json()
    assert full["Name"] == "Initrode Inc" and full["Phone"] == "+1 512 555 0100" and full["IsDeleted"] is False
    user = emulator.org.store.user_by_username(emulator.login.username)
    assert user is not None and full["LastModifiedById"] == user["Id"]
    head = await api.head(f"{V}/sobjects/Account/{rid}")
    assert head.status_code == 200 and head.content == b""
    assert (await api.get(f"{V}/sobjects/Account/{rid}")).status_code == 200  # HEAD changed nothing
    deleted = await api.delete(f"{V}/sobjects/Account/{rid}")
    assert deleted.status_code == 204
    again = await api.delete(f"{V}/sobjects/Account/{rid}")
    assert again.status_code == 404
    assert again.json() == [{"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}]


async def test_write_errors(api: httpx.AsyncClient) -> None:
    opp = await first_id(api, "SELECT Id FROM Opportunity LIMIT 1")
    unknown = await api.patch(f"{V}/sobjects/Opportunity/{opp}", json={"Stage": "x"})
    assert unknown.status_code == 400
    assert unknown.json() == [{"message": "No such column 'Stage' on sobject of type Opportunity",
                               "errorCode": "INVALID_FIELD", "fields": []}]
    readonly = await api.patch(f"{V}/sobjects/Opportunity/{opp}", json={"IsWon": True})
    assert readonly.json()[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    wrong_type = await api.patch(f"{V}/sobjects/Account/{opp}", json={"Name": "x"})
    assert wrong_type.status_code == 400
    assert wrong_type.json() == [{"message": f"Account ID: id value of incorrect type: {opp}",
                                  "errorCode": "MALFORMED_ID", "fields": ["Id"]}]
    bad_json = await api.post(f"{V}/sobjects/Account", content=b'{"Name": ',
                              headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    missing = await api.post(f"{V}/sobjects/Opportunity", json={"Name": "x"})
    assert missing.json() == [{"message": "Required fields are missing: [StageName, CloseDate]",
                               "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["StageName", "CloseDate"]}]
    not_an_id = await api.get(f"{V}/sobjects/Account/garbage")
    assert not_an_id.status_code == 404
    assert not_an_id.json()[0]["message"] == "Provided external ID field does not exist or is not accessible: garbage"
    unknown_type = await api.get(f"{V}/sobjects/Nope/{opp}")
    assert unknown_type.status_code == 404


async def test_upsert_by_external_id(api: httpx.AsyncClient) -> None:
    opp = await first_id(api, "SELECT Id FROM Opportunity WHERE StageName = 'Qualification' LIMIT 1")
    await api.patch(f"{V}/sobjects/Opportunity/{opp}", json={"Sign_Transaction_Id__c": "tx-42"})
    updated = await api.patch(f"{V}/sobjects/Opportunity/Sign_Transaction_Id__c/tx-42", json={"Sign_Level__c": "B-T"})
    assert updated.status_code == 200
    assert updated.json() == {"id": opp, "success": True, "errors": [], "created": False}
    old_api = await api.patch("/services/data/v45.0/sobjects/Opportunity/Sign_Transaction_Id__c/tx-42",
                              json={"Sign_Level__c": "B-B"})
    assert old_api.status_code == 204
    created = await api.patch(f"{V}/sobjects/Opportunity/Sign_Transaction_Id__c/tx-43",
                              json={"Name": "New", "StageName": "Prospecting", "CloseDate": "2027-01-01"})
    assert created.status_code == 201 and created.json()["created"] is True
    fetched = await api.get(f"{V}/sobjects/Opportunity/Sign_Transaction_Id__c/tx-43")
    assert fetched.json()["Name"] == "New"
    not_external = await api.patch(f"{V}/sobjects/Opportunity/Name/x", json={})
    assert not_external.status_code == 404
    assert not_external.json()[0]["message"] == "Provided external ID field does not exist or is not accessible: Name"
    update_only = await api.patch(f"{V}/sobjects/Opportunity/Sign_Transaction_Id__c/tx-44?updateOnly=true", json={})
    assert update_only.status_code == 404


async def test_describe(api: httpx.AsyncClient) -> None:
    described = (await api.get(f"{V}/sobjects/Opportunity/describe/")).json()
    assert described["name"] == "Opportunity" and described["keyPrefix"] == "006"
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["StageName"]["type"] == "picklist" and fields["StageName"]["nillable"] is False
    assert fields["Amount"]["type"] == "currency" and fields["CloseDate"]["type"] == "date"
    assert fields["AccountId"]["referenceTo"] == ["Account"] and fields["AccountId"]["relationshipName"] == "Account"
    status = fields["Sign_Status__c"]
    assert status["custom"] is True and status["restrictedPicklist"] is True
    assert {"active": True, "defaultValue": False, "label": "Signed", "validFor": None, "value": "Signed"} in \
        status["picklistValues"]
    assert fields["Sign_Transaction_Id__c"]["externalId"] is True and fields["Sign_Transaction_Id__c"]["length"] == 64
    assert {"childSObject": "OpportunityLineItem", "field": "OpportunityId", "relationshipName": "OpportunityLineItems"
            }.items() <= next(r for r in described["childRelationships"]
                              if r["relationshipName"] == "OpportunityLineItems").items()
    basic = (await api.get(f"{V}/sobjects/Quote")).json()
    assert basic["objectDescribe"]["keyPrefix"] == "0Q0" and basic["recentItems"] == []
    names = [s["name"] for s in (await api.get(f"{V}/sobjects")).json()["sobjects"]]
    assert {"Opportunity", "Quote", "ContentVersion", "Sign_Request__e"} <= set(names)


async def test_platform_event_publish(api: httpx.AsyncClient) -> None:
    opp = await first_id(api, "SELECT Id FROM Opportunity LIMIT 1")
    response = await api.post(f"{V}/sobjects/Sign_Request__e/", json={"RecordId__c": opp})
    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("e00") and body["success"] is True
    [info] = body["errors"]
    assert info["statusCode"] == "OPERATION_ENQUEUED" and len(info["message"]) == 36 and info["fields"] == []
