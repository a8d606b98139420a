"""One Bayeux (CometD) session over HTTP: the handshake, each POST, and what its answer means.

`StreamClient` decides what to do next (subscribe, connect, recover); this module holds what the
wire says, read by the Bayeux 1.0 grammar and Salesforce's habits: which answers carry events,
which failures mean the session or the token is gone (`Recover`), what `advice` asks for. Kept
apart so each rule about the protocol is in one place and can be read without the retry loop
around it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from sfsign.salesforce.auth import AccessToken, TokenProvider

log = structlog.get_logger("sfsign.salesforce.stream")  # one logger for the whole streaming client

# The Bayeux 1.0 spec's error grammar: error_code ":" [error_args] ":" error_message, args comma separated.
_ERROR_RE = re.compile(r"^\s*(\d{3}):([^:]*):(.*)$", re.DOTALL)

RecoveryKind = Literal["retry", "handshake", "auth", "long"]


class Recover(Exception):
    """How to get back to a working session after a failure (never leaves `StreamClient`).

    `immediate`: the first occurrence skips the backoff (403::Unknown client, a revoked token, a long
    poll whose connection was cut); while the session was healthy it is not reported as an outage
    unless that immediate recovery fails too.
    `token`: the token the failed request carried, so `refresh` replaces exactly that one.
    `answer_lost`: the request may have reached the server but its answer never arrived (connection
    cut after sending, no answer in time): events the server put in that answer are gone.
    """

    def __init__(
        self, kind: RecoveryKind, reason: str, *, immediate: bool = False, token: AccessToken | None = None,
        answer_lost: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.immediate = immediate
        self.token = token
        self.answer_lost = answer_lost


@dataclass
class Advice:
    """The server's timing advice; it persists (Salesforce sends it on the first connect only)."""

    interval_ms: int = 0
    timeout_ms: int = 110_000

    def take(self, reply: Mapping[str, Any]) -> None:
        """Keep the interval and timeout a reply advises, if it advises any."""
        advice = reply.get("advice")
        if not isinstance(advice, Mapping):
            return
        interval = advice.get("interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval >= 0:
            self.interval_ms = int(interval)
        timeout = advice.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
            self.timeout_ms = int(timeout)


@dataclass(frozen=True)
class BayeuxError:
    """An `error` field split by the Bayeux grammar; a string outside it keeps its text as the message."""

    code: int | None
    args: tuple[str, ...]
    message: str

    @classmethod
    def parse(cls, error: Any) -> BayeuxError:
        text = error if isinstance(error, str) else ""
        match = _ERROR_RE.match(text)
        if match is None:
            return cls(None, (), text.strip())
        args = tuple(a for a in match.group(2).split(",") if a)
        return cls(int(match.group(1)), args, match.group(3).strip())

    @property
    def session_lost(self) -> bool:
        """The server no longer knows this client id: only a new handshake helps.

        Salesforce says `403::Unknown client`, faye `401:<id>:Unknown client`, CometD `402::Unknown
        client` or `402::session_unknown`. Any 402 counts: faye's (a missing parameter) cannot be fixed by
        sending the same message again either, so a new handshake is right for both.
        """
        lowered = self.message.lower()
        return self.code == 402 or "unknown client" in lowered or "session_unknown" in lowered


def error_code(error: Any) -> int | None:
    return BayeuxError.parse(error).code


def reconnect_advice(reply: Mapping[str, Any]) -> str | None:
    """`advice.reconnect` of this very reply: a stale one must not steer a later failure."""
    advice = reply.get("advice")
    reconnect = advice.get("reconnect") if isinstance(advice, Mapping) else None
    return reconnect if isinstance(reconnect, str) else None


def failure_reason(reply: Mapping[str, Any]) -> str:
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, Mapping) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, Mapping) else None
    return reason if isinstance(reason, str) else ""


def reply_on(replies: list[dict[str, Any]], channel: str) -> dict[str, Any] | None:
    """The reply to a `/meta/*` message, or a reply that names no channel (Salesforce's way for some errors)."""
    for reply in replies:
        if reply.get("channel") == channel:
            return reply
    for reply in replies:
        if reply.get("channel") is None:
            return reply  # e.g. {"error":"403::Unknown client","successful":false,"advice":{…}}
    return None


def raise_session_failure(error: str, reply: Mapping[str, Any], token: AccessToken) -> None:
    """Failures that mean the Bayeux session or the token is gone (shared by subscribe/connect)."""
    parsed = BayeuxError.parse(error)
    code = parsed.code
    reason = failure_reason(reply)
    if error_code(reason) == 503:
        raise Recover("handshake", f"{error} {reason}".strip())
    lowered = parsed.message.lower()
    # before the 401 check: faye's unknown client is `401:<id>:Unknown client`, not an auth failure
    if parsed.session_lost or (code == 403 and "handshake" in lowered):
        raise Recover("handshake", error, immediate=True)
    if code == 401:
        raise Recover("auth", error, immediate=True, token=token)
    if "has established a session" in lowered:  # 400: the BAYEUX_BROWSER cookie was lost
        raise Recover("handshake", error)
    if reconnect_advice(reply) == "handshake":
        raise Recover("handshake", error or "advice: handshake", immediate=True)


def follow_advice(reply: Mapping[str, Any]) -> None:
    """`advice.reconnect` on a successful reply (Bayeux allows advice on any reply): the server may
    end a session that just worked. `handshake`: a new session at once. `none`: the server wants no
    further connect on this session; a daemon cannot stop listening, so it starts a new session
    after a backoff instead of reconnecting."""
    advice = reconnect_advice(reply)
    if advice == "handshake":
        raise Recover("handshake", "advice: reconnect handshake", immediate=True)
    if advice == "none":
        raise Recover("handshake", "advice: reconnect none")


class BayeuxTransport:
    """The HTTP side of one client: the session (client id, advice), message ids, and every POST.

    Data messages that arrive in any answer are queued in `pending` in order; the meta replies go
    back to the caller. Every failure to get a readable answer is a `Recover`.
    """

    def __init__(
        self,
        authenticator: TokenProvider,
        *,
        api_version: str,
        request_timeout_s: float,
        http: httpx.AsyncClient | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._auth = authenticator
        self.api_version = api_version.removeprefix("v")
        self.request_timeout_s = request_timeout_s
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            verify=authenticator.ssl_context,
            transport=transport,
            timeout=httpx.Timeout(request_timeout_s, read=None),  # reads bounded by the caller's deadline
        )
        self._msg_id = 0
        self.client_id: str | None = None
        self.advice = Advice()
        self.pending: deque[dict[str, Any]] = deque()
        self.last_contact_at: float | None = None  # wall clock of the last Bayeux response
        self.server_supports_replay: bool | None = None

    def url(self, token: AccessToken) -> str:
        return f"{token.instance_url}/cometd/{self.api_version}"

    def next_id(self) -> str:
        self._msg_id += 1
        return str(self._msg_id)

    async def handshake(self) -> None:
        """Start a new session: `client_id` is set when the server accepted it."""
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "ext": {"replay": True},
            "id": self.next_id(),
        }
        token, replies = await self.post([message], self.request_timeout_s)
        reply = reply_on(replies, "/meta/handshake")
        if reply is None:
            raise Recover("handshake", "handshake response without a /meta/handshake reply")
        self.advice.take(reply)
        if not reply.get("successful"):
            error = str(reply.get("error") or "")
            reason = failure_reason(reply)
            log.warning("salesforce.stream.handshake_denied", error=error, reason=reason)
            if error_code(reason) == 503 or error_code(error) == 503:
                raise Recover("handshake", f"{error} {reason}".strip())
            if error_code(reason) == 401 or error_code(error) == 401:
                raise Recover("auth", f"{error} {reason}".strip(), immediate=True, token=token)
            raise Recover("handshake", f"{error} {reason}".strip())
        client_id = reply.get("clientId")
        if not isinstance(client_id, str) or not client_id:
            raise Recover("handshake", "handshake reply without clientId")
        ext = reply.get("ext")
        self.server_supports_replay = bool(isinstance(ext, Mapping) and ext.get("replay"))
        if not self.server_supports_replay:
            log.warning("salesforce.stream.no_replay_ext", note="server did not announce the replay extension")
        self.client_id = client_id
        log.info("salesforce.stream.handshake", client_id=client_id)

    async def post(
        self, payload: list[dict[str, Any]], deadline_s: float
    ) -> tuple[AccessToken, list[dict[str, Any]]]:
        """POST a message batch; queue data messages; return the meta replies."""
        token = await self._auth.token()
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._http.post(
                    self.url(token), json=payload, headers={"Authorization": token.bearer}
                )
        except TimeoutError:
            raise Recover("retry", f"no answer within {deadline_s:g} s (half-open connection?)",
                          answer_lost=True) from None
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            # the connection was cut after the request went out (proxy idle timeout, load balancer)
            raise Recover("retry", f"{type(exc).__name__}: {exc}", immediate=True, answer_lost=True) from None
        except httpx.HTTPError as exc:
            raise Recover("retry", f"{type(exc).__name__}: {exc}") from None
        return token, self._read(response, token)

    def _read(self, response: httpx.Response, token: AccessToken) -> list[dict[str, Any]]:
        """The meta replies of an answer, its data messages queued; a failed or unreadable answer raises."""
        if response.status_code == 401:
            raise Recover("auth", f"HTTP 401 {_http_error_code(response)}", immediate=True, token=token)
        # From here on the request may have been processed (a load balancer's 502 after the server
        # answered, a proxy's page in place of the answer, a truncated body): `answer_lost`.
        if response.status_code >= 500 or response.status_code == 429:
            raise Recover("retry", f"HTTP {response.status_code}", answer_lost=True)
        if response.status_code != 200:
            raise Recover("handshake", f"HTTP {response.status_code} {_http_error_code(response)}")
        try:
            body = response.json()
        except ValueError:
            raise Recover("retry", f"unreadable answer ({_describe_body(response)})", immediate=True,
                          answer_lost=True) from None
        if not isinstance(body, list):
            raise Recover("retry", f"answer is not a Bayeux message array ({type(body).__name__})",
                          immediate=True, answer_lost=True)
        self.last_contact_at = time.time()
        replies: list[dict[str, Any]] = []
        for item in body:
            if not isinstance(item, dict):
                continue
            channel = item.get("channel")
            if isinstance(channel, str) and not channel.startswith("/meta/"):
                self.pending.append(item)
            elif channel is not None or "successful" in item:
                replies.append(item)
        return replies

    async def aclose(self) -> None:
        """End the session with `/meta/disconnect` (best effort) and release the HTTP client."""
        client_id, self.client_id = self.client_id, None
        if client_id is not None:
            try:
                token = await self._auth.token()
                async with asyncio.timeout(5):
                    await self._http.post(
                        self.url(token),
                        json=[{"channel": "/meta/disconnect", "clientId": client_id, "id": self.next_id()}],
                        headers={"Authorization": token.bearer},
                    )
            except Exception as exc:  # best effort: the server forgets us after 40 s anyway
                log.debug("salesforce.stream.disconnect_failed", error=type(exc).__name__)
        if self._own_http:
            await self._http.aclose()


def _describe_body(response: httpx.Response) -> str:
    """What an unreadable answer was, for the log: its type and size, never its content."""
    content_type = response.headers.get("content-type", "no content type").split(";")[0]
    return f"HTTP {response.status_code}, {content_type}, {len(response.content)} bytes"


def _http_error_code(response: httpx.Response) -> str:
    """`errorCode` of a REST-style error body (`[{"errorCode": "INVALID_SESSION_ID", …}]`), if any."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, list) and body and isinstance(body[0], Mapping):
        return str(body[0].get("errorCode") or "")
    return ""
