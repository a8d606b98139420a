"""Child subqueries paged by Salesforce are read to the end, before the parent's next batch, with a fake
requests transport (no network); the emulator-backed proof is tests/e2e/test_long_line_lists.py."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sf_fakes import FakeAuth
from test_sf_rest import Reply, make_rest, path_of

from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.record_parsing import parse_quote
from sfsign.salesforce.records import RecordParseError

V = "/services/data/v68.0"
Q1, Q2 = "0Q0000000000001AAA", "0Q0000000000002AAA"


def _lines(first: int, count: int) -> list[dict[str, Any]]:
    return [{"attributes": {"type": "QuoteLineItem"}, "SortOrder": n} for n in range(first, first + count)]


def _quote(quote_id: str, lines: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": {"type": "Quote"}, "Id": quote_id, "QuoteLineItems": lines}


def _paged(total: int, served: int, locator: str) -> dict[str, Any]:
    return {"totalSize": total, "done": False, "nextRecordsUrl": f"{V}/query/{locator}-{served}",
            "records": _lines(0, served)}


def _orders(rows: list[dict[str, Any]]) -> list[int]:
    return [line["SortOrder"] for line in rows[0]["QuoteLineItems"]["records"]]


async def test_query_reads_every_child_batch_before_the_next_parent_batch_with_fake_adapter(
    fake_auth: FakeAuth,
) -> None:
    pages = {
        f"{V}/query/01gC1-200": (200, {"totalSize": 450, "done": False, "nextRecordsUrl": f"{V}/query/01gC1-400",
                                       "records": _lines(200, 200)}),
        f"{V}/query/01gC1-400": (200, {"totalSize": 450, "done": True, "records": _lines(400, 50)}),
        f"{V}/query/01gP-1": (200, {"totalSize": 2, "done": True, "records": [
            _quote(Q2, {"totalSize": 1, "done": True, "records": _lines(0, 1)})]}),
    }

    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request) == f"{V}/query/":
            return 200, {"totalSize": 2, "done": False, "nextRecordsUrl": f"{V}/query/01gP-1",
                         "records": [_quote(Q1, _paged(450, 200, "01gC1"))]}
        return pages[path_of(request)]

    rest, adapter = make_rest(fake_auth, handler)
    rows = await rest.query("SELECT Id, (SELECT SortOrder FROM QuoteLineItems ORDER BY SortOrder) FROM Quote")
    await rest.close()
    assert [path_of(r) for r in adapter.requests] == [
        f"{V}/query/", f"{V}/query/01gC1-200", f"{V}/query/01gC1-400", f"{V}/query/01gP-1"]
    assert _orders(rows) == list(range(450))
    assert rows[0]["QuoteLineItems"] == {"totalSize": 450, "done": True, "records": _lines(0, 450)}
    assert len(parse_quote(rows[0]).lines) == 450 and [r["Id"] for r in rows] == [Q1, Q2]


async def test_query_many_reads_the_child_batches_of_a_composite_answer_with_fake_adapter(
    fake_auth: FakeAuth,
) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request).endswith("/composite"):
            return 200, {"compositeResponse": [
                {"body": {"totalSize": 1, "done": True, "records": [_quote(Q1, _paged(300, 200, "01gC"))]},
                 "httpHeaders": {}, "httpStatusCode": 200, "referenceId": "q0"},
                {"body": {"totalSize": 0, "done": True, "records": []},
                 "httpHeaders": {}, "httpStatusCode": 200, "referenceId": "q1"}]}
        assert path_of(request) == f"{V}/query/01gC-200"
        return 200, {"totalSize": 300, "done": True, "records": _lines(200, 100)}

    rest, adapter = make_rest(fake_auth, handler)
    first, second = await rest.query_many(["SELECT Id FROM Quote", "SELECT Id FROM Quote"])
    await rest.close()
    assert _orders(first) == list(range(300)) and second == [] and len(adapter.requests) == 2


async def test_query_page_completes_the_children_of_its_batch_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request) == f"{V}/query/":
            return 200, {"totalSize": 1, "done": True, "records": [_quote(Q1, _paged(250, 200, "01gC"))]}
        return 200, {"totalSize": 250, "done": True, "records": _lines(200, 50)}

    rest, _ = make_rest(fake_auth, handler)
    page = await rest.query_page("SELECT Id FROM Quote")
    await rest.close()
    assert _orders(page.records) == list(range(250)) and page.next_records_url is None


@pytest.mark.parametrize(
    "child_page",
    [
        {"totalSize": 450, "done": True, "records": _lines(200, 10)},  # fewer children than announced
        {"totalSize": 450, "done": False, "records": _lines(200, 250)},  # not done, but no next batch
    ],
)
async def test_a_short_child_result_is_a_transient_error_not_fewer_lines_with_fake_adapter(
    fake_auth: FakeAuth, child_page: dict[str, Any]
) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request) == f"{V}/query/":
            return 200, {"totalSize": 1, "done": True, "records": [_quote(Q1, _paged(450, 200, "01gC"))]}
        return 200, child_page

    rest, _ = make_rest(fake_auth, handler)
    with pytest.raises(SalesforceError) as failed:
        await rest.query("SELECT Id FROM Quote")
    await rest.close()
    assert failed.value.transient and failed.value.error_code == "INCOMPLETE_QUERY_RESULT"


async def test_a_lost_child_cursor_fails_the_query_with_fake_adapter(fake_auth: FakeAuth) -> None:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request) == f"{V}/query/":
            return 200, {"totalSize": 1, "done": True, "records": [_quote(Q1, _paged(450, 200, "01gC"))]}
        return 400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]

    rest, _ = make_rest(fake_auth, handler)
    with pytest.raises(SalesforceError) as failed:
        await rest.query("SELECT Id FROM Quote")
    await rest.close()
    # Transient: the job runs the query again and gets fresh cursors, it does not fail for good.
    assert failed.value.error_code == "INVALID_QUERY_LOCATOR" and failed.value.transient


def test_parsing_refuses_a_subquery_result_whose_later_batches_were_not_read() -> None:
    with pytest.raises(RecordParseError, match=r"incomplete subquery result \(200 of 450 records read\)"):
        parse_quote(_quote(Q1, _paged(450, 200, "01gC")))
