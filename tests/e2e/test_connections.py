"""The connection factory against the emulator over HTTPS: one login shared by REST and the stream, and
nothing left open once the session is closed (no REST thread, no Bayeux client or Pub/Sub stream the org
still holds), also when the caller's block fails."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from e2e_support import both_transports

from sfsign.config import Settings
from sfsign.connections import SalesforceSession
from sfsign.emulator.control_client import ControlClient
from sfsign.salesforce.event_stream import EventStream

CHANNEL = "/data/OpportunityChangeEvent"


def _rest_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sf-rest") and t.is_alive()}


async def _subscribe(stream: EventStream) -> asyncio.Future[Any]:
    """Start reading `stream` and return once the org confirmed the subscription; the reader goes on."""
    reader = asyncio.ensure_future(stream.messages().__anext__())
    async with asyncio.timeout(30):
        while CHANNEL not in stream.subscribed_replay:
            if reader.done():
                reader.result()
            await asyncio.sleep(0.05)
    return reader


async def _open_in_org(control: ControlClient, transport: str) -> list[list[str]]:
    """The channels of each subscription the org holds open: a Bayeux client's, or a Pub/Sub Subscribe stream's."""
    if transport == "cometd":
        return [list(c["subscriptions"]) for c in await control.streaming_clients()]
    return [[s["topic"]] for s in await control.pubsub_streams()]


async def _closed_in_org(control: ControlClient, transport: str) -> list[list[str]]:
    """What the org still holds open once the session closed. CometD's /meta/disconnect is answered before
    close returns; a gRPC stream's cancellation reaches the server on its own, so wait for it there."""
    async with asyncio.timeout(30):
        while (held := await _open_in_org(control, transport)) and transport == "pubsub":  # noqa: ASYNC110 - the org's state
            await asyncio.sleep(0.05)
    return held


async def _stop(reader: asyncio.Future[Any]) -> None:
    reader.cancel()
    with contextlib.suppress(BaseException):
        await reader


@both_transports
async def test_a_session_logs_in_once_for_rest_and_stream_and_closes_everything_it_opened(
    settings: Settings, control: ControlClient
) -> None:
    before = _rest_threads()
    async with SalesforceSession(settings) as session:
        token = await session.login()
        assert token.org_id
        assert (await session.rest.query("SELECT Id FROM Opportunity LIMIT 1"))
        share = session.governor.share()  # the governor reads the org's usage from REST's responses
        assert share is not None and 0 < share < session.governor.threshold
        reader = await _subscribe(session.open_stream([CHANNEL], replay_source=lambda _c: None))
        assert await _open_in_org(control, settings.transport) == [[CHANNEL]]
        assert _rest_threads() - before  # the REST pool is in use
        assert session.authenticator.logins == 1  # the stream used REST's token
        await _stop(reader)
    assert await _closed_in_org(control, settings.transport) == []  # /meta/disconnect, or the stream cancelled
    assert not _rest_threads() - before


@both_transports
async def test_a_session_closes_what_it_opened_when_the_callers_block_fails(
    settings: Settings, control: ControlClient
) -> None:
    before = _rest_threads()
    with pytest.raises(RuntimeError, match="the caller failed"):
        async with SalesforceSession(settings) as session:
            await session.rest.query("SELECT Id FROM Opportunity LIMIT 1")
            reader = await _subscribe(session.open_stream([CHANNEL], replay_source=lambda _c: None))
            await _stop(reader)
            raise RuntimeError("the caller failed")
    assert await _closed_in_org(control, settings.transport) == []
    assert not _rest_threads() - before
