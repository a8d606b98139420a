"""REST query resources over real HTTPS: paging with locators, batch sizes, queryAll and SOQL errors."""

from __future__ import annotations

import httpx
import pytest

from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def test_query_shape(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{V}/query/", params={"q": "SELECT Id, Name, Owner.Name FROM Opportunity "
                                                          "WHERE Amount = null"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["totalSize", "done", "records"]
    assert body["totalSize"] == 1 and body["done"] is True
    [record] = body["records"]
    assert record["attributes"]["url"] == f"{V}/sobjects/Opportunity/{record['Id']}"
    assert record["Owner"]["Name"] == "Lena Hoffmann"


async def test_paging_with_batch_size(api: httpx.AsyncClient, emulator: Emulator) -> None:
    store = emulator.org.store
    with store.transaction(user_id="") as txn:
        for n in range(450):
            txn.insert("Account", {"Name": f"Bulk {n:03d}"})
    soql = "SELECT Name FROM Account WHERE Name LIKE 'Bulk%' ORDER BY Name"
    first = (await api.get(f"{V}/query", params={"q": soql}, headers={"Sforce-Query-Options": "batchSize=200"})).json()
    assert first["totalSize"] == 450 and first["done"] is False and len(first["records"]) == 200
    assert first["nextRecordsUrl"].startswith(f"{V}/query/01g") and first["nextRecordsUrl"].endswith("-200")
    second = (await api.get(first["nextRecordsUrl"])).json()
    assert second["records"][0]["Name"] == "Bulk 200" and second["done"] is False
    third = (await api.get(second["nextRecordsUrl"])).json()
    assert third["done"] is True and "nextRecordsUrl" not in third and len(third["records"]) == 50
    default = (await api.get(f"{V}/query", params={"q": soql},
                             headers={"Sforce-Query-Options": "batchSize=10"})).json()
    assert len(default["records"]) == 200  # below the minimum: 200
    whole = (await api.get(f"{V}/query", params={"q": soql})).json()
    assert whole["done"] is True and len(whole["records"]) == 450
    bad = await api.get(f"{V}/query/01gDn9999999999AAA-200")
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


async def test_child_records_count_toward_the_batch(api: httpx.AsyncClient, emulator: Emulator) -> None:
    store = emulator.org.store
    with store.transaction(user_id="") as txn:
        for n in range(3):
            acc = txn.insert("Account", {"Name": f"Parent {n}"})
            for m in range(150):
                txn.insert("Contact", {"LastName": f"C{m}", "AccountId": acc})
    response = await api.get(f"{V}/query", params={"q": "SELECT Name, (SELECT Id FROM Contacts) FROM Account "
                                                        "WHERE Name LIKE 'Parent%' ORDER BY Name"},
                             headers={"Sforce-Query-Options": "batchSize=300"})
    body = response.json()
    assert len(body["records"]) == 1 and body["records"][0]["Contacts"]["totalSize"] == 150
    assert body["nextRecordsUrl"].endswith("-1")


async def test_query_all_sees_deleted_records(api: httpx.AsyncClient) -> None:
    created = (await api.post(f"{V}/sobjects/Account", json={"Name": "Recycled"})).json()["id"]
    await api.delete(f"{V}/sobjects/Account/{created}")
    soql = "SELECT Id, IsDeleted FROM Account WHERE Name = 'Recycled'"
    assert (await api.get(f"{V}/query", params={"q": soql})).json()["totalSize"] == 0
    all_rows = (await api.get(f"{V}/queryAll/", params={"q": soql})).json()
    assert all_rows["records"][0]["IsDeleted"] is True


async def test_query_errors(api: httpx.AsyncClient) -> None:
    missing = await api.get(f"{V}/query")
    assert missing.status_code == 400 and missing.json()[0]["errorCode"] == "MALFORMED_QUERY"
    typo = await api.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity WHERE StageNme = 'x'"})
    assert typo.status_code == 400
    [err] = typo.json()
    assert err["errorCode"] == "INVALID_FIELD" and "ERROR at Row:1:Column:34" in err["message"]
    assert set(err) == {"message", "errorCode"}
    cdl = await api.get(f"{V}/query", params={"q": "SELECT Id FROM ContentDocumentLink"})
    assert cdl.status_code == 400 and cdl.json()[0]["message"].startswith("Implementation restriction: ")
    post = await api.post(f"{V}/query", params={"q": "SELECT Id FROM Account"})
    assert post.status_code == 405
