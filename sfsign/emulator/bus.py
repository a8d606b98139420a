"""The event bus: CDC and platform events with replay ids and a retention window.

Store commits become Change Data Capture messages in exactly the CometD form Salesforce delivers
(changed fields only, no nulledFields/diffFields, header timestamps in epoch ms); platform event
publishes become `/event/<Name>__e` messages with `EventUuid`. Events are kept for the retention window
so subscribers can replay them (-2 = all retained, N = after N); replay ids increase but are not
contiguous, so a client that computes ids instead of storing them fails here as it would in an org.

Listeners may be called from any thread (the store may run in an executor); subscribers are always
notified on the event loop, in replay-id order.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sfsign.emulator.store import Change, OrgStore

GENERIC_CDC_CHANNEL = "/data/ChangeEvents"
DEFAULT_RETENTION_S = 72 * 3600.0
DEFAULT_CDC_ENTITIES = ("Opportunity", "Quote")
EMPTY_ID = "000000000000000AAA"
MAX_SELECTED_ENTITIES = 5
GAP_TYPES = ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW")


def cdc_channel(entity: str) -> str:
    """`Opportunity` → `/data/OpportunityChangeEvent`; `Foo__c` → `/data/Foo__ChangeEvent`."""
    if entity.endswith("__c"):
        return f"/data/{entity[:-1]}ChangeEvent"
    return f"/data/{entity}ChangeEvent"


def schema_id(name: str) -> str:
    """A stable 22-character schema id per event type (Salesforce's are base64url of 16 bytes)."""
    digest = hashlib.blake2b(f"sfsign-emulator:{name}".encode(), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class BusEvent:
    replay_id: int
    channels: tuple[str, ...]  # every channel the event was published on
    data: dict[str, Any]  # the Bayeux `data` member: {"schema", "payload", "event"}
    published_at: float  # epoch seconds, for the retention window

    def message(self, channel: str) -> dict[str, Any]:
        """The Bayeux message for a subscriber of `channel` (the subscribed channel's name)."""
        return {"data": self.data, "channel": channel}

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "channels": list(self.channels),
            "data": self.data,
            "published_at": self.published_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BusEvent:
        return cls(int(data["replay_id"]), tuple(data["channels"]), data["data"], float(data["published_at"]))


Subscriber = Callable[[BusEvent], None]


class EventBus:
    """Channels, retained events and live fan-out to subscribers (the Bayeux server)."""

    def __init__(
        self,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        cdc_entities: Iterable[str] = DEFAULT_CDC_ENTITIES,
        platform_events: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_s = retention_s
        self.cdc_entities: set[str] = set(cdc_entities)
        self.platform_events: set[str] = set(platform_events)
        self._clock = clock
        self._lock = threading.RLock()
        self._events: deque[BusEvent] = deque()
        self._by_channel: dict[str, list[BusEvent]] = {}
        self._retained_ids: set[int] = set()
        self._last_replay_id = random.randint(1, 5000)
        self._commit_number = random.randint(10**10, 10**11)
        self._pending: deque[BusEvent] = deque()
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.published = 0

    # -- wiring

    def attach(self, store: OrgStore) -> None:
        store.add_listener(self.on_changes)
        store.add_event_listener(self.on_platform_event)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribers are notified on this loop (events from other threads are handed over)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add_subscriber(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def remove_subscriber(self, fn: Subscriber) -> None:
        if fn in self._subscribers:
            self._subscribers.remove(fn)

    # -- channels

    def channel_exists(self, channel: str) -> bool:
        if channel == GENERIC_CDC_CHANNEL:
            return True
        if channel.startswith("/data/"):
            return any(cdc_channel(e) == channel for e in self.cdc_entities)
        if channel.startswith("/event/"):
            return channel[len("/event/") :] in self.platform_events
        return False

    def select_entities(self, entities: Iterable[str]) -> None:
        """Salesforce's default allocation allows at most 5 selected entities."""
        selected = set(entities)
        if len(selected) > MAX_SELECTED_ENTITIES:
            raise ValueError(f"at most {MAX_SELECTED_ENTITIES} entities can be selected for Change Data Capture")
        with self._lock:
            self.cdc_entities = selected

    @property
    def last_replay_id(self) -> int:
        return self._last_replay_id

    # -- publishing

    def _publish(self, channels: tuple[str, ...], build: Callable[[int], dict[str, Any]]) -> BusEvent:
        with self._lock:
            self._last_replay_id += random.randint(1, 7)
            event = BusEvent(self._last_replay_id, channels, build(self._last_replay_id), self._clock())
            self._events.append(event)
            self._retained_ids.add(event.replay_id)
            for channel in channels:
                self._by_channel.setdefault(channel, []).append(event)
            self._pending.append(event)
            self.published += 1
        self._notify()
        return event

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._drain()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                event = self._pending.popleft()
            for fn in list(self._subscribers):
                fn(event)

    def _next_commit_number(self) -> int:
        with self._lock:
            self._commit_number += random.randint(1, 50)
            return self._commit_number

    def on_changes(self, changes: list[Change]) -> None:
        """Store listener: one CDC event per change of a selected entity, in commit order."""
        for change in changes:
            if change.entity not in self.cdc_entities:
                continue
            header = {
                "entityName": change.entity,
                "recordIds": [change.record_id],
                "changeType": change.change_type,
                "changeOrigin": change.change_origin,
                "transactionKey": change.transaction_key,
                "sequenceNumber": change.sequence_number,
                "commitTimestamp": change.commit_timestamp_ms,
                "commitNumber": change.commit_number,
                "commitUser": change.commit_user,
                "changedFields": list(change.changed_fields) if change.change_type == "UPDATE" else [],
            }
            fields = {} if change.change_type == "DELETE" else dict(change.fields)
            self._publish_cdc(change.entity, header, fields)

    def _publish_cdc(self, entity: str, header: dict[str, Any], fields: dict[str, Any]) -> BusEvent:
        def build(replay_id: int) -> dict[str, Any]:
            return {
                "schema": schema_id(f"{entity}ChangeEvent"),
                "payload": {**fields, "ChangeEventHeader": header},
                "event": {"replayId": replay_id},
            }

        return self._publish((cdc_channel(entity), GENERIC_CDC_CHANNEL), build)

    def on_platform_event(self, name: str, payload: dict[str, Any], event_uuid: str) -> None:
        """Store event listener: a published platform event."""

        def build(replay_id: int) -> dict[str, Any]:
            return {
                "schema": schema_id(name),
                "payload": dict(payload),
                "event": {"EventUuid": event_uuid, "replayId": replay_id},
            }

        self._publish((f"/event/{name}",), build)

    def inject_gap(
        self,
        entity: str,
        record_ids: list[str],
        *,
        change_type: str = "GAP_UPDATE",
        user_id: str,
        origin: str = "",
    ) -> BusEvent:
        """A gap or overflow event: header only, no field values (the subscriber must re-read)."""
        if change_type not in GAP_TYPES:
            raise ValueError(f"change_type must be one of {GAP_TYPES}")
        if change_type == "GAP_OVERFLOW":
            record_ids = [EMPTY_ID]
        header = {
            "entityName": entity,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": origin,
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(self._clock() * 1000),
            "commitNumber": self._next_commit_number(),
            "commitUser": user_id,
            "changedFields": [],
        }
        return self._publish_cdc(entity, header, {})

    def inject_raw(self, channel: str, data: dict[str, Any]) -> BusEvent:
        """Fault injection: deliver `data` as is (plus `event.replayId`) — a corrupt or unexpected event."""

        def build(replay_id: int) -> dict[str, Any]:
            original = data.get("event")
            event: dict[str, Any] = dict(original) if isinstance(original, dict) else {}
            return {**data, "event": {**event, "replayId": replay_id}}

        return self._publish((channel,), build)

    # -- replay and retention

    def purge(self, *, up_to_replay_id: int | None = None) -> int:
        """Drop events older than the retention window (or every event up to the given id)."""
        cutoff = self._clock() - self.retention_s
        dropped: dict[str, int] = {}
        count = 0
        with self._lock:
            while self._events and (
                self._events[0].published_at < cutoff
                or (up_to_replay_id is not None and self._events[0].replay_id <= up_to_replay_id)
            ):
                event = self._events.popleft()
                self._retained_ids.discard(event.replay_id)
                for channel in event.channels:
                    dropped[channel] = dropped.get(channel, 0) + 1
                count += 1
            for channel, n in dropped.items():  # events leave every channel list from its front
                del self._by_channel[channel][:n]
        return count

    def set_retention(self, seconds: float) -> int:
        self.retention_s = seconds
        return self.purge()

    def is_valid_replay(self, replay_id: int) -> bool:
        """A stored replay id is valid while the event it names is retained (it may be any channel's)."""
        self.purge()
        with self._lock:
            return replay_id in self._retained_ids

    def events_after(self, channel: str, replay_id: int | None) -> list[BusEvent]:
        """Retained events of `channel` after `replay_id` (all retained ones when None)."""
        self.purge()
        with self._lock:
            events = self._by_channel.get(channel, [])
            if replay_id is None:
                return list(events)
            ids = [e.replay_id for e in events]
            return events[bisect.bisect_right(ids, replay_id) :]

    def subscribe_point(self, channel: str, after: int | None) -> tuple[list[BusEvent], int]:
        """Atomically: the retained events of `channel` after `after` (all when None) and the replay id
        up to which the subscriber is now served; later events reach it through live fan-out."""
        with self._lock:
            return self.events_after(channel, after), self._last_replay_id

    def retained(self, channel: str | None = None) -> list[BusEvent]:
        self.purge()
        with self._lock:
            return list(self._events) if channel is None else list(self._by_channel.get(channel, []))

    # -- persistence

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "retention_s": self.retention_s,
                "cdc_entities": sorted(self.cdc_entities),
                "last_replay_id": self._last_replay_id,
                "commit_number": self._commit_number,
                "events": [e.to_json() for e in self._events],
            }

    def restore(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.retention_s = float(data.get("retention_s", self.retention_s))
            self.cdc_entities = set(data.get("cdc_entities", self.cdc_entities))
            self._last_replay_id = int(data.get("last_replay_id", self._last_replay_id))
            self._commit_number = int(data.get("commit_number", self._commit_number))
            self._events = deque(BusEvent.from_json(e) for e in data.get("events", []))
            self._by_channel = {}
            self._retained_ids = set()
            for event in self._events:
                self._retained_ids.add(event.replay_id)
                for channel in event.channels:
                    self._by_channel.setdefault(channel, []).append(event)
