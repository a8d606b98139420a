"""The ops endpoint of a real daemon against the emulator over HTTPS: /metrics agrees with the org's own
counts, /readyz follows the emulator going away and coming back, /healthz answers from start-up to the
end, and every log line of a job names its transaction and record (never the customer)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from e2e_support import REP, record_id, replay_position, run_daemon, wait_for_status
from prometheus_client.parser import text_string_to_metric_families

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import TOKEN_HEADER, ControlClient
from sfsign.emulator.server import EmulatorThread

OPP_CDC = "/data/OpportunityChangeEvent"
QUOTE_CDC = "/data/QuoteChangeEvent"
PE = "/event/Sign_Request__e"
CHANNELS = (OPP_CDC, QUOTE_CDC, PE)
PROPOSAL = "Proposal/Price Quote"
WAIT_S = 60.0
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Any free ops port; short stream timings so an outage is noticed and recovered in seconds."""
    return settings.model_copy(update={"ops_port": 0, "stream_long_poll_margin_s": 1.0,
                                       "stream_backoff_base_s": 0.25, "stream_backoff_cap_s": 1.0,
                                       "audit_flush_s": 0.5})


@pytest.fixture
async def control_http(emulator: EmulatorThread) -> AsyncIterator[httpx.AsyncClient]:
    """Raw GETs on the emulator's control API (the streaming views have no ControlClient call)."""
    async with httpx.AsyncClient(base_url=emulator.url, verify=ssl.create_default_context(cafile=emulator.ca_file),
                                 headers={TOKEN_HEADER: emulator.control_token}, timeout=30.0) as client:
        yield client


def ops_client(daemon: Daemon) -> httpx.AsyncClient:
    assert daemon.ops_port, "the ops endpoint is not listening"
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.ops_port}", timeout=10.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str) -> float:
    return sum(samples.get(name, {}).values())


async def retained(control_http: httpx.AsyncClient, channel: str) -> tuple[int, list[int]]:
    response = await control_http.get("/_control/streaming/events", params={"channel": channel})
    response.raise_for_status()
    body = response.json()
    return int(body["lastReplayId"]), [int(e["replayId"]) for e in body["events"]]


async def test_metrics_agree_with_the_emulators_own_counts_of_files_updates_events_and_api_calls(
    settings: Settings, rules: Rules, control: ControlClient, control_http: httpx.AsyncClient,
    logs: list[MutableMapping[str, Any]],
) -> None:
    names = ["Acme Industries - Platform Renewal 2027", "Brandt & Söhne - Premium Support"]
    opps = [await record_id(control, "Opportunity", n) for n in names]
    quote = await record_id(control, "Quote", "Globex Enterprise Rollout - Proposal")
    before, _ = await retained(control_http, OPP_CDC)  # replay ids are org-wide: what came before the daemon
    async with run_daemon(settings, rules) as daemon, ops_client(daemon) as client:
        await control.update("Opportunity", opps[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": opps[1], "Reason__c": "asked"}, user=REP)
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        for sobject, rid in (("Opportunity", opps[0]), ("Opportunity", opps[1]), ("Quote", quote)):
            assert (await wait_for_status(control, sobject, rid))["Sign_Status__c"] == "Signed"
        # Settled: every retained event committed (write-backs are change events too), audit rows sent,
        # and the last REST answer's Sforce-Limit-Info equal to the org's count (no call after it).
        async with asyncio.timeout(WAIT_S):
            while True:
                latest = {c: max([r for r in (await retained(control_http, c))[1] if r > before], default=None)
                          for c in CHANNELS}
                usage = await control.api_usage()
                samples = await scrape(client)
                pending = await daemon.outbox.call(lambda s: s.pending_audit())
                committed = {c: replay_position(daemon.outbox.committed_replay_id(c)) for c in CHANNELS}
                if (all(committed[c] == r for c, r in latest.items() if r is not None)  # either transport's ids
                        and not pending and samples.get("sfsign_api_requests_used", {}).get(()) == usage["used"]
                        and (await control.api_usage())["used"] == usage["used"]):
                    break
                await asyncio.sleep(0.3)
        received = {c: len([r for r in (await retained(control_http, c))[1] if r > before]) for c in CHANNELS}
        files = [f for f in await control.files() if f.get("Sign_Transaction_Id__c")]
        signed_records = [r for sobject in ("Opportunity", "Quote") for r in await control.query(
            f"SELECT Id, Sign_Transaction_Id__c FROM {sobject} WHERE Sign_Status__c = 'Signed'")]

    # Files and record updates: what the org holds is what the daemon counted.
    assert len(files) == len(signed_records) == 3
    assert total(samples, "sfsign_documents_signed_total") == 3
    assert samples["sfsign_documents_signed_total"] == {(("rule", "opportunity-proposal"),): 2,
                                                        (("rule", "quote-approved"),): 1}
    assert samples["sfsign_documents_signed_today"][()] == 3
    assert samples["sfsign_jobs"][(("state", "done"),)] == 3
    assert total(samples, "sfsign_jobs") == 3
    assert {f["Sign_Transaction_Id__c"] for f in files} == {r["Sign_Transaction_Id__c"] for r in signed_records}
    # API usage is the org's own count (the last REST answer's Sforce-Limit-Info).
    assert samples["sfsign_api_requests_used"][()] == usage["used"]
    assert samples["sfsign_api_requests_limit"][()] == usage["max"]
    # Events: one received per event the org published on each channel while the daemon listened.
    for channel in CHANNELS:
        assert samples["sfsign_events_received_total"].get((("channel", channel),), 0) == received[channel], channel
        if received[channel]:
            assert samples["sfsign_replay_lag_seconds"][(("channel", channel),)] >= 0
    assert received[PE] == 1 and received[OPP_CDC] >= 2 and received[QUOTE_CDC] >= 2  # change + write-back
    # Per-step and end-to-end histograms saw every document; nothing failed.
    assert samples["sfsign_step_duration_seconds_count"][(("step", "render_and_sign"),)] == 3
    assert samples["sfsign_end_to_end_latency_seconds_count"][()] == 3
    assert total(samples, "sfsign_retries_total") == 0 and samples["sfsign_dead_jobs_total"][()] == 0
    assert 0 < samples["sfsign_signing_certificate_expiry_days"][(("profile", "company-seal"),)] < 3700
    assert samples["sfsign_ready"][()] == 1 and samples["sfsign_stream_connected"][()] == 1

    # Logs: every line of a job names its transaction and record, and never the customer. The worker's
    # lines are found by their fields: each step's duration, each document's end-to-end latency.
    job_lines = [e for e in logs if e.get("transaction_id")]
    assert all(e.get("record_id") for e in job_lines), [e for e in job_lines if not e.get("record_id")]
    worker_lines = [e for e in logs if {"step", "ms"} <= e.keys() or "end_to_end_ms" in e]
    assert len([e for e in worker_lines if "end_to_end_ms" in e]) == 3
    assert all(e.get("transaction_id") and e.get("record_id") for e in worker_lines)
    text = repr(logs)
    for personal in ("Acme Industries", "Brandt", "Globex", "Claire", "Lefèvre", "@acme", "@globex"):
        assert personal not in text, personal


async def wait_ready(client: httpx.AsyncClient, ready: bool, healthz: list[int]) -> dict[str, Any]:
    """Poll /readyz until it says `ready`; /healthz is sampled at every turn."""
    async with asyncio.timeout(WAIT_S):
        while True:
            healthz.append((await client.get("/healthz")).status_code)
            response = await client.get("/readyz")
            if (response.status_code == 200) == ready:
                body: dict[str, Any] = response.json()
                assert body["ready"] is ready
                return body
            await asyncio.sleep(0.1)


async def test_readyz_turns_unready_when_the_emulator_stops_and_ready_when_it_returns(
    settings: Settings, rules: Rules, emulator: EmulatorThread,
) -> None:
    healthz: list[int] = []
    async with run_daemon(settings, rules) as daemon, ops_client(daemon) as client:
        up = await wait_ready(client, True, healthz)
        await asyncio.to_thread(emulator.call, emulator.emulator.stop())
        try:
            down = await wait_ready(client, False, healthz)
            down_samples = await scrape(client)
        finally:
            await asyncio.to_thread(emulator.call, emulator.emulator.start())
        back = await wait_ready(client, True, healthz)
        back_samples = await scrape(client)

    assert up == {"ready": True, "authenticated": True, "subscribed": True, "outbox_writable": True,
                  "intake_moving": True}
    assert down["subscribed"] is False and down["outbox_writable"] is True
    assert down["reasons"] == ["not subscribed to every streaming channel"]
    assert down_samples["sfsign_ready"][()] == 0 and down_samples["sfsign_stream_connected"][()] == 0
    assert back == up
    assert back_samples["sfsign_ready"][()] == 1 and back_samples["sfsign_stream_disconnects_total"][()] == 1
    assert healthz and set(healthz) == {200}


async def test_healthz_answers_during_start_up_while_salesforce_refuses_the_login(
    settings: Settings, rules: Rules, control: ControlClient, control_http: httpx.AsyncClient,
) -> None:
    await control.post("/_control/faults/errors", {"prefix": "/services/oauth2/", "status": 503})
    daemon = Daemon(settings, rules)
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        async with asyncio.timeout(WAIT_S):
            while daemon.ops_port is None:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        async with ops_client(daemon) as client:
            health = await client.get("/healthz")
            starting = await client.get("/readyz")
            (await control_http.delete("/_control/faults")).raise_for_status()
            healthz: list[int] = []
            ready = await wait_ready(client, True, healthz)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)

    assert health.status_code == 200
    assert starting.status_code == 503
    assert starting.json()["reasons"][:2] == ["not authenticated with Salesforce",
                                              "not subscribed to every streaming channel"]
    assert ready["ready"] is True and set(healthz) == {200}
