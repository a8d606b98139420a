"""The Avro schemas Salesforce publishes for change events and platform events, and Avro payloads from bus events.

Shapes (Pub/Sub API docs, "Event Deserialization Considerations", the CDC body-field table and the
GetSchema output quoted by public clients): a record in namespace `com.sforce.eventbus` named after the
event (`OpportunityChangeEvent`, `Sign_Request__e`), the schema id repeated as `uuid`.
- A change event starts with `ChangeEventHeader` (a record whose `changeType` is the `ChangeType` enum and
  whose `changedFields` / `nulledFields` / `diffFields` are string arrays of bitmaps, see bitmaps.py),
  followed by every field of the entity as a nullable union `["null", T]` with default null: all fields are
  always present, unchanged ones null on UPDATE, all null on DELETE and gap events. Compound fields are
  nested records (`Address`, `Switchable_PersonName`) in place of their component fields.
- A platform event has `CreatedDate` (long) and `CreatedById` (string), then its custom fields, nullable.
  Its EventUuid is not a field: it is the ProducerEvent's `id`.
- Datetimes are epoch milliseconds (long); dates are days since the epoch (int) [inferred: Avro's date
  convention; the docs show datetimes only]; numbers with decimals are doubles.

Schema ids are the ones the CometD messages carry in `schema` (bus.schema_id), so one event type has one
id on both transports. Payloads are derived from the bus event (the CometD form) at delivery time, so
an event published once is the same event on both transports.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro

from sfsign.emulator.bitmaps import SchemaField, encode
from sfsign.emulator.bus import GENERIC_CDC_CHANNEL, BusEvent, cdc_channel, schema_id
from sfsign.emulator.schema import FieldSpec, ObjectSpec, OrgSchema

NAMESPACE = "com.sforce.eventbus"
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                "GAP_UNDELETE", "GAP_OVERFLOW", "SNAPSHOT")
NOT_IN_CHANGE_EVENTS = frozenset({"Id", "IsDeleted", "SystemModstamp"})
#: Salesforce's nested records for compound fields; components the emulated object lacks stay null.
COMPOUND_RECORDS = {
    "address": ("Address", ("Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode",
                            "Latitude", "Longitude", "Xyz", "GeocodeAccuracy")),
    "name": ("Switchable_PersonName", ("Salutation", "FirstName", "LastName", "MiddleName", "InformalName",
                                       "Suffix")),
}
ENCODED_CACHE = 10_000
EPOCH_DAY = dt.date(1970, 1, 1)

Convert = Callable[[Any], Any]


def _epoch_ms(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    return int(dt.datetime.fromisoformat(str(value)).timestamp() * 1000)


#: A field's type as the schemas' `doc` spells it (`Data:DateTime`, as in the CreatedDate of platform events;
#: Salesforce's public clients key datetime conversion on that suffix). Names other than DateTime, Date and
#: EntityId are [inferred]: the describe type in Salesforce's capitalisation.
DOC_TYPES = {"datetime": "DateTime", "date": "Date", "time": "Time", "reference": "EntityId", "id": "EntityId",
             "string": "Text", "textarea": "TextArea", "picklist": "Picklist", "multipicklist": "MultiPicklist",
             "boolean": "Boolean", "int": "Int", "double": "Double", "currency": "Currency", "percent": "Percent",
             "email": "Email", "phone": "Phone", "url": "Url"}
COMPOUND_DOC = {"address": "Address", "name": "PersonName"}  # [inferred]


def doc_type(kind: str) -> str:
    return DOC_TYPES.get(kind, kind[:1].upper() + kind[1:])


def _epoch_days(value: Any) -> int:
    return (dt.date.fromisoformat(str(value)) - EPOCH_DAY).days


def _avro(spec: FieldSpec | None) -> tuple[str, Convert]:
    """The Avro type of a field and how a CometD JSON value becomes it."""
    kind = spec.type if spec is not None else "string"
    if kind == "boolean":
        return "boolean", bool
    if kind == "int":
        return "int", int
    if kind in ("double", "currency", "percent"):
        return "double", float
    if kind in ("datetime", "time"):
        return "long", _epoch_ms
    if kind == "date":
        return "int", _epoch_days
    return "string", str


def _nullable(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


@dataclass(frozen=True)
class _Slot:
    """One top-level field of an event schema and how to fill it from a CometD payload."""

    field: SchemaField
    convert: Convert  # scalar; for a compound, the value is a dict of converted children


@dataclass(frozen=True)
class EventSchema:
    schema_id: str
    name: str  # OpportunityChangeEvent, Sign_Request__e
    kind: str  # "cdc" | "event"
    schema_json: str
    parsed: Any  # fastavro's parsed schema
    slots: tuple[_Slot, ...]

    @property
    def fields(self) -> tuple[SchemaField, ...]:
        return tuple(s.field for s in self.slots)


def _header_schema() -> dict[str, Any]:
    strings = {"type": "array", "items": "string"}
    return {"name": "ChangeEventHeader", "type": "record", "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": strings},
        {"name": "changeType", "type": {"name": "ChangeType", "type": "enum", "symbols": list(CHANGE_TYPES)}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": strings},
        {"name": "diffFields", "type": strings},
        {"name": "changedFields", "type": strings},
    ]}


def _cdc_schema(obj: ObjectSpec) -> tuple[dict[str, Any], list[_Slot]]:
    fields: list[dict[str, Any]] = [{"name": "ChangeEventHeader", "type": _header_schema(),
                                     "doc": "Data:ComplexValueType"}]
    slots = [_Slot(SchemaField("ChangeEventHeader"), lambda v: v)]
    compounds: dict[str, list[FieldSpec]] = {}
    for spec in obj.fields.values():
        if spec.compound_field_name:
            compounds.setdefault(spec.compound_field_name, []).append(spec)
    defined: set[str] = set()
    done: set[str] = set()
    for spec in obj.fields.values():
        if spec.name in NOT_IN_CHANGE_EVENTS or spec.type == "base64":
            continue
        compound = spec.compound_field_name or (spec.name if spec.name in compounds else None)
        if compound is None:
            avro_type, convert = _avro(spec)
            fields.append({"name": spec.name, "type": ["null", avro_type], "doc": f"Data:{doc_type(spec.type)}",
                           "default": None})
            slots.append(_Slot(SchemaField(spec.name), _nullable(convert)))
            continue
        if compound in done:
            continue
        done.add(compound)
        components = {c.compound_component: c for c in compounds.get(compound, []) if c.compound_component}
        kind = "address" if compound.endswith("Address") else "name" if compound == "Name" else ""
        record_name, children = COMPOUND_RECORDS.get(kind, (compound, tuple(components)))
        if record_name in defined:
            record: Any = record_name
        else:
            defined.add(record_name)
            record = {"name": record_name, "type": "record", "fields": [
                {"name": child, "type": ["null", _avro(components.get(child))[0]], "default": None}
                for child in children]}
        converts = {child: _nullable(_avro(components.get(child))[1]) for child in children}

        def fill(value: Any, converts: dict[str, Convert] = converts) -> Any:
            if not isinstance(value, dict):
                return None
            return {child: convert(value.get(child)) for child, convert in converts.items()}

        fields.append({"name": compound, "type": ["null", record], "doc": f"Data:{COMPOUND_DOC.get(kind, 'Compound')}",
                       "default": None})
        slots.append(_Slot(SchemaField(compound, tuple(children)), fill))
    return {"name": f"{obj.name}ChangeEvent", "namespace": NAMESPACE, "type": "record", "fields": fields}, slots


def _event_schema(obj: ObjectSpec) -> tuple[dict[str, Any], list[_Slot]]:
    fields: list[dict[str, Any]] = [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
    ]
    slots = [_Slot(SchemaField("CreatedDate"), _epoch_ms), _Slot(SchemaField("CreatedById"), str)]
    for spec in obj.fields.values():
        if spec.custom:
            avro_type, convert = _avro(spec)
            fields.append({"name": spec.name, "type": ["null", avro_type], "default": None})
            slots.append(_Slot(SchemaField(spec.name), _nullable(convert)))
    return {"name": obj.name, "namespace": NAMESPACE, "type": "record", "fields": fields}, slots


class EventSchemas:
    """Every event schema of the org by id and by topic, and the Avro payload of a bus event."""

    def __init__(self, schema: OrgSchema, org_id: str) -> None:
        self._schema = schema
        self._org_id = org_id
        self._ids: dict[str, tuple[str, str]] = {}
        for obj in schema.objects.values():
            if obj.is_event:
                self._ids[schema_id(obj.name)] = ("event", obj.name)
            else:
                self._ids[schema_id(f"{obj.name}ChangeEvent")] = ("cdc", obj.name)
        self._built: dict[str, EventSchema] = {}
        self._encoded: OrderedDict[tuple[int, str, str], bytes] = OrderedDict()

    def by_id(self, sid: str) -> EventSchema | None:
        known = self._ids.get(sid)
        if known is None:
            return None
        built = self._built.get(sid)
        if built is None:
            kind, name = known
            obj = self._schema.objects[name]
            record, slots = _cdc_schema(obj) if kind == "cdc" else _event_schema(obj)
            parsed = fastavro.parse_schema(record)
            record_json = json.dumps({**record, "uuid": sid}, separators=(",", ":"))
            built = EventSchema(sid, record["name"], kind, record_json, parsed, tuple(slots))
            self._built[sid] = built
        return built

    def for_topic(self, topic: str) -> EventSchema | None:
        """The schema of a topic's events; None for the generic `/data/ChangeEvents` (one per entity)."""
        if topic == GENERIC_CDC_CHANNEL:
            return None
        if topic.startswith("/event/"):
            return self.by_id(schema_id(topic.removeprefix("/event/")))
        for obj in self._schema.objects.values():
            if not obj.is_event and cdc_channel(obj.name) == topic:
                return self.by_id(schema_id(f"{obj.name}ChangeEvent"))
        return None

    def event_id(self, event: BusEvent) -> str:
        """ProducerEvent.id: a platform event's EventUuid, a stable uuid for a change event."""
        meta = event.data.get("event") if isinstance(event.data, dict) else None
        given = meta.get("EventUuid") if isinstance(meta, dict) else None
        return str(given) if given else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self._org_id}/{event.replay_id}"))

    def encode(self, event: BusEvent, data: Any = None, *, viewer: str = "") -> tuple[str, bytes]:
        """(schema id, Avro binary payload) of `data` (the event's, or what `viewer` may see of it).
        An injected event that fits no schema goes out as its JSON bytes under the schema id it names:
        a payload the subscriber cannot decode, as a corrupt one."""
        data = event.data if data is None else data
        data = data if isinstance(data, dict) else {}
        sid = str(data.get("schema", ""))
        key = (event.replay_id, sid, viewer)
        cached = self._encoded.get(key)
        if cached is not None:
            return sid, cached
        payload = data.get("payload")
        built = self.by_id(sid)
        try:
            if built is None or not isinstance(payload, dict):
                raise ValueError("no schema")
            record = self._record(built, payload)
            out = io.BytesIO()
            fastavro.schemaless_writer(out, built.parsed, record)
            encoded = out.getvalue()
        except (ValueError, TypeError, KeyError, AttributeError):
            encoded = json.dumps(payload, default=str).encode()
        self._encoded[key] = encoded
        while len(self._encoded) > ENCODED_CACHE:
            self._encoded.popitem(last=False)
        return sid, encoded

    def decode(self, sid: str, payload: bytes) -> dict[str, Any]:
        """A published platform event's custom fields, as the store takes them (REST JSON values).
        CreatedDate and CreatedById are the org's to set, so the publisher's values are ignored."""
        built = self.by_id(sid)
        if built is None or built.kind != "event":
            raise ValueError(f"{sid} is not a platform event schema")
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload), built.parsed, None)
        except Exception as exc:  # fastavro raises whatever the bytes provoke
            raise ValueError(str(exc) or type(exc).__name__) from exc
        if not isinstance(record, dict):
            raise ValueError("the payload is not a record")
        obj = self._schema.objects[built.name]
        fields: dict[str, Any] = {}
        for name, value in record.items():
            spec = obj.fields.get(name)
            if spec is None or not spec.custom or value is None:
                continue
            if spec.type == "datetime":
                value = dt.datetime.fromtimestamp(value / 1000, dt.UTC).isoformat()
            elif spec.type == "date":
                value = (EPOCH_DAY + dt.timedelta(days=value)).isoformat()
            fields[name] = value
        return fields

    @staticmethod
    def _record(built: EventSchema, payload: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for slot in built.slots[1 if built.kind == "cdc" else 0:]:
            record[slot.field.name] = slot.convert(payload.get(slot.field.name))
        if built.kind == "cdc":
            record["ChangeEventHeader"] = _header(built, payload)
        return record


def _header(built: EventSchema, payload: dict[str, Any]) -> dict[str, Any]:
    header = dict(payload["ChangeEventHeader"])
    fields = built.fields
    known = {f.name: f for f in fields}

    def present(name: str) -> bool:
        parent, _, child = name.partition(".")
        f = known.get(parent)
        return f is not None and (not child or (f.children is not None and child in f.children))

    def value(name: str) -> Any:
        parent, _, child = name.partition(".")
        top = payload.get(parent)
        return top.get(child) if child and isinstance(top, dict) else top

    changed = [str(n) for n in header.get("changedFields") or [] if present(str(n))]
    nulled = [n for n in changed if value(n) is None] if header.get("changeType") == "UPDATE" else []
    return {
        "entityName": str(header["entityName"]),
        "recordIds": [str(r) for r in header.get("recordIds") or []],
        "changeType": str(header["changeType"]),
        "changeOrigin": str(header.get("changeOrigin") or ""),
        "transactionKey": str(header.get("transactionKey") or ""),
        "sequenceNumber": int(header.get("sequenceNumber") or 0),
        "commitTimestamp": int(header.get("commitTimestamp") or 0),
        "commitNumber": int(header.get("commitNumber") or 0),
        "commitUser": str(header.get("commitUser") or ""),
        "nulledFields": encode(fields, nulled),
        "diffFields": [],
        "changedFields": encode(fields, changed),
    }
