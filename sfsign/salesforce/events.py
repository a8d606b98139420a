"""Typed events from raw Bayeux data messages (CDC change events and platform events, CometD form).

CometD wire shape (facts §2.3, §3): `{"channel", "data": {"schema", "payload": {...}, "event":
{"replayId", "EventUuid"?}}}`; CDC payloads carry a `ChangeEventHeader` and, for UPDATE, only the
changed fields. The Pub/Sub client hands over the same shape (`pubsub_decoding`), its replay id being
Salesforce's opaque bytes where CometD's is an integer: `ReplayId` is either, and which one it is says
which transport delivered the event (the outbox keeps them apart). Anything that does not have that
shape raises `MalformedEvent`, never another exception, so the intake loop can park one bad message and
keep its replay position honest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sfsign.salesforce.ids import InvalidId, canonical_id

GAP_TYPES = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"})
OVERFLOW_TYPE = "GAP_OVERFLOW"
#: A position in a channel's event stream: CometD's integer, or Pub/Sub's opaque bytes.
ReplayId = int | bytes

CHANGE_TYPES = frozenset({"CREATE", "UPDATE", "DELETE", "UNDELETE", "SNAPSHOT"}) | GAP_TYPES | {OVERFLOW_TYPE}


class MalformedEvent(Exception):
    """A data message that is not a CDC or platform event we can read."""

    def __init__(self, reason: str, channel: str | None, replay_id: ReplayId | None,
                 entity: str | None = None) -> None:
        self.reason = reason
        self.channel = channel
        self.replay_id = replay_id
        #: the CDC entity the event was about, when its header said so: that object gets reconciled
        self.entity = entity
        super().__init__(f"malformed event on {channel or '?'} (replay id {replay_label(replay_id)}): {reason}")


class ChangeEvent(BaseModel):
    """One CDC event. `fields` holds the body fields that came with it (changed ones for UPDATE)."""

    model_config = ConfigDict(frozen=True)

    channel: str
    replay_id: ReplayId
    entity: str
    change_type: str
    record_ids: tuple[str, ...]
    changed_fields: tuple[str, ...] = ()
    fields: dict[str, Any] = Field(default_factory=dict)
    commit_timestamp_ms: int | None = None
    commit_user: str | None = None
    transaction_key: str | None = None
    sequence_number: int | None = None
    change_origin: str | None = None
    schema_id: str | None = None

    @property
    def is_gap(self) -> bool:
        """GAP_CREATE/UPDATE/DELETE/UNDELETE: header only; re-read the records by id."""
        return self.change_type in GAP_TYPES

    @property
    def is_overflow(self) -> bool:
        """GAP_OVERFLOW: more than 100,000 changes in one transaction; reconcile the entity."""
        return self.change_type == OVERFLOW_TYPE

    @property
    def base_change_type(self) -> str:
        """`UPDATE` for both `UPDATE` and `GAP_UPDATE`."""
        return self.change_type.removeprefix("GAP_")


class PlatformEvent(BaseModel):
    """One platform event. `event_uuid` is its identity (replay ids are not unique across orgs)."""

    model_config = ConfigDict(frozen=True)

    channel: str
    replay_id: ReplayId
    event_uuid: str | None
    name: str
    fields: dict[str, Any] = Field(default_factory=dict)
    created_date: datetime | None = None
    created_by_id: str | None = None
    schema_id: str | None = None


Event = ChangeEvent | PlatformEvent


def replay_label(replay_id: ReplayId | None) -> str:
    """A replay id for logs and labels: the integer, or the bytes in hex with `0x` (never read as a number, so
    SQLite keeps the leading zeros where a job or a parked event records it)."""
    return f"0x{replay_id.hex()}" if isinstance(replay_id, bytes) else str(replay_id)


def _replay_id(event: Any) -> ReplayId | None:
    if not isinstance(event, Mapping):
        return None
    value = event.get("replayId")
    if isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        return value or None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _str_list(value: Any, what: str, channel: str, replay: ReplayId) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedEvent(f"{what} is not a list of strings", channel, replay)
    return tuple(value)


def _record_ids(value: Any, channel: str, replay: ReplayId, entity: str) -> tuple[str, ...]:
    """Every id in its canonical 18-character form: ids are compared, indexed and put into SOQL later,
    so one that is not an id must stop the event here, not fail its handling over and over."""
    try:
        ids = _str_list(value, "recordIds", channel, replay)
    except MalformedEvent as exc:
        raise MalformedEvent(exc.reason, channel, replay, entity) from None
    if not ids:
        raise MalformedEvent("recordIds missing or empty", channel, replay, entity)
    try:
        return tuple(dict.fromkeys(canonical_id(i) for i in ids))
    except InvalidId as exc:
        raise MalformedEvent(f"recordIds: {exc}", channel, replay, entity) from None


def _opt_int(value: Any, what: str, channel: str, replay: ReplayId) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedEvent(f"{what} is not a number", channel, replay)
    try:
        return int(value)
    except ValueError:
        raise MalformedEvent(f"{what} is not a number", channel, replay) from None


def _opt_str(value: Any, what: str, channel: str, replay: ReplayId) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(f"{what} is not a string", channel, replay)


def _parse_change(channel: str, replay: ReplayId, schema: str | None, payload: Mapping[str, Any]) -> ChangeEvent:
    header = payload.get("ChangeEventHeader")
    if not isinstance(header, Mapping):
        raise MalformedEvent("ChangeEventHeader is not an object", channel, replay)
    entity = header.get("entityName")
    change_type = header.get("changeType")
    if not isinstance(entity, str) or not entity:
        raise MalformedEvent("ChangeEventHeader.entityName missing", channel, replay)
    if change_type not in CHANGE_TYPES:
        raise MalformedEvent(f"unknown changeType {change_type!r}", channel, replay)
    record_ids = _record_ids(header.get("recordIds"), channel, replay, entity)
    return ChangeEvent(
        channel=channel,
        replay_id=replay,
        entity=entity,
        change_type=str(change_type),
        record_ids=record_ids,
        changed_fields=_str_list(header.get("changedFields"), "changedFields", channel, replay),
        fields={k: v for k, v in payload.items() if k != "ChangeEventHeader"},
        commit_timestamp_ms=_opt_int(header.get("commitTimestamp"), "commitTimestamp", channel, replay),
        commit_user=_opt_str(header.get("commitUser"), "commitUser", channel, replay),
        transaction_key=_opt_str(header.get("transactionKey"), "transactionKey", channel, replay),
        sequence_number=_opt_int(header.get("sequenceNumber"), "sequenceNumber", channel, replay),
        change_origin=_opt_str(header.get("changeOrigin"), "changeOrigin", channel, replay),
        schema_id=schema,
    )


def _parse_platform(
    channel: str, replay: ReplayId, schema: str | None, event: Mapping[str, Any], payload: Mapping[str, Any]
) -> PlatformEvent:
    created: datetime | None = None
    raw_created = payload.get("CreatedDate")
    if raw_created is not None:
        if not isinstance(raw_created, str):
            raise MalformedEvent("CreatedDate is not a string", channel, replay)
        try:
            created = datetime.fromisoformat(raw_created.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedEvent(f"CreatedDate {raw_created!r} is not ISO 8601", channel, replay) from None
    return PlatformEvent(
        channel=channel,
        replay_id=replay,
        event_uuid=_opt_str(event.get("EventUuid"), "EventUuid", channel, replay),
        name=channel.rsplit("/", 1)[-1],
        fields=dict(payload),
        created_date=created,
        created_by_id=_opt_str(payload.get("CreatedById"), "CreatedById", channel, replay),
        schema_id=schema,
    )


def parse_event(message: Any) -> Event:
    """Raw Bayeux data message → ChangeEvent | PlatformEvent; raises only MalformedEvent."""
    channel: str | None = None
    replay: ReplayId | None = None
    try:
        if not isinstance(message, Mapping):
            raise MalformedEvent("message is not an object", None, None)
        raw_channel = message.get("channel")
        channel = raw_channel if isinstance(raw_channel, str) else None
        data = message.get("data")
        if not isinstance(data, Mapping):
            raise MalformedEvent("data is not an object", channel, None)
        event = data.get("event")
        replay = _replay_id(event)
        if channel is None or not channel.startswith("/"):
            raise MalformedEvent("channel missing", channel, replay)
        if replay is None:
            raise MalformedEvent("data.event.replayId missing or not an integer (CometD) or bytes (Pub/Sub)",
                                 channel, None)
        assert isinstance(event, Mapping)
        payload = data.get("payload")
        if not isinstance(payload, Mapping):
            raise MalformedEvent("data.payload is not an object", channel, replay)
        schema = data.get("schema") if isinstance(data.get("schema"), str) else None
        if "ChangeEventHeader" in payload:
            return _parse_change(channel, replay, schema, payload)
        if channel.startswith("/event/"):
            return _parse_platform(channel, replay, schema, event, payload)
        raise MalformedEvent("neither a change event nor a platform event", channel, replay)
    except MalformedEvent:
        raise
    except Exception as exc:  # pydantic or anything unforeseen: still a MalformedEvent
        raise MalformedEvent(f"{type(exc).__name__}: {exc}", channel, replay) from exc


@dataclass(frozen=True)
class UpdateHeader:
    """What intake needs of a CDC UPDATE to see that it can ask for nothing (`update_header`)."""

    channel: str
    replay_id: ReplayId
    entity: str
    changed_fields: tuple[str, ...]
    commit_timestamp_ms: int | None


def update_header(message: Any) -> UpdateHeader | None:
    """The header of a well-formed CDC UPDATE, read without building the event: intake passes over the updates
    that change no field a rule watches (sfsign's own write-backs, which CDC sends too: two of every three
    events in a burst) at a fraction of `parse_event`'s cost. None for any other message, and for anything
    `parse_event` might refuse, which then goes the full way (and is parked if malformed)."""
    try:
        if not isinstance(message, Mapping):
            return None
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, str) or not channel.startswith("/") or not isinstance(data, Mapping):
            return None
        replay, payload = _replay_id(data.get("event")), data.get("payload")
        if replay is None or not isinstance(payload, Mapping):
            return None
        header = payload.get("ChangeEventHeader")
        if not isinstance(header, Mapping) or header.get("changeType") != "UPDATE":
            return None
        entity = header.get("entityName")
        if not isinstance(entity, str) or not entity or not all(isinstance(k, str) for k in payload):
            return None
        _record_ids(header.get("recordIds"), channel, replay, entity)
        for key in ("commitUser", "transactionKey", "changeOrigin"):
            _opt_str(header.get(key), key, channel, replay)
        _opt_int(header.get("sequenceNumber"), "sequenceNumber", channel, replay)
        return UpdateHeader(channel, replay, entity,
                            _str_list(header.get("changedFields"), "changedFields", channel, replay),
                            _opt_int(header.get("commitTimestamp"), "commitTimestamp", channel, replay))
    except Exception:  # MalformedEvent or anything unforeseen: parse_event decides
        return None
