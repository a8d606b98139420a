"""Decoding cost per event, in process: what each transport's client does to turn wire bytes into the event model.

Both transports start from the same bus events of the emulator and its own encoders, as their servers send them:
- CometD: the Bayeux messages as one JSON array per batch (a `/meta/connect` answer), `json.loads` (what httpx's
  `response.json()` does), then `parse_event` for each message;
- Pub/Sub: the `FetchResponse` protobuf per batch (`ConsumerEvent`s with the Avro payload from the emulator's
  `EventSchemas.encode`), `FetchResponse.FromString` (what grpcio does before the client sees it), then
  `cometd_message` (Avro decoding, the `changedFields`/`nulledFields`/`diffFields` bitmaps, ISO dates) with the
  client's `EventSchema` built from the schema JSON `GetSchema` returns, then the same `parse_event`.
Batches are of 100 events on both sides (Pub/Sub's flow-control window; a CometD answer may hold more). Each stage
is timed over all events, best of `repeat` passes, so a scheduler hiccup on a shared machine does not count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sfsign.emulator.avro_schemas import EventSchemas
from sfsign.emulator.bus import BusEvent
from sfsign.emulator.pubsub_server import encode_replay_id
from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.salesforce.events import ChangeEvent, Event, PlatformEvent, parse_event, update_header
from sfsign.salesforce.pubsub_decoding import EventSchema, cometd_message, header_message

BATCH = 100


@dataclass
class DecodeCost:
    """µs per event for each stage of one transport's decoding."""

    transport: str
    events: int
    wire_us: float  # JSON array / protobuf FetchResponse → Python objects
    shape_us: float  # Pub/Sub only: Avro payload + bitmaps → the CometD-shaped message
    model_us: float  # parse_event → ChangeEvent / PlatformEvent

    @property
    def total_us(self) -> float:
        return self.wire_us + self.shape_us + self.model_us


@dataclass
class DecodeComparison:
    cometd: DecodeCost
    pubsub: DecodeCost
    passed_over_us: dict[str, float]  # transport → µs per event to read the header intake passes an event over on
    headers_agree: int  # events whose two `update_header`s are equal (the replay id aside)
    agree: int  # events whose two models are equal (the replay id aside: an integer vs Salesforce's bytes)
    differ: dict[str, tuple[int, str, str]]  # attribute → (events where it differs, CometD's, Pub/Sub's value)


def _best_us(run: Callable[[], object], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        best = min(best, time.perf_counter_ns() - start)
    return best / 1000 / max(1, events)


def _batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


def cometd_wire(events: Sequence[BusEvent], channel: str) -> list[bytes]:
    """The connect answers' bodies, as the emulator's Bayeux server writes them (compact JSON arrays)."""
    return [json.dumps([e.message(channel) for e in batch], separators=(",", ":")).encode()
            for batch in _batches(events)]


def pubsub_wire(events: Sequence[BusEvent], schemas: EventSchemas) -> list[bytes]:
    """The FetchResponses' bytes, as the emulator's Pub/Sub server builds them."""
    out = []
    for batch in _batches(events):
        consumer = []
        for e in batch:
            schema_id, payload = schemas.encode(e)
            producer = pb.ProducerEvent(id=schemas.event_id(e), schema_id=schema_id, payload=payload)
            consumer.append(pb.ConsumerEvent(event=producer, replay_id=encode_replay_id(e.replay_id)))
        out.append(pb.FetchResponse(events=consumer, latest_replay_id=consumer[-1].replay_id).SerializeToString())
    return out


def _comparable(event: Event) -> dict[str, Any]:
    kept = event.model_dump(exclude={"replay_id"})
    kept["kind"] = type(event).__name__
    return kept


def _compare(left: list[Event], right: list[Event]) -> tuple[int, dict[str, tuple[int, str, str]]]:
    """How many pairs are equal; for the others, per differing attribute (`fields.X` for a payload field): how
    many events, and one example: the CometD value and the Pub/Sub value."""
    agree = 0
    differ: dict[str, tuple[int, str, str]] = {}
    for a, b in zip(left, right, strict=True):
        ca, cb = _comparable(a), _comparable(b)
        if ca == cb:
            agree += 1
            continue
        for key in sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k)):
            pairs = [(key, ca.get(key), cb.get(key))]
            if key == "fields" and isinstance(a, ChangeEvent | PlatformEvent):
                fa, fb = a.fields, b.fields
                pairs = [(f"fields.{k}", fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys())
                         if fa.get(k) != fb.get(k)]
            for name, va, vb in pairs:
                count, example_a, example_b = differ.get(name, (0, repr(va), repr(vb)))
                differ[name] = (count + 1, example_a, example_b)
    return agree, differ


def decode_costs(events: Sequence[BusEvent], schemas: EventSchemas, channel: str, *,
                 repeat: int = 5) -> DecodeComparison:
    """Time both transports' decoding of `events` (all published on `channel`) and check they give one model."""
    n = len(events)
    cometd_bodies = cometd_wire(events, channel)
    pubsub_bodies = pubsub_wire(events, schemas)
    client_schemas: dict[str, EventSchema] = {}
    for e in events:  # GetSchema's answer, parsed once per schema id as the client caches it
        sid = str(e.data.get("schema", ""))
        built = schemas.by_id(sid)
        if built is not None and sid not in client_schemas:
            client_schemas[sid] = EventSchema(sid, built.schema_json)

    messages = [m for body in cometd_bodies for m in json.loads(body)]
    responses = [pb.FetchResponse.FromString(body) for body in pubsub_bodies]
    consumer = [c for r in responses for c in r.events]

    def shape() -> list[dict[str, Any]]:
        return [cometd_message(channel, client_schemas[c.event.schema_id], c.event.payload, c.replay_id, c.event.id)
                for c in consumer]

    shaped = shape()
    cometd = DecodeCost(
        "CometD", n, _best_us(lambda: [json.loads(body) for body in cometd_bodies], n, repeat), 0.0,
        _best_us(lambda: [parse_event(m) for m in messages], n, repeat))
    pubsub = DecodeCost(
        "Pub/Sub", n, _best_us(lambda: [pb.FetchResponse.FromString(body) for body in pubsub_bodies], n, repeat),
        _best_us(shape, n, repeat), _best_us(lambda: [parse_event(m) for m in shaped], n, repeat))
    # An event intake passes over on its header (sfsign's own write-backs): the wire's objects → `update_header`;
    # over Pub/Sub only the header is decoded (`header_message`), the rest never is.
    passed_over = {
        "CometD": _best_us(lambda: [update_header(m) for m in messages], n, repeat),
        "Pub/Sub": _best_us(lambda: [update_header(header_message(channel, client_schemas[c.event.schema_id],
                                                                  c.event.payload, c.replay_id) or {})
                                     for c in consumer], n, repeat)}
    heads = [header_message(channel, client_schemas[c.event.schema_id], c.event.payload, c.replay_id) for c in consumer]
    headers_agree = sum(1 for m, h in zip(messages, heads, strict=True) if (a := update_header(m)) is not None
                        and h is not None and (b := update_header(h)) is not None
                        and dataclasses.replace(a, replay_id=0) == dataclasses.replace(b, replay_id=0))
    agree, differ = _compare([parse_event(m) for m in messages], [parse_event(m) for m in shaped])
    return DecodeComparison(cometd, pubsub, passed_over, headers_agree, agree, differ)


def decode_table(result: DecodeComparison) -> list[str]:
    lines = ["| transport | events | wire → objects (JSON / protobuf) | Avro + bitmaps → CometD shape "
             "| → event model (`parse_event`) | total per event |",
             "|---|---:|---:|---:|---:|---:|"]
    for cost in (result.cometd, result.pubsub):
        shape = f"{cost.shape_us:.1f} µs" if cost.shape_us else "-"
        lines.append(f"| {cost.transport} | {cost.events:,} | {cost.wire_us:.1f} µs | {shape} "
                     f"| {cost.model_us:.1f} µs | **{cost.total_us:.1f} µs** |")
    lines += ["", "| transport | an event passed over on its header (after wire → objects) |", "|---|---:|"]
    lines += [f"| {name} | {us:.1f} µs |" for name, us in result.passed_over_us.items()]
    return lines
