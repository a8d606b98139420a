"""Where each Pub/Sub subscription starts: after the replay id intake committed, or as on a first start.

The same rules as CometD's `stream_replay.ReplayBook`, in Pub/Sub's terms: a committed replay id (opaque
bytes) → `CUSTOM` with it; none → `LATEST` for change-event channels (intake reconciles their objects, as
after CometD's -1) and `EARLIEST` for the channels in `replay_all` (platform events: every retained event,
deduplicated by EventUuid, as after CometD's -2). A CometD integer is no position for Pub/Sub (a switch of
transport starts as a first start). After Salesforce refuses a replay id, `reset` starts the channel afresh
until intake commits another one, so a later reconnect does not retry the refused id.

A channel subscribed again from `LATEST` after an earlier subscription in this client (nothing committed
yet, so nothing to resume from) may have missed what the lost stream was sending: that is a gap, recorded
for intake to reconcile (`take_gaps`), exactly as CometD's resubscription from -1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sfsign.pubsub_proto import pubsub_api_pb2 as pb
from sfsign.salesforce.events import ReplayId

#: How `subscribed_replay` shows a preset start, in CometD's numbers (-1 new events only, -2 all retained).
PRESET_POSITION = {pb.LATEST: -1, pb.EARLIEST: -2}


class PubSubReplayBook:
    """The start of each channel's next subscription, and the one each subscription started from."""

    def __init__(self, replay_source: Callable[[str], ReplayId | None], replay_all: Sequence[str]) -> None:
        self._source = replay_source
        self._replay_all = frozenset(replay_all)
        self._reset: dict[str, bytes | None] = {}
        self._last_invalid: dict[str, bytes] = {}
        self.subscribed: dict[str, ReplayId] = {}  # the start of each live subscription (-1/-2: a preset)
        self._gaps: list[str] = []  # channels resubscribed from LATEST, not yet taken

    def stored(self, channel: str) -> bytes | None:
        """The committed position Pub/Sub can resume from: its own bytes only, never a CometD integer."""
        stored = self._source(channel)
        return stored if isinstance(stored, bytes) and stored else None

    def start_for(self, channel: str) -> tuple[pb.ReplayPreset, bytes]:
        """(`ReplayPreset`, replay id) for the first `FetchRequest` of a new subscription."""
        stored = self.stored(channel)
        fresh = (pb.EARLIEST if channel in self._replay_all else pb.LATEST, b"")
        if channel in self._reset:
            if stored is None or stored == self._reset[channel]:
                return fresh
            del self._reset[channel]
        return fresh if stored is None else (pb.CUSTOM, stored)

    def started(self, channel: str, preset: pb.ReplayPreset, replay_id: bytes) -> None:
        if preset == pb.LATEST and channel in self.subscribed and channel not in self._gaps:
            self._gaps.append(channel)
        self.subscribed[channel] = replay_id if preset == pb.CUSTOM else PRESET_POSITION[preset]

    def take_gaps(self) -> list[str]:
        """The channels resubscribed from LATEST since the last call (each once)."""
        gaps, self._gaps = self._gaps, []
        return gaps

    def refused(self, channel: str, replay_id: bytes) -> None:
        self._last_invalid[channel] = replay_id

    def reset(self, channel: str) -> None:
        self._reset[channel] = self._last_invalid.pop(channel, self.stored(channel))
