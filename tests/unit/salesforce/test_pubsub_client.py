"""PubSubStream against a fake Pub/Sub server over real TLS (fake_pubsub: Salesforce's documented behaviour)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from fake_pubsub import FakePubSub, start, tls_files
from pubsub_schemas import ACCOUNT_CDC, account, encode
from sf_fakes import FakeAuth
from structlog.testing import capture_logs

from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.salesforce.event_stream import COMPLETE, complete_message
from sfsign.salesforce.events import ChangeEvent, parse_event
from sfsign.salesforce.pubsub_client import PubSubStream
from sfsign.salesforce.stream import ReplayIdInvalid, SubscriptionFailed

CDC = "/data/AccountChangeEvent"
SCHEMA_ID = "IeRuaY6cbI_HsV8Rv1Mc5g"


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll (never a fixed sleep) until `condition` holds; fail after a generous bound."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def pubsub(tmp_path: Path) -> AsyncIterator[tuple[FakePubSub, int, Path]]:
    ca, key, cert = tls_files(tmp_path)
    fake = FakePubSub({SCHEMA_ID: ACCOUNT_CDC}, {CDC: SCHEMA_ID})
    server, port = await start(fake, key, cert)
    try:
        yield fake, port, ca
    finally:
        await server.stop(grace=None)


def client(pubsub: tuple[FakePubSub, int, Path], auth: FakeAuth, positions: dict[str, Any] | None = None,
           **knobs: Any) -> PubSubStream:
    _, port, ca = pubsub
    store = positions if positions is not None else {}
    return PubSubStream(auth, channels=[CDC], replay_source=store.get, target=f"localhost:{port}", ca_bundle=ca,
                        backoff_base_s=0.01, backoff_cap_s=0.05, **knobs)


async def update(fake: FakePubSub, stage: str) -> bytes:
    record = account("UPDATE", changed=["0x400"], Stage__c=stage)  # position 10: Stage__c
    return await fake.publish(CDC, SCHEMA_ID, encode(ACCOUNT_CDC, record))


async def take(stream: PubSubStream, count: int, each: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
               ) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async for message in stream.messages():
        got.append(message)
        if each is not None:
            await each(message)
        if len(got) == count:
            return got
    return got


async def test_events_arrive_in_cometd_shape_with_the_session_metadata_on_every_call_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    stream = client(pubsub, fake_auth)
    try:
        reading = asyncio.create_task(take(stream, 2))
        await until(fake.subscribed, "a subscription")
        first_id = await update(fake, "Negotiation")
        await update(fake, "Closed Won")
        messages = await asyncio.wait_for(reading, 10)
        events = [parse_event(m) for m in messages]
        assert all(isinstance(e, ChangeEvent) for e in events)
        assert [e.fields["Stage__c"] for e in events if isinstance(e, ChangeEvent)] == ["Negotiation", "Closed Won"]
        assert events[0].replay_id == first_id and events[0].changed_fields == ("Stage__c",)
        assert stream.connected and CDC in stream.subscribed_replay
        for method, metadata in fake.calls:
            assert metadata["accesstoken"] == "tok1", method
            assert metadata["instanceurl"] == "https://org.example.com" and metadata["tenantid"] == "00D000000000001AAA"
        assert {m for m, _ in fake.calls} == {"GetTopic", "GetSchema", "Subscribe"}
        assert fake.schema_requests == 1  # cached by schema id
    finally:
        await stream.aclose()


async def test_header_first_messages_carry_the_header_and_complete_to_the_whole_event_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    """What intake reads: the header alone until it asks for the rest, and then the same message as without."""
    fake = pubsub[0]
    stream = client(pubsub, fake_auth)
    try:
        got: list[dict[str, Any]] = []

        async def read() -> None:
            async for message in stream.messages(header_first=True):
                got.append(message)
                if len(got) == 3:
                    return
        reading = asyncio.create_task(read())
        await until(fake.subscribed, "a subscription")
        first_id = await update(fake, "Negotiation")
        await fake.publish(CDC, SCHEMA_ID, b"\x02")  # cut inside the header: not even that decodes
        header = account("UPDATE", changed=["0x400"])["ChangeEventHeader"]  # cut after the header
        await fake.publish(CDC, SCHEMA_ID, encode({**ACCOUNT_CDC, "fields": ACCOUNT_CDC["fields"][:1]},
                                                  {"ChangeEventHeader": header}))
        await asyncio.wait_for(reading, 10)
        head, broken, cut = got
        assert set(head["data"]["payload"]) == {"ChangeEventHeader"}
        assert head["data"]["payload"]["ChangeEventHeader"]["changedFields"] == ["Stage__c"]
        assert callable(head["data"][COMPLETE])
        whole = complete_message(head)
        assert whole is head and COMPLETE not in head["data"]  # completed in place, for whoever holds it
        event = parse_event(whole)
        assert isinstance(event, ChangeEvent)
        assert event.fields["Stage__c"] == "Negotiation" and event.replay_id == first_id
        assert "payload" not in broken["data"] and "error" in broken["data"]  # parked by intake as malformed
        assert set(cut["data"]["payload"]) == {"ChangeEventHeader"}  # intake may pass it over on its header
        complete_message(cut)
        assert "payload" not in cut["data"] and "error" in cut["data"]  # or it finds it malformed
    finally:
        await stream.aclose()


async def test_flow_control_never_asks_for_more_than_the_window_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    for i in range(45):
        await update(fake, f"S{i}")
    stream = client(pubsub, fake_auth, {}, batch_size=10, replay_all=[CDC])  # EARLIEST: the whole backlog
    seen: list[int] = []

    async def handle(message: dict[str, Any]) -> None:
        handled_before = len(seen)
        seen.append(handled_before)
        served = fake.streams[-1]
        assert served.requested <= 10 + handled_before  # requested and not yet handled ≤ the window
        assert served.delivered <= served.requested
        await asyncio.sleep(0)  # the consumer takes its time; nothing more is asked meanwhile

    try:
        messages = await asyncio.wait_for(take(stream, 45, handle), 20)
        assert [parse_event(m).fields["Stage__c"] for m in messages] == [f"S{i}" for i in range(45)]  # type: ignore[union-attr]
        served = fake.streams[-1]
        assert served.requests[0].num_requested == 10
        assert all(r.num_requested >= 5 for r in served.requests[1:])  # asked again once half the window was free
    finally:
        await stream.aclose()


async def test_the_replay_position_goes_on_the_first_request_only_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    committed = await update(fake, "Old")
    for i in range(6):
        await update(fake, f"New{i}")
    stream = client(pubsub, fake_auth, {CDC: committed, "/event/X__e": 77}, batch_size=2)
    try:
        messages = await asyncio.wait_for(take(stream, 6), 10)
        assert [parse_event(m).fields["Stage__c"] for m in messages] == [f"New{i}" for i in range(6)]  # type: ignore[union-attr]
        requests = fake.streams[-1].requests
        assert requests[0].replay_preset == pb.CUSTOM and requests[0].replay_id == committed
        assert len(requests) > 1 and all(not r.replay_id and r.replay_preset == pb.LATEST for r in requests[1:])
        assert stream.subscribed_replay[CDC] == committed
    finally:
        await stream.aclose()


async def test_a_cometd_position_is_never_sent_to_pubsub_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    stream = client(pubsub, fake_auth, {CDC: 6421})  # written by the CometD client before a switch
    assert stream.stored_position(CDC) is None  # intake reconciles the channel, as on a first start
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(fake.subscribed, "a subscription")
        assert fake.streams[0].requests[0].replay_preset == pb.LATEST
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
    finally:
        await stream.aclose()


async def test_a_corrupted_replay_id_raises_replay_id_invalid_and_the_reset_starts_afresh_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    unknown = bytes.fromhex("00000000deadbeef")
    stream = client(pubsub, fake_auth, {CDC: unknown})
    try:
        with pytest.raises(ReplayIdInvalid) as refused:
            await asyncio.wait_for(take(stream, 1), 10)
        assert refused.value.channel == CDC and refused.value.replay_id == unknown
        assert "replayid.corrupted" in refused.value.error
        assert not stream.connected
        stream.reset_replay(CDC)  # what intake does once the channel's objects are queued for reconciliation
        reading = asyncio.create_task(take(stream, 1))
        await until(lambda: len(fake.streams) == 2, "a new subscription")
        assert fake.streams[1].requests[0].replay_preset == pb.LATEST
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
        assert stream.connected
    finally:
        await stream.aclose()


async def test_unauthenticated_refreshes_the_token_once_and_subscribes_again_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    fake.valid_tokens = {"tok2"}  # tok1 was revoked
    stream = client(pubsub, fake_auth)
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(fake.subscribed, "a subscription with the new token")  # started: the event is after it
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
        assert fake_auth.refresh_calls == 1
        assert fake.streams[0].metadata["accesstoken"] == "tok2"
    finally:
        await stream.aclose()


async def test_a_silent_stream_is_dropped_by_the_keepalive_watchdog_and_resubscribed_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    # A committed position, so every resubscription resumes after it (CUSTOM): on a slow machine the watchdog
    # may fire again after the connection heals, and a start from LATEST would then rightly skip the event.
    positions: dict[str, Any] = {CDC: await update(fake, "Prospecting")}
    fake.silent = True  # the connection is half-open: no event, no keepalive
    stream = client(pubsub, fake_auth, positions, keepalive_s=0.2)
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(lambda: len(fake.streams) >= 2, "a new subscription after the watchdog fired")
        assert fake.streams[0].ended
        assert all(r.replay_preset == pb.CUSTOM for s in fake.streams for r in s.requests[:1])
        fake.silent = False
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
    finally:
        await stream.aclose()


async def test_keepalives_keep_a_quiet_subscription_without_reconnecting_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    fake.keepalive_s = 0.05  # Salesforce: within 270 s; here the watchdog allows 0.5 s
    stream = client(pubsub, fake_auth, keepalive_s=0.5)
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(fake.subscribed, "a subscription")
        await asyncio.sleep(1.0)  # quiet: only keepalives (this wait is the scenario, nothing is timed)
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
        assert len(fake.streams) == 1  # never resubscribed
    finally:
        await stream.aclose()


async def test_an_unknown_topic_is_a_subscription_failure_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    _, port, ca = pubsub
    stream = PubSubStream(fake_auth, channels=["/data/Nope__ChangeEvent"], replay_source=lambda _c: None,
                          target=f"localhost:{port}", ca_bundle=ca)
    try:
        with pytest.raises(SubscriptionFailed, match=r"NOT_FOUND.*topic\.not\.found"):
            await asyncio.wait_for(take(stream, 1), 10)
    finally:
        await stream.aclose()


async def test_an_untrusted_server_certificate_is_never_accepted_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    _, port, _ = pubsub
    stream = PubSubStream(fake_auth, channels=[CDC], replay_source=lambda _c: None, target=f"localhost:{port}",
                          call_timeout_s=2)  # no ca_bundle: the test CA is not trusted
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await stream._pubsub().GetTopic(pb.TopicRequest(topic_name=CDC), timeout=2)
    finally:
        await stream.aclose()


async def test_an_outage_is_one_disconnected_and_one_reconnected_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    stream = client(pubsub, fake_auth)
    try:
        reading = asyncio.create_task(take(stream, 2))
        await until(fake.subscribed, "a subscription")
        await update(fake, "Negotiation")
        await until(lambda: fake.streams[0].delivered == 1, "the first event")
        assert stream.connected
        with capture_logs() as logs:
            fake.failures = [("GetTopic", grpc.StatusCode.UNAVAILABLE, "service.unavailable")] * 3
            await fake.cut_streams(grpc.StatusCode.UNAVAILABLE, "service.unavailable")  # the service goes away
            await until(lambda: not stream.connected, "the outage seen")
            await until(lambda: len(fake.streams) == 2, "a subscription once the service is back")
            assert stream.connected
            await update(fake, "Closed Won")
            await asyncio.wait_for(reading, 10)
        events = [e["event"] for e in logs]
        assert events.count("salesforce.stream.disconnected") == 1
        assert events.count("salesforce.stream.reconnected") == 1
        # the cut of an answering stream is routine (resubscribed at once); the refused GetTopic make it an outage
        assert events.count("salesforce.stream.recovering") == 1
        assert events.count("salesforce.stream.failure") == 3
        assert stream.reconnects == 1
    finally:
        await stream.aclose()


async def test_the_daily_delivery_limit_waits_the_long_backoff_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    fake.failures = [("Subscribe", grpc.StatusCode.RESOURCE_EXHAUSTED, "subscription.limit.exceeded")]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    stream = client(pubsub, fake_auth, long_backoff_s=600.0, sleep=sleep)
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(lambda: bool(waits) and bool(fake.streams), "a subscription after the wait")
        assert waits == [600.0]
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
    finally:
        await stream.aclose()


async def test_a_latest_start_is_unconfirmed_until_the_server_first_answers_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    # Salesforce fixes a LATEST stream's start when it reads the first FetchRequest and says nothing until
    # an event or a keepalive: until then the channel is listed, so a reconciliation runs again after it.
    fake = pubsub[0]
    stream = client(pubsub, fake_auth)  # no stored position: LATEST
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(fake.subscribed, "a subscription")
        assert stream.unconfirmed_starts == {CDC}  # the fake sends no keepalive: silent until an event
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
        assert stream.unconfirmed_starts == set()
    finally:
        await stream.aclose()


async def test_a_start_after_a_stored_position_is_never_unconfirmed_with_a_fake_pubsub_server(
    pubsub: tuple[FakePubSub, int, Path], fake_auth: FakeAuth,
) -> None:
    fake = pubsub[0]
    first = await update(fake, "Prospecting")
    stream = client(pubsub, fake_auth, positions={CDC: first})  # CUSTOM: the id fixes where it starts
    try:
        reading = asyncio.create_task(take(stream, 1))
        await until(fake.subscribed, "a subscription")
        assert stream.unconfirmed_starts == set()
        await update(fake, "Closed Won")
        await asyncio.wait_for(reading, 10)
    finally:
        await stream.aclose()
