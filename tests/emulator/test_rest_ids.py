"""Record ids in other spellings over real HTTPS, as Salesforce takes them: the 15-character id and the
18-character id in one case match the record and come back as its 18-character id; an id whose suffix
contradicts its mixed-case letters is malformed (Salesforce's own `MALFORMED_ID` example)."""

from __future__ import annotations

import httpx
import pytest

V = "/services/data/v68.0"
DOC_EXAMPLE = "001900K0001pPuOAAU"  # the REST error page's MALFORMED_ID id


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def _opportunity(api: httpx.AsyncClient) -> str:
    response = await api.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity ORDER BY Name LIMIT 1"})
    assert response.status_code == 200, response.text
    return str(response.json()["records"][0]["Id"])


async def test_soql_matches_every_spelling_and_answers_the_18_character_id(api: httpx.AsyncClient) -> None:
    opp = await _opportunity(api)
    for spelling in (opp[:15], opp.upper(), opp.lower(), opp[:15] + opp[15:].lower()):
        response = await api.get(f"{V}/query", params={"q": f"SELECT Id FROM Opportunity WHERE Id = '{spelling}'"})
        assert response.status_code == 200, response.text
        assert [r["Id"] for r in response.json()["records"]] == [opp], spelling
        listed = await api.get(f"{V}/query",
                               params={"q": f"SELECT Id FROM Opportunity WHERE Id IN ('{spelling}')"})
        assert [r["Id"] for r in listed.json()["records"]] == [opp], spelling


async def test_a_suffix_that_contradicts_the_id_is_refused(api: httpx.AsyncClient) -> None:
    opp = await _opportunity(api)
    mixed = opp[:3] + opp[3:15].swapcase() + opp[15:]  # mixed case that the suffix does not describe
    for bad in (DOC_EXAMPLE, mixed):
        query = await api.get(f"{V}/query", params={"q": f"SELECT Id FROM Account WHERE Id = '{bad}'"})
        assert query.status_code == 400
        [error] = query.json()
        assert error["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR" and f"invalid ID field: {bad}" in error["message"]
    update = await api.patch(f"{V}/sobjects/Opportunity/{mixed}", json={"Description": "x"})
    assert update.status_code in (400, 404), update.text
    assert update.json()[0]["errorCode"] in ("MALFORMED_ID", "NOT_FOUND")
    record = await api.get(f"{V}/sobjects/Opportunity/{opp[:15]}", params={"fields": "Id"})
    assert record.status_code == 200 and record.json()["Id"] == opp
