"""A small Bayeux (CometD) long-polling client for Salesforce streaming, on httpx.

Why our own (reference/streaming-notes.md): the available libraries either do not run on Python
3.11 or lose subscriptions silently (expired replay id during an outage, HTTP 401 with a JSON
body). This client makes every such case explicit:

* every (re)subscribe asks `replay_source(channel)` for the last *committed* replay id, so events
  that were yielded but not committed are replayed rather than lost; a channel with no committed id
  can only resubscribe from -1, which skips what the lost session had: `take_gaps()` names such
  channels, and the daemon reconciles their objects;
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

The parts: `bayeux` (the session over HTTP and what each answer means), `stream_replay` (where each
subscription starts), `stream_health` (the connected flag and the backoff); this module runs the
loop that ties them together and yields the messages.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import structlog

from sfsign.salesforce.auth import TokenProvider
from sfsign.salesforce.bayeux import (
    BayeuxTransport,
    Recover,
    error_code,
    follow_advice,
    raise_session_failure,
    reconnect_advice,
    reply_on,
)
from sfsign.salesforce.errors import AuthError
from sfsign.salesforce.events import ReplayId, replay_label
from sfsign.salesforce.stream_health import StreamHealth
from sfsign.salesforce.stream_replay import ReplayBook

log = structlog.get_logger(__name__)

_CHANNEL_PREFIXES = ("/data/", "/event/", "/topic/", "/u/")


class StreamError(Exception):
    """Base of the errors `messages()` raises on purpose."""


class ReplayIdInvalid(StreamError):
    """Salesforce refused the stored replay id (outside the retention window, or unknown)."""

    def __init__(self, channel: str, replay_id: ReplayId, error: str = "") -> None:
        self.channel = channel
        self.replay_id = replay_id  # CometD's integer, or (raised by the Pub/Sub client) its opaque bytes
        self.error = error
        super().__init__(f"replay id {replay_label(replay_id)} refused for {channel}: {error}")


class SubscriptionFailed(StreamError):
    """Salesforce refused a subscription for a reason a retry cannot fix (no channel, no permission)."""

    def __init__(self, channel: str, error: str) -> None:
        self.channel = channel
        self.error = error
        super().__init__(f"subscription to {channel} refused: {error}")


class StreamClient:
    """Subscribes to `channels` and yields their raw data messages (`{"channel", "data"}`)."""

    def __init__(
        self,
        authenticator: TokenProvider,
        *,
        channels: Sequence[str],
        replay_source: Callable[[str], ReplayId | None],
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
            if not channel.startswith(_CHANNEL_PREFIXES):
                raise ValueError(f"not a streaming channel: {channel!r}")
        self._auth = authenticator
        self._channels = list(dict.fromkeys(channels))
        self._wire = BayeuxTransport(authenticator, api_version=api_version, request_timeout_s=request_timeout_s,
                                     http=http, transport=transport)
        self._replay = ReplayBook(replay_source, replay_all)
        self._health = StreamHealth(backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s,
                                    long_backoff_s=long_backoff_s, rng=rng)
        self._margin = long_poll_margin_s
        self._sleep = sleep
        self._subscribed: set[str] = set()
        self._closed = False
        self.last_message_at: float | None = None  # wall clock of the last data message yielded

    # ------------------------------------------------------------------ public

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    @property
    def client_id(self) -> str | None:
        return self._wire.client_id

    @property
    def api_version(self) -> str:
        return self._wire.api_version

    @property
    def connected(self) -> bool:
        """Readiness: a session is up with every subscription (False once per outage, not per hiccup)."""
        return self._health.connected

    @property
    def disconnected_since(self) -> float | None:
        return self._health.disconnected_since

    @property
    def reconnects(self) -> int:
        return self._health.reconnects

    @property
    def last_contact_at(self) -> float | None:
        """Wall clock of the last Bayeux response."""
        return self._wire.last_contact_at

    @property
    def subscribed_replay(self) -> dict[str, int]:
        """The replay id sent on the last successful subscribe, per channel."""
        return self._replay.subscribed

    @property
    def server_supports_replay(self) -> bool | None:
        return self._wire.server_supports_replay

    def backoff_delay(self, failures: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        return self._health.delay(failures)

    def take_gaps(self) -> list[str]:
        """Channels resubscribed from -1 after an earlier subscription, since the last call: what they
        published meanwhile may never be delivered, so the caller must reconcile their objects (the
        subscription is live by then: anything that moves after the reconciliation's query arrives)."""
        return self._replay.take_gaps()

    @property
    def unconfirmed_starts(self) -> set[str]:
        """Always empty: a successful `/meta/subscribe` reply is where a CometD subscription starts."""
        return set()

    def stored_position(self, channel: str) -> int | None:
        """The committed replay id this client resumes `channel` from (None: a first start for CometD)."""
        return self._replay.stored(channel)

    def reset_replay(self, channel: str) -> None:
        """Subscribe `channel` from -1 (new events only) instead of the refused replay id.

        Holds until `replay_source` reports a different id (the daemon committed a newer event),
        so a later outage does not retry the refused id. The caller must reconcile the gap.
        """
        if channel not in self._channels:
            raise ValueError(f"not subscribed to {channel!r}")
        self._replay.reset(channel)

    async def messages(self, *, header_first: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Yield data messages in order, forever; raises ReplayIdInvalid / SubscriptionFailed / AuthError.
        Always whole: CometD's JSON is parsed before it is read (`header_first` changes nothing)."""
        pending = self._wire.pending
        while True:
            while pending:
                message = pending.popleft()
                self.last_message_at = time.time()
                yield message
            if self._closed:
                return
            try:
                await self._step()
            except Recover as failure:
                await self._recover(failure)
            except AuthError as exc:
                if not exc.transient:
                    raise  # e.g. invalid_grant: no retry fixes the configuration
                await self._recover(Recover("retry", str(exc)))
            except (ReplayIdInvalid, SubscriptionFailed) as exc:
                self._health.set_disconnected(str(exc))  # not subscribed until the caller has dealt with it
                raise
            except Exception:
                if self._closed:
                    return
                raise

    async def aclose(self) -> None:
        """Stop: send `/meta/disconnect` (best effort) and release the HTTP client."""
        self._closed = True
        self._health.connected = False
        await self._wire.aclose()

    # ------------------------------------------------------------------ protocol steps

    async def _step(self) -> None:
        fresh = False
        if self._wire.client_id is None:
            self._subscribed.clear()
            await self._wire.handshake()
            fresh = True
        for channel in self._channels:
            if channel not in self._subscribed:
                await self._subscribe(channel)
                fresh = True
        if fresh:
            self._health.mark_connected()  # the server accepted a new session and every subscription
        if self._wire.advice.interval_ms > 0:
            await self._sleep(self._wire.advice.interval_ms / 1000)
        await self._connect()

    async def _subscribe(self, channel: str) -> None:
        replay_id = self._replay.start_for(channel)
        message = {
            "channel": "/meta/subscribe",
            "clientId": self._wire.client_id,
            "subscription": channel,
            "id": self._wire.next_id(),
            "ext": {"replay": {channel: replay_id}},
        }
        token, replies = await self._wire.post([message], self._wire.request_timeout_s)
        reply = reply_on(replies, "/meta/subscribe")
        if reply is None:
            raise Recover("handshake", "subscribe response without a /meta/subscribe reply")
        self._wire.advice.take(reply)
        if reply.get("successful"):
            self._subscribed.add(channel)
            self._replay.accepted(channel, replay_id)
            log.info("salesforce.stream.subscribed", channel=channel, replay_id=replay_id)
            follow_advice(reply)
            return
        error = str(reply.get("error") or "")
        code = error_code(error)
        lowered = error.lower()
        if code == 400 and "replayid" in lowered:
            self._replay.refused(channel, replay_id)
            log.warning("salesforce.stream.replay_id_invalid", channel=channel, replay_id=replay_id)
            raise ReplayIdInvalid(channel, replay_id, error)
        raise_session_failure(error, reply, token)
        if code is None or code >= 500:
            raise Recover("retry", error or "subscribe failed")
        raise SubscriptionFailed(channel, error)

    async def _connect(self) -> None:
        message = {
            "channel": "/meta/connect",
            "clientId": self._wire.client_id,
            "connectionType": "long-polling",
            "id": self._wire.next_id(),
        }
        timeout = self._wire.advice.timeout_ms / 1000 + self._margin
        try:
            token, replies = await self._wire.post([message], timeout)
        except Recover as failure:
            if failure.kind == "retry" and failure.answer_lost:
                # The server dequeues the events it writes into a connect answer, with no acknowledgement:
                # if that answer was lost, the same session never sees them again. A new session that
                # subscribes from the committed replay ids gets them replayed (measured: the emulator drops
                # them exactly like that when a long poll is cut).
                raise Recover("handshake", failure.reason, immediate=failure.immediate) from None
            raise
        if any(r.get("channel") == "/meta/disconnect" for r in replies):
            raise Recover("handshake", "server sent /meta/disconnect", immediate=True)
        reply = reply_on(replies, "/meta/connect")
        if reply is None:
            if self._wire.pending:
                self._health.connect_ok()
                return
            raise Recover("retry", "connect response without a /meta/connect reply")
        self._wire.advice.take(reply)
        if reply.get("successful"):
            self._health.connect_ok()
            follow_advice(reply)  # the events of this answer are yielded before a new session starts
            return
        error = str(reply.get("error") or "")
        if "daily limit exceeded" in error.lower() or "events daily limit" in error.lower():
            raise Recover("long", error)
        raise_session_failure(error, reply, token)
        advice = reconnect_advice(reply)
        code = error_code(error)
        if advice == "none" or (advice is None and code is not None and 400 <= code < 500):
            # the session is unusable (e.g. cookie lost): start a new one, after a backoff
            raise Recover("handshake", error or "connect refused (reconnect: none)")
        raise Recover("retry", error or "connect failed")

    async def _recover(self, failure: Recover) -> None:
        if failure.kind != "retry":
            self._wire.client_id = None
            self._subscribed.clear()
        delay = self._health.failed(failure)
        if delay > 0 and not self._closed:
            await self._sleep(delay)
        if failure.kind == "auth" and not self._closed:
            try:
                await self._auth.refresh(failure.token)
            except AuthError as exc:
                if not exc.transient:
                    raise
                log.warning("salesforce.stream.refresh_failed", error=str(exc))
