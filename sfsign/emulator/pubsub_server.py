"""Salesforce's Pub/Sub API (gRPC, `eventbus.v1.PubSub`) on the org's event bus, over TLS.

Written from Salesforce's proto comments and the Pub/Sub API guide, not from our client:
- Every call carries `accesstoken` (a token the org's OAuth issued and has not revoked), `instanceurl` and
  `tenantid` (the org id) as metadata; otherwise UNAUTHENTICATED with the documented message and the
  `error-code` trailer. Errors end in ` rpcId: <id>` and carry the id in the `rpc-id` trailer too.
- GetTopic: topic names are the CometD channel names; an unknown (or not selected) topic is NOT_FOUND
  with the message Salesforce answers. GetSchema: the event's Avro schema (avro_schemas.py), by the id
  the CometD messages carry in `schema`.
- Subscribe: pull-based flow control. num_requested adds up across FetchRequests, capped at 100
  outstanding; at most that many events are delivered, `pending_num_requested` says what is left. The
  replay preset and id are read from the first FetchRequest only; CUSTOM starts *after* the given id.
  While events are requested and none is there to deliver, the server sends an empty FetchResponse with
  `latest_replay_id` every `keepalive_s` (Salesforce: "If there are pending requested events to deliver but
  no events are available … within 270 seconds"). With nothing requested (pending_num_requested 0) no
  keepalive is sent, and a client that sends no FetchRequest within `fetch_idle_s` (Salesforce: 60 s) of the
  last FetchResponse has its stream closed (the RPC ends with status OK [inferred]: the guide says only that
  the stream does not stay open). A revoked token ends the stream with UNAUTHENTICATED.
- Publish: platform events, decoded with the topic's schema and published through the org's store, so
  they reach CometD subscribers too. PublishStream: the same per batch on one stream, the topic fixed by the
  first request; without a request for `publish_idle_s` (Salesforce: 70 s) the stream is closed.
- ManagedSubscribe (beta): the org defines no ManagedEventSubscription, so any name is NOT_FOUND.

Replay ids. Salesforce calls them opaque bytes, but its own clients show what they hold: the Node client
(pozil/pub-sub-api-node-client) reads a delivered id with `readBigUInt64BE` and writes one to send with
`writeBigUInt64BE`, and delivered ids captured in its issues (#50, and pub-sub-api-java-client #6) are 10
bytes: the 8-byte big-endian number followed by two zero bytes. The number is the event's position on the
event bus, the same number CometD delivers as `replayId`. So here: delivered ids are the bus replay id as
8 bytes big-endian plus `00 00`, the same event has the same number on both transports, and a CUSTOM id is
accepted in that 10-byte form or as the bare 8 bytes (what the Node client sends). Anything else, or an id
no longer retained, is INVALID_ARGUMENT `...fetch.replayid.corrupted`, as Salesforce documents for an
invalid id or one outside the retention window. Retention is the bus's, shared with CometD.

Messages marked [inferred] below are not quoted anywhere we found; the status and error code are from
the error table of the Pub/Sub guide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import grpc.aio

from sfsign.emulator.avro_schemas import EventSchemas
from sfsign.emulator.bus import BusEvent
from sfsign.emulator.errors import ApiError
from sfsign.emulator.event_access import may_subscribe, visible_data
from sfsign.emulator.org import Org, Session
from sfsign.emulator.tls import TlsMaterial
from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.pubsub_proto import pubsub_api_pb2_grpc as pb_grpc

MAX_REQUESTED = 100
SUBSCRIBE_LOG_MAX = 10000
DEFAULT_KEEPALIVE_S = 270.0
DEFAULT_FETCH_IDLE_S = 60.0
DEFAULT_PUBLISH_IDLE_S = 70.0
CODE = "sfdc.platform.eventbus.grpc."
AUTH_MESSAGE = "An authentication exception occurred. Provide valid authentication via metadata headers."
HEADERS_MESSAGE = ("The auth header value is invalid or blank. "  # [inferred]
                   "Provide valid authentication via metadata headers.")
TOPIC_NOT_FOUND = ("The topic information for org CORE/prod/{org} and topic {topic} not found. Ensure the topic "
                   "name is correct and that the topic exists.")
REPLAY_CORRUPTED = ("The Replay ID validation failed. Ensure that the replay_id field value in FetchRequest is "
                    "valid and refers to an event that is within the retention window.")
SERVICE_UNAVAILABLE = "The Pub/Sub API service is unavailable."
#: gRPC's HTTP/2 path of a method: what a latency fault's prefix matches (`/eventbus.v1.PubSub/Subscribe`)
METHOD_PATH = "/eventbus.v1.PubSub/"


class RpcFailure(Exception):
    """A gRPC error as Salesforce reports it: status, `error-code` trailer, message."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = CODE + code
        self.message = message


def encode_replay_id(replay_id: int) -> bytes:
    return replay_id.to_bytes(8, "big") + b"\x00\x00"


def decode_replay_id(raw: bytes) -> int | None:
    """The bus replay id in a client's CUSTOM id, or None when it is not one we could have issued."""
    if len(raw) == 10 and raw[8:] == b"\x00\x00":
        raw = raw[:8]
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


@dataclass
class _Stream:
    rpc_id: str
    token: str
    user_id: str
    topic: str
    served_up_to: int  # bus replay id up to which events were queued or skipped
    position: int | None  # what latest_replay_id says: the last event delivered or skipped
    queue: deque[BusEvent] = field(default_factory=deque)
    requested: int = 0
    delivered: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failure: RpcFailure | None = None


class PubSubServer(pb_grpc.PubSubServicer):
    """The Pub/Sub API of one running emulator: `start()` binds 127.0.0.1, `target` is what clients dial."""

    def __init__(self, org: Org, tls: TlsMaterial, *, port: int = 0, keepalive_s: float = DEFAULT_KEEPALIVE_S,
                 fetch_idle_s: float = DEFAULT_FETCH_IDLE_S, publish_idle_s: float = DEFAULT_PUBLISH_IDLE_S) -> None:
        self.org = org
        self.tls = tls
        self.port = port
        self.keepalive_s = keepalive_s
        self.fetch_idle_s = fetch_idle_s
        self.publish_idle_s = publish_idle_s
        self.schemas = EventSchemas(org.store.schema, org.org_id)
        self.streams: dict[str, _Stream] = {}
        self.delivered = 0
        self.hold = False  # half-open: streams stay open but deliver nothing, not even keepalives
        # every Subscribe seen (for tests and diagnostics; not a Salesforce API): where it asked to start
        self.subscribe_log: deque[dict[str, Any]] = deque(maxlen=SUBSCRIBE_LOG_MAX)
        self._server: grpc.aio.Server | None = None
        org.on_revoke(self._revalidate)

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        pb_grpc.add_PubSubServicer_to_server(self, server)
        credentials = grpc.ssl_server_credentials([(self.tls.key_file.read_bytes(), self.tls.cert_file.read_bytes())])
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        await server.start()
        self.org.bus.add_subscriber(self._on_event)
        self._server = server

    async def stop(self) -> None:
        """Stop like a killed server: open streams end without a status from us."""
        self.org.bus.remove_subscriber(self._on_event)
        if self._server is not None:
            await self._server.stop(None)
            self._server = None
        self.streams.clear()

    # -- fault hooks

    def drop_streams(self) -> int:
        """End every Subscribe stream with UNAVAILABLE (`service.unavailable`), as Salesforce's
        maintenance or a network cut does; the client must resubscribe from its stored replay id."""
        for stream in self.streams.values():
            stream.failure = RpcFailure(grpc.StatusCode.UNAVAILABLE, "service.unavailable", SERVICE_UNAVAILABLE)
            stream.wake.set()
        return len(self.streams)

    def set_hold(self, enabled: bool) -> None:
        """Half-open streams: accepted requests, no events and no keepalives until released, as a
        connection a proxy silently dropped looks from the client; only a keepalive watchdog notices."""
        self.hold = enabled
        for stream in self.streams.values():
            stream.wake.set()

    def describe(self) -> list[dict[str, Any]]:
        return [{"rpcId": s.rpc_id, "topic": s.topic, "pendingNumRequested": s.requested, "queued": len(s.queue),
                 "delivered": s.delivered, "userId": s.user_id} for s in self.streams.values()]

    async def _latency(self, method: str) -> None:
        """Armed latency faults hold a call before it is handled, as the HTTP middleware holds a request:
        matched on the gRPC path (HTTP/2 POST), so a slow network can be put on Pub/Sub alone."""
        delay = self.org.faults.latency_for("POST", METHOD_PATH + method)
        if delay > 0:
            await asyncio.sleep(delay)

    def _revalidate(self) -> None:
        for stream in self.streams.values():
            stream.wake.set()

    # -- auth and errors

    def _session(self, context: grpc.aio.ServicerContext) -> Session:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        token, instance, tenant = (metadata.get(k, "").strip() for k in ("accesstoken", "instanceurl", "tenantid"))
        if not token or not instance or not tenant:
            raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "service.auth.headers.invalid", HEADERS_MESSAGE)
        session = self.org.session_for_token(token)
        if session is None or tenant != self.org.org_id or instance.rstrip("/") != self.org.instance_url:
            raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "service.auth.error", AUTH_MESSAGE)
        return session

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, failure: RpcFailure, rpc_id: str) -> NoReturn:
        await context.abort(failure.status, f"{failure.message} rpcId: {rpc_id}",
                            trailing_metadata=(("error-code", failure.code), ("rpc-id", rpc_id)))
        raise AssertionError("unreachable")  # context.abort raises

    def _check_topic(self, topic: str) -> None:
        if not topic:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "topic.validation.empty",
                             "The topic name is blank. Provide a topic name.")  # [inferred]
        if not self.org.bus.channel_exists(topic):
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, "topic.not.found",
                             TOPIC_NOT_FOUND.format(org=self.org.org_id, topic=topic))

    # -- unary RPCs

    async def GetTopic(self, request: pb.TopicRequest, context: grpc.aio.ServicerContext) -> pb.TopicInfo:
        rpc_id = str(uuid.uuid4())
        await self._latency("GetTopic")
        try:
            self._session(context)
            self._check_topic(request.topic_name)
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)
        schema = self.schemas.for_topic(request.topic_name)
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid=self.org.org_id,
                            can_publish=request.topic_name.startswith("/event/"), can_subscribe=True,
                            schema_id=schema.schema_id if schema else "", rpc_id=rpc_id)

    async def GetSchema(self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext) -> pb.SchemaInfo:
        rpc_id = str(uuid.uuid4())
        await self._latency("GetSchema")
        try:
            self._session(context)
            if not request.schema_id.strip():
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "schema.validation.failed",
                                 "The schema ID is blank. Provide a schema ID.")  # [inferred]
            schema = self.schemas.by_id(request.schema_id)
            if schema is None:
                raise RpcFailure(grpc.StatusCode.NOT_FOUND, "schema.meta.permission",  # [inferred] message
                                 f"An error occurred while getting the schema information for org "
                                 f"CORE/prod/{self.org.org_id} and schema ID {request.schema_id}. Ensure the "
                                 "credentials and schema ID are correct.")
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)
        return pb.SchemaInfo(schema_json=schema.schema_json, schema_id=schema.schema_id, rpc_id=rpc_id)

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext) -> pb.PublishResponse:
        rpc_id = str(uuid.uuid4())
        await self._latency("Publish")
        try:
            session = self._session(context)
            return self._publish_batch(request, request.topic_name, session, rpc_id)
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)

    async def PublishStream(self, request_iterator: AsyncIterator[pb.PublishRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PublishResponse]:
        """Batches on one stream, each answered when published. The first request names the topic; a later one
        may omit it, and one naming another topic ends the stream with INVALID_ARGUMENT (Salesforce's
        PublishStream page). A stream without a request for `publish_idle_s` (Salesforce: 70 s) is closed."""
        rpc_id = str(uuid.uuid4())
        topic = ""
        requests = aiter(request_iterator)
        try:
            session = self._session(context)
            while True:
                try:
                    request = await asyncio.wait_for(anext(requests, None), self.publish_idle_s)
                except TimeoutError:
                    return  # closed (status OK [inferred]: the guide says only that the stream closes)
                if request is None:
                    return
                if self.org.session_for_token(session.token) is None:
                    raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "service.auth.error", AUTH_MESSAGE)
                if topic and request.topic_name and request.topic_name != topic:
                    raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "publish.topic.mismatch",  # [inferred] code
                                     f"The topic name {request.topic_name} doesn't match the topic name {topic} "
                                     "of the first publish request in this stream.")  # [inferred] message
                topic = topic or request.topic_name
                yield self._publish_batch(request, topic, session, rpc_id)
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)

    async def ManagedSubscribe(self, request_iterator: AsyncIterator[pb.ManagedFetchRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ManagedFetchResponse]:
        """Managed subscriptions (beta) name a ManagedEventSubscription record of the org's metadata; this org
        defines none, so every name is unknown (sfsign stores its positions itself and never calls this)."""
        rpc_id = str(uuid.uuid4())
        try:
            self._session(context)
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return
            name = first.developer_name or first.subscription_id
            if not name:
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "managed.subscription.validation.failed",
                                 "Provide a subscription_id or a developer_name.")  # [inferred]
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, "managed.subscription.not.found",  # [inferred]
                             f"The managed subscription {name} wasn't found. Ensure that a "
                             "ManagedEventSubscription with this ID or developer name exists.")
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)
        yield pb.ManagedFetchResponse()  # never reached: makes this a streaming handler

    def _publish_batch(self, request: pb.PublishRequest, topic: str, session: Session,
                       rpc_id: str) -> pb.PublishResponse:
        if not topic:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "publish.topic.validation.empty",
                             "The topic name is blank. Provide a topic name.")  # [inferred]
        self._check_topic(topic)
        schema = self.schemas.for_topic(topic)
        if schema is None or schema.kind != "event":
            raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, "topic.meta.permission",  # [inferred]
                             f"Publishing to topic {topic} isn't allowed.")
        if not request.events:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "publish.event.count.invalid",
                             "The publish request contains no events.")  # [inferred]
        results = [self._publish_one(schema.name, topic, schema.schema_id, event, session)
                   for event in request.events]
        return pb.PublishResponse(results=results, schema_id=schema.schema_id, rpc_id=rpc_id)

    def _publish_one(self, name: str, topic: str, schema_id: str, event: pb.ProducerEvent,
                     session: Session) -> pb.PublishResult:
        def error(message: str) -> pb.PublishResult:
            return pb.PublishResult(error=pb.Error(code=pb.ErrorCode.PUBLISH, msg=message), correlation_key=event.id)

        if event.schema_id != schema_id:
            return error(f"The schema ID {event.schema_id} doesn't match the topic's schema ID {schema_id}.")
        try:
            fields = self.schemas.decode(schema_id, event.payload)
        except ValueError as exc:
            return error(f"The event payload can't be deserialized with schema {schema_id}: {exc}")
        before = self.org.bus.last_replay_id
        try:
            self.org.store.insert(name, fields, user_id=session.user_id)
        except ApiError as exc:
            return error(exc.message)
        published = [e for e in self.org.bus.retained(topic) if e.replay_id > before]
        if not published:
            return error("The event wasn't published.")
        return pb.PublishResult(replay_id=encode_replay_id(published[-1].replay_id), correlation_key=event.id)

    # -- Subscribe

    def _on_event(self, event: BusEvent) -> None:
        for stream in self.streams.values():
            if event.replay_id <= stream.served_up_to:
                continue
            stream.served_up_to = event.replay_id
            if stream.topic in event.channels:
                stream.queue.append(event)
                stream.wake.set()
            elif not stream.queue:
                stream.position = event.replay_id

    def _start_point(self, request: pb.FetchRequest) -> tuple[list[BusEvent], int, int | None]:
        """(retained events to queue, served-up-to mark, initial position) for the first FetchRequest.
        Whatever the preset, a stream with nothing of its topic to send has skipped the whole bus: its
        keepalive carries the newest id, as one that skips live events of other topics does (`_on_event`)."""
        bus = self.org.bus
        if request.replay_preset not in (pb.ReplayPreset.EARLIEST, pb.ReplayPreset.CUSTOM):  # LATEST, the default
            mark = bus.last_replay_id
            return [], mark, mark
        after: int | None = None  # EARLIEST: every retained event
        if request.replay_preset == pb.ReplayPreset.CUSTOM:
            if not request.replay_id:
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.replayid.validation.failed",
                                 "The Replay ID is missing. Provide a replay_id with the CUSTOM preset.")  # [inferred]
            after = decode_replay_id(request.replay_id)
            if after is None or not (bus.is_valid_replay(after) or after == bus.last_replay_id):
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.replayid.corrupted",
                                 REPLAY_CORRUPTED)
        events, mark = bus.subscribe_point(request.topic_name, after)
        return events, mark, after if events else mark

    def _add_requested(self, stream: _Stream, request: pb.FetchRequest) -> None:
        if request.topic_name and request.topic_name != stream.topic:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.topic.mismatch",
                             f"The topic name {request.topic_name} doesn't match the topic name {stream.topic} "
                             "of the subscription.")  # [inferred]
        if request.num_requested <= 0:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "subscription.fetch.requested.events.invalid",
                             "The number of requested events must be greater than zero.")  # [inferred]
        stream.requested = min(MAX_REQUESTED, stream.requested + request.num_requested)
        stream.wake.set()

    async def _read(self, stream: _Stream, requests: AsyncIterator[pb.FetchRequest]) -> None:
        """Later FetchRequests add capacity; a bad one ends the stream with its error."""
        try:
            async for request in requests:
                if self.org.session_for_token(stream.token) is None:
                    raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "service.auth.error", AUTH_MESSAGE)
                self._add_requested(stream, request)
        except RpcFailure as failure:
            stream.failure = failure
            stream.wake.set()

    async def Subscribe(self, request_iterator: AsyncIterator[pb.FetchRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FetchResponse]:
        rpc_id = str(uuid.uuid4())
        reader: asyncio.Task[None] | None = None
        entry: dict[str, Any] = {}
        await self._latency("Subscribe")  # before the first FetchRequest is read: where the stream starts
        try:
            session = self._session(context)
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return
            entry = {"rpcId": rpc_id, "topic": first.topic_name, "at": time.time(),
                     "preset": pb.ReplayPreset.Name(first.replay_preset),
                     "replayId": first.replay_id.hex() if first.replay_id else None,
                     "position": decode_replay_id(first.replay_id) if first.replay_id else None}
            self.subscribe_log.append(entry)
            self._check_topic(first.topic_name)
            if not may_subscribe(self.org, session.user_id, first.topic_name):
                raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, "subscription.topic.cannot.subscribe",
                                 f"The user doesn't have permission to subscribe to {first.topic_name}.")  # [inferred]
            events, mark, position = self._start_point(first)
            stream = _Stream(rpc_id, session.token, session.user_id, first.topic_name, mark, position)
            stream.queue.extend(events)
            self._add_requested(stream, first)
            entry["successful"] = True
        except RpcFailure as failure:
            if entry:
                entry.update(successful=False, error=f"{failure.status.name} [{failure.code}]: {failure.message}")
            await self._abort(context, failure, rpc_id)
        self.streams[rpc_id] = stream
        reader = asyncio.get_running_loop().create_task(self._read(stream, request_iterator))
        try:
            async for response in self._deliver(stream):
                yield response
        except RpcFailure as failure:
            await self._abort(context, failure, rpc_id)
        finally:
            self.streams.pop(rpc_id, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _deliver(self, stream: _Stream) -> AsyncIterator[pb.FetchResponse]:
        last_sent = time.monotonic()
        while True:
            if stream.failure is not None:
                raise stream.failure
            if self.org.session_for_token(stream.token) is None:
                raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "service.auth.error", AUTH_MESSAGE)
            if self.hold:
                stream.wake.clear()
                await stream.wake.wait()
                last_sent = time.monotonic()
                continue
            if stream.requested > 0 and stream.queue:
                batch = [stream.queue.popleft() for _ in range(min(stream.requested, len(stream.queue)))]
                stream.requested -= len(batch)
                stream.delivered += len(batch)
                self.delivered += len(batch)
                stream.position = batch[-1].replay_id
                yield pb.FetchResponse(events=[self._consumer_event(e, stream.user_id) for e in batch],
                                       latest_replay_id=encode_replay_id(batch[-1].replay_id),
                                       rpc_id=stream.rpc_id, pending_num_requested=stream.requested)
                last_sent = time.monotonic()
                continue
            if stream.requested == 0:  # nothing pending: no keepalive; the client must ask within fetch_idle_s
                remaining = last_sent + self.fetch_idle_s - time.monotonic()
                if remaining <= 0:
                    return
            else:
                remaining = last_sent + self.keepalive_s - time.monotonic()
                if remaining <= 0:
                    if stream.position is not None:
                        yield pb.FetchResponse(latest_replay_id=encode_replay_id(stream.position),
                                               rpc_id=stream.rpc_id, pending_num_requested=stream.requested)
                    last_sent = time.monotonic()
                    continue
            stream.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.wake.wait(), remaining)

    def _consumer_event(self, event: BusEvent, user_id: str) -> pb.ConsumerEvent:
        """The event as this subscriber may see it: a restricted user gets only the fields it can read."""
        if self.org.store.access_for(user_id) is None:
            schema_id, payload = self.schemas.encode(event)
        else:
            schema_id, payload = self.schemas.encode(event, visible_data(self.org, user_id, event.data),
                                                     viewer=user_id)
        producer = pb.ProducerEvent(id=self.schemas.event_id(event), schema_id=schema_id, payload=payload)
        return pb.ConsumerEvent(event=producer, replay_id=encode_replay_id(event.replay_id))
