"""Where each channel's subscription starts: the replay id the daemon committed, or a fresh start.

Salesforce keeps events for a retention window and replays those after a given replay id. Every
(re)subscribe asks the daemon's `replay_source` for the last *committed* id, so events that were
yielded but not committed are replayed rather than lost. When Salesforce refuses a stored id
(outside the window), the daemon resets the channel and reconciles the gap; the reset holds until
the daemon commits a newer event, so a later outage does not retry the refused id. Kept out of the
protocol code because it is the part that decides whether an event can be lost.

A channel with no committed id subscribes from -1 (new events only). That is right once; subscribing
from -1 *again* (a new session after a torn connect answer, a forgotten client, a revoked token) skips
whatever the previous session had dequeued but not delivered and whatever was published in between:
Salesforce keeps those events, but a -1 subscription never asks for them. Such a resubscription is a
gap, recorded here for the daemon to reconcile (`take_gaps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sfsign.salesforce.events import ReplayId


class ReplayBook:
    """The replay id each channel subscribes from, and the one each subscription was accepted with."""

    def __init__(self, replay_source: Callable[[str], ReplayId | None], replay_all: Sequence[str]) -> None:
        self._source = replay_source
        # Channels subscribed from -2 (every retained event) rather than -1 when there is no position to
        # resume from: requests that carry no state to query later (platform events), deduped downstream.
        self._replay_all = frozenset(replay_all)
        self._reset: dict[str, int | None] = {}
        self._last_invalid: dict[str, int] = {}
        self.subscribed: dict[str, int] = {}  # replay id sent on the last successful subscribe
        self._gaps: list[str] = []  # channels resubscribed from -1, not yet taken

    def stored(self, channel: str) -> int | None:
        """The committed position CometD can resume from: its own integers only, never a Pub/Sub id (after a
        switch of transport the channel starts as on a first start, and intake reconciles)."""
        stored = self._source(channel)
        return stored if isinstance(stored, int) and not isinstance(stored, bool) else None

    def start_for(self, channel: str) -> int:
        """The replay id to subscribe `channel` from now."""
        stored = self.stored(channel)
        start = -2 if channel in self._replay_all else -1
        if channel in self._reset:
            if stored is None or stored == self._reset[channel]:
                return start
            del self._reset[channel]
        return start if stored is None else int(stored)

    def accepted(self, channel: str, replay_id: int) -> None:
        """Salesforce accepted a subscription from `replay_id`; from -1 after an earlier subscription of
        the channel, that is a gap (see the module's doc)."""
        if replay_id == -1 and channel in self.subscribed and channel not in self._gaps:
            self._gaps.append(channel)
        self.subscribed[channel] = replay_id

    def take_gaps(self) -> list[str]:
        """The channels resubscribed from -1 since the last call (each once)."""
        gaps, self._gaps = self._gaps, []
        return gaps

    def refused(self, channel: str, replay_id: int) -> None:
        """Salesforce refused `replay_id` for `channel`: `reset` will start past it."""
        self._last_invalid[channel] = replay_id

    def reset(self, channel: str) -> None:
        """Start `channel` fresh until the daemon commits an id other than the refused (or current) one."""
        self._reset[channel] = self._last_invalid.pop(channel, self.stored(channel))
