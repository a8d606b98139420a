"""Child subqueries are paged as Salesforce pages them: a relationship with more children than one batch
holds comes back with `done: false` and its own `nextRecordsUrl`, and the parent's next batch releases
the child cursors of the previous one."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"
CHILDREN = "SELECT Name, (SELECT LastName FROM Contacts ORDER BY LastName) FROM Account"


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


@pytest.fixture
def control_headers(emulator: Emulator) -> dict[str, str]:
    return {"X-Control-Token": emulator.control_token}


def _accounts_with_contacts(emulator: Emulator, accounts: int, contacts: int) -> None:
    with emulator.org.store.transaction(user_id="") as txn:
        for n in range(accounts):
            account = txn.insert("Account", {"Name": f"Paged {n}"})
            for m in range(contacts):
                txn.insert("Contact", {"LastName": f"C{m:04d}", "AccountId": account})


async def _get(api: httpx.AsyncClient, url: str, **kwargs: Any) -> dict[str, Any]:
    response = await api.get(url, **kwargs)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_children_beyond_the_child_batch_come_with_their_own_locator(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    _accounts_with_contacts(emulator, 1, 450)
    body = await _get(api, f"{V}/query", params={"q": f"{CHILDREN} WHERE Name = 'Paged 0'"})
    assert body["done"] is True and body["totalSize"] == 1  # the top level fits in one batch
    contacts = body["records"][0]["Contacts"]
    assert list(contacts) == ["totalSize", "done", "nextRecordsUrl", "records"]
    assert contacts["totalSize"] == 450 and contacts["done"] is False and len(contacts["records"]) == 200
    assert contacts["nextRecordsUrl"].startswith(f"{V}/query/01g") and contacts["nextRecordsUrl"].endswith("-200")
    names = [r["LastName"] for r in contacts["records"]]
    url = contacts["nextRecordsUrl"]
    while url:
        page = await _get(api, url)
        assert page["totalSize"] == 450
        assert all(r["attributes"]["type"] == "Contact" for r in page["records"])
        names += [r["LastName"] for r in page["records"]]
        url = page.get("nextRecordsUrl")
        assert (url is None) == page["done"]
    assert names == [f"C{m:04d}" for m in range(450)]  # every child, once, in the subquery's order


async def test_the_child_batch_size_is_an_org_setting(
    api: httpx.AsyncClient, emulator: Emulator, control_headers: dict[str, str]
) -> None:
    _accounts_with_contacts(emulator, 1, 120)
    soql = f"{CHILDREN} WHERE Name = 'Paged 0'"
    whole = await _get(api, f"{V}/query", params={"q": soql})
    assert whole["records"][0]["Contacts"]["done"] is True  # 120 ≤ 200 (the default)
    assert (await api.get("/_control/settings", headers=control_headers)).json() == {"childBatchSize": 200}
    changed = await api.post("/_control/settings", json={"childBatchSize": 50}, headers=control_headers)
    assert changed.status_code == 200 and changed.json() == {"childBatchSize": 50}
    contacts = (await _get(api, f"{V}/query", params={"q": soql}))["records"][0]["Contacts"]
    assert contacts["done"] is False and len(contacts["records"]) == 50
    for bad in (0, 2001, "50", None, True):
        refused = await api.post("/_control/settings", json={"childBatchSize": bad}, headers=control_headers)
        assert refused.status_code == 400, bad
    unknown = await api.post("/_control/settings", json={"batchSize": 50}, headers=control_headers)
    assert unknown.status_code == 400 and "batchSize" in unknown.json()["error"]


async def test_only_the_children_served_count_toward_the_batch(api: httpx.AsyncClient, emulator: Emulator) -> None:
    _accounts_with_contacts(emulator, 5, 450)
    soql = f"{CHILDREN} WHERE Name LIKE 'Paged%' ORDER BY Name"
    body = await _get(api, f"{V}/query", params={"q": soql}, headers={"Sforce-Query-Options": "batchSize=450"})
    # Each parent costs itself plus the 200 children served with it: two per batch of 450.
    assert len(body["records"]) == 2 and body["done"] is False and body["nextRecordsUrl"].endswith("-2")
    assert all(r["Contacts"]["done"] is False for r in body["records"])


async def test_the_parents_next_batch_releases_the_child_cursors_of_the_previous_one(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    _accounts_with_contacts(emulator, 3, 250)
    soql = f"{CHILDREN} WHERE Name LIKE 'Paged%' ORDER BY Name"
    first = await _get(api, f"{V}/query", params={"q": soql}, headers={"Sforce-Query-Options": "batchSize=200"})
    [parent] = first["records"]
    child_url = parent["Contacts"]["nextRecordsUrl"]
    assert len((await _get(api, child_url))["records"]) == 50  # drained before moving on: fine
    second = await _get(api, first["nextRecordsUrl"])
    late = second["records"][0]["Contacts"]["nextRecordsUrl"]
    await _get(api, second["nextRecordsUrl"])  # the parent moves on before this child was read
    released = await api.get(late)
    assert released.status_code == 400
    assert released.json() == [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]


async def test_child_pages_of_a_composite_query_are_fetched_with_query_more(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    _accounts_with_contacts(emulator, 1, 300)
    url = f"{V}/query/?" + str(httpx.QueryParams({"q": f"{CHILDREN} WHERE Name = 'Paged 0'"}))
    response = await api.post(f"{V}/composite", json={"allOrNone": False, "compositeRequest": [
        {"method": "GET", "url": url, "referenceId": "q0"}]})
    [answer] = response.json()["compositeResponse"]
    contacts = answer["body"]["records"][0]["Contacts"]
    assert contacts["done"] is False and len(contacts["records"]) == 200
    rest = await _get(api, contacts["nextRecordsUrl"])
    assert rest["done"] is True and len(rest["records"]) == 100
