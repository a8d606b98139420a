"""The connection factory against the emulator over HTTPS: one login shared by REST and the stream, and
nothing left open once the session is closed (no REST thread, no Bayeux client the org still holds),
also when the caller's block fails."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from sfsign.config import Settings
from sfsign.connections import SalesforceSession
from sfsign.emulator.control_client import ControlClient
from sfsign.salesforce.stream import StreamClient

CHANNEL = "/data/OpportunityChangeEvent"


def _rest_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sf-rest") and t.is_alive()}


async def _subscribe(stream: StreamClient) -> asyncio.Future[Any]:
    """Start reading `stream` and return once the org confirmed the subscription; the reader goes on."""
    reader = asyncio.ensure_future(stream.messages().__anext__())
    async with asyncio.timeout(30):
        while CHANNEL not in stream.subscribed_replay:
            if reader.done():
                reader.result()
            await asyncio.sleep(0.05)
    return reader


async def _stop(reader: asyncio.Future[Any]) -> None:
    reader.cancel()
    with contextlib.suppress(BaseException):
        await reader


# CometD by nature: counts the org's Bayeux clients
@pytest.mark.parametrize("transport", ["cometd"])
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
        assert [list(c["subscriptions"]) for c in await control.streaming_clients()] == [[CHANNEL]]
        assert _rest_threads() - before  # the REST pool is in use
        assert session.authenticator.logins == 1  # the stream used REST's token
        await _stop(reader)
    assert await control.streaming_clients() == []  # the stream said /meta/disconnect
    assert not _rest_threads() - before


# CometD by nature: counts the org's Bayeux clients
@pytest.mark.parametrize("transport", ["cometd"])
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
    assert await control.streaming_clients() == []
    assert not _rest_threads() - before
