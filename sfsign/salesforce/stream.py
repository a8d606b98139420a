"""A small Bayeux (CometD) long-polling client for Salesforce streaming, on httpx.

Why our own (reference/streaming-notes.md): the available libraries either do not run on Python
3.11 or lose subscriptions silently (expired replay id during an outage, HTTP 401 with a JSON
body). This client makes every such case explicit:

* every (re)subscribe asks `replay_source(channel)` for the last *committed* replay id, so events
  that were yielded but not committed are replayed rather than lost;
* an invalid replay id raises `ReplayIdInvalid` out of `messages()`; the daemon calls
  `reset_replay(channel)` (subscribe from -1, or -2 for `replay_all` channels) and reconciles: no
  silent fallback;
* a subscription Salesforce refuses for good raises `SubscriptionFailed`: never silently dropped;
* error strings are read by the Bayeux 1.0 grammar `code:args:message` (Salesforce `403::Unknown client`,
  faye `401:<clientId>:Unknown client`, CometD `402::session_unknown`): a lost session on any `/meta/*`
  reply (402, "unknown client", "session_unknown") → handshake again and resubscribe; any other `401`
  (Bayeux or raw HTTP) → one token refresh through the shared Authenticator, then handshake: never a
  loop on a stale token, never a retry with a dead client id;
* `advice.reconnect` is followed on every reply, successful or not: `handshake` → a new session at
  once, `none` → this session is over (no further connect on it), a new one after a backoff;
* an answer to `/meta/connect` that cannot be read (cut, truncated or non-JSON body, a proxy's HTML
  page, a body that is not a message array, HTTP 5xx or 429) may have carried events the server has
  already dequeued for this session: a new session subscribes from the committed replay ids, so they
  are replayed instead of lost;
* network errors, 5xx and aborted long polls → capped exponential backoff with jitter;
* a long poll unanswered after `advice.timeout` + margin is abandoned (half-open connection);
* one clear "disconnected" signal per outage: `connected` flips to False once (with one
  `salesforce.stream.disconnected` log line) and back once (`salesforce.stream.reconnected`). A
  routine hiccup that the immediate recovery fixes (a long poll cut by a proxy, `403::Unknown
  client`, a revoked token) is no outage: `connected` stays True and nothing alarming is logged.

Messages are yielded in order, one connect batch at a time; the next `/meta/connect` is sent when
the consumer asks for the message after the batch. Salesforce drops a client that does not
reconnect within 40 s of a response, so the consumer must not sit on a message for that long: if
it does, the client rehandshakes and resubscribes from the committed replay ids (no loss, some
redelivery).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from sfsign.salesforce.auth import AccessToken, TokenProvider
from sfsign.salesforce.errors import AuthError

log = structlog.get_logger(__name__)

# The Bayeux 1.0 spec's error grammar: error_code ":" [error_args] ":" error_message, args comma separated.
_ERROR_RE = re.compile(r"^\s*(\d{3}):([^:]*):(.*)$", re.DOTALL)


class StreamError(Exception):
    """Base of the errors `messages()` raises on purpose."""


class ReplayIdInvalid(StreamError):
    """Salesforce refused the stored replay id (outside the retention window, or unknown)."""

    def __init__(self, channel: str, replay_id: int, error: str = "") -> None:
        self.channel = channel
        self.replay_id = replay_id
        self.error = error
        super().__init__(f"replay id {replay_id} refused for {channel}: {error}")


class SubscriptionFailed(StreamError):
    """Salesforce refused a subscription for a reason a retry cannot fix (no channel, no permission)."""

    def __init__(self, channel: str, error: str) -> None:
        self.channel = channel
        self.error = error
        super().__init__(f"subscription to {channel} refused: {error}")


RecoveryKind = Literal["retry", "handshake", "auth", "long"]


class _Recover(Exception):
    """Internal: how to get back to a working session after a failure.

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


def _reconnect_advice(reply: Mapping[str, Any]) -> str | None:
    """`advice.reconnect` of this very reply: a stale one must not steer a later failure."""
    advice = reply.get("advice")
    reconnect = advice.get("reconnect") if isinstance(advice, Mapping) else None
    return reconnect if isinstance(reconnect, str) else None


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


def _error_code(error: Any) -> int | None:
    return BayeuxError.parse(error).code


def _failure_reason(reply: Mapping[str, Any]) -> str:
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, Mapping) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, Mapping) else None
    return reason if isinstance(reason, str) else ""


class StreamClient:
    """Subscribes to `channels` and yields their raw data messages (`{"channel", "data"}`)."""

    def __init__(
        self,
        authenticator: TokenProvider,
        *,
        channels: Sequence[str],
        replay_source: Callable[[str], int | None],
        replay_all: Sequence[str] = (),
        api_version: str = "68.0",
        long_poll_margin_s: float = 15.0,
        request_timeout_s: float = 30.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        long_backoff_s: float = 600.0,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not channels:
            raise ValueError("StreamClient needs at least one channel")
        for channel in channels:
            if not channel.startswith(("/data/", "/event/", "/topic/", "/u/")):
                raise ValueError(f"not a streaming channel: {channel!r}")
        self._auth = authenticator
        self._channels = list(dict.fromkeys(channels))
        self._replay_source = replay_source
        # Channels subscribed from -2 (every retained event) rather than -1 when there is no position to
        # resume from: requests that carry no state to query later (platform events), deduped downstream.
        self._replay_all = frozenset(replay_all)
        self.api_version = api_version.removeprefix("v")
        self._margin = long_poll_margin_s
        self._request_timeout = request_timeout_s
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._long_backoff = long_backoff_s
        self._sleep = sleep
        self._rng = rng
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            verify=authenticator.ssl_context,
            transport=transport,
            timeout=httpx.Timeout(request_timeout_s, read=None),  # reads bounded by our watchdog
        )
        self._client_id: str | None = None
        self._subscribed: set[str] = set()
        self._advice = Advice()
        self._msg_id = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._failures = 0
        self._had_failure = False
        self._reset: dict[str, int | None] = {}
        self._last_invalid: dict[str, int] = {}
        self._closed = False
        # readiness / diagnostics
        self.connected = False
        self.last_message_at: float | None = None  # wall clock of the last data message yielded
        self.last_contact_at: float | None = None  # wall clock of the last Bayeux response
        self.disconnected_since: float | None = time.time()
        self.reconnects = 0
        self.subscribed_replay: dict[str, int] = {}  # replay id sent on the last successful subscribe
        self.server_supports_replay: bool | None = None

    # ------------------------------------------------------------------ public

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    @property
    def client_id(self) -> str | None:
        return self._client_id

    def reset_replay(self, channel: str) -> None:
        """Subscribe `channel` from -1 (new events only) instead of the refused replay id.

        Holds until `replay_source` reports a different id (the daemon committed a newer event),
        so a later outage does not retry the refused id. The caller must reconcile the gap.
        """
        if channel not in self._channels:
            raise ValueError(f"not subscribed to {channel!r}")
        self._reset[channel] = self._last_invalid.pop(channel, self._replay_source(channel))

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Yield data messages in order, forever; raises ReplayIdInvalid / SubscriptionFailed / AuthError."""
        while True:
            while self._pending:
                message = self._pending.popleft()
                self.last_message_at = time.time()
                yield message
            if self._closed:
                return
            try:
                await self._step()
            except _Recover as failure:
                await self._recover(failure)
            except AuthError as exc:
                if not exc.transient:
                    raise  # e.g. invalid_grant: no retry fixes the configuration
                await self._recover(_Recover("retry", str(exc)))
            except (ReplayIdInvalid, SubscriptionFailed) as exc:
                self._set_disconnected(str(exc))  # not subscribed until the caller has dealt with it
                raise
            except Exception:
                if self._closed:
                    return
                raise

    async def aclose(self) -> None:
        """Stop: send `/meta/disconnect` (best effort) and release the HTTP client."""
        self._closed = True
        client_id, self._client_id = self._client_id, None
        self.connected = False
        if client_id is not None:
            try:
                token = await self._auth.token()
                async with asyncio.timeout(5):
                    await self._http.post(
                        self._url(token),
                        json=[{"channel": "/meta/disconnect", "clientId": client_id, "id": self._next_id()}],
                        headers={"Authorization": token.bearer},
                    )
            except Exception as exc:  # best effort: the server forgets us after 40 s anyway
                log.debug("salesforce.stream.disconnect_failed", error=type(exc).__name__)
        if self._own_http:
            await self._http.aclose()

    # ------------------------------------------------------------------ protocol steps

    async def _step(self) -> None:
        fresh = False
        if self._client_id is None:
            await self._handshake()
            fresh = True
        for channel in self._channels:
            if channel not in self._subscribed:
                await self._subscribe(channel)
                fresh = True
        if fresh:
            self._mark_connected()  # the server accepted a new session and every subscription
        if self._advice.interval_ms > 0:
            await self._sleep(self._advice.interval_ms / 1000)
        await self._connect()

    async def _handshake(self) -> None:
        self._subscribed.clear()
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "ext": {"replay": True},
            "id": self._next_id(),
        }
        token, replies = await self._post([message], self._request_timeout)
        reply = self._reply(replies, "/meta/handshake")
        if reply is None:
            raise _Recover("handshake", "handshake response without a /meta/handshake reply")
        self._take_advice(reply)
        if not reply.get("successful"):
            error = str(reply.get("error") or "")
            reason = _failure_reason(reply)
            log.warning("salesforce.stream.handshake_denied", error=error, reason=reason)
            if _error_code(reason) == 503 or _error_code(error) == 503:
                raise _Recover("handshake", f"{error} {reason}".strip())
            if _error_code(reason) == 401 or _error_code(error) == 401:
                raise _Recover("auth", f"{error} {reason}".strip(), immediate=True, token=token)
            raise _Recover("handshake", f"{error} {reason}".strip())
        client_id = reply.get("clientId")
        if not isinstance(client_id, str) or not client_id:
            raise _Recover("handshake", "handshake reply without clientId")
        ext = reply.get("ext")
        self.server_supports_replay = bool(isinstance(ext, Mapping) and ext.get("replay"))
        if not self.server_supports_replay:
            log.warning("salesforce.stream.no_replay_ext", note="server did not announce the replay extension")
        self._client_id = client_id
        log.info("salesforce.stream.handshake", client_id=client_id)

    def _replay_for(self, channel: str) -> int:
        stored = self._replay_source(channel)
        start = -2 if channel in self._replay_all else -1
        if channel in self._reset:
            if stored is None or stored == self._reset[channel]:
                return start
            del self._reset[channel]
        return start if stored is None else int(stored)

    async def _subscribe(self, channel: str) -> None:
        replay_id = self._replay_for(channel)
        message = {
            "channel": "/meta/subscribe",
            "clientId": self._client_id,
            "subscription": channel,
            "id": self._next_id(),
            "ext": {"replay": {channel: replay_id}},
        }
        token, replies = await self._post([message], self._request_timeout)
        reply = self._reply(replies, "/meta/subscribe")
        if reply is None:
            raise _Recover("handshake", "subscribe response without a /meta/subscribe reply")
        self._take_advice(reply)
        if reply.get("successful"):
            self._subscribed.add(channel)
            self.subscribed_replay[channel] = replay_id
            log.info("salesforce.stream.subscribed", channel=channel, replay_id=replay_id)
            self._follow_advice(reply)
            return
        error = str(reply.get("error") or "")
        code = _error_code(error)
        lowered = error.lower()
        if code == 400 and "replayid" in lowered:
            self._last_invalid[channel] = replay_id
            log.warning("salesforce.stream.replay_id_invalid", channel=channel, replay_id=replay_id)
            raise ReplayIdInvalid(channel, replay_id, error)
        self._raise_session_failure(error, reply, token)
        if code is None or code >= 500:
            raise _Recover("retry", error or "subscribe failed")
        raise SubscriptionFailed(channel, error)

    async def _connect(self) -> None:
        message = {
            "channel": "/meta/connect",
            "clientId": self._client_id,
            "connectionType": "long-polling",
            "id": self._next_id(),
        }
        timeout = self._advice.timeout_ms / 1000 + self._margin
        try:
            token, replies = await self._post([message], timeout)
        except _Recover as failure:
            if failure.kind == "retry" and failure.answer_lost:
                # The server dequeues the events it writes into a connect answer, with no acknowledgement:
                # if that answer was lost, the same session never sees them again. A new session that
                # subscribes from the committed replay ids gets them replayed (measured: the emulator drops
                # them exactly like that when a long poll is cut).
                raise _Recover("handshake", failure.reason, immediate=failure.immediate) from None
            raise
        if any(r.get("channel") == "/meta/disconnect" for r in replies):
            raise _Recover("handshake", "server sent /meta/disconnect", immediate=True)
        reply = self._reply(replies, "/meta/connect")
        if reply is None:
            if self._pending:
                self._connect_ok()
                return
            raise _Recover("retry", "connect response without a /meta/connect reply")
        self._take_advice(reply)
        if reply.get("successful"):
            self._connect_ok()
            self._follow_advice(reply)  # the events of this answer are yielded before a new session starts
            return
        error = str(reply.get("error") or "")
        if "daily limit exceeded" in error.lower() or "events daily limit" in error.lower():
            raise _Recover("long", error)
        self._raise_session_failure(error, reply, token)
        advice = _reconnect_advice(reply)
        code = _error_code(error)
        if advice == "none" or (advice is None and code is not None and 400 <= code < 500):
            # the session is unusable (e.g. cookie lost): start a new one, after a backoff
            raise _Recover("handshake", error or "connect refused (reconnect: none)")
        raise _Recover("retry", error or "connect failed")

    def _raise_session_failure(self, error: str, reply: Mapping[str, Any], token: AccessToken) -> None:
        """Failures that mean the Bayeux session or the token is gone (shared by subscribe/connect)."""
        parsed = BayeuxError.parse(error)
        code = parsed.code
        reason = _failure_reason(reply)
        if _error_code(reason) == 503:
            raise _Recover("handshake", f"{error} {reason}".strip())
        lowered = parsed.message.lower()
        # before the 401 check: faye's unknown client is `401:<id>:Unknown client`, not an auth failure
        if parsed.session_lost or (code == 403 and "handshake" in lowered):
            raise _Recover("handshake", error, immediate=True)
        if code == 401:
            raise _Recover("auth", error, immediate=True, token=token)
        if "has established a session" in lowered:  # 400: the BAYEUX_BROWSER cookie was lost
            raise _Recover("handshake", error)
        if _reconnect_advice(reply) == "handshake":
            raise _Recover("handshake", error or "advice: handshake", immediate=True)

    @staticmethod
    def _follow_advice(reply: Mapping[str, Any]) -> None:
        """`advice.reconnect` on a successful reply (Bayeux allows advice on any reply): the server may
        end a session that just worked. `handshake`: a new session at once. `none`: the server wants no
        further connect on this session; a daemon cannot stop listening, so it starts a new session
        after a backoff instead of reconnecting."""
        advice = _reconnect_advice(reply)
        if advice == "handshake":
            raise _Recover("handshake", "advice: reconnect handshake", immediate=True)
        if advice == "none":
            raise _Recover("handshake", "advice: reconnect none")

    # ------------------------------------------------------------------ transport

    def _url(self, token: AccessToken) -> str:
        return f"{token.instance_url}/cometd/{self.api_version}"

    def _next_id(self) -> str:
        self._msg_id += 1
        return str(self._msg_id)

    async def _post(
        self, payload: list[dict[str, Any]], deadline_s: float
    ) -> tuple[AccessToken, list[dict[str, Any]]]:
        """POST a message batch; queue data messages; return the meta replies."""
        token = await self._auth.token()
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._http.post(
                    self._url(token), json=payload, headers={"Authorization": token.bearer}
                )
        except TimeoutError:
            raise _Recover("retry", f"no answer within {deadline_s:g} s (half-open connection?)",
                           answer_lost=True) from None
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            # the connection was cut after the request went out (proxy idle timeout, load balancer)
            raise _Recover("retry", f"{type(exc).__name__}: {exc}", immediate=True, answer_lost=True) from None
        except httpx.HTTPError as exc:
            raise _Recover("retry", f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 401:
            raise _Recover("auth", f"HTTP 401 {_http_error_code(response)}", immediate=True, token=token)
        # From here on the request may have been processed (a load balancer's 502 after the server
        # answered, a proxy's page in place of the answer, a truncated body): `answer_lost`.
        if response.status_code >= 500 or response.status_code == 429:
            raise _Recover("retry", f"HTTP {response.status_code}", answer_lost=True)
        if response.status_code != 200:
            raise _Recover("handshake", f"HTTP {response.status_code} {_http_error_code(response)}")
        try:
            body = response.json()
        except ValueError:
            raise _Recover("retry", f"unreadable answer ({_describe_body(response)})", immediate=True,
                           answer_lost=True) from None
        if not isinstance(body, list):
            raise _Recover("retry", f"answer is not a Bayeux message array ({type(body).__name__})",
                           immediate=True, answer_lost=True)
        self.last_contact_at = time.time()
        replies: list[dict[str, Any]] = []
        for item in body:
            if not isinstance(item, dict):
                continue
            channel = item.get("channel")
            if isinstance(channel, str) and not channel.startswith("/meta/"):
                self._pending.append(item)
            elif channel is not None or "successful" in item:
                replies.append(item)
        return token, replies

    @staticmethod
    def _reply(replies: list[dict[str, Any]], channel: str) -> dict[str, Any] | None:
        for reply in replies:
            if reply.get("channel") == channel:
                return reply
        for reply in replies:
            if reply.get("channel") is None:
                return reply  # e.g. {"error":"403::Unknown client","successful":false,"advice":{…}}
        return None

    def _take_advice(self, reply: Mapping[str, Any]) -> None:
        advice = reply.get("advice")
        if not isinstance(advice, Mapping):
            return
        interval = advice.get("interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval >= 0:
            self._advice.interval_ms = int(interval)
        timeout = advice.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
            self._advice.timeout_ms = int(timeout)

    # ------------------------------------------------------------------ state

    def _mark_connected(self) -> None:
        down_since = self.disconnected_since
        self.connected = True
        self.disconnected_since = None
        if not self._had_failure:
            return
        self.reconnects += 1
        self._had_failure = False
        if down_since is None:  # a hiccup fixed by the immediate recovery: no outage to close
            log.info("salesforce.stream.recovered", reconnects=self.reconnects)
        else:
            log.info("salesforce.stream.reconnected", reconnects=self.reconnects,
                     down_s=round(time.time() - down_since, 1))

    def _set_disconnected(self, reason: str) -> None:
        """The one "disconnected" signal of an outage: flips `connected` and logs, once."""
        if not self.connected:
            return
        self.connected = False
        self.disconnected_since = time.time()
        log.error("salesforce.stream.disconnected", reason=reason)

    def _connect_ok(self) -> None:
        self._failures = 0
        if not self.connected:
            self._mark_connected()

    def backoff_delay(self, failures: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(max(failures - 1, 0), 30))
        return ceiling / 2 + self._rng() * ceiling / 2

    async def _recover(self, failure: _Recover) -> None:
        self._failures += 1
        self._had_failure = True
        if failure.kind != "retry":
            self._client_id = None
            self._subscribed.clear()
        if failure.kind == "long":
            delay = self._long_backoff
        elif failure.immediate and self._failures == 1:
            delay = 0.0
        else:
            delay = self.backoff_delay(self._failures)
        if self.connected and failure.immediate and self._failures == 1:
            # routine (proxy cut, forgotten client, revoked token): reported only if this recovery fails too
            log.info("salesforce.stream.recovering", kind=failure.kind, reason=failure.reason)
        else:
            self._set_disconnected(failure.reason)
            log.warning("salesforce.stream.failure", kind=failure.kind, reason=failure.reason,
                        failures=self._failures, retry_in_s=round(delay, 3))
        if delay > 0 and not self._closed:
            await self._sleep(delay)
        if failure.kind == "auth" and not self._closed:
            try:
                await self._auth.refresh(failure.token)
            except AuthError as exc:
                if not exc.transient:
                    raise
                log.warning("salesforce.stream.refresh_failed", error=str(exc))


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
