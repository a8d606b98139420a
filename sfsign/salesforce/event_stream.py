"""What intake, the daemon and `sfsign check` need from an event stream, whichever transport carries it.

Two clients implement it: `stream.StreamClient` (CometD, the Streaming API) and
`pubsub_client.PubSubStream` (the Pub/Sub API), chosen by `SFSIGN_TRANSPORT`. Both yield CometD-shaped
messages (`{"channel", "data": {"schema", "payload", "event": {"replayId"}}}`), resume each channel from
the position intake committed (`replay_source`, their own kind of replay id only), raise `ReplayIdInvalid`
when Salesforce refuses it, and report one "disconnected" per outage. The Pub/Sub client also yields
position messages (`position_message`): a keepalive's replay id, to be committed like an event that asks for
nothing once everything before it is committed. Asked for `header_first`, the Pub/Sub client may yield a
change event with only its `ChangeEventHeader` in `payload`: `complete_message` decodes the rest, so a reader
decodes the whole record only for the events it acts on (CometD's JSON comes whole, and stays so).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from sfsign.salesforce.events import ReplayId

POSITION = "position"
COMPLETE = "complete"  # in `data` of a header-only message: returns the whole message


def complete_message(message: dict[str, Any]) -> dict[str, Any]:
    """The whole message, decoded in place if it came with its header only (see the module docstring), so
    whoever holds it afterwards (a retry, the parking of a failing event) holds the whole message."""
    data = message.get("data")
    if isinstance(data, dict) and callable(finish := data.get(COMPLETE)):
        message.update(finish())
    return message


def position_message(channel: str, replay_id: ReplayId) -> dict[str, Any]:
    """A message that carries no event, only a position to commit for `channel`."""
    return {"channel": channel, POSITION: replay_id}


def position_of(message: Mapping[str, Any]) -> ReplayId | None:
    """The position a position message carries; None for an event."""
    replay_id = message.get(POSITION)
    return replay_id if isinstance(replay_id, (int, bytes)) else None


class EventStream(Protocol):
    @property
    def channels(self) -> list[str]: ...

    @property
    def connected(self) -> bool:
        """Readiness: every subscription is up (False once per outage, not per hiccup)."""
        ...

    @property
    def subscribed_replay(self) -> Mapping[str, ReplayId]:
        """The channels subscribed now, each with the position its subscription started from."""
        ...

    def messages(self, *, header_first: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Messages in order, forever; raises ReplayIdInvalid / SubscriptionFailed / AuthError. With
        `header_first`, a change event may come with its header only (`complete_message`)."""
        ...

    @property
    def unconfirmed_starts(self) -> set[str]:
        """Channels subscribed for new events only whose server has not yet shown where they start: a
        reconciliation queried meanwhile is run again once they are confirmed."""
        ...

    def stored_position(self, channel: str) -> ReplayId | None:
        """The committed position this client resumes `channel` from; None is a first start for it."""
        ...

    def take_gaps(self) -> list[str]:
        """Channels started afresh again after an earlier subscription (CometD -1, Pub/Sub LATEST), each
        once: the caller reconciles their objects."""
        ...

    def reset_replay(self, channel: str) -> None:
        """Start `channel` afresh after a refused replay id (the caller reconciles the gap)."""
        ...

    async def aclose(self) -> None: ...
