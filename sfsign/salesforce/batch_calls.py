"""The Salesforce calls many jobs share: reading records and uploading files, one API call per batch.

The batchers (`sfsign.batching`) hand these functions the items of many jobs; each job gets its own
result back. Reading a batch reads, in the same `/composite` call, any File already carrying one of the
jobs' transaction ids, so exactly one document per trigger does not rest on the local outbox alone.
`quick_retries` gives a single call a few in-step retries for transient failures that certainly did
not apply, and `refused_as_a_whole` tells a batcher when to send a refused batch's items one by one.

Knobs: none of its own (batch sizes and waits are the batchers'; see `sfsign.gateway`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.files import ContentVersionRef, NewFile
from sfsign.salesforce.record_parsing import parse_records
from sfsign.salesforce.records import SignableRecord, record_queries
from sfsign.salesforce.rest import SalesforceRest

T = TypeVar("T")


def _transient_sf(exc: BaseException) -> bool:
    return isinstance(exc, SalesforceError) and exc.transient and not exc.uncertain


def refused_as_a_whole(exc: BaseException) -> bool:
    """Salesforce answered a batch call with a 4xx error for the whole request: nothing of it was applied,
    and one item may be at fault (a malformed part), so the batcher sends its items one by one."""
    return (isinstance(exc, SalesforceError) and exc.status is not None and 400 <= exc.status < 500
            and not exc.transient and not exc.uncertain)


async def quick_retries(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A Salesforce call with a few quick in-step retries for transient, certain failures."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(3),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
        retry=retry_if_exception(_transient_sf),
        reraise=True,
    ):
        with attempt:
            return await fn(*args)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Fetched:
    """A job's record as read for rendering (None: not found), and a file already carrying its transaction id."""

    record: SignableRecord | None
    existing_file: ContentVersionRef | None = None


FetchKey = tuple[str, str, str]  # (sobject, record id, transaction id)


async def fetch_many(rest: SalesforceRest, keys: Sequence[FetchKey], *, extras: Mapping[str, list[str]],
                     multi_currency: bool) -> list[Fetched]:
    """The records and any file already carrying a job's transaction id, read together: every query of the
    batch goes in one `/composite` request (five queries per request), and "the entire series of requests
    counts as a single call toward your API limits" (Salesforce REST API Developer Guide, Send Multiple
    Requests Using Composite,
    developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-composite-post.html).
    A lone document's fetch is one API call. `extras`: per object, the fields its rules read beyond sfsign's."""
    by_object: dict[str, list[str]] = {}
    for sobject, record_id, _tx in keys:
        by_object.setdefault(sobject, []).append(record_id)
    soqls: list[str] = []
    spans: list[tuple[str, int, int]] = []  # (sobject, first, end) of its record queries in `soqls`
    for sobject, ids in by_object.items():
        queries = record_queries(sobject, ids, multi_currency=multi_currency, extra=extras[sobject])
        spans.append((sobject, len(soqls), len(soqls) + len(queries)))
        soqls += queries
    files_from = len(soqls)
    soqls += rest.files_by_transaction_queries([tx for _s, _r, tx in keys])
    answers: list[list[dict[str, Any]]] = await quick_retries(rest.query_many, soqls)
    found: dict[tuple[str, str], SignableRecord] = {}
    for sobject, first, end in spans:
        records = parse_records(sobject, by_object[sobject], answers[first:end], extra=extras[sobject])
        found.update({(sobject, rid): rec for rid, rec in records.items()})
    files = rest.files_by_transaction(answers[files_from:])
    return [Fetched(found.get((s, r)) or found.get((s, r[:15])), files.get(tx)) for s, r, tx in keys]


async def upload_many(rest: SalesforceRest, files: list[NewFile]) -> list[str | BaseException]:
    """New ContentVersions: a lone document by the plain multipart insert, a batch in one sObject
    Collections request with binary parts. Per file, its 068 or its own error."""
    if len(files) == 1:  # a lone document: the plain multipart insert
        f = files[0]
        data = await asyncio.get_running_loop().run_in_executor(None, f.content)
        return [await rest.insert_content_version(
            title=f.title, path_on_client=f.path_on_client, data=data,
            first_publish_location_id=f.first_publish_location_id, transaction_id=f.transaction_id,
            content_document_id=f.content_document_id, reason_for_change=f.reason_for_change,
        )]
    results = await rest.insert_content_versions(files)
    return [r.id if r.success else (r.error or SalesforceError(None, "UNKNOWN", "upload failed")) for r in results]
