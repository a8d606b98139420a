"""Many records per API call: sObject Collections (≤ 200 records) and `/composite` (≤ 25 subrequests).

A burst of signed documents would cost one call per record written or read; these calls batch them,
within Salesforce's limits, and hand back one result per record in the caller's order, so a record
that failed is retried alone while the others are done. A failure of a whole request raises instead,
since none of its records can be known to be written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import simple_salesforce

from sfsign.salesforce import paging
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.session import RestSession, dump_json
from sfsign.salesforce.soql import validate_api_name, validate_id

COLLECTION_LIMIT = 200  # sObject Collections: at most 200 records per request
COMPOSITE_LIMIT = 25  # /composite: at most 25 subrequests per request (one API call)
COMPOSITE_QUERY_LIMIT = 5  # ... of which at most 5 queries or sObject Collections


@dataclass(frozen=True)
class CompositeResult:
    """Outcome of one subrequest of a `/composite` call."""

    reference_id: str
    status: int
    body: Any
    error: SalesforceError | None = None


@dataclass(frozen=True)
class RecordResult:
    """Outcome of one record of an sObject Collections call."""

    sobject: str
    id: str
    success: bool
    error: SalesforceError | None = None


def _post_collection(sf: simple_salesforce.Salesforce, *, body: str) -> Any:
    return sf.restful("composite/sobjects", method="POST", data=body)


class CompositeCalls(RestSession):
    """The batched calls of `SalesforceRest`: collections of records, composite requests of queries."""

    async def composite(
        self, subrequests: Sequence[Mapping[str, Any]], *, all_or_none: bool, write: bool = True
    ) -> list[CompositeResult]:
        """One `/composite` request (≤ 25 subrequests, ≤ 5 of them queries or collections): one API call.

        Results come back in order as `CompositeResult`s; a failed subrequest carries its error, the
        request as a whole raises only when the call itself failed.
        """
        if not 0 < len(subrequests) <= COMPOSITE_LIMIT:
            raise ValueError(f"a composite request holds 1 to {COMPOSITE_LIMIT} subrequests, not {len(subrequests)}")
        body = dump_json({"allOrNone": all_or_none, "compositeRequest": list(subrequests)})
        raw = await self._call(lambda sf: sf.restful("composite", method="POST", data=body), write=write)
        answers = raw.get("compositeResponse") if isinstance(raw, Mapping) else None
        if not isinstance(answers, list) or len(answers) != len(subrequests):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "composite returned a result list of the wrong shape",
                                  transient=False)
        out = []
        for answer in answers:
            answer = answer if isinstance(answer, Mapping) else {}
            status = int(answer.get("httpStatusCode") or 0)
            error = SalesforceError.from_response_body(status, answer.get("body")) if status >= 400 else None
            out.append(CompositeResult(str(answer.get("referenceId")), status, answer.get("body"), error))
        return out

    async def query_many(self, soqls: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Several SOQL queries, five per `/composite` call; each result in full (later batches of the query
        and of its child subqueries read with queryMore)."""
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(soqls), COMPOSITE_QUERY_LIMIT):
            chunk = soqls[start : start + COMPOSITE_QUERY_LIMIT]
            subs = [
                {"method": "GET", "url": self.subrequest_url("query/?" + urlencode({"q": soql})),
                 "referenceId": f"q{i}"}
                for i, soql in enumerate(chunk)
            ]
            for answer in await self.composite(subs, all_or_none=False, write=False):
                if answer.error is not None:
                    raise answer.error
                body = answer.body if isinstance(answer.body, Mapping) else {}
                if paging.is_complete(body):
                    results.append([dict(r) for r in body.get("records") or []])
                else:  # later batches of the query or of a child subquery: queryMore, one call each
                    results.append(await self._call(partial(paging.drain, first=body)))
        return results

    async def update_many(
        self, records: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> list[RecordResult]:
        """Update many records through sObject Collections (≤ 200 per call, allOrNone=false).

        Results come back in the input order, one per record; a per-record failure is a
        `RecordResult(success=False, error=SalesforceError)`. A failure of a whole call (network,
        5xx, 401 after refresh) raises, since none of its records can be known to be written.
        """
        results: list[RecordResult] = []
        for start in range(0, len(records), COLLECTION_LIMIT):
            results.extend(await self._update_chunk(records[start : start + COLLECTION_LIMIT]))
        return results

    async def _update_chunk(self, chunk: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[RecordResult]:
        # Salesforce processes consecutive same-type records in chunks, at most 10 per request:
        # group by type (stable) and map the results back to the caller's order.
        order = sorted(range(len(chunk)), key=lambda i: chunk[i][0])
        payload = []
        for i in order:
            sobject, record_id, fields = chunk[i]
            payload.append(
                {"attributes": {"type": validate_api_name(sobject)}, "id": validate_id(record_id), **fields}
            )
        body = dump_json({"allOrNone": False, "records": payload})
        raw = await self._call(
            lambda sf: sf.restful("composite/sobjects", method="PATCH", data=body), write=True
        )
        if not isinstance(raw, list) or len(raw) != len(payload):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "sObject Collections returned a result "
                                  f"list of the wrong shape ({type(raw).__name__})", transient=False)
        out: list[RecordResult | None] = [None] * len(chunk)
        for pos, i in enumerate(order):
            sobject, record_id, _ = chunk[i]
            entry = raw[pos] if isinstance(raw[pos], Mapping) else {}
            if entry.get("success"):
                out[i] = RecordResult(sobject, record_id, True)
                continue
            errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
            out[i] = RecordResult(sobject, record_id, False, SalesforceError.from_record_error(errors[0]))
        return [r for r in out if r is not None]

    async def create_many(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
        """Create records of one type through sObject Collections (≤ 200 per call, allOrNone=false).

        Per-record failures come back as `RecordResult(success=False, ...)` in input order; a
        failed call raises (uncertain when the request may have been applied).
        """
        results: list[RecordResult] = []
        name = validate_api_name(sobject)
        for start in range(0, len(records), COLLECTION_LIMIT):
            chunk = records[start : start + COLLECTION_LIMIT]
            body = dump_json({"allOrNone": False, "records": [{"attributes": {"type": name}, **r} for r in chunk]})
            raw = await self._call(partial(_post_collection, body=body), write=True)
            if not isinstance(raw, list) or len(raw) != len(chunk):
                raise SalesforceError(200, "UNEXPECTED_RESPONSE", "sObject Collections returned a result "
                                      f"list of the wrong shape ({type(raw).__name__})", transient=False)
            for entry in raw:
                entry = entry if isinstance(entry, Mapping) else {}
                if entry.get("success"):
                    results.append(RecordResult(name, str(entry.get("id")), True))
                else:
                    errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
                    results.append(RecordResult(name, "", False, SalesforceError.from_record_error(errors[0])))
        return results

    async def create_records(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
        """Create many records of one type: up to 200 in one sObject Collections call, more as up to
        five collections of 200 per `/composite` call (1,000 records per API call). Results in input order."""
        if len(records) <= COLLECTION_LIMIT:
            return await self.create_many(sobject, records)
        name = validate_api_name(sobject)
        results: list[RecordResult] = []
        per_call = COLLECTION_LIMIT * COMPOSITE_QUERY_LIMIT
        for start in range(0, len(records), per_call):
            part = records[start : start + per_call]
            chunks = [part[k : k + COLLECTION_LIMIT] for k in range(0, len(part), COLLECTION_LIMIT)]
            subs = [
                {"method": "POST", "url": self.subrequest_url("composite/sobjects"), "referenceId": f"c{n}",
                 "body": {"allOrNone": False, "records": [{"attributes": {"type": name}, **r} for r in chunk]}}
                for n, chunk in enumerate(chunks)
            ]
            for chunk, answer in zip(chunks, await self.composite(subs, all_or_none=False), strict=True):
                body = answer.body if isinstance(answer.body, list) and len(answer.body) == len(chunk) else None
                for pos in range(len(chunk)):
                    entry = body[pos] if body is not None and isinstance(body[pos], Mapping) else {}
                    if answer.error is None and entry.get("success"):
                        results.append(RecordResult(name, str(entry.get("id")), True))
                        continue
                    errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no result"}]
                    results.append(RecordResult(name, "", False,
                                                answer.error or SalesforceError.from_record_error(errors[0])))
        return results

