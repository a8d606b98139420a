"""The Pub/Sub API over real gRPC and TLS: auth, GetTopic/GetSchema, flow control, replay, keepalives, Avro.

The client here is raw grpcio on Salesforce's stubs (sfsign.pubsub_proto), not sfsign's Pub/Sub client:
the emulator must answer what Salesforce documents, whatever our client expects. The bitmap decoder is
written here from Salesforce's ChangeEventHeaderUtility.py (hex → bit string, reversed, bit i = field i of
the Avro schema, `parentPos-bitmap` for compound fields), independently of the emulator's encoder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fastavro
import grpc
import grpc.aio
import pytest

from sfsign.emulator.server import Emulator
from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.pubsub_proto import pubsub_api_pb2_grpc as pb_grpc

OPP = "/data/OpportunityChangeEvent"
PE = "/event/Sign_Request__e"
KEEPALIVE_S = 0.4
FETCH_IDLE_S = 3.0  # Salesforce: 60 s
BOUND_S = 15.0  # an upper bound for one answer, never a timing assertion
ERR = "sfdc.platform.eventbus.grpc."
AUTH_MESSAGE = "An authentication exception occurred. Provide valid authentication via metadata headers."


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """This module's emulator: keepalives every KEEPALIVE_S so a test sees one without waiting 270 s, and a
    stream with nothing requested closed after FETCH_IDLE_S instead of 60 s."""
    emu = Emulator(data_dir=tmp_path / "emulator", long_poll_timeout_ms=1500, client_timeout_s=3.0,
                   pubsub_keepalive_s=KEEPALIVE_S, pubsub_fetch_idle_s=FETCH_IDLE_S)
    async with emu:
        yield emu


@pytest.fixture
async def stub(emulator: Emulator) -> AsyncIterator[pb_grpc.PubSubStub]:
    credentials = grpc.ssl_channel_credentials(emulator.ca_file.read_bytes())
    async with grpc.aio.secure_channel(emulator.pubsub_target, credentials) as channel:
        yield pb_grpc.PubSubStub(channel)


@pytest.fixture
def auth(emulator: Emulator, token: str) -> tuple[tuple[str, str], ...]:
    return (("accesstoken", token), ("instanceurl", emulator.url), ("tenantid", emulator.org.org_id))


class Subscription:
    """One Subscribe stream, written to with `call.write` (no request iterator, so no task to clean up)."""

    def __init__(self, stub: pb_grpc.PubSubStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.call = stub.Subscribe(metadata=metadata)

    async def fetch(self, **fields: Any) -> None:
        await self.call.write(pb.FetchRequest(**fields))

    async def next(self) -> pb.FetchResponse:
        response = await asyncio.wait_for(self.call.read(), BOUND_S)
        assert isinstance(response, pb.FetchResponse), response
        return response

    async def events(self, count: int) -> tuple[list[pb.ConsumerEvent], list[pb.FetchResponse]]:
        """The next `count` events. Bounded as a whole: keepalives answer every `next`, so a missing event
        would otherwise be waited for forever."""
        events: list[pb.ConsumerEvent] = []
        responses: list[pb.FetchResponse] = []
        async with asyncio.timeout(BOUND_S):
            while len(events) < count:
                response = await self.next()
                responses.append(response)
                events.extend(response.events)
        return events, responses

    async def error(self) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while True:
                await self.next()
        return info.value

    def close(self) -> None:
        self.call.cancel()


async def wait_for_streams(ctl: Any, count: int) -> list[dict[str, Any]]:
    """Poll the control API until `count` Subscribe streams are set up (their first request was read)."""
    for _ in range(200):
        streams = list((await ctl.get("/_control/pubsub/streams"))["streams"])
        if len(streams) >= count:
            return streams
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} open streams")


async def wait_for_requested(ctl: Any, requested: int) -> None:
    """Poll the control API until the one open stream has read requests for `requested` events in all."""
    for _ in range(200):
        streams = list((await ctl.get("/_control/pubsub/streams"))["streams"])
        if streams and streams[0]["pendingNumRequested"] == requested:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected one stream with {requested} events requested")


def replay_number(replay_id: bytes) -> int:
    """The bus position in a delivered id: 8 bytes big-endian (as the Node client reads it), then 00 00."""
    assert len(replay_id) == 10 and replay_id[8:] == b"\x00\x00", replay_id.hex()
    return int.from_bytes(replay_id[:8], "big")


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    return dict(error.trailing_metadata() or ()).get(key)


# -- an independent bitmap decoder, after Salesforce's ChangeEventHeaderUtility.py


def _bits(bitmap: str) -> str:
    digits = bitmap[2:]
    return bin(int(digits, 16))[2:].zfill(len(digits) * 4)[::-1]  # BitArray(hex=...).bin, reversed


def _named_records(schema: Any, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            found[schema["name"]] = schema
        for value in schema.values():
            _named_records(value, found)
    elif isinstance(schema, list):
        for item in schema:
            _named_records(item, found)
    return found


def decode_bitmaps(schema: dict[str, Any], bitmaps: list[str]) -> list[str]:
    fields = schema["fields"]
    records = _named_records(schema, {})
    names: list[str] = []
    items = list(bitmaps)
    if items and items[0].startswith("0x"):
        names += [fields[i]["name"] for i, bit in enumerate(_bits(items.pop(0))) if bit == "1"]
    for item in items:
        if "-" not in item:
            continue
        position, bitmap = item.split("-")
        parent = fields[int(position)]
        value = next(t for t in parent["type"] if t != "null") if isinstance(parent["type"], list) else parent["type"]
        child = records[value] if isinstance(value, str) else value
        assert child["type"] == "record"
        names += [f"{parent['name']}.{child['fields'][i]['name']}" for i, bit in enumerate(_bits(bitmap))
                  if bit == "1"]
    return names


async def schema_of(stub: pb_grpc.PubSubStub, auth: Any, schema_id: str) -> dict[str, Any]:
    info = await stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=auth)
    assert info.schema_id == schema_id
    return dict(json.loads(info.schema_json))


def avro_decode(schema: dict[str, Any], payload: bytes) -> dict[str, Any]:
    return dict(fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(schema), None))


# -- auth


@pytest.mark.parametrize("drop", ["accesstoken", "instanceurl", "tenantid"])
async def test_a_call_without_a_session_header_is_unauthenticated(stub: Any, auth: Any, drop: str) -> None:
    metadata = tuple((k, v) for k, v in auth if k != drop)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTopic(pb.TopicRequest(topic_name=OPP), metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailer(info.value, "error-code") == ERR + "service.auth.headers.invalid"


@pytest.mark.parametrize("bad", ["token", "tenant"])
async def test_an_invalid_token_or_another_orgs_id_is_unauthenticated_as_salesforce_says(
    stub: Any, auth: Any, bad: str
) -> None:
    metadata = dict(auth)
    metadata["accesstoken" if bad == "token" else "tenantid"] = "00Dxx0000000001!AQbogus"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSchema(pb.SchemaRequest(schema_id="x"), metadata=tuple(metadata.items()))
    error = info.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    rpc_id = trailer(error, "rpc-id")
    assert rpc_id and error.details() == f"{AUTH_MESSAGE} rpcId: {rpc_id}"
    assert trailer(error, "error-code") == ERR + "service.auth.error"


async def test_revoking_the_token_ends_an_open_stream_unauthenticated(
    stub: Any, auth: Any, ctl: Any, token: str
) -> None:
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.post("/_control/auth/revoke", {"token": token})
    error = await sub.error()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailer(error, "error-code") == ERR + "service.auth.error"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTopic(pb.TopicRequest(topic_name=OPP), metadata=auth)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- topics and schemas


async def test_get_topic_names_cometd_channels_and_unknown_topics_are_not_found(
    stub: Any, auth: Any, emulator: Emulator
) -> None:
    org_id = emulator.org.org_id
    cdc = await stub.GetTopic(pb.TopicRequest(topic_name=OPP), metadata=auth)
    assert (cdc.topic_name, cdc.tenant_guid, cdc.can_subscribe, cdc.can_publish) == (OPP, org_id, True, False)
    assert cdc.schema_id and cdc.rpc_id
    event = await stub.GetTopic(pb.TopicRequest(topic_name=PE), metadata=auth)
    assert event.can_publish and event.schema_id and event.schema_id != cdc.schema_id
    generic = await stub.GetTopic(pb.TopicRequest(topic_name="/data/ChangeEvents"), metadata=auth)
    assert generic.can_subscribe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=auth)  # not selected
    error = info.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith(
        f"The topic information for org CORE/prod/{org_id} and topic /data/AccountChangeEvent not found. "
        "Ensure the topic name is correct and that the topic exists. rpcId: ")
    assert trailer(error, "error-code") == ERR + "topic.not.found"


async def test_schemas_are_salesforces_avro_records_and_unknown_ids_are_refused(stub: Any, auth: Any) -> None:
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=OPP), metadata=auth)
    schema = await schema_of(stub, auth, topic.schema_id)
    assert (schema["name"], schema["namespace"], schema["uuid"]) == (
        "OpportunityChangeEvent", "com.sforce.eventbus", topic.schema_id)
    header = schema["fields"][0]
    assert header["name"] == "ChangeEventHeader"
    assert [f["name"] for f in header["type"]["fields"]] == [
        "entityName", "recordIds", "changeType", "changeOrigin", "transactionKey", "sequenceNumber",
        "commitTimestamp", "commitNumber", "commitUser", "nulledFields", "diffFields", "changedFields"]
    change_type = header["type"]["fields"][2]["type"]
    assert change_type["type"] == "enum" and change_type["name"] == "ChangeType"
    by_name = {f["name"]: f for f in schema["fields"]}
    assert by_name["StageName"]["type"] == ["null", "string"] and by_name["StageName"]["default"] is None
    assert by_name["CloseDate"]["type"] == ["null", "int"] and by_name["CreatedDate"]["type"] == ["null", "long"]
    assert "Id" not in by_name and "SystemModstamp" not in by_name
    fastavro.parse_schema(schema)  # a valid Avro schema

    event = await schema_of(stub, auth, (await stub.GetTopic(pb.TopicRequest(topic_name=PE), metadata=auth)).schema_id)
    assert [f["name"] for f in event["fields"]][:2] == ["CreatedDate", "CreatedById"]
    assert event["fields"][0]["type"] == "long" and "EventUuid" not in [f["name"] for f in event["fields"]]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSchema(pb.SchemaRequest(schema_id="AAAAAAAAAAAAAAAAAAAAAA"), metadata=auth)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- Subscribe: flow control, keepalives, replay


async def test_flow_control_delivers_no_more_than_requested_and_keepalives_only_while_events_are_pending(
    stub: Any, auth: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    for n in range(3):
        await ctl.touch(opp, n)
    first = await sub.next()
    assert len(first.events) == 1 and first.pending_num_requested == 0
    assert first.latest_replay_id == first.events[0].replay_id
    read = asyncio.ensure_future(sub.call.read())  # two events wait, none requested: nothing comes, not even
    done, _ = await asyncio.wait({read}, timeout=KEEPALIVE_S * 3)  # a keepalive (only while events are pending)
    assert not done
    await sub.fetch(num_requested=5)  # within FETCH_IDLE_S: the stream is still open
    response = await asyncio.wait_for(read, BOUND_S)
    assert isinstance(response, pb.FetchResponse) and len(response.events) >= 1
    more, responses = await sub.events(2 - len(response.events))
    events = [*response.events, *more]
    assert len(events) == 2 and [response, *responses][-1].pending_num_requested == 3
    ids = [replay_number(e.replay_id) for e in [*first.events, *events]]
    assert ids == sorted(ids) and len(set(ids)) == 3
    quiet = await sub.next()
    assert list(quiet.events) == [] and quiet.latest_replay_id == events[-1].replay_id
    [stream] = await wait_for_streams(ctl, 1)
    assert stream["pendingNumRequested"] == 3 and stream["delivered"] == 3
    sub.close()


async def test_a_stream_with_nothing_requested_and_no_fetch_request_is_closed(stub: Any, auth: Any, ctl: Any) -> None:
    """Salesforce: with pending_num_requested 0 "the client must send a new FetchRequest within 60 seconds from
    when the last FetchResponse" was sent, or the stream does not stay open."""
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 1)
    first = await sub.next()
    assert len(first.events) == 1 and first.pending_num_requested == 0
    ended = await asyncio.wait_for(sub.call.read(), FETCH_IDLE_S + BOUND_S)  # no keepalive: the end of the stream
    assert ended is grpc.aio.EOF
    assert await sub.call.code() == grpc.StatusCode.OK
    assert list((await ctl.get("/_control/pubsub/streams"))["streams"]) == []


async def test_requested_events_add_up_to_at_most_100(stub: Any, auth: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=80)
    await sub.fetch(num_requested=80)
    await wait_for_requested(ctl, 100)  # both requests read (the second after the first set the start position)
    await ctl.touch(opp, 1)
    _, responses = await sub.events(1)
    assert responses[-1].pending_num_requested == 99
    sub.close()


async def test_a_non_positive_request_or_another_topic_ends_the_stream(stub: Any, auth: Any, ctl: Any) -> None:
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=0)
    error = await sub.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(error, "error-code") == ERR + "subscription.fetch.requested.events.invalid"
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await sub.fetch(topic_name=PE, num_requested=1)
    error = await sub.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(error, "error-code") == ERR + "subscription.fetch.topic.mismatch"


async def test_replay_presets_earliest_latest_and_custom_after_a_stored_id(stub: Any, auth: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    for n in range(3):
        await ctl.touch(opp, n)
    earliest = Subscription(stub, auth)
    await earliest.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.EARLIEST, num_requested=100)
    retained, _ = await earliest.events(3)
    earliest.close()

    custom = Subscription(stub, auth)
    await custom.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=retained[-3].replay_id,
                 num_requested=100)
    after, _ = await custom.events(2)
    assert [e.replay_id for e in after[:2]] == [e.replay_id for e in retained[-2:]]
    custom.close()

    eight_bytes = Subscription(stub, auth)  # the bare 8-byte big-endian number, as the Node client sends it
    await eight_bytes.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=retained[-2].replay_id[:8],
                      num_requested=100)
    [last], _ = await eight_bytes.events(1)
    assert last.replay_id == retained[-1].replay_id
    eight_bytes.close()

    latest = Subscription(stub, auth)
    await latest.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.LATEST, num_requested=100)
    keepalive = await latest.next()
    assert list(keepalive.events) == []
    await ctl.touch(opp, 9)
    [new], _ = await latest.events(1)
    assert replay_number(new.replay_id) > replay_number(retained[-1].replay_id)
    latest.close()


async def test_a_quiet_topic_resumed_after_a_stored_id_keeps_alive_with_the_newest_id_not_the_stored_one(
    stub: Any, auth: Any, ctl: Any
) -> None:
    """Salesforce's keepalive carries "the latest replay id", so a quiet channel's stored position moves on
    even when it resubscribes after events of other topics: a client that saves it never resumes from far back."""
    opp = await ctl.an_opportunity()
    busy = Subscription(stub, auth)
    await busy.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.LATEST, num_requested=100)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 0)
    [first], _ = await busy.events(1)
    stored = first.replay_id  # what a client stored for PE too: no platform event comes after it
    for n in range(1, 3):
        await ctl.touch(opp, n)
    after, _ = await busy.events(2)
    busy.close()

    quiet = Subscription(stub, auth)
    await quiet.fetch(topic_name=PE, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=stored, num_requested=100)
    keepalive = await quiet.next()
    assert list(keepalive.events) == []
    assert replay_number(keepalive.latest_replay_id) >= replay_number(after[-1].replay_id)
    quiet.close()


@pytest.mark.parametrize("replay_id", [b"\x01\x02\x03", (2**62).to_bytes(8, "big") + b"\x00\x00"])
async def test_an_invalid_replay_id_is_refused_as_corrupted(stub: Any, auth: Any, replay_id: bytes) -> None:
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=replay_id, num_requested=1)
    error = await sub.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    rpc_id = trailer(error, "rpc-id")
    assert error.details() == (
        "The Replay ID validation failed. Ensure that the replay_id field value in FetchRequest is valid and "
        f"refers to an event that is within the retention window. rpcId: {rpc_id}")
    assert trailer(error, "error-code") == ERR + "subscription.fetch.replayid.corrupted"


async def test_custom_without_an_id_fails_validation(stub: Any, auth: Any) -> None:
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, num_requested=1)
    error = await sub.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(error, "error-code") == ERR + "subscription.fetch.replayid.validation.failed"


async def test_an_id_purged_from_the_bus_is_refused_on_both_transports(
    stub: Any, auth: Any, ctl: Any, bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=2)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 1)
    await ctl.touch(opp, 2)
    events, _ = await sub.events(2)
    sub.close()
    await ctl.post("/_control/streaming/purge", {"upToReplayId": replay_number(events[-1].replay_id)})
    stale = Subscription(stub, auth)
    await stale.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=events[0].replay_id,
                num_requested=1)
    error = await stale.error()
    assert trailer(error, "error-code") == ERR + "subscription.fetch.replayid.corrupted"
    await bayeux.handshake()
    reply = await bayeux.subscribe(OPP, replay_number(events[0].replay_id))
    assert reply["successful"] is False and "you provided was invalid" in reply["error"]


async def test_dropped_streams_end_unavailable(stub: Any, auth: Any, ctl: Any) -> None:
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=PE, num_requested=1)
    await wait_for_streams(ctl, 1)
    assert (await ctl.post("/_control/pubsub/drop-streams"))["dropped"] == 1
    error = await sub.error()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(error, "error-code") == ERR + "service.unavailable"


# -- Avro payloads


async def test_a_cdc_update_carries_every_field_and_bitmaps_salesforces_decoder_reads(
    stub: Any, auth: Any, ctl: Any
) -> None:
    opp = await ctl.an_opportunity()
    await ctl.update("Opportunity", opp, {"Description": "to be cleared"})
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.update("Opportunity", opp, {"StageName": "Negotiation/Review", "Description": None})
    [event], _ = await sub.events(1)
    schema = await schema_of(stub, auth, event.event.schema_id)
    record = avro_decode(schema, event.event.payload)
    header = record["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["recordIds"] == [opp] and header["entityName"] == "Opportunity"
    assert all(b.startswith("0x") and len(b) % 2 == 0 and b[2:] == b[2:].upper() for b in header["changedFields"])
    changed = decode_bitmaps(schema, header["changedFields"])
    assert {"StageName", "Description", "LastModifiedDate"} <= set(changed)
    assert decode_bitmaps(schema, header["nulledFields"]) == ["Description"]
    assert header["diffFields"] == []
    assert set(record) == {f["name"] for f in schema["fields"]}  # every field is there
    assert record["StageName"] == "Negotiation/Review" and record["Description"] is None
    unchanged = [name for name in ("Name", "CloseDate", "AccountId", "CreatedDate") if name not in changed]
    assert unchanged and all(record[name] is None for name in unchanged)
    assert isinstance(record["LastModifiedDate"], int)  # epoch milliseconds
    assert abs(record["LastModifiedDate"] - header["commitTimestamp"]) < 1000
    sub.close()


async def test_a_compound_address_change_is_a_nested_record_and_a_parent_position_bitmap(
    stub: Any, auth: Any, ctl: Any
) -> None:
    await ctl.post("/_control/streaming/cdc-entities", {"entities": ["Opportunity", "Account"]})
    [account] = await ctl.query("SELECT Id FROM Account LIMIT 1")
    await ctl.update("Account", account["Id"], {"BillingPostalCode": "69001"})
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name="/data/AccountChangeEvent", num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.update("Account", account["Id"], {"BillingCity": "Lyon", "BillingPostalCode": None})
    [event], _ = await sub.events(1)
    schema = await schema_of(stub, auth, event.event.schema_id)
    record = avro_decode(schema, event.event.payload)
    header = record["ChangeEventHeader"]
    position = [f["name"] for f in schema["fields"]].index("BillingAddress")
    assert any(b.startswith(f"{position}-0x") for b in header["changedFields"])
    changed = decode_bitmaps(schema, header["changedFields"])
    assert "BillingAddress.City" in changed and "LastModifiedDate" in changed
    assert "BillingCity" not in [f["name"] for f in schema["fields"]]
    assert "BillingAddress.PostalCode" in changed
    assert header["nulledFields"] == [f"{position}-0x08"]  # PostalCode is the 4th field of Address
    assert decode_bitmaps(schema, header["nulledFields"]) == ["BillingAddress.PostalCode"]
    assert record["BillingAddress"]["City"] == "Lyon" and record["BillingAddress"]["Street"] is None
    assert record["ShippingAddress"] is None
    sub.close()


async def test_a_platform_event_published_once_is_the_same_event_on_cometd_and_pubsub(
    stub: Any, auth: Any, ctl: Any, bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((PE, -1))
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=PE, num_requested=1)
    await wait_for_streams(ctl, 1)
    published = await ctl.post("/_control/events/Sign_Request__e", {"fields": {"RecordId__c": opp}})
    [cometd] = await bayeux.events(1)
    [grpc_event], _ = await sub.events(1)
    data = cometd["data"]
    assert data["event"]["replayId"] == replay_number(grpc_event.replay_id)
    assert data["event"]["EventUuid"] == grpc_event.event.id == published["eventUuid"]
    assert data["schema"] == grpc_event.event.schema_id
    record = avro_decode(await schema_of(stub, auth, grpc_event.event.schema_id), grpc_event.event.payload)
    assert record["RecordId__c"] == data["payload"]["RecordId__c"] == opp
    assert record["CreatedById"] == data["payload"]["CreatedById"]
    iso = dt.datetime.fromisoformat(data["payload"]["CreatedDate"])
    assert record["CreatedDate"] == int(iso.timestamp() * 1000)
    sub.close()


async def test_a_cdc_event_has_the_same_replay_number_and_schema_on_both_transports(
    stub: Any, auth: Any, ctl: Any, bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 1)
    [cometd] = await bayeux.events(1)
    [grpc_event], _ = await sub.events(1)
    assert cometd["data"]["event"]["replayId"] == replay_number(grpc_event.replay_id)
    assert cometd["data"]["schema"] == grpc_event.event.schema_id
    sub.close()


async def test_publish_over_grpc_reaches_cometd_subscribers(
    stub: Any, auth: Any, ctl: Any, bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((PE, -1))
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=PE), metadata=auth)
    schema = await schema_of(stub, auth, topic.schema_id)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), {
        "CreatedDate": 0, "CreatedById": "005000000000000", "RecordId__c": opp, "Action__c": None,
        "Reason__c": "over gRPC", "RequestedById__c": None, "Rule__c": None})
    response = await stub.Publish(pb.PublishRequest(topic_name=PE, events=[
        pb.ProducerEvent(id="corr-1", schema_id=topic.schema_id, payload=out.getvalue())]), metadata=auth)
    [result] = response.results
    assert result.correlation_key == "corr-1" and not result.HasField("error")
    [cometd] = await bayeux.events(1)
    assert cometd["data"]["event"]["replayId"] == replay_number(result.replay_id)
    assert cometd["data"]["payload"]["RecordId__c"] == opp and cometd["data"]["payload"]["Reason__c"] == "over gRPC"

    bad = await stub.Publish(pb.PublishRequest(topic_name=PE, events=[
        pb.ProducerEvent(id="corr-2", schema_id="wrong", payload=b"")]), metadata=auth)
    assert bad.results[0].error.code == pb.ErrorCode.PUBLISH and bad.results[0].correlation_key == "corr-2"


async def sign_request_event(stub: Any, auth: Any, opp: str, correlation: str) -> pb.ProducerEvent:
    topic = await stub.GetTopic(pb.TopicRequest(topic_name=PE), metadata=auth)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(await schema_of(stub, auth, topic.schema_id)), {
        "CreatedDate": 0, "CreatedById": "005000000000000", "RecordId__c": opp, "Action__c": None,
        "Reason__c": correlation, "RequestedById__c": None, "Rule__c": None})
    return pb.ProducerEvent(id=correlation, schema_id=topic.schema_id, payload=out.getvalue())


async def test_publish_stream_answers_each_batch_keeps_its_first_topic_and_closes_when_idle(
    stub: Any, auth: Any, ctl: Any, emulator: Emulator
) -> None:
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=PE, num_requested=10)
    await wait_for_streams(ctl, 1)
    emulator.pubsub.publish_idle_s = 1.0  # Salesforce: 70 s

    stream = stub.PublishStream(metadata=auth)
    await stream.write(pb.PublishRequest(topic_name=PE, events=[await sign_request_event(stub, auth, opp, "a")]))
    first = await asyncio.wait_for(stream.read(), BOUND_S)
    await stream.write(pb.PublishRequest(events=[await sign_request_event(stub, auth, opp, "b")]))  # topic omitted
    second = await asyncio.wait_for(stream.read(), BOUND_S)
    assert [r.correlation_key for r in [*first.results, *second.results]] == ["a", "b"]
    assert not any(r.HasField("error") for r in [*first.results, *second.results])
    events, _ = await sub.events(2)
    assert [e.replay_id for e in events] == [first.results[0].replay_id, second.results[0].replay_id]
    assert await asyncio.wait_for(stream.read(), 1.0 + BOUND_S) is grpc.aio.EOF  # no request for publish_idle_s
    assert await stream.code() == grpc.StatusCode.OK

    other = stub.PublishStream(metadata=auth)
    await other.write(pb.PublishRequest(topic_name=PE, events=[await sign_request_event(stub, auth, opp, "c")]))
    await asyncio.wait_for(other.read(), BOUND_S)
    await other.write(pb.PublishRequest(topic_name=OPP, events=[await sign_request_event(stub, auth, opp, "d")]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(other.read(), BOUND_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sub.close()


async def test_managed_subscribe_names_an_unknown_subscription_not_found(stub: Any, auth: Any) -> None:
    call = stub.ManagedSubscribe(metadata=auth)
    await call.write(pb.ManagedFetchRequest(developer_name="Sfsign_Events", num_requested=10))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), BOUND_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer(info.value, "error-code") == ERR + "managed.subscription.not.found"


# -- field-level security, as on CometD


async def test_a_restricted_subscriber_gets_only_readable_fields_and_needs_view_all(
    stub: Any, auth: Any, ctl: Any, emulator: Emulator
) -> None:
    opp = await ctl.an_opportunity()
    await ctl.post("/_control/users/access", {"user": emulator.login.username,
                                              "permissionSets": ["sfsign_Integration"],
                                              "revokeFields": ["Opportunity.Description"]})
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.update("Opportunity", opp, {"StageName": "Needs Analysis", "Description": "secret"})
    [event], _ = await sub.events(1)
    schema = await schema_of(stub, auth, event.event.schema_id)
    record = avro_decode(schema, event.event.payload)
    changed = decode_bitmaps(schema, record["ChangeEventHeader"]["changedFields"])
    assert "StageName" in changed and "Description" not in changed
    assert record["StageName"] == "Needs Analysis" and record["Description"] is None
    sub.close()

    generic = Subscription(stub, auth)  # all entities: View All Data, which the permission set lacks
    await generic.fetch(topic_name="/data/ChangeEvents", num_requested=1)
    error = await generic.error()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert trailer(error, "error-code") == ERR + "subscription.topic.cannot.subscribe"


async def test_the_server_keeps_its_port_and_the_bus_across_a_restart(
    stub: Any, auth: Any, ctl: Any, emulator: Emulator
) -> None:
    opp = await ctl.an_opportunity()
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 1)
    [before], _ = await sub.events(1)
    target = emulator.pubsub_target
    await emulator.restart()
    error = await sub.error()  # a killed server ends the stream
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert emulator.pubsub_target == target
    await ctl.touch(opp, 2)
    again = Subscription(stub, auth)
    await again.fetch(topic_name=OPP, replay_preset=pb.ReplayPreset.CUSTOM, replay_id=before.replay_id,
                      num_requested=1)
    [after], _ = await again.events(1)
    assert replay_number(after.replay_id) > replay_number(before.replay_id)
    again.close()


async def test_held_streams_send_nothing_until_released(stub: Any, auth: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await ctl.post("/_control/pubsub/hold-streams", {"enabled": True})
    sub = Subscription(stub, auth)
    await sub.fetch(topic_name=OPP, num_requested=1)
    await wait_for_streams(ctl, 1)
    await ctl.touch(opp, 1)
    read = asyncio.ensure_future(sub.call.read())
    done, _ = await asyncio.wait({read}, timeout=KEEPALIVE_S * 5)  # five keepalive periods: silence
    assert not done
    await ctl.http.delete("/_control/faults", headers=ctl.headers)
    response = await asyncio.wait_for(read, BOUND_S)
    assert isinstance(response, pb.FetchResponse) and len(response.events) == 1
    sub.close()
