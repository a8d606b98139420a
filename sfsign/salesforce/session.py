"""The authenticated session every REST call runs through: token, thread pool, HTTPS transport, errors.

simple-salesforce is synchronous (requests), so every call runs in a small bounded thread pool
(`loop.run_in_executor`) and the event loop never waits on the network. The token comes from the
shared `Authenticator`; simple-salesforce is used in direct-session mode, so it never logs in by
itself: on a 401 `INVALID_SESSION_ID` the session asks `Authenticator.refresh` for a new token once
and retries once.

Every failure leaves as `SalesforceError` (classified transient/permanent); a write that failed
after it was sent leaves as `UncertainOutcome`, so the caller looks before writing again.

This is the part of the client that every kind of call shares; the calls themselves are grouped by
what they touch (`composite`, `files`, `rest`) on top of `RestSession`, the way redis-py groups its
commands in mixins over one connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import requests
import simple_salesforce
import structlog
from requests.adapters import BaseAdapter, HTTPAdapter
from simple_salesforce.exceptions import SalesforceError as SimpleSalesforceError
from simple_salesforce.exceptions import SalesforceExpiredSession
from simple_salesforce.util import exception_handler
from urllib3.exceptions import NewConnectionError

from sfsign.salesforce import paging
from sfsign.salesforce.auth import AccessToken, TokenProvider, build_ssl_context
from sfsign.salesforce.errors import AuthError, SalesforceError, UncertainOutcome

log = structlog.get_logger("sfsign.salesforce.rest")  # the name its log lines have always carried

T = TypeVar("T")


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


def created_id(result: Any) -> str:
    """The id of a created record (or a ContentVersion), or the record error as a SalesforceError."""
    if not isinstance(result, Mapping):
        raise SalesforceError(200, "UNEXPECTED_RESPONSE", "create returned no body", transient=False)
    if not result.get("success", True) or not result.get("id"):
        errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
        raise SalesforceError.from_record_error(errors[0] if errors else {"statusCode": "UNKNOWN"})
    return str(result["id"])


class DefaultTimeoutAdapter(HTTPAdapter):
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


class RestSession:
    """One org's REST session, safe to use from many tasks at once; `SalesforceRest` adds the calls."""

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
        self._session.mount("https://", adapter or DefaultTimeoutAdapter(timeout, max_workers, ssl_context))
        if call_client_name:
            self._session.headers["Sforce-Call-Options"] = f"client={call_client_name}"
        self._sf: simple_salesforce.Salesforce | None = None
        self._sf_token: AccessToken | None = None
        self._api_usage: tuple[int, int] | None = None
        self.calls = 0

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

    async def query(self, soql: str) -> list[dict[str, Any]]:
        """All records of a SOQL query, following `nextRecordsUrl` of the query and of every child subquery."""
        return await self._call(lambda sf: paging.drain(sf, sf.query(soql)))

    def subrequest_url(self, path: str) -> str:
        """The URL of a composite subrequest for `path` (relative to /services/data/vNN.0/)."""
        return f"/services/data/v{self.api_version}/{path.lstrip('/')}"

    async def close(self) -> None:
        """Wait for in-flight calls (bounded by the request timeout), then release everything."""
        await asyncio.to_thread(self._executor.shutdown, True)
        self._session.close()
