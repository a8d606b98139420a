"""Writing many records' signature fields back, and the audit trail with them, in as few calls as possible.

A first version's write-back needs its ContentDocumentId (069), which the upload does not return:
- a few records (a lone document, a trickle): one `/composite` call per batch. For each record a
  query reads the 069 of its 068 and the record's PATCH uses it through a reference
  (`@{qN.records[0].ContentDocumentId}`), so upload + write-back + audit cost two calls in all;
- many records (a burst): one call reads every 069 (five queries of 200 ids per `/composite`),
  then one `/composite` carries up to four sObject Collections PATCHes of 200 records.
Pending audit events (`Signature_Event__c`) ride along as one more Collections subrequest when there
is room, so the audit trail rarely costs a call of its own.

Every record succeeds or fails on its own (`allOrNone` false): a row lock on one opportunity does not
fail the other 799; its job gets the error and retries alone.

A lone record may also carry its *outcome* event (`WriteBack.outcome_audit`: "Signed; file 069…"),
which is true only if the update succeeds. That composite is sent with `allOrNone` true, so the event
is inserted exactly when the update is; otherwise it would wait for a later call, and a lone
document would cost a fourth call for its own audit trail. Should the audit subrequest itself be
what stopped the transaction, the record is written again without the events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sfsign.salesforce.composite import COLLECTION_LIMIT, COMPOSITE_LIMIT, COMPOSITE_QUERY_LIMIT
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import Record, SignatureEvent
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.soql import IN_LIMIT, validate_api_name, validate_id

_PER_RECORD_QUERY_MAX = 4  # records whose 069 is read in the same composite (≤ 5 queries/collections)


@dataclass(frozen=True)
class WriteBack:
    """Fields for one record. With `content_version_id`, the 069 of that version is looked up and put
    in `Signed_Document_Id__c` and `Signed_Document_Url__c` (`document_url` with `{document_id}`)."""

    sobject: str
    record_id: str
    fields: Mapping[str, Any]
    content_version_id: str | None = None
    document_url: str | None = None
    # The record's outcome event, inserted together with the update or not at all (lone records
    # only; `{document_id}` in its values is the 069 looked up). Ignored in a batch of several.
    outcome_audit: Mapping[str, Any] | None = None


@dataclass
class WriteBackOutcome:
    """Per record: the 069 written (if looked up) or the error; whether the audit rows went too; and
    per record whether its `outcome_audit` was inserted."""

    results: list[str | SalesforceError | None]
    audit_results: list[bool | SalesforceError] = field(default_factory=list)
    outcome_sent: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    """A record's write-back: the 069 it now shows, and whether its outcome event went in the same call."""

    document_id: str | None
    outcome_sent: bool = False


def written(outcome: WriteBackOutcome) -> list[Written | BaseException]:
    """Per record of a write-back: what it now shows, or its own error."""
    flags = outcome.outcome_sent or [False] * len(outcome.results)
    return [r if isinstance(r, BaseException) else Written(r, sent)
            for r, sent in zip(outcome.results, flags, strict=True)]


def _patch_body(item: WriteBack, document_id: str | None) -> dict[str, Any]:
    body = dict(item.fields)
    if item.content_version_id is not None:
        body[Record.DOCUMENT_ID] = document_id
        if item.document_url is not None:
            body[Record.DOCUMENT_URL] = item.document_url.format(document_id=document_id)
    return body


def _audit_subrequest(rest: SalesforceRest, audit: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    records = [{"attributes": {"type": SignatureEvent.NAME}, **r} for r in audit]
    return {"method": "POST", "url": rest.subrequest_url("composite/sobjects"), "referenceId": "audit",
            "body": {"allOrNone": False, "records": records}}


def _audit_results(body: Any, count: int, error: SalesforceError | None) -> list[bool | SalesforceError]:
    if error is not None or not isinstance(body, list) or len(body) != count:
        return [error or SalesforceError(200, "UNEXPECTED_RESPONSE", "audit results of the wrong shape",
                                         transient=True)] * count
    out: list[bool | SalesforceError] = []
    for entry in body:
        if isinstance(entry, Mapping) and entry.get("success"):
            out.append(True)
        else:
            errors = (entry.get("errors") if isinstance(entry, Mapping) else None) or [{"statusCode": "UNKNOWN"}]
            out.append(SalesforceError.from_record_error(errors[0]))
    return out


async def write_back_many(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: Sequence[Mapping[str, Any]] = ()
) -> WriteBackOutcome:
    """Write `items` (and the `audit` records, ≤ 200) in one or two API calls; see the module docstring."""
    audit = list(audit)[:COLLECTION_LIMIT]
    lookups = [i for i in items if i.content_version_id is not None]
    if len(lookups) <= _PER_RECORD_QUERY_MAX and 2 * len(items) + 1 <= COMPOSITE_LIMIT:
        outcome = await _one_composite(rest, items, audit)
        first = outcome.results[0] if outcome.results else None
        if isinstance(first, SalesforceError) and first.error_code == _AUDIT_HALT:
            # The events could not be inserted, and took the update down with them: write it alone.
            return await _one_composite(rest, [replace(items[0], outcome_audit=None)], [])
        return outcome
    return await _lookup_then_collections(rest, items, audit)


_HALTED = "PROCESSING_HALTED"
_AUDIT_HALT = "AUDIT_HALTED"  # internal: the audit subrequest stopped an all-or-none write-back


def _cause(answers: Mapping[str, Any]) -> tuple[str, SalesforceError] | None:
    """In an all-or-none composite that did not commit: the subrequest that failed, and its error."""
    for ref, answer in answers.items():
        if answer.error is not None and answer.error.error_code != _HALTED:
            return ref, answer.error
    return None


def content_document_query(version_ids: Sequence[str]) -> str:
    """The ContentDocument (069) ids of uploaded versions: the insert answer carries only the 068."""
    return ("SELECT Id, ContentDocumentId FROM ContentVersion WHERE Id IN ("
            + ", ".join(f"'{validate_id(v)}'" for v in version_ids) + ")")


async def _one_composite(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: list[Mapping[str, Any]]
) -> WriteBackOutcome:
    subs: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        ref = None
        if item.content_version_id is not None:
            soql = content_document_query([item.content_version_id])
            subs.append({"method": "GET", "url": rest.subrequest_url("query/?q=" + _quote(soql)),
                         "referenceId": f"q{n}"})
            ref = f"@{{q{n}.records[0].ContentDocumentId}}"
        subs.append({
            "method": "PATCH",
            "url": rest.subrequest_url(f"sobjects/{validate_api_name(item.sobject)}/{validate_id(item.record_id)}"),
            "referenceId": f"p{n}",
            "body": _patch_body(item, ref),
        })
    outcome_record = None
    if len(items) == 1 and items[0].outcome_audit is not None:  # a lone record: its event, all or none
        document = "@{q0.records[0].ContentDocumentId}" if items[0].content_version_id is not None else None
        outcome_record = {k: v.replace("{document_id}", document or "") if isinstance(v, str) else v
                          for k, v in items[0].outcome_audit.items()}
        audit = audit[: COLLECTION_LIMIT - 1]  # room for it in the one collections subrequest
    events = [*audit, outcome_record] if outcome_record is not None else audit
    if events:
        subs.append(_audit_subrequest(rest, events))
    answers = {a.reference_id: a for a in await rest.composite(subs, all_or_none=outcome_record is not None)}
    halted = _cause(answers) if outcome_record is not None else None
    if halted is not None:  # nothing was committed: every record gets the cause
        ref, error = halted
        if ref == "audit":
            error = SalesforceError(error.status, _AUDIT_HALT, f"audit events refused: {error}", transient=True)
        audit_results: list[bool | SalesforceError] = [error] * len(audit)
        return WriteBackOutcome([error] * len(items), audit_results, [False] * len(items))
    results: list[str | SalesforceError | None] = []
    for n in range(len(items)):
        query, patch = answers.get(f"q{n}"), answers[f"p{n}"]
        if query is not None and query.error is not None:
            results.append(query.error)
        elif patch.error is not None:
            results.append(patch.error)
        elif query is not None:
            rows = query.body.get("records") if isinstance(query.body, Mapping) else None
            results.append(str(rows[0]["ContentDocumentId"]) if rows else None)
        else:
            results.append(None)
    audit_answer = answers.get("audit")
    audit_results = (
        _audit_results(audit_answer.body, len(events), audit_answer.error) if audit_answer is not None else []
    )
    sent = [False] * len(items)
    if outcome_record is not None:
        sent = [audit_results.pop() is True]
    return WriteBackOutcome(results, audit_results, sent)


async def _lookup_then_collections(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: list[Mapping[str, Any]]
) -> WriteBackOutcome:
    version_ids = sorted({validate_id(i.content_version_id) for i in items if i.content_version_id})
    documents: dict[str, str] = {}
    if version_ids:
        soqls = [content_document_query(version_ids[k : k + IN_LIMIT])
                 for k in range(0, len(version_ids), IN_LIMIT)]
        for rows in await rest.query_many(soqls):
            for row in rows:
                documents[str(row["Id"])] = str(row["ContentDocumentId"])
                documents[str(row["Id"])[:15]] = str(row["ContentDocumentId"])
    results: list[str | SalesforceError | None] = [None] * len(items)
    payload: list[tuple[int, dict[str, Any]]] = []
    for n, item in enumerate(items):
        document_id = None
        if item.content_version_id is not None:
            document_id = documents.get(validate_id(item.content_version_id))
            if document_id is None:
                results[n] = SalesforceError(None, "NOT_FOUND", f"ContentVersion {item.content_version_id} not found",
                                             transient=True)
                continue
            results[n] = document_id
        record = {"attributes": {"type": validate_api_name(item.sobject)}, "id": validate_id(item.record_id),
                  **_patch_body(item, document_id)}
        payload.append((n, record))
    # Up to 4 collections of 200 per composite, the 5th slot for the audit rows.
    chunks = [payload[k : k + COLLECTION_LIMIT] for k in range(0, len(payload), COLLECTION_LIMIT)]
    audit_results: list[bool | SalesforceError] = []
    per_call = COMPOSITE_QUERY_LIMIT - 1
    for start in range(0, len(chunks), per_call) if chunks else range(0):
        group = chunks[start : start + per_call]
        subs = [
            {"method": "PATCH", "url": rest.subrequest_url("composite/sobjects"), "referenceId": f"c{g}",
             "body": {"allOrNone": False, "records": [record for _, record in chunk]}}
            for g, chunk in enumerate(group)
        ]
        send_audit = bool(audit) and not audit_results
        if send_audit:
            subs.append(_audit_subrequest(rest, audit))
        answers = {a.reference_id: a for a in await rest.composite(subs, all_or_none=False)}
        for g, chunk in enumerate(group):
            answer = answers[f"c{g}"]
            body = answer.body if isinstance(answer.body, list) else None
            for pos, (n, _) in enumerate(chunk):
                if answer.error is not None or body is None or pos >= len(body):
                    results[n] = answer.error or SalesforceError(200, "UNEXPECTED_RESPONSE", "no result for record",
                                                                  transient=True)
                    continue
                entry = body[pos] if isinstance(body[pos], Mapping) else {}
                if not entry.get("success"):
                    errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
                    results[n] = SalesforceError.from_record_error(errors[0])
        if send_audit:
            answer = answers["audit"]
            audit_results = _audit_results(answer.body, len(audit), answer.error)
    return WriteBackOutcome(results, audit_results)


def _quote(soql: str) -> str:
    from urllib.parse import quote

    return quote(soql, safe="")
