"""SalesforceRest on simple-salesforce, with a fake requests transport adapter (no network)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import ssl
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.structures import CaseInsensitiveDict
from sf_fakes import FakeAuth
from urllib3.exceptions import MaxRetryError, NewConnectionError

from sfsign.salesforce.errors import SalesforceError, UncertainOutcome
from sfsign.salesforce.files import NewFile
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.session import DefaultTimeoutAdapter
from sfsign.salesforce.soql import soql_id_list, soql_quote, validate_id

BASE = "https://org.example.com/services/data/v68.0/"
OPP1 = "006000000000001AAA"
OPP2 = "006000000000002AAA"
QUOTE1 = "0Q0000000000001AAA"

Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]] | BaseException


class FakeAdapter(BaseAdapter):
    """A requests transport answering from a handler; records every prepared request."""

    def __init__(self, handler: Callable[[requests.PreparedRequest], Reply]) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        reply = self.handler(request)
        if isinstance(reply, BaseException):
            raise reply
        status, body, *rest = reply
        headers = {"Sforce-Limit-Info": "api-usage=18/5000", **(rest[0] if rest else {})}
        response = requests.Response()
        response.status_code = status
        if isinstance(body, bytes):
            response._content = body
        elif body is None:
            response._content = b""
        else:
            response._content = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        response.headers = CaseInsensitiveDict(headers)
        response.url = request.url or ""
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def make_rest(fake_auth: FakeAuth, handler: Callable[[requests.PreparedRequest], Reply],
              **kwargs: Any) -> tuple[SalesforceRest, FakeAdapter]:
    adapter = FakeAdapter(handler)
    return SalesforceRest(fake_auth, api_version="68.0", adapter=adapter, **kwargs), adapter


def path_of(request: requests.PreparedRequest) -> str:
    return urlsplit(request.url or "").path


def body_json(request: requests.PreparedRequest) -> Any:
    return json.loads(cast(bytes, request.body))


def soql_of(request: requests.PreparedRequest) -> str:
    return parse_qs(urlsplit(request.url or "").query)["q"][0]


async def test_query_follows_next_records_url_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request).endswith("/query/"):
            return 200, {"totalSize": 3, "done": False,
                         "nextRecordsUrl": "/services/data/v68.0/query/01gD0000002HU6KIAW-2000",
                         "records": [{"attributes": {"type": "Opportunity"}, "Id": OPP1, "Amount": 12.5}]}
        assert path_of(request) == "/services/data/v68.0/query/01gD0000002HU6KIAW-2000"
        return 200, {"totalSize": 3, "done": True, "records": [{"Id": OPP2}, {"Id": QUOTE1}]}, {
            "Sforce-Limit-Info": "api-usage=25/15000"}

    rest, adapter = make_rest(fake_auth, handler)
    rows = await rest.query("SELECT Id, Amount FROM Opportunity")
    await rest.close()
    assert [r["Id"] for r in rows] == [OPP1, OPP2, QUOTE1]
    assert rows[0]["Amount"] == Decimal("12.5")  # currency never goes through float
    assert soql_of(adapter.requests[0]) == "SELECT Id, Amount FROM Opportunity"
    assert adapter.requests[0].headers["Authorization"] == "Bearer tok1"
    assert rest.api_usage == (25, 15000)


async def test_query_page_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if "q=" in (request.url or ""):
            return 200, {"totalSize": 2, "done": False, "nextRecordsUrl": "/services/data/v68.0/query/loc-1",
                         "records": [{"Id": OPP1}]}
        return 200, {"totalSize": 2, "done": True, "records": [{"Id": OPP2}]}

    rest, _ = make_rest(fake_auth, handler)
    page = await rest.query_page("SELECT Id FROM Opportunity")
    assert page.next_records_url == "/services/data/v68.0/query/loc-1" and page.total_size == 2
    last = await rest.query_page(next_records_url=page.next_records_url)
    assert last.next_records_url is None and last.records == [{"Id": OPP2}]
    await rest.close()


async def test_expired_session_refreshes_once_and_retries_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if request.headers["Authorization"] == "Bearer tok1":
            return 401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
        return 200, {"attributes": {"type": "Opportunity"}, "Id": OPP1, "StageName": "Closed Won"}

    rest, adapter = make_rest(fake_auth, handler)
    record = await rest.get("Opportunity", OPP1, ["StageName"])
    await rest.close()
    assert record["StageName"] == "Closed Won"
    assert fake_auth.refresh_calls == 1
    assert [r.headers["Authorization"] for r in adapter.requests] == ["Bearer tok1", "Bearer tok2"]
    assert path_of(adapter.requests[1]) == f"/services/data/v68.0/sobjects/Opportunity/{OPP1}"
    assert "fields=StageName" in (adapter.requests[1].url or "")


async def test_second_401_after_refresh_is_raised_not_looped_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (401, [{"message": "Session expired or invalid",
                                                           "errorCode": "INVALID_SESSION_ID"}]))
    with pytest.raises(SalesforceError) as caught:
        await rest.get("Opportunity", OPP1)
    await rest.close()
    assert caught.value.status == 401 and caught.value.error_code == "INVALID_SESSION_ID"
    assert len(adapter.requests) == 2 and fake_auth.refresh_calls == 1


@pytest.mark.parametrize(
    ("status", "body", "code", "transient", "long_backoff"),
    [
        (400, [{"message": "id value of incorrect type", "errorCode": "MALFORMED_ID", "fields": ["Id"]}],
         "MALFORMED_ID", False, False),
        (404, [{"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}],
         "ENTITY_IS_DELETED", False, False),
        (403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
         "REQUEST_LIMIT_EXCEEDED", True, True),
        (503, [{"message": "Server Unavailable", "errorCode": "SERVER_UNAVAILABLE"}], "SERVER_UNAVAILABLE",
         True, False),
        (500, b"<html>oops</html>", None, True, False),
    ],
)
async def test_http_errors_map_to_classified_salesforce_errors_with_fake_adapter(
    fake_auth: FakeAuth, status: int, body: Any, code: str | None, transient: bool, long_backoff: bool
) -> None:
    rest, _ = make_rest(fake_auth, lambda r: (status, body))
    with pytest.raises(SalesforceError) as caught:
        await rest.update("Opportunity", OPP1, {"Sign_Status__c": "Signed"})
    await rest.close()
    err = caught.value
    assert (err.status, err.error_code, err.transient, err.needs_long_backoff, err.uncertain) == (
        status, code, transient, long_backoff, False)


async def test_update_sends_patch_with_serialised_values_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (204, None))
    await rest.update("Opportunity", OPP1, {"Signed_At__c": date(2026, 1, 2), "Amount": Decimal("10.50"),
                                            "Sign_Status__c": "Signed"})
    await rest.close()
    request = adapter.requests[0]
    assert request.method == "PATCH"
    assert path_of(request) == f"/services/data/v68.0/sobjects/Opportunity/{OPP1}"
    assert body_json(request) == {"Signed_At__c": "2026-01-02", "Amount": 10.5,
                                                 "Sign_Status__c": "Signed"}
    assert request.headers["Sforce-Call-Options"] == "client=sfsign"


async def test_update_many_uses_collections_and_maps_per_record_errors_with_fake_adapter(
    fake_auth: FakeAuth,
) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        body = body_json(request)
        results = []
        for record in body["records"]:
            if record["id"] == OPP2:
                results.append({"success": False, "errors": [
                    {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "Amount required", "fields": []}]})
            else:
                results.append({"id": record["id"], "success": True, "errors": []})
        return 200, results

    rest, adapter = make_rest(fake_auth, handler)
    results = await rest.update_many([
        ("Opportunity", OPP1, {"Sign_Status__c": "Signed"}),
        ("Quote", QUOTE1, {"Sign_Status__c": "Signed"}),
        ("Opportunity", OPP2, {"Sign_Status__c": "Signed"}),
    ])
    await rest.close()
    request = adapter.requests[0]
    assert (request.method, path_of(request)) == ("PATCH", "/services/data/v68.0/composite/sobjects")
    sent = body_json(request)
    assert sent["allOrNone"] is False
    # grouped by type so Salesforce sees few same-type chunks
    assert [r["attributes"]["type"] for r in sent["records"]] == ["Opportunity", "Opportunity", "Quote"]
    assert [(r.sobject, r.id, r.success) for r in results] == [
        ("Opportunity", OPP1, True), ("Quote", QUOTE1, True), ("Opportunity", OPP2, False)]
    err = results[2].error
    assert err is not None and err.error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and not err.transient


async def test_update_many_chunks_at_200_records_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        records = body_json(request)["records"]
        return 200, [{"id": r["id"], "success": True, "errors": []} for r in records]

    rest, adapter = make_rest(fake_auth, handler)
    ids = [f"006{n:012d}AAA" for n in range(450)]
    results = await rest.update_many([("Opportunity", i, {"Sign_Status__c": "Queued"}) for i in ids])
    await rest.close()
    assert [len(body_json(r)["records"]) for r in adapter.requests] == [200, 200, 50]
    assert [r.id for r in results] == ids and all(r.success for r in results)


async def test_create_returns_the_new_id_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (201, {"id": "a00000000000001AAA", "success": True,
                                                         "errors": []}))
    assert await rest.create("Sign_Audit__c", {"Name": "x"}) == "a00000000000001AAA"
    await rest.close()
    assert path_of(adapter.requests[0]) == "/services/data/v68.0/sobjects/Sign_Audit__c/"


async def test_read_timeout_on_a_write_is_an_uncertain_outcome_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, _ = make_rest(fake_auth, lambda r: requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(UncertainOutcome) as caught:
        await rest.create("Opportunity", {"Name": "x"})
    await rest.close()
    assert caught.value.transient and caught.value.uncertain


async def test_refused_connection_on_a_write_is_certain_with_fake_adapter(fake_auth: FakeAuth) -> None:
    refused = requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", NewConnectionError(None, "Connection refused")))  # type: ignore[arg-type]
    rest, _ = make_rest(fake_auth, lambda r: refused)
    with pytest.raises(SalesforceError) as caught:
        await rest.update("Opportunity", OPP1, {"Name": "x"})
    await rest.close()
    assert caught.value.transient and not caught.value.uncertain


async def test_connection_reset_on_a_read_is_transient_not_uncertain_with_fake_adapter(
    fake_auth: FakeAuth,
) -> None:
    rest, _ = make_rest(fake_auth, lambda r: requests.exceptions.ConnectionError("Connection reset by peer"))
    with pytest.raises(SalesforceError) as caught:
        await rest.query("SELECT Id FROM Opportunity")
    await rest.close()
    assert caught.value.transient and not caught.value.uncertain


async def test_insert_content_version_sends_multipart_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (201, {"id": "068D00000000pgOIAQ", "errors": [],
                                                         "success": True}))
    pdf = b"%PDF-1.7\n\x00\xff binary \r\n--not-a-boundary\n%%EOF"
    new_id = await rest.insert_content_version(
        title="Contract Q-1", path_on_client="Contract Q-1.pdf", data=pdf,
        first_publish_location_id=OPP1, transaction_id="tx-abc")
    await rest.close()
    assert new_id == "068D00000000pgOIAQ"
    request = adapter.requests[0]
    assert (request.method, path_of(request)) == ("POST", "/services/data/v68.0/sobjects/ContentVersion/")
    content_type = str(request.headers["Content-Type"])
    assert content_type.startswith("multipart/form-data; boundary=")
    raw = request.body if isinstance(request.body, bytes) else str(request.body).encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    parts = list(message.iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["entity_content", "VersionData"]
    assert parts[0].get_content_type() == "application/json"
    assert json.loads(cast(bytes, parts[0].get_payload(decode=True))) == {
        "Title": "Contract Q-1", "PathOnClient": "Contract Q-1.pdf", "Sign_Transaction_Id__c": "tx-abc",
        "FirstPublishLocationId": OPP1}
    assert parts[1].get_content_type() == "application/pdf"
    assert parts[1].get_filename() == "Contract Q-1.pdf"
    assert parts[1].get_payload(decode=True) == pdf


async def test_upload_reset_after_sending_is_uncertain_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, _ = make_rest(fake_auth, lambda r: requests.exceptions.ConnectionError("Connection reset by peer"))
    with pytest.raises(UncertainOutcome):
        await rest.insert_content_version(title="t", path_on_client="t.pdf", data=b"%PDF",
                                          first_publish_location_id=OPP1, transaction_id="tx")
    await rest.close()


async def test_find_content_version_and_content_document_id_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        soql = soql_of(request)
        if "Sign_Transaction_Id__c" in soql:
            if "missing" in soql:
                return 200, {"totalSize": 0, "done": True, "records": []}
            return 200, {"totalSize": 1, "done": True, "records": [
                {"attributes": {"type": "ContentVersion"}, "Id": "068000000000001AAA",
                 "ContentDocumentId": "069000000000001AAA"}]}
        return 200, {"totalSize": 1, "done": True, "records": [{"ContentDocumentId": "069000000000001AAA"}]}

    rest, adapter = make_rest(fake_auth, handler)
    ref = await rest.find_content_version("tx-it's")
    assert ref is not None and (ref.id, ref.content_document_id) == ("068000000000001AAA", "069000000000001AAA")
    assert soql_of(adapter.requests[0]) == (
        "SELECT Id, ContentDocumentId FROM ContentVersion WHERE Sign_Transaction_Id__c = 'tx-it\\'s' "
        "AND IsLatest = true")
    assert await rest.find_content_version("missing") is None
    assert await rest.content_document_id("068000000000001AAA") == "069000000000001AAA"
    assert soql_of(adapter.requests[2]) == (
        "SELECT ContentDocumentId FROM ContentVersion WHERE Id = '068000000000001AAA'")
    await rest.close()


async def test_download_version_data_returns_bytes_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (200, b"%PDF-1.7 bytes", {
        "Content-Type": "application/octetstream", "Sforce-Limit-Info": "api-usage=99/5000"}))
    assert await rest.download_version_data("068000000000001AAA") == b"%PDF-1.7 bytes"
    await rest.close()
    assert path_of(adapter.requests[0]) == "/services/data/v68.0/sobjects/ContentVersion/068000000000001AAA/VersionData"
    assert rest.api_usage == (99, 5000)


async def test_download_error_is_mapped_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, _ = make_rest(fake_auth, lambda r: (404, [{"message": "The requested resource does not exist",
                                                    "errorCode": "NOT_FOUND"}]))
    with pytest.raises(SalesforceError) as caught:
        await rest.download_version_data("068000000000001AAA")
    await rest.close()
    assert caught.value.error_code == "NOT_FOUND" and not caught.value.transient


async def test_publish_event_returns_event_uuid_with_fake_adapter(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (201, {"id": "e01xx0000000001AAA", "success": True, "errors": [
        {"statusCode": "OPERATION_ENQUEUED", "message": "436ccd6f-7f27-4b3c-8b9b-6c4b3a2b1a00", "fields": []}]}))
    uuid = await rest.publish_event("Sign_Request__e", {"RecordId__c": OPP1})
    await rest.close()
    assert uuid == "436ccd6f-7f27-4b3c-8b9b-6c4b3a2b1a00"
    assert path_of(adapter.requests[0]) == "/services/data/v68.0/sobjects/Sign_Request__e/"
    with pytest.raises(ValueError):
        await rest.publish_event("Opportunity", {})


async def test_describe_and_limits_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request).endswith("/limits/"):
            return 200, {"DailyApiRequests": {"Max": 15000, "Remaining": 14980}}
        return 200, {"name": "Opportunity", "fields": [{"name": "Id"}]}

    rest, adapter = make_rest(fake_auth, handler)
    assert (await rest.limits())["DailyApiRequests"]["Max"] == 15000
    assert (await rest.describe("Opportunity"))["name"] == "Opportunity"
    await rest.close()
    assert path_of(adapter.requests[1]) == "/services/data/v68.0/sobjects/Opportunity/describe"


async def test_ids_and_names_are_validated_before_any_request(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, lambda r: (204, None))
    with pytest.raises(ValueError):
        await rest.update("Opportunity", "006' OR Name != '", {"Name": "x"})
    with pytest.raises(ValueError):
        await rest.get("Opportunity/../User", OPP1)
    with pytest.raises(ValueError):
        await rest.content_document_id("068x' OR Id != '")
    await rest.close()
    assert adapter.requests == []


def test_soql_literal_escaping() -> None:
    assert soql_quote("O'Brien \\ co\nline") == "'O\\'Brien \\\\ co\\nline'"
    assert soql_id_list([OPP1, OPP2]) == f"('{OPP1}','{OPP2}')"
    assert validate_id("006000000000001") == "006000000000001"
    for bad in ("006", "006000000000001AA", "00600000000000!AAA", ""):
        with pytest.raises(ValueError):
            validate_id(bad)


async def test_ca_bundle_is_trusted_through_a_context_without_a_temporary_file(
    fake_auth: FakeAuth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from sfsign.emulator.tls import ensure_tls

    ca = ensure_tls(tmp_path / "tls").ca_file
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rest = SalesforceRest(fake_auth, api_version="68.0", ca_bundle=ca)
    adapter = rest._session.get_adapter("https://org.example.com/")
    assert isinstance(adapter, DefaultTimeoutAdapter) and adapter._ssl_context is not None
    subjects = [dict(x[0] for x in c["subject"]) for c in adapter._ssl_context.get_ca_certs()]
    assert any(s.get("commonName", "").startswith("sfsign emulator") for s in subjects), subjects[-3:]
    assert len(subjects) > 100  # the public roots stay trusted beside the extra CA
    assert list(scratch.iterdir()) == []
    await rest.close()


def test_configured_ca_wins_over_requests_ca_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE override a session's verify; the adapter pins it back."""
    seen: dict[str, Any] = {}

    def fake_send(self: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        seen.update(kwargs)
        response = requests.Response()
        response.status_code = 204
        response._content = b""
        return response

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/some-other-bundle.crt")
    monkeypatch.setattr(HTTPAdapter, "send", fake_send)
    session = requests.Session()
    session.mount("https://", DefaultTimeoutAdapter((1.0, 2.0), 1, ssl.create_default_context()))
    session.get("https://org.example.com/services/data/")
    assert seen["verify"] is True and seen["timeout"] == (1.0, 2.0)


def test_a_new_file_reads_its_path_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "signed.pdf"
    lazy = NewFile(title="t", path_on_client="t.pdf", transaction_id="tx", path=path)
    path.write_bytes(b"%PDF-1.7 written after the NewFile was made")
    assert lazy.size() == len(lazy.content()) and lazy.content().startswith(b"%PDF-1.7 written after")
    assert NewFile(title="t", path_on_client="t.pdf", transaction_id="tx", data=b"abc").content() == b"abc"
    with pytest.raises(ValueError, match="neither data nor a path"):
        NewFile(title="t", path_on_client="t.pdf", transaction_id="tx").content()


def test_a_collection_body_streams_what_urllib3_would_have_joined(tmp_path: Path) -> None:
    """The batch upload's body is read file by file while it is sent: the bytes and their count must be
    what one joined multipart body holds (the emulator's e2e uploads parse it as Salesforce would), and a
    second pass (a retried call) must send it all again."""
    from urllib3.fields import RequestField
    from urllib3.filepost import encode_multipart_formdata

    from sfsign.salesforce.files import CollectionBody

    on_disk = tmp_path / "a.pdf"
    on_disk.write_bytes(b"%PDF-1.7 signed on disk\r\n--not-a-boundary")
    files = [NewFile(title="A", path_on_client="A.pdf", transaction_id="tx-a", path=on_disk,
                     first_publish_location_id="006000000000001AAA"),
             NewFile(title="B", path_on_client="B.pdf", transaction_id="tx-b", data=b"%PDF in memory",
                     content_document_id="069000000000001AAA", reason_for_change="re-signed")]
    body = CollectionBody(files)
    boundary = body.content_type.split("boundary=")[1]
    meta = RequestField(name="collection", data=json.dumps({"allOrNone": False, "records": [
        {"attributes": {"type": "ContentVersion", "binaryPartName": "file0", "binaryPartNameAlias": "VersionData"},
         "Title": "A", "PathOnClient": "A.pdf", "Sign_Transaction_Id__c": "tx-a",
         "FirstPublishLocationId": "006000000000001AAA"},
        {"attributes": {"type": "ContentVersion", "binaryPartName": "file1", "binaryPartNameAlias": "VersionData"},
         "Title": "B", "PathOnClient": "B.pdf", "Sign_Transaction_Id__c": "tx-b",
         "ContentDocumentId": "069000000000001AAA", "ReasonForChange": "re-signed"}]}).encode())
    meta.make_multipart(content_type="application/json")
    parts = [meta]
    for i, f in enumerate(files):
        part = RequestField(name=f"file{i}", data=f.content(), filename=f.path_on_client)
        part.make_multipart(content_type="application/pdf")
        parts.append(part)
    joined, content_type = encode_multipart_formdata(parts, boundary=boundary)
    assert content_type == body.content_type
    assert b"".join(body) == joined
    assert b"".join(body) == joined  # again, whole
    assert len(body) == len(joined)
    on_disk.write_bytes(b"%PDF-1.7 shorter")
    with pytest.raises(ValueError, match="changed size"):
        b"".join(body)
