"""A small fake of Salesforce's Pub/Sub server (grpc.aio, TLS on localhost) for the client's unit tests.

It plays what Salesforce documents, not what the client expects: the auth metadata is required on every
call, `GetTopic` answers known topics only, a `Subscribe` stream honours the replay preset of its first
`FetchRequest` only and never delivers more events than were requested, an unknown replay id ends the
stream with `INVALID_ARGUMENT` and the `error-code` trailer `…replayid.corrupted`, a stale token with
`UNAUTHENTICATED` and `…service.auth.error`. The emulator's own server replaces it in the e2e suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.pubsub_proto import pubsub_api_pb2_grpc as pb_grpc

ERR = "sfdc.platform.eventbus.grpc."


def tls_files(folder: Path) -> tuple[Path, bytes, bytes]:
    """A throwaway CA (its PEM written to `folder`, for the client's ca_bundle) and a localhost certificate."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfsign unit test Pub/Sub CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = folder / "pubsub-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca_path, key_pem, leaf.public_bytes(serialization.Encoding.PEM)


@dataclass
class Stream:
    """One Subscribe call as the server saw it."""

    metadata: dict[str, str]
    requests: list[pb.FetchRequest] = field(default_factory=list)
    started: bool = False  # its first request is read and its start position set: events published now reach it
    delivered: int = 0
    credit: int = 0
    ended: bool = False

    @property
    def requested(self) -> int:
        return sum(r.num_requested for r in self.requests)


class FakePubSub(pb_grpc.PubSubServicer):
    def __init__(self, schemas: dict[str, dict[str, Any]], topics: dict[str, str]) -> None:
        self.schemas = schemas  # schema id → Avro schema
        self.topics = topics  # topic → schema id
        self.bus: dict[str, list[pb.ConsumerEvent]] = {t: [] for t in topics}
        self.valid_tokens = {"tok1"}
        self.streams: list[Stream] = []
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.silent = False  # accept subscriptions and never answer (a half-open connection)
        self.per_response = 3  # events per FetchResponse at most
        self.keepalive_s: float | None = None
        self.changed = asyncio.Condition()
        self.schema_requests = 0
        self.failures: list[tuple[str, grpc.StatusCode, str]] = []  # (method, status, error code): next calls fail
        self.cut: tuple[grpc.StatusCode, str] | None = None  # end the open subscriptions with this, once

    def subscribed(self) -> bool:
        """A subscription has started: an event published from now on is after its start position."""
        return any(s.started for s in self.streams)

    async def cut_streams(self, status: grpc.StatusCode, code: str) -> None:
        self.cut = (status, code)
        async with self.changed:
            self.changed.notify_all()

    async def publish(self, topic: str, schema_id: str, payload: bytes, event_id: str = "") -> bytes:
        replay_id = (len(self.bus[topic]) + 1000).to_bytes(8, "big")
        event = pb.ConsumerEvent(event=pb.ProducerEvent(id=event_id, schema_id=schema_id, payload=payload),
                                 replay_id=replay_id)
        self.bus[topic].append(event)
        async with self.changed:
            self.changed.notify_all()
        return replay_id

    async def _authorized(self, method: str, context: grpc.aio.ServicerContext) -> dict[str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.calls.append((method, metadata))
        if self.failures and self.failures[0][0] == method:
            _, status, code = self.failures.pop(0)
            context.set_trailing_metadata((("error-code", ERR + code),))
            await context.abort(status, f"{code}. rpcId: 5")
        if metadata.get("accesstoken") not in self.valid_tokens or not metadata.get("instanceurl") \
                or not metadata.get("tenantid"):
            context.set_trailing_metadata((("error-code", ERR + "service.auth.error"),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "An authentication exception occurred. Provide valid authentication via metadata "
                                "headers. rpcId: 1")
        return metadata

    async def GetTopic(self, request: pb.TopicRequest, context: grpc.aio.ServicerContext) -> pb.TopicInfo:
        await self._authorized("GetTopic", context)
        if request.topic_name not in self.topics:
            context.set_trailing_metadata((("error-code", ERR + "topic.not.found"),))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Topic not found: {request.topic_name}. rpcId: 2")
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid="00D000000000001AAA", can_publish=True,
                            can_subscribe=True, schema_id=self.topics[request.topic_name], rpc_id="2")

    async def GetSchema(self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext) -> pb.SchemaInfo:
        await self._authorized("GetSchema", context)
        self.schema_requests += 1
        return pb.SchemaInfo(schema_json=json.dumps(self.schemas[request.schema_id]), schema_id=request.schema_id)

    async def Subscribe(
        self, request_iterator: AsyncIterator[pb.FetchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FetchResponse]:
        stream = Stream(await self._authorized("Subscribe", context))
        self.streams.append(stream)
        first = await anext(aiter(request_iterator))
        stream.requests.append(first)
        stream.credit = min(first.num_requested, 100)
        events = self.bus[first.topic_name]
        if first.replay_preset == pb.CUSTOM:
            ids = [e.replay_id for e in events]
            if first.replay_id not in ids:
                context.set_trailing_metadata((("error-code", ERR + "subscription.fetch.replayid.corrupted"),))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The Replay ID validation failed. rpcId: 3")
            position = ids.index(first.replay_id) + 1
        else:
            position = 0 if first.replay_preset == pb.EARLIEST else len(events)
        stream.started = True

        async def more() -> None:
            async for request in request_iterator:
                stream.requests.append(request)
                stream.credit = min(stream.credit + request.num_requested, 100)
                async with self.changed:
                    self.changed.notify_all()

        reader = asyncio.create_task(more())
        try:
            while True:
                at = position

                def deliverable(at: int = at) -> bool:
                    return (stream.credit > 0 and at < len(events) and not self.silent) or self.cut is not None

                async with self.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait_for(deliverable), self.keepalive_s)
                if self.cut is not None:
                    (status, code), self.cut = self.cut, None
                    context.set_trailing_metadata((("error-code", ERR + code),))
                    await context.abort(status, f"{code}. rpcId: 6")
                if self.silent:
                    continue
                if stream.credit > 0 and position < len(events):
                    batch = events[position:position + min(stream.credit, self.per_response)]
                    position += len(batch)
                    stream.credit -= len(batch)
                    stream.delivered += len(batch)
                    yield pb.FetchResponse(events=batch, latest_replay_id=batch[-1].replay_id, rpc_id="4",
                                           pending_num_requested=stream.credit)
                elif stream.credit > 0:  # the keepalive: only while events are requested
                    yield pb.FetchResponse(latest_replay_id=events[-1].replay_id if events else b"",
                                           pending_num_requested=stream.credit)
        finally:
            stream.ended = True
            reader.cancel()


async def start(fake: FakePubSub, key_pem: bytes, cert_pem: bytes) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_PubSubServicer_to_server(fake, server)
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    await server.start()
    return server, port
