"""The REST API of the emulated org (`/services/data/...`), with Salesforce's status codes and bodies.

Every resource is a synchronous function of an already-read request, so one store transaction never
spans an `await` (a composite request with allOrNone runs all its subrequests inside one transaction
while no other request can interleave). The aiohttp handler does the async part: authentication, the
API counter, reading JSON or multipart bodies within Salesforce's size limits, and the
`Sforce-Limit-Info` header every response except the version list carries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict

from sfsign.emulator.errors import ApiError, not_found
from sfsign.emulator.ids import normalize_id
from sfsign.emulator.notifications import actions_resource
from sfsign.emulator.versions import rest_version, versions_list

if TYPE_CHECKING:
    from sfsign.emulator.org import Org, Session
    from sfsign.emulator.store import OrgStore, Txn

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
MB = 1024 * 1024
JSON_BODY_MAX = 50 * MB  # non-multipart requests: 50 MB of text
JSON_BLOB_MAX = int(37.5 * MB)  # ... of which 37.5 MB of decoded base64 data
MULTIPART_CONTENT_VERSION_MAX = 2 * 1024 * MB
MULTIPART_OTHER_MAX = 500 * MB
COLLECTION_BLOBS_MAX = 500 * MB
COLLECTION_MAX_RECORDS = 200
COMPOSITE_MAX_SUBREQUESTS = 25
COMPOSITE_MAX_QUERIES = 5
BATCH_MIN, BATCH_MAX = 200, 2000
MAX_CURSORS = 200
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
    "fields": [],
}
PROCESSING_HALTED = [{
    "errorCode": "PROCESSING_HALTED",
    "message": "The transaction was rolled back since another operation in the same transaction failed.",
}]
_REF_RE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")
_REFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")


def _is_subquery_result(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("records"), list) and "totalSize" in value


def _subquery_results(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The child relationship results nested in one record."""
    return [v for v in record.values() if _is_subquery_result(v)]


@dataclass
class Part:
    """One part of a multipart/form-data request."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Ctx:
    """A REST request after its body was read: what the synchronous resources work on."""

    method: str
    segments: list[str]
    query: dict[str, str]
    body: Any
    headers: CIMultiDict[str]
    session: Session
    version: str
    origin: str
    parts: list[Part] = field(default_factory=list)
    raw_body: bytes = b""
    in_composite: bool = False


@dataclass
class Resp:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    binary: bytes | None = None


@dataclass
class _Cursor:
    """A server-side query cursor: the whole result, served a batch at a time through its locator."""

    records: list[dict[str, Any]]
    total_size: int
    batch_size: int
    resource: str
    children: list[str] = field(default_factory=list)  # child cursors opened by the batch served last


class _Halt(Exception):
    """Raised to roll back a composite allOrNone transaction."""


def _method_not_allowed(method: str, allowed: str) -> ApiError:
    return ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}")


def _json_error(exc: json.JSONDecodeError) -> ApiError:
    ch = exc.doc[exc.pos: exc.pos + 1] if exc.pos < len(exc.doc) else ""
    shown = f"Unexpected character ('{ch}' (code {ord(ch)}))" if ch else "Unexpected end-of-input"
    return ApiError(400, "JSON_PARSER_ERROR", f"{shown}: {exc.msg} at [line:{exc.lineno}, column:{exc.colno}]")


class RestApi:
    """All `/services/data` resources of one org."""

    def __init__(self, org: Org, *, multipart_max: int = MULTIPART_CONTENT_VERSION_MAX,
                 json_max: int = JSON_BODY_MAX, json_blob_max: int = JSON_BLOB_MAX,
                 collection_blobs_max: int = COLLECTION_BLOBS_MAX) -> None:
        self.org = org
        self.multipart_max = multipart_max
        self.json_max = json_max
        self.json_blob_max = json_blob_max
        self.collection_blobs_max = collection_blobs_max
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._cursor_seq = 0

    @property
    def store(self) -> OrgStore:
        return self.org.store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/services/data", self.versions),
            web.route("*", "/services/data/", self.versions),
            web.route("*", r"/services/data/{version:[^/]+}", self.handle),
            web.route("*", r"/services/data/{version:[^/]+}/{tail:.*}", self.handle),
        ]

    # ------------------------------------------------------------------------------ aiohttp layer

    async def versions(self, request: web.Request) -> web.Response:
        """`GET /services/data/`: not authenticated, not counted, no limit header."""
        if request.method not in ("GET", "HEAD"):
            return self._json(405, _method_not_allowed(request.method, "GET,HEAD").body())
        return self._json(200, versions_list())

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str] | None = None, pretty: bool = False) -> web.Response:
        text = json.dumps(body, indent=2 if pretty else None, ensure_ascii=False)
        return web.Response(status=status, text=text, content_type="application/json", charset="UTF-8",
                            headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            version = rest_version(request.match_info["version"])
        except ApiError as exc:  # unknown (404) or retired (410): answered before authentication
            return self._json(exc.status, exc.body())
        session = self.org.authenticate(request)
        self.org.count_api_call(session)
        limit = {"Sforce-Limit-Info": self.org.limit_info_header()}
        pretty = request.headers.get("X-PrettyPrint", "") not in ("", "0")
        method = "GET" if request.method == "HEAD" else request.method  # aiohttp drops HEAD bodies itself
        if method == "POST" and request.query.get("_HttpMethod", "").upper() in ("PATCH", "DELETE", "GET"):
            method = request.query["_HttpMethod"].upper()
        segments = [urllib.parse.unquote(s) for s in request.raw_path.split("?", 1)[0].split("/")[4:] if s]
        origin = f"com/salesforce/api/rest/{version}"
        client = re.search(r"client=([^,;\s]+)", request.headers.get("Sforce-Call-Options", ""))
        if client:
            origin += f";client={client.group(1)}"
        try:
            body, parts, raw = await self._read_body(request, segments, method)
            self._body_fault(request, raw, parts)
            if segments == ["composite"] and method == "POST":
                delay = self._subrequest_latency(body)
                if delay > 0:  # before any subrequest runs, as the middleware delays a plain request
                    await asyncio.sleep(delay)
            ctx = Ctx(method=method, segments=segments, query=dict(request.query), body=body,
                      headers=CIMultiDict(request.headers), session=session, version=version, origin=origin,
                      parts=parts, raw_body=raw)
            resp = self.dispatch(ctx)
        except ApiError as exc:
            return self._json(exc.status, exc.body(), limit, pretty)
        headers = {**limit, **resp.headers}
        if resp.binary is not None:
            return web.Response(status=resp.status, body=resp.binary, headers=headers,
                                content_type="application/octet-stream")
        if resp.status == 204 or (resp.body is None and resp.status != 200):
            return web.Response(status=resp.status, headers=headers)
        return self._json(resp.status, resp.body, headers, pretty)

    def _body_fault(self, request: web.Request, raw: bytes, parts: list[Part]) -> None:
        """An armed `body_contains` fault refuses the request as a whole once its body is read."""
        if (not raw and not parts) or not self.org.faults.any_body_faults():
            return
        seen = raw or b"\n".join(
            b"\n".join((p.name.encode(), (p.filename or "").encode(), p.data)) for p in parts)
        fault = self.org.faults.error_for(request.method, request.path, modes=("respond",), body=seen)
        if fault is not None:
            raise ApiError(fault.status, fault.error_code, fault.message)

    def _subrequest_latency(self, body: Any) -> float:
        """Armed latency faults apply to composite subrequests by their path, added up: Salesforce runs
        the subrequests one after another, so a slow query makes the composite that carries it slow."""
        subs = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subs, list):
            return 0.0
        total = 0.0
        for sub in subs:
            if isinstance(sub, dict) and isinstance(sub.get("url"), str) and isinstance(sub.get("method"), str):
                total += self.org.faults.latency_for(str(sub["method"]).upper(), urllib.parse.urlsplit(sub["url"]).path)
        return total

    async def _read_body(self, request: web.Request, segments: list[str],
                         method: str) -> tuple[Any, list[Part], bytes]:
        if request.method in ("GET", "HEAD", "DELETE") or not request.body_exists:
            return None, [], b""
        ctype = request.content_type.lower()
        if ctype.startswith("multipart/"):
            limit = self.multipart_max if segments[:2] == ["sobjects", "ContentVersion"] else MULTIPART_OTHER_MAX
            if segments[:2] == ["composite", "sobjects"]:
                limit = self.collection_blobs_max + self.json_max
            return None, await self._read_multipart(request, limit), b""
        if request.content_length is not None and request.content_length > self.json_max:
            raise ApiError(413, "REQUEST_ENTITY_TOO_LARGE",
                           f"Request body exceeds the limit of {self.json_max} bytes for non-multipart requests")
        raw = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            raw.extend(chunk)
            if len(raw) > self.json_max:
                raise ApiError(413, "REQUEST_ENTITY_TOO_LARGE",
                               f"Request body exceeds the limit of {self.json_max} bytes for non-multipart requests")
        if not raw.strip():
            return None, [], bytes(raw)
        try:
            return json.loads(raw.decode("utf-8")), [], bytes(raw)
        except UnicodeDecodeError:
            raise ApiError(400, "JSON_PARSER_ERROR", "Invalid UTF-8 in request body") from None
        except json.JSONDecodeError as exc:
            raise _json_error(exc) from None

    async def _read_multipart(self, request: web.Request, limit: int) -> list[Part]:
        """Parts of a multipart/form-data request; each needs Content-Disposition and Content-Type."""
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError) as exc:
            raise ApiError(400, "INVALID_MULTIPART_REQUEST", f"Invalid multipart request: {exc}") from None
        parts: list[Part] = []
        total = 0
        while True:
            try:
                part = await reader.next()
            except (ValueError, BadHttpMessage) as exc:
                # A part header HTTP does not allow (a control character in a filename...) makes the
                # whole request malformed: 400 for all of it, as Salesforce answers a malformed request.
                reason = exc.message if isinstance(exc, BadHttpMessage) else exc
                raise ApiError(400, "INVALID_MULTIPART_REQUEST", f"Invalid multipart request: {reason}") from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "INVALID_MULTIPART_REQUEST", "Nested multipart bodies are not supported")
            headers = part.headers
            if "Content-Disposition" not in headers or part.name is None:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               "Each part of a multipart request needs a Content-Disposition header with a name")
            if "Content-Type" not in headers:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               f"Part '{part.name}' of the multipart request has no Content-Type header")
            data = bytearray()
            while True:
                chunk = await part.read_chunk(1 << 20)
                if not chunk:
                    break
                data.extend(chunk)
                total += len(chunk)
                if total > limit:
                    raise ApiError(413, "REQUEST_ENTITY_TOO_LARGE",
                                   f"Multipart request exceeds the limit of {limit} bytes")
            parts.append(Part(part.name, part.filename, headers["Content-Type"], bytes(data)))
        if not parts:
            raise ApiError(400, "INVALID_MULTIPART_REQUEST", "Multipart request has no parts")
        return parts

    # ------------------------------------------------------------------------------ routing

    def dispatch(self, ctx: Ctx) -> Resp:
        seg = ctx.segments
        if not seg:
            self._allow(ctx, "GET")
            base = f"/services/data/v{ctx.version}"
            return Resp(200, {name: f"{base}/{name}" for name in ("sobjects", "query", "queryAll", "limits",
                                                                   "composite")})
        head = seg[0]
        if head in ("query", "queryAll"):
            self._allow(ctx, "GET")
            if len(seg) == 1:
                return self.query(ctx, include_deleted=head == "queryAll")
            if len(seg) == 2:
                return self.query_more(ctx, seg[1])
        elif head == "sobjects":
            return self.sobjects(ctx)
        elif head == "composite":
            if len(seg) == 1:
                self._allow(ctx, "POST")
                return self.composite(ctx)
            if seg[1] == "sobjects":
                return self.collections(ctx)
        elif head == "limits" and len(seg) == 1:
            self._allow(ctx, "GET")
            return self.limits(ctx)
        elif head == "actions":
            status, body = actions_resource(self.org, ctx.method, seg, ctx.body, self._user(ctx), ctx.version)
            return Resp(status, body)
        raise not_found()

    @staticmethod
    def _allow(ctx: Ctx, *methods: str) -> None:
        allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
        if ctx.method not in allowed:
            raise _method_not_allowed(ctx.method, ",".join(sorted(allowed)))

    def _user(self, ctx: Ctx) -> str:
        return ctx.session.user_id

    # ------------------------------------------------------------------------------ query

    def _batch_size(self, ctx: Ctx) -> int:
        options = ctx.headers.get("Sforce-Query-Options", "")
        m = re.search(r"batchSize\s*=\s*(\d+)", options)
        if not m:
            return BATCH_MAX
        return max(BATCH_MIN, min(BATCH_MAX, int(m.group(1))))

    def query(self, ctx: Ctx, *, include_deleted: bool) -> Resp:
        soql = ctx.query.get("q")
        if soql is None or not soql.strip():
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        result = self.store.query(soql, include_deleted=include_deleted, api_version=ctx.version,
                                  user_id=self._user(ctx))
        resource = "queryAll" if include_deleted else "query"
        cursor = _Cursor(result.records, result.total_size, self._batch_size(ctx), resource)
        return Resp(200, self._page(ctx, cursor, 0, None))

    def _page(self, ctx: Ctx, cursor: _Cursor, start: int, locator: str | None) -> dict[str, Any]:
        """One batch of `cursor` from `start`.

        Child subquery results longer than the org's child batch are cut to it and get a cursor of
        their own (`done: false`, `nextRecordsUrl`), as Salesforce pages the children of a
        relationship query; only the children served count toward the batch size. Fetching the
        parent's next batch releases the child cursors of the previous one (SOAP API, queryMore()),
        so a client must drain the children before it moves on.
        """
        child_batch = self.org.query_child_batch_size
        records = cursor.records
        end = start
        used = 0
        while end < len(records):
            cost = 1 + sum(min(len(v["records"]), child_batch) for v in _subquery_results(records[end]))
            if end > start and used + cost > cursor.batch_size:
                break
            used += cost
            end += 1
        if locator is not None:
            for child in cursor.children:
                self._cursors.pop(child, None)
        opened: list[str] = []
        page = [self._cut_children(ctx, record, cursor.resource, child_batch, opened) for record in records[start:end]]
        cursor.children = opened
        body: dict[str, Any] = {"totalSize": cursor.total_size, "done": end >= len(records)}
        if end < len(records):
            if locator is None:
                locator = self._open(cursor)
            body["nextRecordsUrl"] = self._next_url(ctx, cursor.resource, locator, end)
        body["records"] = page
        return body

    def _cut_children(self, ctx: Ctx, record: dict[str, Any], resource: str, child_batch: int,
                      opened: list[str]) -> dict[str, Any]:
        """`record` with every child result longer than `child_batch` cut to its first batch."""
        out: dict[str, Any] | None = None
        for key, value in record.items():
            if not _is_subquery_result(value) or len(value["records"]) <= child_batch:
                continue
            out = out if out is not None else dict(record)
            locator = self._open(_Cursor(value["records"], value["totalSize"], child_batch, resource))
            opened.append(locator)
            out[key] = {"totalSize": value["totalSize"], "done": False,
                        "nextRecordsUrl": self._next_url(ctx, resource, locator, child_batch),
                        "records": value["records"][:child_batch]}
        return out if out is not None else record

    def _open(self, cursor: _Cursor) -> str:
        self._cursor_seq += 1
        locator = f"01gDn{self._cursor_seq:010d}" + "AAA"
        self._cursors[locator] = cursor
        while len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)
        return locator

    @staticmethod
    def _next_url(ctx: Ctx, resource: str, locator: str, offset: int) -> str:
        return f"/services/data/v{ctx.version}/{resource}/{locator}-{offset}"

    def query_more(self, ctx: Ctx, token: str) -> Resp:
        locator, _, offset = token.rpartition("-")
        cursor = self._cursors.get(locator)
        if cursor is None or not offset.isdigit() or int(offset) > len(cursor.records):
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        self._cursors.move_to_end(locator)
        return Resp(200, self._page(ctx, cursor, int(offset), locator))

    # ------------------------------------------------------------------------------ sobjects

    def sobjects(self, ctx: Ctx) -> Resp:
        seg = ctx.segments
        if len(seg) == 1:
            self._allow(ctx, "GET")
            return Resp(200, self.store.describe_global(ctx.version))
        obj = self.store.schema.get(seg[1])
        access = self.store.access_for(self._user(ctx))
        if obj is None or (access is not None and not access.can_read_object(obj)):
            raise not_found()
        if len(seg) == 2:
            self._allow(ctx, "GET", "POST")
            if ctx.method == "POST":
                return self.create(ctx, obj.name)
            return Resp(200, {"objectDescribe": obj.global_entry(ctx.version), "recentItems": []})
        if len(seg) == 3 and seg[2] == "describe":
            self._allow(ctx, "GET")
            return Resp(200, self.store.describe(obj.name, ctx.version, self._user(ctx)))
        if len(seg) == 3:
            return self.record(ctx, obj.name, seg[2])
        if len(seg) == 4:
            rid = normalize_id(seg[2])
            blob = obj.field(seg[3])
            if rid is not None and rid.startswith(obj.key_prefix) and blob is not None and blob.type == "base64":
                self._allow(ctx, "GET")
                return self.blob(ctx, obj.name, rid, blob.name)
            return self.by_external_id(ctx, obj.name, seg[2], seg[3])
        raise not_found()

    def _values_and_blob(self, ctx: Ctx, sobject: str) -> dict[str, Any]:
        """The record values of a create/update body, JSON or multipart (entity part + binary part)."""
        obj = self.store.object(sobject)
        if ctx.parts:
            blob_fields = [f.name for f in obj.fields.values() if f.type == "base64"]
            if not blob_fields:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               f"Multipart requests are only supported for objects with binary fields, not {sobject}")
            entity = [p for p in ctx.parts if p.name not in blob_fields]
            binary = [p for p in ctx.parts if p.name in blob_fields]
            if len(entity) != 1 or "json" not in entity[0].content_type.lower():
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               "A multipart request needs exactly one non-binary part with the record as JSON "
                               "(Content-Type: application/json)")
            if len(binary) != 1:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               f"A multipart request needs one binary part named {' or '.join(blob_fields)}")
            if not binary[0].filename:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               f"The binary part '{binary[0].name}' needs a filename in its Content-Disposition")
            try:
                values = json.loads(entity[0].data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if isinstance(exc, json.JSONDecodeError):
                    raise _json_error(exc) from None
                raise ApiError(400, "JSON_PARSER_ERROR", "Invalid UTF-8 in the entity part") from None
            if not isinstance(values, dict):
                raise self._not_object(values)
            blob_spec = obj.field(binary[0].name)
            assert blob_spec is not None
            if blob_spec.name in values:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                               f"{blob_spec.name} is sent in the binary part; remove it from the JSON part")
            return {**values, blob_spec.name: binary[0].data}
        values = ctx.body
        if not isinstance(values, dict):
            raise self._not_object(values)
        for spec in obj.fields.values():
            if spec.type != "base64":
                continue
            for key, raw in values.items():
                if key.lower() == spec.name.lower() and isinstance(raw, str) and len(raw) * 3 // 4 > self.json_blob_max:
                    raise ApiError(400, "STRING_TOO_LONG",
                                   f"{spec.label}: data value too large: (max length={self.json_blob_max})",
                                   [spec.name])
        return values

    @staticmethod
    def _not_object(values: Any) -> ApiError:
        kind = "START_ARRAY" if isinstance(values, list) else "VALUE_NULL" if values is None else "VALUE_STRING"
        return ApiError(400, "JSON_PARSER_ERROR",
                        f"Cannot deserialize instance of sobject from {kind} value or request may be missing a "
                        "required field at [line:1, column:1]")

    def create(self, ctx: Ctx, sobject: str) -> Resp:
        values = self._values_and_blob(ctx, sobject)
        rid = self.store.insert(sobject, values, user_id=self._user(ctx), origin=ctx.origin)
        obj = self.store.object(sobject)
        if obj.is_event:
            uuid = self.store.event_uuid(rid) or ""
            return Resp(201, {"id": rid, "success": True,
                              "errors": [{"statusCode": "OPERATION_ENQUEUED", "message": uuid, "fields": []}]})
        headers = {"Location": f"/services/data/v{ctx.version}/sobjects/{sobject}/{rid}"} if ctx.in_composite else {}
        return Resp(201, {"id": rid, "success": True, "errors": []}, headers)

    def record(self, ctx: Ctx, sobject: str, raw_id: str) -> Resp:
        self._allow(ctx, "GET", "PATCH", "DELETE")
        rid = normalize_id(raw_id)
        if rid is None:
            raise ApiError(404, "NOT_FOUND",
                           f"Provided external ID field does not exist or is not accessible: {raw_id}")
        if ctx.method == "GET":
            rec = self.store.record(rid)
            if rec is not None and rec.get("IsDeleted") and rec["_type"] == sobject:
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
            fields = ctx.query.get("fields")
            names = [f for f in fields.split(",") if f.strip()] if fields else None
            return Resp(200, self.store.get(sobject, rid, names, ctx.version, self._user(ctx)))
        if ctx.method == "PATCH":
            values = self._values_and_blob(ctx, sobject)
            values = {k: v for k, v in values.items() if k.lower() != "id"}
            self.store.update(sobject, rid, values, user_id=self._user(ctx), origin=ctx.origin)
            return Resp(204)
        self.store.delete(sobject, rid, user_id=self._user(ctx), origin=ctx.origin)
        return Resp(204)

    def blob(self, ctx: Ctx, sobject: str, rid: str, field_name: str) -> Resp:
        rec = self.store.record(rid)
        if rec is None or rec["_type"] != sobject:
            raise not_found()
        if rec.get("IsDeleted"):
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
        data = rec.get(field_name)
        if data is None:
            raise not_found()
        return Resp(200, binary=bytes(data))

    def by_external_id(self, ctx: Ctx, sobject: str, field_name: str, value: str) -> Resp:
        """`sobjects/X/Field/value`: GET, DELETE or upsert (PATCH; POST only with field `Id`)."""
        self._allow(ctx, "GET", "PATCH", "DELETE", "POST")
        obj = self.store.object(sobject)
        spec = obj.field(field_name)
        if spec is None or not (spec.external_id or spec.id_lookup):
            raise ApiError(404, "NOT_FOUND",
                           f"Provided external ID field does not exist or is not accessible: {field_name}")
        if spec.name == "Id":
            rec = self.store.record(value)
            matches = [rec] if rec is not None and rec["_type"] == obj.name and not rec.get("IsDeleted") else []
        else:
            matches = self.store.find_by(obj.name, spec.name, value)
        if len(matches) > 1:
            return Resp(300, [f"/services/data/v{ctx.version}/sobjects/{obj.name}/{r['Id']}" for r in matches])
        if ctx.method == "GET":
            if not matches:
                raise not_found()
            return Resp(200, self.store.get(obj.name, matches[0]["Id"], None, ctx.version, self._user(ctx)))
        if ctx.method == "DELETE":
            if not matches:
                raise not_found()
            self.store.delete(obj.name, matches[0]["Id"], user_id=self._user(ctx), origin=ctx.origin)
            return Resp(204)
        if ctx.method == "POST" and spec.name != "Id":
            raise _method_not_allowed("POST", "GET,HEAD,PATCH,DELETE")
        values = self._values_and_blob(ctx, obj.name)
        values = {k: v for k, v in values.items() if k.lower() not in ("id", spec.name.lower())}
        new_api = int(ctx.version.split(".")[0]) >= 46
        if matches:
            rid = matches[0]["Id"]
            self.store.update(obj.name, rid, values, user_id=self._user(ctx), origin=ctx.origin)
            if not new_api:
                return Resp(204)
            return Resp(200, {"id": rid, "success": True, "errors": [], "created": False})
        if ctx.query.get("updateOnly", "").lower() == "true" or (spec.name == "Id" and value):
            raise not_found()
        if spec.name != "Id":
            values[spec.name] = value
        rid = self.store.insert(obj.name, values, user_id=self._user(ctx), origin=ctx.origin)
        body: dict[str, Any] = {"id": rid, "success": True, "errors": []}
        if new_api:
            body["created"] = True
        return Resp(201, body)

    # ------------------------------------------------------------------------------ collections

    def collections(self, ctx: Ctx) -> Resp:
        seg = ctx.segments
        if len(seg) == 3 and ctx.method == "GET":
            return self.collection_retrieve(ctx, seg[2])
        if len(seg) != 2:
            raise not_found()
        self._allow(ctx, "POST", "PATCH", "DELETE")
        if ctx.method == "DELETE":
            return self.collection_delete(ctx)
        body, blobs = self._collection_body(ctx)
        records = body.get("records")
        if not isinstance(records, list):
            raise ApiError(400, "JSON_PARSER_ERROR", "records: a list of records is required")
        if len(records) > COLLECTION_MAX_RECORDS:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           f"record limit reached. cannot submit more than {COLLECTION_MAX_RECORDS} records into "
                           "this call")
        all_or_none = bool(body.get("allOrNone", False))
        creating = ctx.method == "POST"
        results: list[dict[str, Any] | None] = [None] * len(records)
        failed = False
        try:
            with self.store.transaction(user_id=self._user(ctx), origin=ctx.origin) as txn:
                for i, record in enumerate(records):
                    rid = (record.get("id") or record.get("Id")) if isinstance(record, dict) else None
                    try:
                        results[i] = self._collection_write(txn, record, creating, blobs)
                    except ApiError as exc:
                        failed = True
                        out: dict[str, Any] = {"success": False, "errors": [exc.collection_error()]}
                        if not creating and isinstance(rid, str):
                            out = {"id": rid, **out}
                        results[i] = out
                if failed and all_or_none:
                    raise _Halt()
        except _Halt:
            for i in range(len(records)):
                result = results[i]
                assert result is not None
                if result["success"]:
                    rolled: dict[str, Any] = {"success": False, "errors": [dict(ROLLED_BACK)]}
                    if not creating:
                        rolled = {"id": result["id"], **rolled}
                    results[i] = rolled
        return Resp(200, results)

    def _collection_body(self, ctx: Ctx) -> tuple[dict[str, Any], dict[str, bytes]]:
        if not ctx.parts:
            if not isinstance(ctx.body, dict):
                raise self._not_object(ctx.body)
            return ctx.body, {}
        json_parts = [p for p in ctx.parts if "json" in p.content_type.lower()]
        if len(json_parts) != 1:
            raise ApiError(400, "INVALID_MULTIPART_REQUEST",
                           "A multipart collection request needs exactly one JSON part with the records")
        try:
            body = json.loads(json_parts[0].data.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise _json_error(exc) from None
        if not isinstance(body, dict):
            raise self._not_object(body)
        blobs = {p.name: p.data for p in ctx.parts if p is not json_parts[0]}
        if sum(len(b) for b in blobs.values()) > self.collection_blobs_max:
            raise ApiError(413, "REQUEST_ENTITY_TOO_LARGE",
                           f"The files of a collection request exceed {self.collection_blobs_max} bytes")
        return body, blobs

    def _collection_write(self, txn: Txn, record: Any, creating: bool, blobs: dict[str, bytes]) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        attributes = record.get("attributes")
        sobject = attributes.get("type") if isinstance(attributes, dict) else None
        if not sobject:
            raise ApiError(400, "INVALID_TYPE", "Must send a concrete entity type.", [])
        if self.store.schema.get(str(sobject)) is None:
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.", [])
        values = {k: v for k, v in record.items() if k not in ("attributes",)}
        part_name = attributes.get("binaryPartName") if isinstance(attributes, dict) else None
        if part_name and isinstance(attributes, dict):
            alias = attributes.get("binaryPartNameAlias") or "VersionData"
            if part_name not in blobs:
                raise ApiError(400, "INVALID_MULTIPART_REQUEST", f"No binary part named '{part_name}'", [])
            values[alias] = blobs[part_name]
        rid = values.pop("id", None) or values.pop("Id", None)
        if creating:
            if rid:
                raise ApiError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            new_id = txn.insert(str(sobject), values)
            return {"id": new_id, "success": True, "errors": []}
        if not rid:
            raise ApiError(400, "MISSING_ARGUMENT", "Id not specified in an update call", [])
        txn.update(str(sobject), str(rid), values)
        return {"id": normalize_id(str(rid)) or rid, "success": True, "errors": []}

    def collection_delete(self, ctx: Ctx) -> Resp:
        ids = [i for i in ctx.query.get("ids", "").split(",") if i]
        if not ids:
            raise ApiError(400, "MISSING_ARGUMENT", "ids: at least one id is required", ["ids"])
        if len(ids) > COLLECTION_MAX_RECORDS:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           f"record limit reached. cannot submit more than {COLLECTION_MAX_RECORDS} records into "
                           "this call")
        all_or_none = ctx.query.get("allOrNone", "false").lower() == "true"
        results: list[dict[str, Any]] = []
        failed = False
        try:
            with self.store.transaction(user_id=self._user(ctx), origin=ctx.origin) as txn:
                for raw in ids:
                    rid = normalize_id(raw)
                    obj = self.store.object_of(rid) if rid else None
                    try:
                        if rid is None or obj is None:
                            raise ApiError(400, "MALFORMED_ID", f"malformed id {raw}", [])
                        txn.delete(obj.name, rid)
                        results.append({"id": rid, "success": True, "errors": []})
                    except ApiError as exc:
                        failed = True
                        results.append({"id": rid or raw, "success": False, "errors": [exc.collection_error()]})
                if failed and all_or_none:
                    raise _Halt()
        except _Halt:
            results = [r if not r["success"] else {"id": r["id"], "success": False, "errors": [dict(ROLLED_BACK)]}
                       for r in results]
        return Resp(200, results)

    def collection_retrieve(self, ctx: Ctx, sobject: str) -> Resp:
        obj = self.store.object(sobject)
        ids = [i for i in ctx.query.get("ids", "").split(",") if i]
        fields = [f for f in ctx.query.get("fields", "").split(",") if f]
        if not ids or not fields:
            raise ApiError(400, "MISSING_ARGUMENT", "ids and fields are required", [])
        out: list[dict[str, Any] | None] = []
        for raw in ids:
            try:
                out.append(self.store.get(obj.name, raw, fields, ctx.version, self._user(ctx)))
            except ApiError as exc:
                if exc.error_code == "INVALID_FIELD":
                    raise
                out.append(None)
        return Resp(200, out)

    # ------------------------------------------------------------------------------ composite

    def composite(self, ctx: Ctx) -> Resp:
        body = ctx.body
        if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "compositeRequest: a list of subrequests is required")
        subs: list[Any] = body["compositeRequest"]
        if len(subs) > COMPOSITE_MAX_SUBREQUESTS:
            raise ApiError(400, "LIMIT_EXCEEDED",
                           f"Composite request contains more than {COMPOSITE_MAX_SUBREQUESTS} subrequests")
        seen: set[str] = set()
        queries = 0
        for sub in subs:
            if not isinstance(sub, dict) or not all(isinstance(sub.get(k), str) for k in ("method", "url",
                                                                                          "referenceId")):
                raise ApiError(400, "JSON_PARSER_ERROR",
                               "Each subrequest needs the string fields method, url and referenceId")
            ref = sub["referenceId"]
            if not _REFERENCE_ID_RE.match(ref):
                raise ApiError(400, "INVALID_INPUT",
                               f"Provided referenceId ('{ref}') must start with a letter or a number, and it can "
                               "contain only letters, numbers and underscores ('_').")
            if ref in seen:
                raise ApiError(400, "INVALID_INPUT", f"Duplicate referenceId provided in the request: {ref}")
            seen.add(ref)
            headers = sub.get("httpHeaders") or {}
            for name in headers:
                if str(name).lower() in ("accept", "authorization", "content-type"):
                    raise ApiError(400, "INVALID_INPUT",
                                   f"The {name} header can't be set in a subrequest of a composite request")
            path = urllib.parse.urlsplit(sub["url"]).path.rstrip("/").split("/")
            if len(path) > 4 and (path[4] in ("query", "queryAll") or path[4:6] == ["composite", "sobjects"]):
                queries += 1
        if queries > COMPOSITE_MAX_QUERIES:
            raise ApiError(400, "LIMIT_EXCEEDED",
                           f"Composite request contains more than {COMPOSITE_MAX_QUERIES} query or collection "
                           "subrequests")
        all_or_none = bool(body.get("allOrNone", False))
        results: list[dict[str, Any]] = []
        bodies: dict[str, Any] = {}
        if all_or_none:
            try:
                with self.store.transaction(user_id=self._user(ctx), origin=ctx.origin):
                    for sub in subs:
                        result = self._subrequest(ctx, sub, bodies)
                        results.append(result)
                        if result["httpStatusCode"] >= 400:
                            raise _Halt()
            except _Halt:
                failed = len(results) - 1
                results = [r if i == failed else self._halted(r["referenceId"]) for i, r in enumerate(results)]
                results += [self._halted(sub["referenceId"]) for sub in subs[len(results):]]
        else:
            for sub in subs:
                results.append(self._subrequest(ctx, sub, bodies))
        return Resp(200, {"compositeResponse": results})

    @staticmethod
    def _halted(reference_id: str) -> dict[str, Any]:
        return {"body": PROCESSING_HALTED, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": reference_id}

    def _subrequest(self, ctx: Ctx, sub: dict[str, Any], bodies: dict[str, Any]) -> dict[str, Any]:
        ref_id = sub["referenceId"]
        try:
            url = self._substitute(sub["url"], bodies, in_url=True)
            body = self._substitute(sub.get("body"), bodies, in_url=False)
            split = urllib.parse.urlsplit(url)
            parts = split.path.rstrip("/").split("/")
            if parts[:3] != ["", "services", "data"] or len(parts) < 4:
                raise not_found()
            sub_version = rest_version(parts[3])
            if parts[4:5] == ["composite"] and len(parts) == 5:
                raise ApiError(400, "INVALID_INPUT", "A composite request can't contain a composite subrequest")
            method = str(sub["method"]).upper()
            # An armed error fault answers a subrequest to its path as it would the plain request (a
            # validation rule fails a record however it is updated).
            fault = self.org.faults.error_for(method, split.path, modes=("respond",))
            if fault is not None:
                raise ApiError(fault.status, fault.error_code, fault.message)
            query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
            headers = CIMultiDict(ctx.headers)
            for name, value in (sub.get("httpHeaders") or {}).items():
                headers[str(name)] = str(value)
            sub_ctx = Ctx(method=method, segments=[urllib.parse.unquote(p) for p in parts[4:] if p], query=query,
                          body=body, headers=headers, session=ctx.session, version=sub_version,
                          origin=ctx.origin, in_composite=True)
            if method == "POST" and query.get("_HttpMethod", "").upper() in ("PATCH", "DELETE", "GET"):
                sub_ctx.method = query["_HttpMethod"].upper()
            resp = self.dispatch(sub_ctx)
            out_body = resp.body
            if resp.binary is not None:
                out_body = base64.b64encode(resp.binary).decode("ascii")
        except ApiError as exc:
            return {"body": exc.body(), "httpHeaders": {}, "httpStatusCode": exc.status, "referenceId": ref_id}
        bodies[ref_id] = out_body
        return {"body": out_body if resp.status != 204 else None, "httpHeaders": resp.headers,
                "httpStatusCode": resp.status, "referenceId": ref_id}

    def _substitute(self, value: Any, bodies: dict[str, Any], *, in_url: bool) -> Any:
        if isinstance(value, dict):
            return {k: self._substitute(v, bodies, in_url=in_url) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v, bodies, in_url=in_url) for v in value]
        if not isinstance(value, str) or "@{" not in value:
            return value

        def lookup(m: re.Match[str]) -> str:
            ref, path = m.group(1), m.group(2)
            if ref not in bodies:
                raise ApiError(400, "PROCESSING_HALTED",
                               f"Invalid reference specified. No value for {ref}{path} found in {ref}. Provided "
                               f"referenceId ('{ref}') must start with a letter or a number, and it can contain "
                               "only letters, numbers and underscores ('_').")
            current: Any = bodies[ref]
            for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
                key, index = step
                try:
                    current = current[int(index)] if index else current[key]
                except (KeyError, IndexError, TypeError):
                    raise ApiError(400, "PROCESSING_HALTED",
                                   f"Invalid reference specified. No value for {ref}{path} found in {ref}.") from None
            text = "" if current is None else current if isinstance(current, str) else json.dumps(current)
            return urllib.parse.quote(text, safe="") if in_url and m.group(0) != value else text

        return _REF_RE.sub(lookup, value)

    # ------------------------------------------------------------------------------ limits

    def limits(self, ctx: Ctx) -> Resp:
        used = self.org.api_calls
        maximum = self.org.daily_api_max

        def limit(m: int, remaining: int | None = None) -> dict[str, int]:
            return {"Max": m, "Remaining": m if remaining is None else max(0, remaining)}

        return Resp(200, {
            "ConcurrentAsyncGetReportInstances": limit(200),
            "ConcurrentSyncReportRuns": limit(20),
            "DailyApiRequests": limit(maximum, maximum - used),
            "DailyAsyncApexExecutions": limit(250000),
            "DailyBulkApiBatches": limit(15000),
            "DailyBulkV2QueryFileStorageMB": limit(976562),
            "DailyBulkV2QueryJobs": limit(10000),
            "DailyDeliveredPlatformEvents": limit(10000),
            "DailyDurableGenericStreamingApiEvents": limit(10000),
            "DailyDurableStreamingApiEvents": limit(10000),
            "DailyGenericStreamingApiEvents": limit(10000),
            "DailyStandardVolumePlatformEvents": limit(10000),
            "DailyStreamingApiEvents": limit(10000),
            "DataStorageMB": limit(5),
            "DurableStreamingApiConcurrentClients": limit(20),
            "FileStorageMB": limit(20),
            "HourlyPublishedPlatformEvents": limit(50000),
            "HourlyPublishedStandardVolumePlatformEvents": limit(1000),
            "MonthlyPlatformEventsUsageEntitlement": limit(300000),
            "SingleEmail": limit(15),
            "StreamingApiConcurrentClients": limit(20),
        })


def rest_routes(org: Org, **options: Any) -> list[web.RouteDef]:
    """The `/services/data` routes of `org` (options: size limits, see `RestApi`)."""
    return RestApi(org, **options).routes()


def add_rest_routes(app: web.Application, org: Org, **options: Any) -> RestApi:
    api = RestApi(org, **options)
    app.add_routes(api.routes())
    return api
