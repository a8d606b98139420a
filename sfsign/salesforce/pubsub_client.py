"""The Pub/Sub API client (gRPC): Salesforce's recommended event transport, beside the CometD client.

It implements `EventStream` as `StreamClient` does, so intake cannot tell the transports apart: it yields
CometD-shaped messages (`pubsub_decoding`) one at a time, resumes every channel after the replay id intake
committed (`pubsub_replay`), raises `ReplayIdInvalid` when Salesforce refuses it, `SubscriptionFailed`
when the channel cannot be read, and reports one "disconnected" per outage (`StreamHealth`, shared with
CometD). From Salesforce's Pub/Sub documentation and `pubsub_api.proto` (sfsign.pubsub_proto):

* one `Subscribe` stream per channel (a stream's topic cannot change), over one TLS channel to
  `target` (default `api.pubsub.salesforce.com:7443`), trusting the system's CAs plus `ca_bundle`; every
  call carries the metadata `accesstoken`, `instanceurl` and `tenantid` of the shared Authenticator's token;
* before subscribing, `GetTopic` proves the topic exists and `can_subscribe` (else `SubscriptionFailed`);
* flow control: the first `FetchRequest` asks for `batch_size` events (≤ 100, Salesforce's maximum) and
  carries the replay preset and id (honoured on the first request only); more are asked for only as the
  consumer comes back for the next message (its previous one is handled and committed), once half the
  window is free. Events requested and not yet handled never exceed `batch_size`, so a burst cannot
  outrun the daemon's memory;
* keepalive: Salesforce sends an empty `FetchResponse` within 270 s while events are requested; none
  within `keepalive_s` (270 s + margin) means a half-open connection: the stream is dropped and a new one
  subscribes from the committed replay id. A keepalive's `latest_replay_id` is handed to the consumer as a
  position message (`event_stream.position_message`) once every event before it is handled, so it is
  committed like an event that asks for nothing (Salesforce: "save the replay_id from each empty
  FetchResponse"). With nothing requested (the consumer still holds a full
  window) Salesforce closes an idle stream after 60 s; it is reopened when the consumer asks for more;
* a subscription that fails is reopened when the consumer has drained what it delivered, after the
  backoff of `StreamHealth`; what each gRPC status means is `pubsub_errors`' table. `UNAUTHENTICATED` →
  one token refresh (the Authenticator logs in once for REST and streams), then a new subscription;
* `GetSchema` answers are cached by schema id; a payload that does not decode, or whose schema id
  `GetSchema` refuses for good (NOT_FOUND, INVALID_ARGUMENT), is handed over without a payload, which
  intake parks as a malformed event and reconciles: one bad event never stops the channel.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import grpc
import structlog

from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.pubsub_proto import pubsub_api_pb2_grpc as pb_grpc
from sfsign.salesforce.auth import AccessToken, TokenProvider
from sfsign.salesforce.bayeux import Recover
from sfsign.salesforce.errors import AuthError
from sfsign.salesforce.event_stream import COMPLETE, position_message
from sfsign.salesforce.events import ReplayId
from sfsign.salesforce.pubsub_decoding import EventSchema, UndecodableEvent, cometd_message, header_message
from sfsign.salesforce.pubsub_errors import CallFailure, failure_of
from sfsign.salesforce.pubsub_replay import PRESET_POSITION, PubSubReplayBook
from sfsign.salesforce.stream import ReplayIdInvalid, SubscriptionFailed
from sfsign.salesforce.stream_health import StreamHealth

log = structlog.get_logger("sfsign.salesforce.stream")  # one logger for both transports

DEFAULT_TARGET = "api.pubsub.salesforce.com:7443"
MAX_BATCH = 100  # Salesforce: "The maximum value for num_requested is 100"
KEEPALIVE_S = 270.0  # Salesforce: an empty FetchResponse "within 270 seconds" while events are pending
MAX_EVENT_BYTES = 1024 * 1024  # Salesforce: an event message is at most 1 MB


@dataclass
class _Subscription:
    """One channel's `Subscribe` stream and its window of events requested and not yet handled."""

    channel: str
    buffer: deque[pb.ConsumerEvent] = field(default_factory=deque)
    call: Any = None  # grpc.aio.StreamStreamCall while open
    requests: asyncio.Queue[pb.FetchRequest | None] | None = None
    reader: asyncio.Task[None] | None = None
    failure: Exception | None = None  # why the stream ended, acted on once its events are handed over
    granted: int = 0  # events asked for on this stream
    delivered: int = 0  # events the server sent on it
    handled: int = 0  # events the consumer came back from
    last_response_at: float = 0.0
    answered: bool = False  # the stream sent at least one FetchResponse (it was established)
    keepalive_at: bytes = b""  # a keepalive's latest_replay_id, handed over once everything before is handled
    subscribed_at: float = 0.0  # monotonic

    @property
    def open(self) -> bool:
        return self.call is not None and self.failure is None


def credentials(ca_bundle: Path | None) -> grpc.ChannelCredentials:
    """TLS trusting certifi's roots plus the one extra CA (a TLS-inspecting proxy's, the emulator's)."""
    roots = Path(certifi.where()).read_bytes()
    if ca_bundle is not None:
        roots += b"\n" + ca_bundle.read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=roots)


def call_metadata(token: AccessToken) -> tuple[tuple[str, str], ...]:
    """Salesforce's session headers; the token value never leaves this tuple (never logged)."""
    return (("accesstoken", token.access_token.get_secret_value()), ("instanceurl", token.instance_url),
            ("tenantid", token.org_id or ""))


class PubSubStream:
    """Subscribes to `channels` over the Pub/Sub API and yields CometD-shaped messages (`EventStream`)."""

    def __init__(
        self, authenticator: TokenProvider, *, channels: Sequence[str],
        replay_source: Callable[[str], ReplayId | None], replay_all: Sequence[str] = (),
        target: str = DEFAULT_TARGET, ca_bundle: Path | None = None, batch_size: int = MAX_BATCH,
        keepalive_s: float = KEEPALIVE_S + 30, call_timeout_s: float = 30.0, backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0, long_backoff_s: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: Callable[[], float] = random.random,
    ) -> None:
        if not channels:
            raise ValueError("PubSubStream needs at least one channel")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH} (Salesforce's maximum per Subscribe)")
        self._auth = authenticator
        self._subs = {c: _Subscription(c) for c in dict.fromkeys(channels)}
        self._replay = PubSubReplayBook(replay_source, replay_all)
        self._health = StreamHealth(backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s,
                                    long_backoff_s=long_backoff_s, rng=rng)
        self._target, self._ca_bundle = target, ca_bundle
        self._batch, self._keepalive_s, self._call_timeout_s = batch_size, keepalive_s, call_timeout_s
        self._sleep = sleep
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.PubSubStub | None = None
        self._schemas: dict[str, EventSchema] = {}
        self._wake = asyncio.Event()
        self._turn = 0
        self._incident: float | None = None  # when the recovery under way began (monotonic), until all are open
        self._closed = False
        self.last_message_at: float | None = None

    # ------------------------------------------------------------------ EventStream

    @property
    def channels(self) -> list[str]:
        return list(self._subs)

    @property
    def connected(self) -> bool:
        return self._health.connected

    @property
    def disconnected_since(self) -> float | None:
        return self._health.disconnected_since

    @property
    def reconnects(self) -> int:
        return self._health.reconnects

    @property
    def subscribed_replay(self) -> dict[str, ReplayId]:
        """The channels subscribed now. While the connection counts as up, a stream being resubscribed
        routinely (a cut stream, a revoked token) still counts, as CometD's channels do across a cut long
        poll: readiness flips once per outage, not for each stream's few milliseconds without a call."""
        up = self._health.connected
        return {c: r for c, r in self._replay.subscribed.items() if up or self._subs[c].open}

    @property
    def unconfirmed_starts(self) -> set[str]:
        """Channels whose subscription started from new events only (LATEST) and has not answered yet.

        Salesforce fixes where a LATEST stream starts when it reads the first FetchRequest and says nothing
        until it delivers an event or a keepalive (within 270 s): until then an event published after the
        `Subscribe` call may still fall before the stream's start. A reconciliation queried in that time can
        miss a record that moves in between, so it is run again once the channel is no longer listed here
        (`Reconciler`). CometD has no such time: its `/meta/subscribe` reply fixes the start."""
        latest = PRESET_POSITION[pb.LATEST]  # how the replay book records a start from LATEST
        return {c for c, r in self._replay.subscribed.items() if r == latest and not self._subs[c].answered}

    def stored_position(self, channel: str) -> bytes | None:
        return self._replay.stored(channel)

    def take_gaps(self) -> list[str]:
        """Channels resubscribed from LATEST after an earlier subscription, since the last call: intake
        reconciles their objects (what the lost stream carried may never be delivered)."""
        return self._replay.take_gaps()

    def reset_replay(self, channel: str) -> None:
        if channel not in self._subs:
            raise ValueError(f"not subscribed to {channel!r}")
        self._replay.reset(channel)

    async def messages(self, *, header_first: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Messages in order per channel, forever; raises ReplayIdInvalid / SubscriptionFailed / AuthError.
        With `header_first`, a change event comes with its `ChangeEventHeader` only and `complete_message`
        decodes the rest (`EventStream`)."""
        previous: _Subscription | None = None
        while not self._closed:
            if previous is not None:
                self._handled(previous)  # the consumer is back: the event it was given is handled
                previous = None
            try:
                ready = self._ready()
                if ready is not None:
                    message = await self._message(ready, ready.buffer[0], header_first)
                    ready.buffer.popleft()
                    previous = ready
                    self.last_message_at = time.time()
                    yield message
                    continue
                if (position := self._keepalive_position()) is not None:
                    yield position
                    continue
                await self._step()
            except Recover as failure:
                await self._recover(failure)
            except AuthError as exc:
                if not exc.transient:
                    raise
                await self._recover(Recover("retry", str(exc)))
            except (ReplayIdInvalid, SubscriptionFailed) as exc:
                self._health.set_disconnected(str(exc))
                raise

    async def aclose(self) -> None:
        self._closed = True
        self._health.connected = False
        for sub in self._subs.values():
            await self._drop(sub)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._wake.set()

    # ------------------------------------------------------------------ unary calls (also for `sfsign check`)

    async def get_topic(self, topic: str) -> pb.TopicInfo:
        token = await self._auth.token()
        try:
            return await self._pubsub().GetTopic(pb.TopicRequest(topic_name=topic), metadata=call_metadata(token),
                                                  timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(topic, failure_of(exc), token, None) from None

    async def get_schema(self, schema_id: str) -> EventSchema:
        """The event schema of `schema_id`, fetched once per process (schemas never change under an id)."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        token = await self._auth.token()
        try:
            info = await self._pubsub().GetSchema(pb.SchemaRequest(schema_id=schema_id),
                                                  metadata=call_metadata(token), timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(f"schema {schema_id}", failure_of(exc), token, None) from None
        schema = self._schemas[schema_id] = EventSchema(schema_id, info.schema_json)
        return schema

    # ------------------------------------------------------------------ the subscriptions

    def _pubsub(self) -> pb_grpc.PubSubStub:
        if self._stub is None:
            options = [("grpc.max_receive_message_length", (self._batch + 1) * MAX_EVENT_BYTES)]
            self._channel = grpc.aio.secure_channel(self._target, credentials(self._ca_bundle), options=options)
            self._stub = pb_grpc.PubSubStub(self._channel)
        return self._stub

    def _ready(self) -> _Subscription | None:
        """The next subscription with an event to hand over, taking the channels in turn."""
        subs = list(self._subs.values())
        for i in range(len(subs)):
            sub = subs[(self._turn + i) % len(subs)]
            if sub.buffer:
                self._turn = (self._turn + i + 1) % len(subs)
                return sub
        return None

    def _keepalive_position(self) -> dict[str, Any] | None:
        """A position message for a channel whose keepalive carried `latest_replay_id` once every event it
        delivered is handled: Salesforce recommends saving it, and storing it keeps a quiet channel's position
        inside the 72 h retention, so a restart after days without events does not start with a refused id."""
        for sub in self._subs.values():
            if sub.keepalive_at and not sub.buffer and sub.handled == sub.delivered:
                replay_id, sub.keepalive_at = sub.keepalive_at, b""
                return position_message(sub.channel, replay_id)
        return None

    async def _step(self) -> None:
        """Open the subscriptions that need it, then wait for an event, a failure or a silent stream."""
        for sub in self._subs.values():
            if sub.failure is not None:
                failure, sub.failure = sub.failure, None
                await self._drop(sub)
                if not self._same_incident(sub, failure):
                    raise failure
                log.info("salesforce.stream.resubscribing", transport="pubsub", channel=sub.channel,
                         reason=str(failure))
            if sub.call is None:
                await self._subscribe(sub)
                if all(s.open for s in self._subs.values()):
                    self._incident = None
                    self._health.mark_connected()
        self._wake.clear()
        if self._ready() is not None or any(s.failure for s in self._subs.values()):
            return
        waiting = [s for s in self._subs.values() if s.open and s.granted > s.delivered]
        deadline = min((s.last_response_at + self._keepalive_s for s in waiting), default=None)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            for sub in waiting:
                if time.monotonic() - sub.last_response_at >= self._keepalive_s and sub.failure is None:
                    sub.failure = Recover("retry", f"{sub.channel}: no FetchResponse for {self._keepalive_s:.0f} s "
                                                   "(Salesforce sends a keepalive within 270 s)", immediate=True)

    def _same_incident(self, sub: _Subscription, failure: Exception) -> bool:
        """Whether a stream's end is part of the recovery under way, so it is resubscribed without counting
        another failure: the streams of one channel each end on their own when one cause (a network cut, a
        revoked token, a silent proxy) hits them all, and the client learns it stream by stream. Only a
        stream subscribed before that recovery began qualifies; waiting out an org limit never does."""
        return (self._incident is not None and sub.subscribed_at < self._incident and isinstance(failure, Recover)
                and failure.kind in ("retry", "auth"))

    async def _subscribe(self, sub: _Subscription) -> None:
        info = await self.get_topic(sub.channel)
        if not info.can_subscribe:
            raise SubscriptionFailed(sub.channel, "GetTopic: can_subscribe is false for this user")
        token = await self._auth.token()
        preset, replay_id = self._replay.start_for(sub.channel)
        requests: asyncio.Queue[pb.FetchRequest | None] = asyncio.Queue()
        first = pb.FetchRequest(topic_name=sub.channel, replay_preset=preset, num_requested=self._batch)
        if preset == pb.CUSTOM:
            first.replay_id = replay_id
        requests.put_nowait(first)
        sub.requests, sub.granted, sub.delivered, sub.handled = requests, self._batch, 0, 0
        sub.last_response_at = sub.subscribed_at = time.monotonic()
        sub.answered = False
        sub.call = self._pubsub().Subscribe(_drain(requests), metadata=call_metadata(token))
        sub.reader = asyncio.create_task(self._read(sub, sub.call, token, replay_id), name=f"pubsub:{sub.channel}")
        self._replay.started(sub.channel, preset, replay_id)
        log.info("salesforce.stream.subscribed", transport="pubsub", channel=sub.channel,
                 preset=pb.ReplayPreset.Name(preset), replay_id=replay_id.hex() or None, batch=self._batch)

    async def _read(self, sub: _Subscription, call: Any, token: AccessToken, replay_id: bytes) -> None:
        try:
            async for response in call:
                sub.last_response_at = time.monotonic()
                sub.answered = True
                sub.delivered += len(response.events)
                sub.buffer.extend(response.events)
                sub.keepalive_at = b"" if response.events else response.latest_replay_id
                if all(s.open for s in self._subs.values()):
                    self._health.connect_ok()  # a stream that answers: the failure count starts again
                self._wake.set()
            sub.failure = Recover("retry", f"{sub.channel}: the server ended the subscription", immediate=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and (self._closed or sub.call is not call):
                return  # we cancelled it
            sub.failure = self._failure(sub.channel, failure_of(exc), token, replay_id, established=sub.answered)
        except Exception as exc:  # anything else the stream raises: never a silently dead subscription
            if sub.call is call and not self._closed:
                sub.failure = Recover("retry", f"{sub.channel}: {type(exc).__name__}: {exc}")
        finally:
            self._wake.set()

    def _handled(self, sub: _Subscription) -> None:
        """Flow control: ask for as many events as the consumer handled, once half the window is free."""
        sub.handled += 1
        free = self._batch - (sub.granted - sub.handled)
        if sub.open and sub.requests is not None and free >= max(1, self._batch // 2):
            sub.requests.put_nowait(pb.FetchRequest(topic_name=sub.channel, num_requested=free))
            sub.granted += free

    async def _drop(self, sub: _Subscription) -> None:
        call, reader, requests = sub.call, sub.reader, sub.requests
        sub.call = sub.reader = sub.requests = None
        if requests is not None:
            requests.put_nowait(None)
        if call is not None:
            call.cancel()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)

    def _failure(self, what: str, failure: CallFailure, token: AccessToken, replay_id: bytes | None, *,
                 established: bool = False) -> Exception:
        """The exception for a failed call (see `pubsub_errors`). A stream that was answering and ends with a
        retryable status (a reset connection, a server restarting for maintenance) is resubscribed at once,
        routinely, as CometD's cut long poll; only when that fails too is it an outage, with backoff."""
        reason = f"{what}: {failure}"
        if failure.action == "reconcile" and replay_id:
            self._replay.refused(what, replay_id)
            log.warning("salesforce.stream.replay_id_invalid", transport="pubsub", channel=what,
                        replay_id=replay_id.hex(), error=str(failure))
            return ReplayIdInvalid(what, replay_id, str(failure))
        if failure.action == "stop":
            return SubscriptionFailed(what, str(failure))
        if failure.action == "auth":
            return Recover("auth", reason, immediate=True, token=token)
        if failure.action == "long":
            return Recover("long", reason)
        return Recover("retry", reason, immediate=established)

    async def _message(self, sub: _Subscription, event: pb.ConsumerEvent, header_first: bool) -> dict[str, Any]:
        schema_id = event.event.schema_id
        try:
            try:
                schema = await self.get_schema(schema_id)
            except SubscriptionFailed as exc:  # no such schema: this event's fault, not the channel's
                raise UndecodableEvent(str(exc)) from None
            if header_first and (head := header_message(sub.channel, schema, event.event.payload,
                                                        event.replay_id)) is not None:
                head["data"][COMPLETE] = functools.partial(_whole, sub.channel, schema, event)
                return head
            return cometd_message(sub.channel, schema, event.event.payload, event.replay_id, event.event.id)
        except UndecodableEvent as exc:
            return _undecodable(sub.channel, schema_id, event, exc)

    async def _recover(self, failure: Recover) -> None:
        self._incident = time.monotonic()
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


def _whole(channel: str, schema: EventSchema, event: pb.ConsumerEvent) -> dict[str, Any]:
    """The whole message of an event first handed over with its header only (`complete_message`)."""
    try:
        return cometd_message(channel, schema, event.event.payload, event.replay_id, event.event.id)
    except UndecodableEvent as exc:
        return _undecodable(channel, schema.schema_id, event, exc)


def _undecodable(channel: str, schema_id: str, event: pb.ConsumerEvent, exc: UndecodableEvent) -> dict[str, Any]:
    """The message of an event that does not decode: no payload, which intake parks as malformed."""
    log.error("salesforce.stream.undecodable_event", transport="pubsub", channel=channel,
              replay_id=event.replay_id.hex(), error=str(exc))
    return {"channel": channel, "data": {"schema": schema_id, "event": {"replayId": event.replay_id},
                                         "error": str(exc)}}


async def _drain(requests: asyncio.Queue[pb.FetchRequest | None]) -> AsyncIterator[pb.FetchRequest]:
    """The request side of a Subscribe stream: what flow control queues, until the stream is dropped."""
    while (request := await requests.get()) is not None:
        yield request
