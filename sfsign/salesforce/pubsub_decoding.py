"""A Pub/Sub event (Avro) → the message intake gets from CometD, so triggers see one event model.

The CometD shape (facts §2.3, §3) is `{"channel", "data": {"schema", "payload", "event": {"replayId",
"EventUuid"?}}}`. What differs over Pub/Sub, and how it is made the same (facts §2.4, §2.5, §2.7;
Salesforce's "Event Deserialization Considerations"):

* the payload is Avro binary in the schema `GetSchema` returns for the event's schema id (decoded with
  fastavro; the client caches `EventSchema` by schema id);
* CDC bitmaps (`changedFields`, `nulledFields`, `diffFields`) → field names (`pubsub_bitmaps`);
* a CDC payload carries every field of the object, null when it is empty or (UPDATE) unchanged. CometD
  sends only the non-empty ones (CREATE, UNDELETE), and for an UPDATE the changed ones plus the enriched
  ones, a field set to null appearing as null. So: non-null values are kept, nulled fields are kept as
  null, the rest is dropped, also inside compound fields. A `diffFields` value is a unified diff of a
  long text, not its value: it is dropped (the name stays in `changedFields`), as a value the triggers
  compared would be wrong;
* datetimes are epoch milliseconds (CometD: ISO 8601 `2020-12-15T23:09:18.000Z`) and dates may be epoch
  days or milliseconds: fields whose schema `doc` ends in `:DateTime` / `:Date` (Salesforce's schemas say
  `CreatedDate:DateTime`, `Data:DateTime`), or with an Avro `timestamp-millis` / `date` logical type, are
  written as CometD writes them. `ChangeEventHeader.commitTimestamp` stays epoch ms in both transports;
* the replay id is opaque bytes (kept as bytes in `data.event.replayId`; the outbox stores them apart from
  CometD's integers) and a platform event's `EventUuid` is the `ProducerEvent.id` ("For Pub/Sub API
  clients, the event id field contains the event UUID value").

For a reader that passes most change events over on their header alone (intake: sfsign's own write-backs, two
of every three events in a burst), `header_message` decodes only the `ChangeEventHeader`, the first field of
Salesforce's change event schemas, so the rest of the record is decoded only for events that may fire a rule.

A payload or bitmap that cannot be decoded raises `UndecodableEvent`; the client hands intake a message
without a payload then, which intake parks as malformed (its object reconciled), as for a bad CometD one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fastavro

from sfsign.salesforce.pubsub_bitmaps import BitmapError, SchemaFields

HEADER = "ChangeEventHeader"
BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UndecodableEvent(ValueError):
    """A payload that does not decode with its schema, or bitmaps that do not fit it."""


class EventSchema:
    """One schema id's Avro schema, parsed once: the reader, the bitmap decoder, the date fields."""

    def __init__(self, schema_id: str, schema_json: str) -> None:
        try:
            raw = json.loads(schema_json)
            self.parsed = fastavro.parse_schema(raw)
        except (ValueError, TypeError, KeyError) as exc:  # json and fastavro's schema errors are ValueErrors
            raise UndecodableEvent(f"schema {schema_id} is not an Avro schema: {exc}") from None
        self.schema_id = schema_id
        self.name = str(raw.get("name", ""))
        try:
            self.fields = SchemaFields(raw)
        except (BitmapError, KeyError, TypeError) as exc:
            raise UndecodableEvent(f"schema {schema_id}: {exc}") from None
        self.temporal = _temporal_fields(raw)
        self.header_parsed = _header_schema(raw)

    def decode_header(self, payload: bytes) -> Mapping[str, Any] | None:
        """Only the `ChangeEventHeader` of a change event whose schema starts with it (Salesforce's do): Avro
        binary has no framing, so reading stops after the header's bytes. None for other schemas."""
        if self.header_parsed is None:
            return None
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload), self.header_parsed)
        except Exception as exc:  # as in `decode`
            raise UndecodableEvent(f"ChangeEventHeader does not decode with schema {self.schema_id}: "
                                   f"{type(exc).__name__}: {exc}") from None
        header = record.get(HEADER) if isinstance(record, dict) else None
        if not isinstance(header, Mapping):
            raise UndecodableEvent(f"ChangeEventHeader of schema {self.schema_id} is not a record")
        return header

    def decode(self, payload: bytes) -> dict[str, Any]:
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload), self.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError… on a bad payload
            raise UndecodableEvent(f"payload does not decode with schema {self.schema_id}: "
                                   f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise UndecodableEvent(f"payload of schema {self.schema_id} is not a record")
        return record


def cometd_message(channel: str, schema: EventSchema, payload: bytes, replay_id: bytes,
                   event_id: str) -> dict[str, Any]:
    """The CometD-shaped message for one `ConsumerEvent` (see the module docstring)."""
    record = schema.decode(payload)
    event: dict[str, Any] = {"replayId": replay_id}
    header = record.get(HEADER)
    if isinstance(header, Mapping):
        body = _change_payload(schema, record, header)
    else:
        body = {name: _cometd_value(schema, name, value) for name, value in record.items()}
        if event_id:
            event["EventUuid"] = event_id
    return {"channel": channel, "data": {"schema": schema.schema_id, "payload": body, "event": event}}


def header_message(channel: str, schema: EventSchema, payload: bytes, replay_id: bytes) -> dict[str, Any] | None:
    """The CometD-shaped message of a change event with only its `ChangeEventHeader` (bitmaps decoded), for
    a reader that passes most events over on their header; None when the schema does not start with one."""
    header = schema.decode_header(payload)
    if header is None:
        return None
    return {"channel": channel, "data": {"schema": schema.schema_id, "payload": {HEADER: _header(schema, header)},
                                         "event": {"replayId": replay_id}}}


def _header(schema: EventSchema, header: Mapping[str, Any]) -> dict[str, Any]:
    """The header as CometD sends it: the bitmaps as field names."""
    decoded: dict[str, list[str]] = {}
    try:
        for name in BITMAP_FIELDS:
            entries = header.get(name)
            if entries is not None and not isinstance(entries, list):
                raise UndecodableEvent(f"ChangeEventHeader.{name} is not a list")
            decoded[name] = schema.fields.decode(entries)
    except BitmapError as exc:
        raise UndecodableEvent(f"ChangeEventHeader: {exc}") from None
    return {**header, **decoded}


def _change_payload(schema: EventSchema, record: Mapping[str, Any], header: Mapping[str, Any]) -> dict[str, Any]:
    full_header = _header(schema, header)
    nulled = set(full_header["nulledFields"])
    diffs = set(full_header["diffFields"])
    body: dict[str, Any] = {HEADER: full_header}
    for name, value in record.items():
        if name == HEADER or name in diffs:
            continue
        if name in nulled:
            body[name] = None
        elif isinstance(value, Mapping):  # a compound field: its set children, and those set to null
            kept = {child: _cometd_value(schema, f"{name}.{child}", v) for child, v in value.items()
                    if v is not None and f"{name}.{child}" not in diffs}
            kept.update({child: None for child in value if f"{name}.{child}" in nulled})
            if kept:
                body[name] = kept
        elif value is not None:
            body[name] = _cometd_value(schema, name, value)
    return body


def _cometd_value(schema: EventSchema, name: str, value: Any) -> Any:
    """A value as CometD's JSON gives it: datetimes and dates as ISO strings, bytes as text."""
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    kind = schema.temporal.get(name)
    if kind == "datetime" and isinstance(value, int) and not isinstance(value, bool):
        return _iso_datetime(_EPOCH + timedelta(milliseconds=value))
    if kind == "date" and isinstance(value, int) and not isinstance(value, bool):
        days = value if abs(value) < 3_000_000 else value // 86_400_000  # epoch days, or ms at midnight UTC
        return (_EPOCH + timedelta(days=days)).date().isoformat()
    if isinstance(value, Mapping):
        return {k: _cometd_value(schema, f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _iso_datetime(value: datetime) -> str:
    """`2020-12-15T23:09:18.000Z`, CometD's form (milliseconds, UTC)."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _header_schema(schema: Mapping[str, Any]) -> Any:
    """The parsed schema of a record holding only the first field, when that field is `ChangeEventHeader`."""
    fields = schema.get("fields")
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], Mapping) \
            or fields[0].get("name") != HEADER:
        return None
    try:
        return fastavro.parse_schema({**schema, "fields": fields[:1]})
    except (ValueError, TypeError, KeyError):
        return None


def _temporal_fields(schema: Mapping[str, Any]) -> dict[str, str]:
    """`name` or `Parent.Child` → "datetime" | "date", from the fields' `doc` (`…:DateTime`, `…:Date`)."""
    found: dict[str, str] = {}

    def visit(fields: Any, prefix: str) -> None:
        for field in fields or []:
            if not isinstance(field, Mapping):
                continue
            name = f"{prefix}{field.get('name')}"
            doc = str(field.get("doc") or "")
            if doc.endswith(":DateTime"):
                found[name] = "datetime"
            elif doc.endswith(":Date"):
                found[name] = "date"
            kind = field.get("type")
            for option in kind if isinstance(kind, list) else [kind]:
                if isinstance(option, Mapping) and option.get("type") == "record" and not prefix \
                        and field.get("name") != HEADER:
                    visit(option.get("fields"), f"{name}.")

    visit(schema.get("fields"), "")
    return found
