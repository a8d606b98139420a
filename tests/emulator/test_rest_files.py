"""ContentVersion uploads over real HTTPS: multipart and JSON base64, downloads and size limits."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sfsign.emulator.rest import add_rest_routes
from sfsign.emulator.server import Emulator

V = "/services/data/v68.0"
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def an_opportunity(api: httpx.AsyncClient) -> str:
    response = await api.get(f"{V}/query", params={"q": "SELECT Id FROM Opportunity ORDER BY Name LIMIT 1"})
    return str(response.json()["records"][0]["Id"])


def entity(values: dict[str, object]) -> tuple[None, bytes, str]:
    return (None, json.dumps(values).encode(), "application/json")


async def test_multipart_upload_links_the_file(api: httpx.AsyncClient) -> None:
    opp = await an_opportunity(api)
    response = await api.post(f"{V}/sobjects/ContentVersion", files={
        "entity_content": entity({"Title": "Contract", "PathOnClient": "contract.pdf", "FirstPublishLocationId": opp,
                                  "Sign_Transaction_Id__c": "tx-file-1"}),
        "VersionData": ("contract.pdf", PDF, "application/pdf")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {"id": body["id"], "success": True, "errors": []} and body["id"].startswith("068")
    soql = ("SELECT Id, ContentDocumentId, ContentSize, Checksum, FileType, VersionData FROM ContentVersion "
            "WHERE Sign_Transaction_Id__c = 'tx-file-1' AND IsLatest = true")
    [version] = (await api.get(f"{V}/query", params={"q": soql})).json()["records"]
    assert version["Id"] == body["id"] and version["ContentDocumentId"].startswith("069")
    assert version["ContentSize"] == len(PDF) and version["Checksum"] == hashlib.md5(PDF).hexdigest()
    assert version["FileType"] == "PDF"
    download = await api.get(version["VersionData"])
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/octet-stream"
    assert download.content == PDF and "Sforce-Limit-Info" in download.headers
    links = (await api.get(f"{V}/query", params={"q": "SELECT ContentDocumentId FROM ContentDocumentLink "
                                                       f"WHERE LinkedEntityId = '{opp}'"})).json()["records"]
    assert [lk["ContentDocumentId"] for lk in links] == [version["ContentDocumentId"]]


async def test_json_base64_upload_and_new_version(api: httpx.AsyncClient) -> None:
    opp = await an_opportunity(api)
    first = await api.post(f"{V}/sobjects/ContentVersion/", json={
        "Title": "v1", "PathOnClient": "a.pdf", "VersionData": base64.b64encode(b"one").decode(),
        "FirstPublishLocationId": opp})
    assert first.status_code == 201
    doc = (await api.get(f"{V}/sobjects/ContentVersion/{first.json()['id']}",
                         params={"fields": "ContentDocumentId"})).json()["ContentDocumentId"]
    second = await api.post(f"{V}/sobjects/ContentVersion", json={
        "PathOnClient": "a.pdf", "VersionData": base64.b64encode(b"two!").decode(), "ContentDocumentId": doc,
        "ReasonForChange": "countersigned"})
    assert second.status_code == 201
    latest = (await api.get(f"{V}/sobjects/ContentDocument/{doc}")).json()
    assert latest["LatestPublishedVersionId"] == second.json()["id"] and latest["ContentSize"] == 4
    bad = await api.post(f"{V}/sobjects/ContentVersion", json={"PathOnClient": "a.pdf", "VersionData": "%%%"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"entity_content": (None, b'{"PathOnClient": "a.pdf"}'), "VersionData": ("a.pdf", b"x", "application/pdf")},
         "has no Content-Type header"),
        ({"entity_content": entity({"PathOnClient": "a.pdf"}), "VersionData": (None, b"x", "application/pdf")},
         "needs a filename"),
        ({"entity_content": entity({"PathOnClient": "a.pdf"}), "Body": ("a.pdf", b"x", "application/pdf")},
         "exactly one non-binary part"),
        ({"entity_content": entity({"PathOnClient": "a.pdf"})}, "one binary part named VersionData"),
    ],
)
async def test_multipart_validation(api: httpx.AsyncClient, files: dict[str, tuple[object, ...]],
                                    message: str) -> None:
    response = await api.post(f"{V}/sobjects/ContentVersion", files=files)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    [err] = response.json()
    assert err["errorCode"] == "INVALID_MULTIPART_REQUEST" and message in err["message"]


@pytest.fixture
async def small_limits(emulator: Emulator, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """The emulator's org behind a REST app with tiny size limits (plain HTTP, test server)."""
    app = web.Application()
    add_rest_routes(app, emulator.org, json_blob_max=1000, multipart_max=2000)
    async with TestServer(app) as server, httpx.AsyncClient(
            base_url=str(server.make_url("")), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


async def test_size_limits_with_test_server(small_limits: httpx.AsyncClient) -> None:
    too_big = await small_limits.post(f"{V}/sobjects/ContentVersion", json={
        "PathOnClient": "a.pdf", "VersionData": base64.b64encode(b"x" * 1500).decode()})
    assert too_big.status_code == 400
    assert too_big.json()[0]["errorCode"] == "STRING_TOO_LONG"
    fits = await small_limits.post(f"{V}/sobjects/ContentVersion", json={
        "PathOnClient": "a.pdf", "VersionData": base64.b64encode(b"x" * 900).decode()})
    assert fits.status_code == 201
    multipart = await small_limits.post(f"{V}/sobjects/ContentVersion", files={
        "entity_content": entity({"PathOnClient": "a.pdf"}), "VersionData": ("a.pdf", b"y" * 3000, "application/pdf")})
    assert multipart.status_code == 413
    assert multipart.json()[0]["errorCode"] == "REQUEST_ENTITY_TOO_LARGE"
