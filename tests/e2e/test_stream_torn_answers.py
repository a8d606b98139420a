"""Issue 11, part 2: a torn answer on the stream must not lose the event inside it; and the periodic
reconciliation catches a trigger that the stream never delivered at all.

The real daemon runs in this loop against the emulator over HTTPS; the emulator tears a `/meta/connect`
answer *after* dequeuing its events (as a proxy cutting or replacing Salesforce's answer would), so the
events in it are gone from that Bayeux session. Only a new session that subscribes from the committed
replay id gets them back: the tests assert the job came from the stream (`source` cdc), with the
periodic reconciliation switched off so it cannot be what saved the record.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import REP, record_id, run_daemon, running_emulator, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import TOKEN_HEADER, ControlClient
from sfsign.emulator.server import Emulator, EmulatorThread

OPP_CDC = "/data/OpportunityChangeEvent"
PROPOSAL = "Proposal/Price Quote"
ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX = "Globex - Enterprise Rollout"
WAIT_S = 60.0


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    """A short long poll, so the daemon is in a held connect whenever a stage moves."""
    with running_emulator(tmp_path, long_poll_timeout_ms=1500) as emu:
        yield emu


@pytest.fixture
async def ops(emulator: EmulatorThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, verify=ssl.create_default_context(cafile=emulator.ca_file),
                                 headers={TOKEN_HEADER: emulator.control_token}, timeout=30.0) as client:
        yield client


def stream_only(settings: Settings) -> Settings:
    """No periodic reconciliation: a record signed here was signed by the stream."""
    return settings.model_copy(update={"reconcile_interval_s": 0.0, "stream_long_poll_margin_s": 1.0,
                                       "stream_backoff_base_s": 0.25, "stream_backoff_cap_s": 2.0})


async def jobs_of(daemon: Daemon, record: str) -> list[Any]:
    return [j for j in await daemon.outbox.call(lambda s: s.jobs()) if j.record_id == record]


async def subscribes(ops: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await ops.get("/_control/streaming/subscriptions")
    response.raise_for_status()
    return [s for s in response.json()["subscriptions"] if s["channel"] == OPP_CDC and s.get("successful")]


# CometD by nature: tears /meta/connect answers (Pub/Sub: a reset stream, test_pubsub_transport)
@pytest.mark.parametrize("transport", ["cometd"])
@pytest.mark.parametrize("kind", ["truncated", "html", "html-502", "not-array"])
async def test_record_moved_while_the_answer_with_its_event_is_torn_is_still_signed_by_the_stream(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, kind: str
) -> None:
    settings = stream_only(settings)
    acme = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        # an event of no consequence gives the channel a committed replay id to resume from
        await control.update("Opportunity", acme, {"Description": "before the torn answer"}, user=REP)
        async with asyncio.timeout(WAIT_S):
            while (committed := daemon.outbox.committed_replay_id(OPP_CDC)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        sessions = len(await subscribes(ops))
        armed = await control.post("/_control/streaming/torn-connects", {"kind": kind, "count": 1})
        assert armed == {"kind": kind, "count": 1}
        await control.update("Opportunity", acme, {"StageName": PROPOSAL}, user=REP)

        record = await wait_for_status(control, "Opportunity", acme, within_s=WAIT_S)
        assert record["Sign_Status__c"] == "Signed", record["Sign_Error__c"]
        jobs = await jobs_of(daemon, acme)
        assert [j.source for j in jobs] == ["cdc"], "signed by something other than the stream"
        faults = (await ops.get("/_control/faults")).json()
        assert faults["cometd_torn"]["hits"] == 1, "the fault never tore the answer: the test proved nothing"
        # the new session resubscribed from the replay id committed before the torn answer
        resubscribed = (await subscribes(ops))[sessions:]
        assert resubscribed, "no new session after the torn answer"
        assert resubscribed[0]["replay"] == committed


async def test_periodic_reconciliation_signs_a_record_whose_event_never_came(
    settings: Settings, rules: Rules, control: ControlClient, emulator: EmulatorThread,
    logs: list[MutableMapping[str, Any]],
) -> None:
    settings = settings.model_copy(update={"reconcile_interval_s": 1.0})
    acme = await record_id(control, "Opportunity", ACME)
    # in a trigger stage before sfsign ever listened: the backlog is the operator's call (`sfsign reconcile`)
    backlog = await record_id(control, "Opportunity", GLOBEX)
    await control.update("Opportunity", backlog, {"StageName": PROPOSAL}, user=REP)
    moved = int(time.time())
    while int(time.time()) == moved:  # noqa: ASYNC110 - SOQL datetimes have whole seconds: start in the next
        await asyncio.sleep(0.05)

    def passes() -> list[int]:
        """Jobs created by each reconciliation pass, from the fields of the line that ends a pass."""
        return [int(e["jobs_created"]) for e in logs if {"objects", "jobs_created"} <= e.keys()]

    async def move_without_event(emu: Emulator) -> None:
        """The stage moves while Opportunity is not selected for Change Data Capture: no event at all."""
        bus = emu.org.bus
        selected = set(bus.cdc_entities)
        bus.select_entities(selected - {"Opportunity"})
        try:
            user = emu.org.store.user_by_username(REP)
            assert user is not None
            emu.org.store.update("Opportunity", acme, {"StageName": PROPOSAL}, user_id=user["Id"])
        finally:
            bus.select_entities(selected)

    async with run_daemon(settings, rules) as daemon:
        await asyncio.to_thread(emulator.call, move_without_event(emulator.emulator), 30)
        record = await wait_for_status(control, "Opportunity", acme, within_s=WAIT_S)
        assert record["Sign_Status__c"] == "Signed", record["Sign_Error__c"]
        assert [j.source for j in await jobs_of(daemon, acme)] == ["reconcile"]
        # later passes find nothing more to do: nothing doubled
        after = len(passes())
        async with asyncio.timeout(WAIT_S):
            while len(passes()) < after + 2:  # noqa: ASYNC110 - the passes run on their own timer
                await asyncio.sleep(0.1)
        assert passes()[after:] == [0] * (len(passes()) - after)
        assert sum(passes()) == 1  # the one pass that found the record
        assert len(await jobs_of(daemon, acme)) == 1
        assert await jobs_of(daemon, backlog) == []
