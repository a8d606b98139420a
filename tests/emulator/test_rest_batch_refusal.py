"""A batch request refused as a whole over real HTTPS: a malformed part is a 400 for all of it (never a
500, never a partial insert), and the `bodyContains` fault refuses only requests that carry a text."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


def _collection(file_names: list[str], opp: str) -> tuple[bytes, str]:
    """A Collections insert with binary parts, built like the daemon builds it (urllib3 form fields)."""
    records = [{"attributes": {"type": "ContentVersion", "binaryPartName": f"file{i}",
                               "binaryPartNameAlias": "VersionData"},
                "PathOnClient": name, "FirstPublishLocationId": opp} for i, name in enumerate(file_names)]
    meta = RequestField(name="collection", data=json.dumps({"allOrNone": False, "records": records}).encode())
    meta.make_multipart(content_type="application/json")
    parts = [meta]
    for i, name in enumerate(file_names):
        blob = RequestField(name=f"file{i}", data=b"%PDF-1.7 " + name.encode(), filename=name)
        blob.make_multipart(content_type="application/pdf")
        parts.append(blob)
    return encode_multipart_formdata(parts, boundary="sfsign-test-boundary")


async def _opportunity(api: httpx.AsyncClient) -> str:
    response = await api.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity ORDER BY Name LIMIT 1"})
    return str(response.json()["records"][0]["Id"])


async def _versions(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get(f"{V}/query", params={"q": "SELECT Id, PathOnClient FROM ContentVersion"})
    return list(response.json()["records"])


async def test_a_part_with_a_filename_http_does_not_allow_refuses_the_whole_batch(api: httpx.AsyncClient) -> None:
    opp = await _opportunity(api)
    before = await _versions(api)
    body, content_type = _collection(["plain.pdf", "del\x7fchar.pdf", "other.pdf"], opp)
    response = await api.post(f"{V}/composite/sobjects", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    [error] = response.json()
    assert error["errorCode"] == "INVALID_MULTIPART_REQUEST" and error["message"].startswith(
        "Invalid multipart request")
    assert "Sforce-Limit-Info" in response.headers
    assert await _versions(api) == before  # nothing of the batch was inserted, not even the plain files


async def test_body_fault_refuses_only_the_requests_that_carry_its_text(
    api: httpx.AsyncClient, emulator: Emulator
) -> None:
    opp = await _opportunity(api)
    emulator.org.faults.add_error(f"{V}/composite/sobjects", method="POST", status=400,
                                  error_code="INVALID_MULTIPART_REQUEST", message="bad part", body_contains="poison")
    refused, content_type = _collection(["a.pdf", "poison.pdf"], opp)
    response = await api.post(f"{V}/composite/sobjects", content=refused, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json() == [{"message": "bad part", "errorCode": "INVALID_MULTIPART_REQUEST"}]
    fine, content_type = _collection(["a.pdf", "b.pdf"], opp)
    response = await api.post(f"{V}/composite/sobjects", content=fine, headers={"Content-Type": content_type})
    assert response.status_code == 200 and [r["success"] for r in response.json()] == [True, True]
    # A JSON body is matched as sent; a subrequest of /composite is never matched (its body is not read
    # as a whole request).
    subrequest = {"compositeRequest": [{"method": "POST", "url": f"{V}/composite/sobjects", "referenceId": "c",
                                        "body": {"records": [{"attributes": {"type": "Task"},
                                                              "Subject": "poison"}]}}]}
    response = await api.post(f"{V}/composite", json=subrequest)
    assert response.status_code == 200
    assert [f.hits for f in emulator.org.faults.errors] == [1]


def test_body_fault_only_answers_it_never_drops_the_connection(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="body_contains"):
        emulator.org.faults.add_error("/", mode="abort_after", body_contains="x")
