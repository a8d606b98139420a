"""The Avro schemas the emulator's Pub/Sub API publishes, built for every object of the org, and payloads
rendered from CometD-form bus events (no server: the schema catalogue and the encoder, called directly)."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import fastavro

from sfsign import metadata as md
from sfsign.emulator.avro_schemas import EventSchemas
from sfsign.emulator.bus import BusEvent, schema_id
from sfsign.emulator.schema import build_org_schema

ORG = "00DDn0000000001MAA"


def _catalogue() -> EventSchemas:
    return EventSchemas(build_org_schema(md.load_schema(None)), ORG)


def _decode(schemas: EventSchemas, sid: str, payload: bytes) -> dict[str, Any]:
    schema = json.loads(schemas.by_id(sid).schema_json)  # type: ignore[union-attr]
    return dict(fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(schema), None))


def test_every_object_has_a_valid_change_event_schema_and_every_event_a_platform_event_schema() -> None:
    schemas = _catalogue()
    org = build_org_schema(md.load_schema(None))
    for obj in org.objects.values():
        sid = schema_id(obj.name if obj.is_event else f"{obj.name}ChangeEvent")
        built = schemas.by_id(sid)
        assert built is not None, obj.name
        record = json.loads(built.schema_json)
        fastavro.parse_schema(record)
        names = [f["name"] for f in record["fields"]]
        assert len(names) == len(set(names)), obj.name
        assert names[0] == ("CreatedDate" if obj.is_event else "ChangeEventHeader"), obj.name


def test_contact_name_is_a_switchable_person_name_record() -> None:
    schemas = _catalogue()
    record = json.loads(schemas.by_id(schema_id("ContactChangeEvent")).schema_json)  # type: ignore[union-attr]
    [name] = [f for f in record["fields"] if f["name"] == "Name"]
    assert name["type"][1]["name"] == "Switchable_PersonName"
    assert "FirstName" not in [f["name"] for f in record["fields"]]


def test_a_create_renders_every_field_with_epoch_millis_and_days() -> None:
    schemas = _catalogue()
    sid = schema_id("OpportunityChangeEvent")
    header = {"entityName": "Opportunity", "recordIds": ["006Dn000000000mIAA"], "changeType": "CREATE",
              "changeOrigin": "", "transactionKey": "k", "sequenceNumber": 1, "commitTimestamp": 1796514811548,
              "commitNumber": 1, "commitUser": "005Dn0000000006IAA", "changedFields": []}
    payload = {"Name": "Deal", "CloseDate": "1970-01-11", "CreatedDate": "2026-11-27T10:00:00.000Z",
               "Amount": 5, "ChangeEventHeader": header}
    event = BusEvent(42, ("/data/OpportunityChangeEvent",), {"schema": sid, "payload": payload,
                                                            "event": {"replayId": 42}}, 0.0)
    got_sid, raw = schemas.encode(event)
    record = _decode(schemas, got_sid, raw)
    assert got_sid == sid
    assert record["CloseDate"] == 10 and record["Amount"] == 5.0 and record["StageName"] is None
    assert record["CreatedDate"] == int(dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC).timestamp() * 1000)
    assert record["ChangeEventHeader"]["changedFields"] == [] == record["ChangeEventHeader"]["nulledFields"]


def test_an_event_that_fits_no_schema_goes_out_undecodable() -> None:
    schemas = _catalogue()
    sid = schema_id("OpportunityChangeEvent")
    event = BusEvent(7, ("/data/OpportunityChangeEvent",), {"schema": sid, "payload": {"garbage": True}}, 0.0)
    _, raw = schemas.encode(event)
    assert json.loads(raw) == {"garbage": True}
