"""The decoding-cost part of `benchmarks/bench_transports.py` (`benchmarks/transport_decoding.py`) on 10 change
events encoded by the emulator's own encoders, no server: it must keep running as the clients change (the
benchmark is run by hand, not in CI), and both transports must decode an event to the same model, or the
side-by-side comparison compares different work. Under a second."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sfsign import metadata as md
from sfsign.emulator.avro_schemas import EventSchemas
from sfsign.emulator.bus import BusEvent, schema_id
from sfsign.emulator.schema import build_org_schema

CHANNEL = "/data/OpportunityChangeEvent"
MODULE = Path(__file__).resolve().parents[3] / "benchmarks" / "transport_decoding.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transport_decoding", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _events(count: int) -> list[BusEvent]:
    """Stage changes as the emulator publishes them for a bulk update: the changed fields and the enriched ones."""
    sid = schema_id("OpportunityChangeEvent")
    events = []
    for i in range(count):
        header = {"entityName": "Opportunity", "recordIds": [f"006Dn0000000{i:03d}IAA"], "changeType": "UPDATE",
                  "changeOrigin": "com/salesforce/api/rest/68.0", "transactionKey": f"0001-{i}",
                  "sequenceNumber": 1, "commitTimestamp": 1796514811548 + i, "commitNumber": 17 * i,
                  "commitUser": "005Dn0000000006IAA",
                  "changedFields": ["StageName", "Probability", "LastModifiedDate"]}
        payload = {"StageName": "Proposal/Price Quote", "Probability": 75.0,
                   "LastModifiedDate": "2026-11-27T10:00:00.000Z", "ChangeEventHeader": header}
        events.append(BusEvent(100 + 3 * i, (CHANNEL,), {"schema": sid, "payload": payload,
                                                        "event": {"replayId": 100 + 3 * i}}, 0.0))
    return events


@pytest.fixture(scope="module")
def comparison() -> object:
    schemas = EventSchemas(build_org_schema(md.load_schema(None)), "00DDn0000000001MAA")
    return _module().decode_costs(_events(10), schemas, CHANNEL, repeat=1)


def test_both_transports_are_timed_stage_by_stage(comparison: object) -> None:
    cometd, pubsub = comparison.cometd, comparison.pubsub  # type: ignore[attr-defined]
    assert cometd.events == pubsub.events == 10
    assert cometd.wire_us > 0 and cometd.model_us > 0 and cometd.shape_us == 0  # CometD has no Avro stage
    assert pubsub.wire_us > 0 and pubsub.shape_us > 0 and pubsub.model_us > 0
    assert pubsub.total_us == pytest.approx(pubsub.wire_us + pubsub.shape_us + pubsub.model_us)


def test_both_transports_give_the_same_event_model(comparison: object) -> None:
    assert comparison.differ == {}  # type: ignore[attr-defined]
    assert comparison.agree == 10  # type: ignore[attr-defined]


def test_an_event_passed_over_on_its_header_is_timed_and_reads_the_same_header(comparison: object) -> None:
    assert set(comparison.passed_over_us) == {"CometD", "Pub/Sub"}  # type: ignore[attr-defined]
    assert all(us > 0 for us in comparison.passed_over_us.values())  # type: ignore[attr-defined]
    assert comparison.headers_agree == 10  # type: ignore[attr-defined]
