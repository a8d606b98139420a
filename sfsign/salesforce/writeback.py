"""Writing many records' signature fields back, and the audit trail with them, in as few calls as possible.

A first version's write-back needs its ContentDocumentId (069), which the upload does not return:
- a lone record: one `/composite` call. A query reads the 069 of its 068 and the record's PATCH uses
  it through a reference (`@{q0.records[0].ContentDocumentId}`), so upload + write-back + audit cost two
  calls in all;
- a few records (up to 23 files, a trickle or the early rounds of a burst): one `/composite` call too.
  Each 068's row is read by id (a GET, which is not among the five queries a composite allows) and one
  sObject Collections PATCH takes every record, each 069 a reference to its own row (`@{vN.ContentDocumentId}`);
- many records (a burst): one call reads every 069 (five queries of 200 ids per `/composite`),
  then one `/composite` carries up to four sObject Collections PATCHes of 200 records.
Pending audit events (`Signature_Event__c`) ride along as one more Collections subrequest when there
is room, so the audit trail rarely costs a call of its own.

Every record succeeds or fails on its own (`allOrNone` false): a row lock on one opportunity does not
fail the other 799; its job gets the error and retries alone.

A lone record may also carry its *outcome* event (`WriteBack.event`: "Signed; file 069…"),
which is true only if the update succeeds. That composite is sent with `allOrNone` true, so the event
is inserted exactly when the update is; otherwise it would wait for a later call, and a lone
document would cost a fourth call for its own audit trail. Should the audit subrequest itself be
what stopped the transaction, the record is written again without the events.

Each record's write-back comes back typed (`Written`): the 069 it now shows, the file's link, and its
outcome event as built here, with the 069 in it, sent or still to send. The 069 of a file just
uploaded is known only here, so the event is completed here: nothing leaves with a blank to fill in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sfsign.salesforce.composite import COLLECTION_LIMIT, COMPOSITE_LIMIT, COMPOSITE_QUERY_LIMIT
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import Record, SignatureEvent
from sfsign.salesforce.record_fields import audit_records, document_url
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.soql import IN_LIMIT, validate_api_name, validate_id


@dataclass(frozen=True)
class SignedFile:
    """The signed file a record is to show (`Signed_Document_Id__c` and its link, `Signed_Document_Url__c`).
    The upload answers with the ContentVersion (068) only: with `version_id` the write-back reads the file's
    ContentDocument (069) in its own call; `document_id` when the 069 is known already."""

    instance_url: str
    version_id: str | None = None
    document_id: str | None = None


@dataclass(frozen=True)
class OutcomeEvent:
    """The audit event (`Signature_Event__c`) a job's write-back ends with; true only once the update is.

    A write-back that shows a file names it, as only the write-back knows the 069: the detail reads
    `Signed; file 069…`, then `; note`. Without a file the detail is the note."""

    transaction_id: str
    event_type: str
    occurred_at: str
    note: str | None = None
    actor: str = "sfsign"


@dataclass(frozen=True)
class WriteBack:
    """Fields for one record, the signed file it is to show, and the event its job's step ends with.

    A record alone in its call sends `event` in that call, inserted with the update or not at all; in a
    batch of several the event is left to the audit relay (`WrittenEvent.sent`)."""

    sobject: str
    record_id: str
    fields: Mapping[str, Any]
    file: SignedFile | None = None
    event: OutcomeEvent | None = None


@dataclass(frozen=True)
class WrittenEvent:
    """A write-back's outcome event as built for Salesforce (the file's 069 in its detail); `sent` when it
    went in the write-back's own call, else it is still to be sent."""

    event_type: str
    occurred_at: str
    detail: str
    sent: bool = False


@dataclass(frozen=True)
class Written:
    """A record's write-back as Salesforce took it: the file the record now shows (None without a
    `SignedFile`, or when Salesforce knew no such version) and its link, and the outcome event."""

    document_id: str | None = None
    document_url: str | None = None
    event: WrittenEvent | None = None


@dataclass(frozen=True)
class WriteBackOutcome:
    """Per record, in the order given, what it now shows or its own error; per pending audit row sent
    along, whether it went too (empty when none were sent)."""

    records: list[Written | SalesforceError]
    audit_results: list[bool | SalesforceError] = field(default_factory=list)


@dataclass
class _Answers:
    """What the calls answered, per record: the file's 069 (None without a file) or the error; per
    record whether its outcome event went along; per pending audit row whether it went."""

    results: list[str | SalesforceError | None]
    audit_results: list[bool | SalesforceError] = field(default_factory=list)
    sent: list[bool] = field(default_factory=list)


def _event_detail(item: WriteBack, event: OutcomeEvent, document_id: str | None) -> str:
    if item.file is None:
        return event.note or ""
    named = f"Signed; file {document_id or ''}"
    return f"{named}; {event.note}" if event.note else named


def _event_record(item: WriteBack, event: OutcomeEvent, document_id: str | None) -> dict[str, Any]:
    """The event as a `Signature_Event__c`; `document_id` may be a composite reference to the 069."""
    return audit_records([{
        "sobject": item.sobject, "record_id": item.record_id, "transaction_id": event.transaction_id,
        "event_type": event.event_type, "occurred_at": event.occurred_at, "actor": event.actor,
        "detail": _event_detail(item, event, document_id)}])[0]


def _written(items: Sequence[WriteBack], answers: _Answers) -> list[Written | SalesforceError]:
    flags = answers.sent or [False] * len(answers.results)
    out: list[Written | SalesforceError] = []
    for item, result, sent in zip(items, answers.results, flags, strict=True):
        if isinstance(result, SalesforceError):
            out.append(result)
            continue
        url = document_url(item.file.instance_url, result) if item.file is not None and result else None
        event = None if item.event is None else WrittenEvent(
            item.event.event_type, item.event.occurred_at, _event_detail(item, item.event, result), sent)
        out.append(Written(result, url, event))
    return out


def _patch_body(item: WriteBack, document_id: str | None) -> dict[str, Any]:
    body = dict(item.fields)
    if item.file is not None:
        body[Record.DOCUMENT_ID] = document_id
        body[Record.DOCUMENT_URL] = document_url(item.file.instance_url, document_id)
    return body


def _lookup(item: WriteBack) -> str | None:
    """The 068 whose 069 the write-back reads, if it must."""
    return item.file.version_id if item.file is not None and item.file.document_id is None else None


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
    """Write `items` (and the `audit` records, ≤ 200) in one call, or two for more than 23 files; see the
    module docstring."""
    audit = list(audit)[:COLLECTION_LIMIT]
    lookups = [i for i in items if _lookup(i) is not None]
    if len(items) == 1:
        answers = await _one_composite(rest, items, audit)
        first = answers.results[0] if answers.results else None
        if isinstance(first, SalesforceError) and first.error_code == _AUDIT_HALT:
            # The events could not be inserted, and took the update down with them: write it alone.
            answers = await _one_composite(rest, [replace(items[0], event=None)], [])
    elif len(items) <= COLLECTION_LIMIT and len(lookups) + 2 <= COMPOSITE_LIMIT:
        answers = await _rows_then_collection(rest, items, audit)
    else:
        answers = await _lookup_then_collections(rest, items, audit)
    return WriteBackOutcome(_written(items, answers), answers.audit_results)


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


def _document_ref(n: int, item: WriteBack) -> str | None:
    """The 069 as the `n`th record's PATCH (and a lone record's event) carries it in one composite: the known
    id, or a reference to the query reading it in the same call."""
    if _lookup(item) is not None:
        return f"@{{q{n}.records[0].ContentDocumentId}}"
    return item.file.document_id if item.file is not None else None


async def _one_composite(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: list[Mapping[str, Any]]
) -> _Answers:
    subs: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        version = _lookup(item)
        if version is not None:
            soql = content_document_query([version])
            subs.append({"method": "GET", "url": rest.subrequest_url("query/?q=" + _quote(soql)),
                         "referenceId": f"q{n}"})
        subs.append({
            "method": "PATCH",
            "url": rest.subrequest_url(f"sobjects/{validate_api_name(item.sobject)}/{validate_id(item.record_id)}"),
            "referenceId": f"p{n}",
            "body": _patch_body(item, _document_ref(n, item)),
        })
    outcome_record = None
    lone_event = items[0].event if len(items) == 1 else None
    if lone_event is not None:  # a lone record: its event, all or none
        outcome_record = _event_record(items[0], lone_event, _document_ref(0, items[0]))
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
        return _Answers([error] * len(items), audit_results, [False] * len(items))
    results: list[str | SalesforceError | None] = []
    for n, item in enumerate(items):
        query, patch = answers.get(f"q{n}"), answers[f"p{n}"]
        if query is not None and query.error is not None:
            results.append(query.error)
        elif patch.error is not None:
            results.append(patch.error)
        elif query is not None:
            rows = query.body.get("records") if isinstance(query.body, Mapping) else None
            results.append(str(rows[0]["ContentDocumentId"]) if rows else None)
        else:
            results.append(item.file.document_id if item.file is not None else None)
    audit_answer = answers.get("audit")
    audit_results = (
        _audit_results(audit_answer.body, len(events), audit_answer.error) if audit_answer is not None else []
    )
    sent = [False] * len(items)
    if outcome_record is not None:
        sent = [audit_results.pop() is True]
    return _Answers(results, audit_results, sent)


async def _rows_then_collection(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: list[Mapping[str, Any]]
) -> _Answers:
    """A few records (up to 23 files to look up): one `/composite`. Each 068's row is read by id
    (`GET sobjects/ContentVersion/068…`, not a query, so it does not count among the five), and one
    Collections PATCH takes every record, its 069 a reference to its own row's answer: no answer is matched
    to a record by its position. Should a row not be found, its reference fails the PATCH as a whole and
    nothing is written; the records then go the two-call way, which gives each its own error."""
    subs: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        version = _lookup(item)
        document_id = item.file.document_id if item.file is not None else None
        if version is not None:
            subs.append({"method": "GET", "referenceId": f"v{n}", "url": rest.subrequest_url(
                f"sobjects/ContentVersion/{validate_id(version)}?fields=ContentDocumentId")})
            document_id = f"@{{v{n}.ContentDocumentId}}"
        records.append({"attributes": {"type": validate_api_name(item.sobject)}, "id": validate_id(item.record_id),
                        **_patch_body(item, document_id)})
    subs.append({"method": "PATCH", "url": rest.subrequest_url("composite/sobjects"), "referenceId": "records",
                 "body": {"allOrNone": False, "records": records}})
    if audit:
        subs.append(_audit_subrequest(rest, audit))
    answers = {a.reference_id: a for a in await rest.composite(subs, all_or_none=False)}
    rows = {n: answers[f"v{n}"] for n in range(len(items)) if f"v{n}" in answers}
    if any(row.error is not None for row in rows.values()):
        return await _lookup_then_collections(rest, items, audit)  # nothing was written (see above)
    answer = answers["records"]
    body = answer.body if isinstance(answer.body, list) else None
    results: list[str | SalesforceError | None] = []
    for n, item in enumerate(items):
        if answer.error is not None or body is None or n >= len(body):
            results.append(answer.error or SalesforceError(200, "UNEXPECTED_RESPONSE", "no result for record",
                                                           transient=True))
            continue
        entry = body[n] if isinstance(body[n], Mapping) else {}
        if not entry.get("success"):
            errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
            results.append(SalesforceError.from_record_error(errors[0]))
        elif n in rows:
            row = rows[n].body
            results.append(str(row["ContentDocumentId"]) if isinstance(row, Mapping) else None)
        else:
            results.append(item.file.document_id if item.file is not None else None)
    audit_answer = answers.get("audit")
    audit_results = _audit_results(audit_answer.body, len(audit), audit_answer.error) if audit_answer else []
    return _Answers(results, audit_results)


async def _lookup_then_collections(
    rest: SalesforceRest, items: Sequence[WriteBack], audit: list[Mapping[str, Any]]
) -> _Answers:
    version_ids = sorted({validate_id(v) for i in items if (v := _lookup(i))})
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
        document_id = item.file.document_id if item.file is not None else None
        version = _lookup(item)
        if version is not None:
            document_id = documents.get(validate_id(version))
            if document_id is None:
                results[n] = SalesforceError(None, "NOT_FOUND", f"ContentVersion {version} not found",
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
    return _Answers(results, audit_results)


def _quote(soql: str) -> str:
    from urllib.parse import quote

    return quote(soql, safe="")
