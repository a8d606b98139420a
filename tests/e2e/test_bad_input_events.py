"""Bad-input corpus, poison events: one event that cannot be handled never stops intake.

A gap event whose `recordIds` holds something that is not an id used to be retried forever: the replay
id never moved, every record changed afterwards was never signed, a restart replayed the same event and
stalled again, and /readyz stayed 200. Now such an event is parked (kept with its payload and reason,
counted in /metrics, listed by `sfsign status`), its object is reconciled, and intake moves on; an event
that keeps failing while Salesforce is down is waited out, and /readyz says intake is stuck meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from e2e_support import (
    REP,
    both_transports,
    record_id,
    replay_position,
    replay_shown,
    run_cli,
    run_daemon,
    settled_jobs,
    wait_for_status,
)
from prometheus_client.parser import text_string_to_metric_families

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient

ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX = "Globex - Enterprise Rollout"
HANSE = "Hanse Logistik - Data Migration"
CHANNEL = "/data/OpportunityChangeEvent"
STAGE = {"StageName": "Proposal/Price Quote"}
QUERY_PREFIX = "/services/data/v68.0/query"


def _ops(daemon: Daemon) -> httpx.AsyncClient:
    assert daemon.ops_port, "the ops endpoint is not listening"
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.ops_port}", timeout=10.0)


async def _metrics(daemon: Daemon) -> dict[str, float]:
    async with _ops(daemon) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def _committed_past(daemon: Daemon, channel: str, replay_id: int, within_s: float = 60.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if replay_position(daemon.outbox.committed_replay_id(channel)) >= replay_id:
                return
            await asyncio.sleep(0.05)


async def _signed(control: ControlClient, name: str) -> str:
    opp = await record_id(control, "Opportunity", name)
    await control.update("Opportunity", opp, STAGE, user=REP)
    assert (await wait_for_status(control, "Opportunity", opp))["Sign_Status__c"] == "Signed"
    return opp


async def _readyz(ops: httpx.AsyncClient, status: int, within_s: float = 60.0) -> httpx.Response:
    async with asyncio.timeout(within_s):
        while True:
            response = await ops.get("/readyz")
            if response.status_code == status:
                return response
            await asyncio.sleep(0.1)


def _status(settings: Settings) -> dict[str, Any]:
    result = run_cli(["status", "--json"], settings)
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


@both_transports
async def test_a_gap_event_with_a_bad_record_id_is_parked_and_intake_moves_on(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    # Acme sits in the trigger stage unsigned (moved before sfsign ever subscribed): only a reconciliation
    # finds it. The poison event names it next to something that is not an id.
    acme = await record_id(control, "Opportunity", ACME)
    await control.update("Opportunity", acme, STAGE, user=REP)
    async with run_daemon(settings, rules) as daemon:
        poison = await control.post("/_control/streaming/gap", {
            "entity": "Opportunity", "recordIds": [acme, "006'; DELETE FROM jobs"], "user": REP})
        globex = await _signed(control, GLOBEX)  # a record moved afterwards is signed
        await _committed_past(daemon, CHANNEL, poison["replayId"])
        assert (await wait_for_status(control, "Opportunity", acme))["Sign_Status__c"] == "Signed"
        metrics = await _metrics(daemon)
        jobs = await settled_jobs(daemon)
        status = _status(settings)  # beside the running daemon, as an operator would

    assert metrics["sfsign_parked_events"] == 1 and metrics["sfsign_events_parked_total"] == 1
    assert sorted(j.record_id for j in jobs) == sorted([acme, globex])
    assert next(j.source for j in jobs if j.record_id == acme) == "reconcile"
    parked = status["parked_events"]
    assert parked["count"] == 1
    [entry] = parked["newest"]
    assert entry["channel"] == CHANNEL and replay_position(entry["replay_id"]) == poison["replayId"]
    assert "malformed" in entry["reason"] and "recordIds" in entry["reason"]

    # A restart does not replay the parked event, stall on it or park it again.
    async with run_daemon(settings, rules) as daemon:
        hanse = await record_id(control, "Opportunity", HANSE)
        await control.update("Opportunity", hanse, STAGE, user=REP)
        async with asyncio.timeout(60):
            while True:
                if any(j.record_id == hanse for j in await daemon.outbox.call(lambda s: s.jobs())):
                    break
                await asyncio.sleep(0.05)
        assert await daemon.outbox.call(lambda s: s.parked_count()) == 1
        assert (await _metrics(daemon)).get("sfsign_events_parked_total", 0) == 0


@both_transports
async def test_an_event_failing_while_salesforce_answers_is_parked_and_its_record_reconciled(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    settings = settings.model_copy(update={"intake_max_attempts": 2})
    acme = await record_id(control, "Opportunity", ACME)
    await control.update("Opportunity", acme, STAGE, user=REP)
    async with run_daemon(settings, rules) as daemon:
        # Every query fails, but Salesforce answers other calls: the gap event's own re-read fails, not the org.
        await control.post("/_control/faults/errors", {"prefix": QUERY_PREFIX, "status": 500,
                                                       "errorCode": "UNKNOWN_EXCEPTION", "message": "boom"})
        event = await control.post("/_control/streaming/gap", {"entity": "Opportunity", "recordIds": [acme],
                                                               "user": REP})
        await _committed_past(daemon, CHANNEL, event["replayId"])
        [parked] = await daemon.outbox.call(lambda s: s.parked_events())
        await control._json("DELETE", "/_control/faults")
        # The reconciliation asked for when the event was parked signs the record it named.
        assert (await wait_for_status(control, "Opportunity", acme))["Sign_Status__c"] == "Signed"
        await _signed(control, GLOBEX)
    assert parked.attempts == 2 and "UNKNOWN_EXCEPTION" in parked.reason


@both_transports
async def test_intake_stuck_in_an_outage_shows_in_readyz_and_never_parks_the_event(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    settings = settings.model_copy(update={"intake_stuck_after_s": 1.0, "intake_max_attempts": 1})
    acme = await record_id(control, "Opportunity", ACME)
    await control.update("Opportunity", acme, STAGE, user=REP)
    async with run_daemon(settings, rules) as daemon, _ops(daemon) as ops:
        # Salesforce's REST API is down (the stream is not): the gap event's re-read cannot succeed.
        await control.post("/_control/faults/errors", {"prefix": "/services/data/", "status": 503})
        event = await control.post("/_control/streaming/gap", {"entity": "Opportunity", "recordIds": [acme],
                                                               "user": REP})
        stuck = await _readyz(ops, 503)
        metrics = await _metrics(daemon)
        await control._json("DELETE", "/_control/faults")
        await _committed_past(daemon, CHANNEL, event["replayId"])
        after = await _readyz(ops, 200)
        assert (await wait_for_status(control, "Opportunity", acme))["Sign_Status__c"] == "Signed"
        parked = await daemon.outbox.call(lambda s: s.parked_count())

    body = stuck.json()
    assert body["intake_moving"] is False
    shown = replay_shown(event["replayId"], settings.transport)
    assert any(r.startswith("intake stuck") and f"replay id {shown} has been" in r for r in body["reasons"]), body
    assert metrics["sfsign_intake_stalled_seconds"] >= 1.0 and metrics["sfsign_ready"] == 0
    assert after.json()["intake_moving"] is True
    assert parked == 0  # an outage is waited out, however long: only the event's own failures count
