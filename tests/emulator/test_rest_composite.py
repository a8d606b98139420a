"""sObject Collections and Composite over real HTTPS: per-record results, allOrNone, references, limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sfsign.emulator.rest import ROLLED_BACK
from sfsign.emulator.server import Emulator
from sfsign.emulator.store import Change

V = "/services/data/v68.0"


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def opportunity_ids(api: httpx.AsyncClient, n: int) -> list[str]:
    response = await api.get(f"{V}/query", params={"q": f"SELECT Id FROM Opportunity ORDER BY Name LIMIT {n}"})
    return [r["Id"] for r in response.json()["records"]]


def record(sobject: str, **values: Any) -> dict[str, Any]:
    return {"attributes": {"type": sobject}, **values}


async def test_collection_create_partial_success_is_one_transaction(api: httpx.AsyncClient,
                                                                    emulator: Emulator) -> None:
    batches: list[list[Change]] = []
    emulator.org.store.add_listener(batches.append)
    response = await api.post(f"{V}/composite/sobjects", json={"allOrNone": False, "records": [
        record("Account", Name="One"), record("Contact", LastName="x" * 81), record("Account", Name="Two"),
        {"Name": "typeless"}]})
    assert response.status_code == 200
    first, failed, third, typeless = response.json()
    assert first["success"] is True and first["id"].startswith("001") and first["errors"] == []
    assert failed["success"] is False and "id" not in failed
    assert failed["errors"][0]["statusCode"] == "STRING_TOO_LONG" and failed["errors"][0]["fields"] == ["LastName"]
    assert third["success"] is True
    assert typeless["errors"] == [{"statusCode": "INVALID_TYPE", "message": "Must send a concrete entity type.",
                                   "fields": []}]
    cdc = [c for batch in batches for c in batch if c.entity == "Account"]
    assert len(batches) == 1 and len({c.transaction_key for c in cdc}) == 1 and len(cdc) == 2
    assert cdc[0].change_origin == "com/salesforce/api/rest/68.0"


async def test_collection_update_all_or_none_rolls_back(api: httpx.AsyncClient, emulator: Emulator) -> None:
    ids = await opportunity_ids(api, 2)
    batches: list[list[Change]] = []
    emulator.org.store.add_listener(batches.append)
    response = await api.patch(f"{V}/composite/sobjects/", json={"allOrNone": True, "records": [
        record("Opportunity", id=ids[0], Sign_Status__c="Signed"),
        record("Opportunity", id=ids[1], Sign_Status__c="Bogus")]})
    assert response.status_code == 200
    ok, bad = response.json()
    assert ok == {"id": ids[0], "success": False, "errors": [ROLLED_BACK]}
    assert bad["id"] == ids[1] and bad["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert batches == []
    status = (await api.get(f"{V}/sobjects/Opportunity/{ids[0]}", params={"fields": "Sign_Status__c"})).json()
    assert status["Sign_Status__c"] is None


async def test_collection_update_needs_ids_and_reports_them(api: httpx.AsyncClient) -> None:
    ids = await opportunity_ids(api, 1)
    response = await api.patch(f"{V}/composite/sobjects", json={"records": [
        record("Opportunity", Sign_Level__c="B-B"), record("Opportunity", id=ids[0], Sign_Level__c="B-LTA")]})
    missing, ok = response.json()
    assert missing == {"success": False, "errors": [{"statusCode": "MISSING_ARGUMENT",
                                                     "message": "Id not specified in an update call", "fields": []}]}
    assert ok == {"id": ids[0], "success": True, "errors": []}


async def test_collection_delete_and_retrieve(api: httpx.AsyncClient) -> None:
    created = (await api.post(f"{V}/composite/sobjects", json={"records": [
        record("Account", Name="D1"), record("Account", Name="D2")]})).json()
    ids = [r["id"] for r in created]
    got = (await api.get(f"{V}/composite/sobjects/Account", params={"ids": ",".join(ids), "fields": "Name"})).json()
    assert [r["Name"] for r in got] == ["D1", "D2"]
    deleted = (await api.delete(f"{V}/composite/sobjects", params={"ids": f"{ids[0]},{ids[1]},nope"})).json()
    assert [r["success"] for r in deleted] == [True, True, False]
    assert deleted[2]["errors"][0]["statusCode"] == "MALFORMED_ID"


async def test_collection_limit(api: httpx.AsyncClient) -> None:
    response = await api.post(f"{V}/composite/sobjects",
                              json={"records": [record("Account", Name=str(n)) for n in range(201)]})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


async def test_collection_with_binary_parts(api: httpx.AsyncClient) -> None:
    opp = (await opportunity_ids(api, 1))[0]
    collection: dict[str, Any] = {"allOrNone": True, "records": [
        record("ContentVersion", PathOnClient="a.pdf", FirstPublishLocationId=opp),
        record("ContentVersion", PathOnClient="b.txt")]}
    collection["records"][0]["attributes"].update(binaryPartName="file1", binaryPartNameAlias="VersionData")
    collection["records"][1]["attributes"].update(binaryPartName="file2", binaryPartNameAlias="VersionData")
    response = await api.post(f"{V}/composite/sobjects", files={
        "collection": (None, json.dumps(collection).encode(), "application/json"),
        "file1": ("a.pdf", b"%PDF-a", "application/pdf"), "file2": ("b.txt", b"hello", "text/plain")})
    assert response.status_code == 200, response.text
    assert [r["success"] for r in response.json()] == [True, True]
    sizes = (await api.get(f"{V}/query", params={"q": "SELECT ContentSize, FileType FROM ContentVersion "
                                                        "ORDER BY ContentSize"})).json()["records"]
    assert [(s["ContentSize"], s["FileType"]) for s in sizes] == [(5, "TEXT"), (6, "PDF")]


async def test_composite_references_and_single_api_call(api: httpx.AsyncClient, emulator: Emulator) -> None:
    before = emulator.org.api_calls
    response = await api.post(f"{V}/composite", json={"compositeRequest": [
        {"method": "POST", "url": f"{V}/sobjects/Account", "referenceId": "newAccount", "body": {"Name": "Ref Co"}},
        {"method": "POST", "url": f"{V}/sobjects/Contact", "referenceId": "newContact",
         "body": {"LastName": "Ref", "AccountId": "@{newAccount.id}"}},
        {"method": "GET", "url": f"{V}/query?q=SELECT+Id,Name+FROM+Account+WHERE+Name='Ref+Co'",
         "referenceId": "found"},
        {"method": "PATCH", "url": f"{V}/sobjects/Account/@{{found.records[0].Id}}", "referenceId": "renamed",
         "body": {"Description": "via @{found.records[0].Name}"}},
    ]})
    assert response.status_code == 200
    assert emulator.org.api_calls == before + 1
    account, contact, found, renamed = response.json()["compositeResponse"]
    account_id = account["body"]["id"]
    assert account["httpStatusCode"] == 201 and account["referenceId"] == "newAccount"
    assert account["httpHeaders"] == {"Location": f"{V}/sobjects/Account/{account_id}"}
    assert contact["httpStatusCode"] == 201
    assert found["body"]["records"][0]["Id"] == account_id
    assert renamed == {"body": None, "httpHeaders": {}, "httpStatusCode": 204, "referenceId": "renamed"}
    got = (await api.get(f"{V}/sobjects/Contact/{contact['body']['id']}", params={"fields": "AccountId"})).json()
    assert got["AccountId"] == account_id
    described = (await api.get(f"{V}/sobjects/Account/{account_id}", params={"fields": "Description"})).json()
    assert described["Description"] == "via Ref Co"


async def test_composite_all_or_none_halts(api: httpx.AsyncClient, emulator: Emulator) -> None:
    batches: list[list[Change]] = []
    emulator.org.store.add_listener(batches.append)
    response = await api.post(f"{V}/composite", json={"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": f"{V}/sobjects/Account", "referenceId": "a", "body": {"Name": "Halted"}},
        {"method": "POST", "url": f"{V}/sobjects/Contact", "referenceId": "b", "body": {"AccountId": "@{a.id}"}},
        {"method": "POST", "url": f"{V}/sobjects/Account", "referenceId": "c", "body": {"Name": "Never"}},
    ]})
    assert response.status_code == 200
    first, failed, never = response.json()["compositeResponse"]
    halted = [{"errorCode": "PROCESSING_HALTED",
               "message": "The transaction was rolled back since another operation in the same transaction failed."}]
    assert first == {"body": halted, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": "a"}
    assert failed["httpStatusCode"] == 400 and failed["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert never["body"] == halted and never["referenceId"] == "c"
    assert batches == []
    count = (await api.get(f"{V}/query", params={"q": "SELECT COUNT() FROM Account WHERE Name = 'Halted'"})).json()
    assert count["totalSize"] == 0


async def test_collections_inside_an_all_or_none_composite_commit_and_roll_back_with_it(
    api: httpx.AsyncClient,
) -> None:
    """A collections subrequest opens nested transactions (one per record) inside the composite's."""
    def request(last_name: str, *names: str) -> dict[str, Any]:
        return {"allOrNone": True, "compositeRequest": [
            {"method": "POST", "url": f"{V}/composite/sobjects", "referenceId": "many",
             "body": {"allOrNone": False, "records": [record("Account", Name=n) for n in names]}},
            {"method": "POST", "url": f"{V}/sobjects/Contact", "referenceId": "one", "body": {"LastName": last_name}},
        ]}

    async def count(name: str) -> int:
        q = f"SELECT COUNT() FROM Account WHERE Name = '{name}'"
        return int((await api.get(f"{V}/query", params={"q": q})).json()["totalSize"])

    kept = (await api.post(f"{V}/composite", json=request("Ok", "Kept A", "Kept B"))).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in kept] == [200, 201]
    assert [r["success"] for r in kept[0]["body"]] == [True, True]
    assert await count("Kept A") == 1 and await count("Kept B") == 1
    undone = (await api.post(f"{V}/composite", json=request("x" * 81, "Undone"))).json()["compositeResponse"]
    assert undone[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert undone[1]["body"][0]["errorCode"] == "STRING_TOO_LONG"
    assert await count("Undone") == 0


async def test_composite_without_all_or_none_keeps_successes(api: httpx.AsyncClient) -> None:
    response = await api.post(f"{V}/composite", json={"compositeRequest": [
        {"method": "POST", "url": f"{V}/sobjects/Contact", "referenceId": "bad", "body": {}},
        {"method": "POST", "url": f"{V}/sobjects/Account", "referenceId": "good", "body": {"Name": "Kept"}},
        {"method": "GET", "url": f"{V}/sobjects/Contact/@{{bad.id}}", "referenceId": "dependent"},
    ]})
    bad, good, dependent = response.json()["compositeResponse"]
    assert bad["httpStatusCode"] == 400 and good["httpStatusCode"] == 201
    assert dependent["httpStatusCode"] == 400 and dependent["body"][0]["errorCode"] == "PROCESSING_HALTED"


async def test_composite_request_validation(api: httpx.AsyncClient) -> None:
    too_many = [{"method": "GET", "url": f"{V}/limits", "referenceId": f"r{n}"} for n in range(26)]
    response = await api.post(f"{V}/composite", json={"compositeRequest": too_many})
    assert response.status_code == 400
    bad_ref = await api.post(f"{V}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{V}/limits", "referenceId": "bad-ref"}]})
    assert bad_ref.status_code == 400 and "referenceId ('bad-ref')" in bad_ref.json()[0]["message"]
    header = await api.post(f"{V}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{V}/limits", "referenceId": "r", "httpHeaders": {"Authorization": "x"}}]})
    assert header.status_code == 400
    queries = [{"method": "GET", "url": f"{V}/query?q=SELECT+Id+FROM+Account", "referenceId": f"q{n}"}
               for n in range(6)]
    assert (await api.post(f"{V}/composite", json={"compositeRequest": queries})).status_code == 400


async def test_an_error_fault_answers_a_composite_subrequest_but_never_drops_its_connection(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    [opp] = await opportunity_ids(api, 1)
    path = f"{V}/sobjects/Opportunity/{opp}"
    emulator.org.faults.add_error(prefix=path, method="PATCH", status=400,
                                  error_code="FIELD_CUSTOM_VALIDATION_EXCEPTION", message="Close date first",
                                  count=1)
    emulator.org.faults.add_error(prefix=path, method="PATCH", mode="abort_after", count=1)
    body = {"allOrNone": False, "compositeRequest": [
        {"method": "PATCH", "url": path, "referenceId": "first", "body": {"Description": "a"}},
        {"method": "PATCH", "url": path, "referenceId": "second", "body": {"Description": "b"}},
    ]}
    response = await api.post(f"{V}/composite", json=body)
    assert response.status_code == 200  # the connection-level fault is not for subrequests
    first, second = response.json()["compositeResponse"]
    assert first["httpStatusCode"] == 400
    assert first["body"] == [{"message": "Close date first", "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION"}]
    assert second["httpStatusCode"] == 204
