"""Async REST access to one org, on simple-salesforce.

simple-salesforce is synchronous (requests), so every call runs in a small bounded thread pool
(`loop.run_in_executor`) and the event loop never waits on the network. The token comes from the
shared `Authenticator`; simple-salesforce is used in direct-session mode, so it never logs in by
itself: on a 401 `INVALID_SESSION_ID` this class asks `Authenticator.refresh` for a new token once
and retries once.

Every failure leaves as `SalesforceError` (classified transient/permanent); a write that failed
after it was sent leaves as `UncertainOutcome`, so the caller looks before writing again.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import requests
import simple_salesforce
import structlog
from requests.adapters import BaseAdapter, HTTPAdapter
from simple_salesforce.exceptions import SalesforceError as SimpleSalesforceError
from simple_salesforce.exceptions import SalesforceExpiredSession
from simple_salesforce.util import exception_handler
from urllib3.exceptions import NewConnectionError
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from sfsign.salesforce import paging
from sfsign.salesforce.auth import AccessToken, TokenProvider, build_ssl_context
from sfsign.salesforce.errors import AuthError, SalesforceError, UncertainOutcome
from sfsign.salesforce.names import File

log = structlog.get_logger(__name__)

T = TypeVar("T")

COLLECTION_LIMIT = 200  # sObject Collections: at most 200 records per request
COLLECTION_BINARY_LIMIT = 500 * 1024 * 1024  # sObject Collections with binary parts: 500 MB of files per request
COMPOSITE_LIMIT = 25  # /composite: at most 25 subrequests per request (one API call)
COMPOSITE_QUERY_LIMIT = 5  # ... of which at most 5 queries or sObject Collections
IN_LIMIT = 200  # ids per IN (...) list: keeps the query URL far below the 16 KB request-line limit
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_API_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_FIELD_PATH_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*$")
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


# --------------------------------------------------------------------------------------------- SOQL


def validate_id(value: str) -> str:
    """Return `value` if it is a 15/18-character Salesforce id, else raise ValueError.

    Ids go into SOQL and URL paths; refusing anything else closes both injection routes.
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"not a Salesforce id: {value!r}")
    return value


def validate_api_name(value: str) -> str:
    """An sObject or field API name (`Opportunity`, `Sign_Status__c`, `Sign_Request__e`)."""
    if not isinstance(value, str) or not _API_NAME_RE.match(value):
        raise ValueError(f"not a Salesforce API name: {value!r}")
    return value


def validate_field_path(value: str) -> str:
    """A field reference, possibly through relationships (`Account.Name`)."""
    if not isinstance(value, str) or not _FIELD_PATH_RE.match(value):
        raise ValueError(f"not a SOQL field reference: {value!r}")
    return value


def soql_quote(value: str) -> str:
    """A SOQL string literal: quoted, with backslash, quote and control characters escaped."""
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in str(value)) + "'"


def soql_id_list(ids: Iterable[str]) -> str:
    """`('006…','006…')` from validated ids."""
    return "(" + ",".join(f"'{validate_id(i)}'" for i in ids) + ")"


def soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal (unquoted, UTC, `Z`)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} to Salesforce")


def dump_json(data: Any) -> str:
    return json.dumps(data, default=_json_default)


# -------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class CompositeResult:
    """Outcome of one subrequest of a `/composite` call."""

    reference_id: str
    status: int
    body: Any
    error: SalesforceError | None = None


@dataclass(frozen=True)
class NewFile:
    """One file for `insert_content_versions`: a first version on a record, or a new version of a document.

    The content is `data`, or the file at `path`, read only while the request body is built: a burst's
    upload batch then holds each PDF once (in the body), not also in every waiting job."""

    title: str
    path_on_client: str
    transaction_id: str
    data: bytes | None = None
    path: Path | None = None
    first_publish_location_id: str | None = None
    content_document_id: str | None = None
    reason_for_change: str | None = None
    content_type: str = "application/pdf"

    def content(self) -> bytes:
        """The bytes to upload (blocking when read from `path`: call it off the event loop)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(f"file {self.path_on_client!r} has neither data nor a path")
        return self.path.read_bytes()

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.path.stat().st_size if self.path is not None else 0


@dataclass(frozen=True)
class RecordResult:
    """Outcome of one record of an sObject Collections call."""

    sobject: str
    id: str
    success: bool
    error: SalesforceError | None = None


Result = RecordResult


@dataclass(frozen=True)
class ContentVersionRef:
    id: str
    content_document_id: str | None


@dataclass(frozen=True)
class QueryPage:
    records: list[dict[str, Any]]
    total_size: int
    next_records_url: str | None


# ------------------------------------------------------------------------------------------ helpers


class _DefaultTimeoutAdapter(HTTPAdapter):
    """requests has no session-wide timeout; without one a dead peer hangs a pool thread forever.

    It also carries the trust: an `ssl.SSLContext` with the system roots, certifi and the operator's
    extra CA, handed to urllib3's pools, so no combined CA file is ever written to disk (a temporary
    file outlives a process killed with -9). And it pins `verify` to that context: requests lets
    `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` override a session's `verify` (psf/requests#3829), which
    would silently drop the CA the operator configured.
    """

    def __init__(
        self, timeout: tuple[float, float], pool_maxsize: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeout = timeout
        self._ssl_context = ssl_context
        super().__init__(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        if self._ssl_context is not None:
            pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if self._ssl_context is None:
            super().cert_verify(conn, url, verify, cert)
            return
        # The context already holds every root to trust: no CA file for urllib3 to load into it.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        kwargs["verify"] = True  # never CERT_NONE, never a CA path from the environment
        return super().send(request, *args, **kwargs)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach Salesforce (connect phase failed)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError
                  | requests.exceptions.ProxyError | requests.exceptions.InvalidURL):
        return True
    first = exc.args[0] if exc.args else None
    reason = getattr(first, "reason", first)
    return isinstance(reason, NewConnectionError)


def map_exception(exc: BaseException, *, write: bool) -> SalesforceError:
    """simple-salesforce / requests exceptions → our SalesforceError (UncertainOutcome for writes)."""
    if isinstance(exc, SalesforceError):
        return exc
    if isinstance(exc, SimpleSalesforceError):
        return SalesforceError.from_response_body(exc.status, exc.content)
    if isinstance(exc, requests.RequestException):
        what = f"{type(exc).__name__}: {exc}"[:500]
        if write and not _never_sent(exc):
            return UncertainOutcome(f"request may have been applied: {what}")
        return SalesforceError(None, None, what, transient=True)
    return SalesforceError(None, None, f"unexpected {type(exc).__name__}: {exc}"[:500], transient=False)


# --------------------------------------------------------------------------------------------- REST


class SalesforceRest:
    """REST calls for the daemon. One instance per org; safe to use from many tasks at once."""

    def __init__(
        self,
        authenticator: TokenProvider,
        *,
        api_version: str = "68.0",
        ca_bundle: Path | None = None,
        max_workers: int = 4,
        timeout: tuple[float, float] = (10.0, 120.0),
        call_client_name: str | None = "sfsign",
        adapter: BaseAdapter | None = None,
    ) -> None:
        """`ca_bundle` defaults to the authenticator's (`AuthConfig.ca_bundle`), so REST trusts what
        OAuth and streaming trust. `adapter` replaces the HTTPS transport (tests only)."""
        if ca_bundle is None:
            ca_bundle = getattr(getattr(authenticator, "config", None), "ca_bundle", None)
        self._auth = authenticator
        self.api_version = api_version.removeprefix("v")
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sf-rest")
        self._session = requests.Session()
        ssl_context = build_ssl_context(ca_bundle) if ca_bundle is not None else None
        self._session.mount("https://", adapter or _DefaultTimeoutAdapter(timeout, max_workers, ssl_context))
        if call_client_name:
            self._session.headers["Sforce-Call-Options"] = f"client={call_client_name}"
        self._sf: simple_salesforce.Salesforce | None = None
        self._sf_token: AccessToken | None = None
        self._api_usage: tuple[int, int] | None = None
        self.calls = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, max) from the last `Sforce-Limit-Info: api-usage=used/max` seen, or None."""
        return self._api_usage

    def _client_for(self, token: AccessToken) -> simple_salesforce.Salesforce:
        if self._sf is None or self._sf_token is not token:
            self._sf = simple_salesforce.Salesforce(
                session_id=token.access_token.get_secret_value(),
                instance_url=token.instance_url,
                version=self.api_version,
                session=self._session,
                parse_float=Decimal,
                object_pairs_hook=dict,
            )
            self._sf_token = token
        return self._sf

    def _note_usage(self, sf: simple_salesforce.Salesforce) -> None:
        usage = sf.api_usage.get("api-usage")
        if usage is not None:
            self._api_usage = (usage.used, usage.total)

    async def _session_token(self, stale: AccessToken | None) -> AccessToken:
        """The token for the next call (a fresh one in place of `stale`), as a SalesforceError on failure.

        The token endpoint fails like any other Salesforce call (503 during maintenance, a network
        cut): callers retry it by the same policy instead of meeting an OAuth exception they do not
        expect. A refused login (invalid_grant: user frozen, certificate replaced) is transient too,
        with the long backoff: every job waits for the operator's fix instead of ending in `Error`,
        and the message says what to check.
        """
        try:
            return await (self._auth.token() if stale is None else self._auth.refresh(stale))
        except AuthError as exc:
            if exc.transient:
                raise SalesforceError(exc.status, "AUTH_UNAVAILABLE",
                                      f"cannot get a Salesforce session, will retry: {exc}", transient=True) from None
            raise SalesforceError(
                exc.status, "AUTH_REFUSED",
                f"Salesforce refused sfsign's login: {exc}; check SFSIGN_USERNAME, SFSIGN_CONSUMER_KEY and "
                "the key or secret of SFSIGN_AUTH_FLOW (`sfsign check` tells which)",
                transient=True, needs_long_backoff=True) from None

    async def _call(self, fn: Callable[[simple_salesforce.Salesforce], T], *, write: bool = False) -> T:
        """Run `fn(sf)` in the pool; one token refresh + retry on INVALID_SESSION_ID."""
        loop = asyncio.get_running_loop()
        token = await self._session_token(None)
        for attempt in range(2):
            sf = self._client_for(token)
            self.calls += 1
            try:
                return await loop.run_in_executor(self._executor, fn, sf)
            except SalesforceExpiredSession as exc:
                if attempt == 0:
                    log.info("salesforce.rest.session_expired", action="refresh")
                    token = await self._session_token(token)
                    continue
                raise map_exception(exc, write=write) from None
            except Exception as exc:
                raise map_exception(exc, write=write) from exc
            finally:
                self._note_usage(sf)
        raise AssertionError("unreachable")

    def _raw(self, sf: simple_salesforce.Salesforce, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request whose body is not JSON; errors routed like simple-salesforce does."""
        headers = dict(sf.headers)
        headers.update(kwargs.pop("headers", {}))
        response = sf.session.request(method, sf.base_url + path, headers=headers, **kwargs)
        limit_info = response.headers.get("Sforce-Limit-Info")
        if limit_info:
            sf.api_usage = sf.parse_api_usage(limit_info)
        if response.status_code >= 300:
            exception_handler(response, name=path)
        return response

    # ------------------------------------------------------------------ queries

    async def query(self, soql: str) -> list[dict[str, Any]]:
        """All records of a SOQL query, following `nextRecordsUrl` of the query and of every child subquery."""
        return await self._call(lambda sf: paging.drain(sf, sf.query(soql)))

    async def query_page(self, soql: str | None = None, *, next_records_url: str | None = None) -> QueryPage:
        """One batch: start with `soql`, continue with the previous page's `next_records_url`.

        The batch's records come with their child subqueries complete (their later batches read)."""
        if (soql is None) == (next_records_url is None):
            raise ValueError("give exactly one of soql / next_records_url")

        def run(sf: simple_salesforce.Salesforce) -> QueryPage:
            if next_records_url is not None:
                body = sf.query_more(next_records_url, identifier_is_url=True)
            else:
                body = sf.query(soql or "")
            return QueryPage(
                records=paging.complete_batch(sf, body),
                total_size=int(body.get("totalSize") or 0),
                next_records_url=paging.next_url(body),
            )

        return await self._call(run)

    async def get(self, sobject: str, record_id: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        path = f"sobjects/{validate_api_name(sobject)}/{validate_id(record_id)}"
        params = {"fields": ",".join(validate_field_path(f) for f in fields)} if fields else None
        result = await self._call(lambda sf: sf.restful(path, params=params))
        return dict(result or {})

    async def versions(self) -> list[str]:
        """API versions the org serves (`GET /services/data/`, which does not count against limits)."""

        def run(sf: simple_salesforce.Salesforce) -> Any:
            response = sf.session.get(f"https://{sf.sf_instance}/services/data/", headers=sf.headers)
            if response.status_code >= 300:
                exception_handler(response, name="versions")
            return response.json()

        body = await self._call(run)
        return [str(v["version"]) for v in body if isinstance(v, dict) and "version" in v]

    async def describe(self, sobject: str) -> dict[str, Any]:
        path = f"sobjects/{validate_api_name(sobject)}/describe"
        return dict(await self._call(lambda sf: sf.restful(path)) or {})

    async def limits(self) -> dict[str, Any]:
        return dict(await self._call(lambda sf: sf.limits()) or {})

    # ------------------------------------------------------------------ writes

    async def create(self, sobject: str, fields: Mapping[str, Any]) -> str:
        path = f"sobjects/{validate_api_name(sobject)}/"
        body = dump_json(dict(fields))
        result = await self._call(lambda sf: sf.restful(path, method="POST", data=body), write=True)
        return _created_id(result)

    async def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        path = f"sobjects/{validate_api_name(sobject)}/{validate_id(record_id)}"
        body = dump_json(dict(fields))
        await self._call(lambda sf: sf.restful(path, method="PATCH", data=body), write=True)

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

    # ------------------------------------------------------------------ composite

    def subrequest_url(self, path: str) -> str:
        """The URL of a composite subrequest for `path` (relative to /services/data/vNN.0/)."""
        return f"/services/data/v{self.api_version}/{path.lstrip('/')}"

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

    async def insert_content_versions(self, files: Sequence[NewFile]) -> list[RecordResult]:
        """Upload up to 200 files in one sObject Collections request with binary parts (≤ 500 MB).

        Results in input order; a per-file failure is a `RecordResult(success=False, ...)`. The call
        failing as a whole raises (uncertain: the files may exist; look them up by transaction id).
        """
        if not 0 < len(files) <= COLLECTION_LIMIT:
            raise ValueError(f"1 to {COLLECTION_LIMIT} files per call, not {len(files)}")
        body, multipart_type = await asyncio.get_running_loop().run_in_executor(
            None, self._collection_body, list(files))
        raw = await self._call(
            lambda sf: sf.restful("composite/sobjects", method="POST", data=body,
                                  headers={"Content-Type": multipart_type}),
            write=True,
        )
        if not isinstance(raw, list) or len(raw) != len(files):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "sObject Collections returned a result "
                                  f"list of the wrong shape ({type(raw).__name__})", transient=False)
        out = []
        for entry in raw:
            entry = entry if isinstance(entry, Mapping) else {}
            if entry.get("success") and entry.get("id"):
                out.append(RecordResult("ContentVersion", str(entry["id"]), True))
            else:
                errors = entry.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error detail"}]
                out.append(RecordResult("ContentVersion", "", False, SalesforceError.from_record_error(errors[0])))
        return out

    @staticmethod
    def _collection_body(files: list[NewFile]) -> tuple[bytes, str]:
        """The multipart body of an sObject Collections insert with binary parts (blocking: reads files)."""
        if sum(f.size() for f in files) > COLLECTION_BINARY_LIMIT:
            raise ValueError("the files of one collection request must stay under 500 MB")
        records = []
        parts = []
        for i, file in enumerate(files):
            entity: dict[str, Any] = {
                "attributes": {"type": "ContentVersion", "binaryPartName": f"file{i}",
                               "binaryPartNameAlias": "VersionData"},
                "Title": file.title,
                "PathOnClient": file.path_on_client,
                File.TRANSACTION_ID: file.transaction_id,
            }
            if file.content_document_id is not None:
                entity["ContentDocumentId"] = validate_id(file.content_document_id)
                if file.reason_for_change:
                    entity["ReasonForChange"] = file.reason_for_change[:1000]
            elif file.first_publish_location_id is not None:
                entity["FirstPublishLocationId"] = validate_id(file.first_publish_location_id)
            records.append(entity)
            blob = RequestField(name=f"file{i}", data=file.content(), filename=file.path_on_client)
            blob.make_multipart(content_type=file.content_type)
            parts.append(blob)
        meta = RequestField(name="collection", data=dump_json({"allOrNone": False, "records": records}).encode())
        meta.make_multipart(content_type="application/json")
        return encode_multipart_formdata([meta, *parts], boundary=f"sfsign-{uuid.uuid4().hex}")

    # ------------------------------------------------------------------ files

    async def insert_content_version(
        self,
        *,
        title: str,
        path_on_client: str,
        data: bytes,
        first_publish_location_id: str | None,
        transaction_id: str,
        content_type: str = "application/pdf",
        content_document_id: str | None = None,
        reason_for_change: str | None = None,
    ) -> str:
        """Upload a file as a new ContentVersion (multipart, up to 2 GB) and return its 068 id.

        The transaction id lands in `Sign_Transaction_Id__c`, so after an `UncertainOutcome` the
        caller can `find_content_version(transaction_id)` instead of uploading twice. With
        `content_document_id` the file becomes the new latest version of that document (Salesforce
        then forbids `FirstPublishLocationId`: the document is already shared with the record).
        """
        entity: dict[str, Any] = {
            "Title": title,
            "PathOnClient": path_on_client,
            File.TRANSACTION_ID: transaction_id,
        }
        if content_document_id is not None:
            entity["ContentDocumentId"] = validate_id(content_document_id)
            if reason_for_change:
                entity["ReasonForChange"] = reason_for_change[:1000]
        elif first_publish_location_id is not None:
            entity["FirstPublishLocationId"] = validate_id(first_publish_location_id)
        meta = RequestField(name="entity_content", data=dump_json(entity).encode())
        meta.make_multipart(content_type="application/json")
        blob = RequestField(name="VersionData", data=data, filename=path_on_client)
        blob.make_multipart(content_type=content_type)
        body, multipart_type = encode_multipart_formdata([meta, blob], boundary=f"sfsign-{uuid.uuid4().hex}")

        result = await self._call(
            lambda sf: sf.restful(
                "sobjects/ContentVersion/", method="POST", data=body, headers={"Content-Type": multipart_type}
            ),
            write=True,
        )
        return _created_id(result)

    async def find_content_version(self, transaction_id: str) -> ContentVersionRef | None:
        """The latest ContentVersion carrying this transaction id, if an upload already happened."""
        rows = await self.query(version_by_transaction_query(transaction_id))
        if not rows:
            return None
        return ContentVersionRef(id=str(rows[0]["Id"]), content_document_id=rows[0].get("ContentDocumentId"))

    @staticmethod
    def files_by_transaction_queries(transaction_ids: Sequence[str]) -> list[str]:
        """SOQL for the latest ContentVersions carrying any of these transaction ids (100 per query, so
        the URL stays short): the worker's fetch step looks them up once per batch."""
        ids = list(dict.fromkeys(transaction_ids))
        return [
            f"SELECT Id, ContentDocumentId, {File.TRANSACTION_ID} FROM ContentVersion WHERE {File.TRANSACTION_ID} "
            f"IN ({', '.join(soql_quote(t) for t in ids[n : n + 100])}) AND IsLatest = true"
            for n in range(0, len(ids), 100)
        ]

    @staticmethod
    def files_by_transaction(results: Iterable[list[dict[str, Any]]]) -> dict[str, ContentVersionRef]:
        """The answers to `files_by_transaction_queries`, by transaction id."""
        return {
            str(row[File.TRANSACTION_ID]): ContentVersionRef(id=str(row["Id"]),
                                                                 content_document_id=row.get("ContentDocumentId"))
            for rows in results for row in rows
        }

    async def find_version_by_checksum(self, content_document_id: str, md5_hex: str) -> str | None:
        """The 068 id of a version of this document with this content (Salesforce's MD5 `Checksum`):
        the upload guard for new versions, which share the transaction id of the first one."""
        rows = await self.query(version_by_checksum_query(content_document_id, md5_hex))
        return str(rows[0]["Id"]) if rows else None

    async def content_document_id(self, content_version_id: str) -> str | None:
        """The 069 ContentDocument id of a ContentVersion (the insert response carries only the 068)."""
        rows = await self.query(version_document_query(content_version_id))
        return str(rows[0]["ContentDocumentId"]) if rows and rows[0].get("ContentDocumentId") else None

    async def download_version_data(self, content_version_id: str) -> bytes:
        path = f"sobjects/ContentVersion/{validate_id(content_version_id)}/VersionData"
        return await self._call(lambda sf: self._raw(sf, "GET", path).content)

    # ------------------------------------------------------------------ events

    async def publish_event(self, name: str, fields: Mapping[str, Any]) -> str:
        """Publish a platform event; return its EventUuid (from the OPERATION_ENQUEUED entry).

        Falls back to the returned record id when the org does not report an EventUuid.
        """
        if not validate_api_name(name).endswith("__e"):
            raise ValueError(f"not a platform event: {name!r}")
        body = dump_json(dict(fields))
        result = await self._call(lambda sf: sf.restful(f"sobjects/{name}/", method="POST", data=body),
                                  write=True)
        if not isinstance(result, Mapping):
            raise SalesforceError(200, "UNEXPECTED_RESPONSE", "publish returned no body", transient=False)
        errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
        for entry in errors:
            if entry.get("statusCode") == "OPERATION_ENQUEUED" and entry.get("message"):
                return str(entry["message"])
        if not result.get("success", False):
            raise SalesforceError.from_record_error(errors[0] if errors else {"statusCode": "UNKNOWN"})
        return str(result.get("id") or "")

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Wait for in-flight calls (bounded by the request timeout), then release everything."""
        await asyncio.to_thread(self._executor.shutdown, True)
        self._session.close()


def version_by_transaction_query(transaction_id: str) -> str:
    return (f"SELECT Id, ContentDocumentId FROM ContentVersion WHERE {File.TRANSACTION_ID} = "
            f"{soql_quote(transaction_id)} AND IsLatest = true")


def version_by_checksum_query(content_document_id: str, md5_hex: str) -> str:
    return (f"SELECT Id FROM ContentVersion WHERE ContentDocumentId = '{validate_id(content_document_id)}' "
            f"AND Checksum = {soql_quote(md5_hex)}")


def version_document_query(content_version_id: str) -> str:
    return f"SELECT ContentDocumentId FROM ContentVersion WHERE Id = '{validate_id(content_version_id)}'"


def _post_collection(sf: simple_salesforce.Salesforce, *, body: str) -> Any:
    return sf.restful("composite/sobjects", method="POST", data=body)


def _created_id(result: Any) -> str:
    if not isinstance(result, Mapping):
        raise SalesforceError(200, "UNEXPECTED_RESPONSE", "create returned no body", transient=False)
    if not result.get("success", True) or not result.get("id"):
        errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
        raise SalesforceError.from_record_error(errors[0] if errors else {"statusCode": "UNKNOWN"})
    return str(result["id"])
