"""Armed latency faults reach composite subrequests by their path: a slow query makes the `/composite` that
carries it slow, as Salesforce runs the subrequests one after another. Real emulator over HTTPS."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx

from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"


async def test_a_latency_fault_on_query_holds_a_composite_carrying_a_query(
    http: httpx.AsyncClient, token: str, emulator: Emulator
) -> None:
    http.headers["Authorization"] = f"Bearer {token}"
    first = (await http.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity ORDER BY Name LIMIT 1"}))
    [opp] = [r["Id"] for r in first.json()["records"]]
    emulator.org.faults.add_latency(f"{V}/query", 1.5)
    soql = f"SELECT Id FROM Opportunity WHERE Id = '{opp}'"
    composite = asyncio.create_task(http.post(f"{V}/composite", json={"allOrNone": False, "compositeRequest": [
        {"method": "GET", "url": f"{V}/query/?{urlencode({'q': soql})}", "referenceId": "q0"}]}))
    await asyncio.sleep(0.3)
    # Deleted while the composite is held: its query runs after the delay, so it no longer finds the record.
    deleted = await http.delete(f"{V}/sobjects/Opportunity/{opp}")
    assert deleted.status_code == 204, deleted.text
    answer = (await composite).json()["compositeResponse"][0]
    assert answer["httpStatusCode"] == 200 and answer["body"]["records"] == [], answer
