"""The daemon on the Pub/Sub API (SFSIGN_TRANSPORT=pubsub) against the emulator's Pub/Sub server, over TLS.

The real daemon (in this loop, or `sfsign run` where it is SIGKILLed) subscribes with its real gRPC
client; the emulator runs on its own thread like a remote org. No CometD client may be involved: each
test asserts the emulator saw no Bayeux client. A fault and the probe that must survive it are applied
in one step on the emulator's loop, so the probe can only arrive through the path under test.

The emulator's replay ids are the bus position as 8 bytes big-endian plus two zero bytes
(`pubsub_server.decode_replay_id`): the tests read the opaque ids the daemon committed as positions, to
prove "everything after the stored id, once".

Timings are shortened: the emulator sends a keepalive every KEEPALIVE_S (Salesforce: within 270 s) and the
daemon drops a silent subscription after WATCHDOG_S (production: 300 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon_process import kill, start_run, subscribed
from e2e_support import REP, cli_env, record_id, run_cli, run_daemon, running_emulator, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.bus import schema_id
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.pubsub_server import decode_replay_id
from sfsign.emulator.server import Emulator, EmulatorThread
from sfsign.outbox import ACTIVE_STATES, OutboxStore

T = TypeVar("T")
Logs = list[MutableMapping[str, Any]]

OPP_CDC = "/data/OpportunityChangeEvent"
QUOTE_CDC = "/data/QuoteChangeEvent"
PE = "/event/Sign_Request__e"
CHANNELS = (OPP_CDC, QUOTE_CDC, PE)
PROPOSAL = "Proposal/Price Quote"
ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX = "Globex - Enterprise Rollout"
KEEPALIVE_S = 0.3
WATCHDOG_S = 2.0
WAIT_S = 45.0


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    with running_emulator(tmp_path, pubsub_keepalive_s=KEEPALIVE_S) as emu:
        yield emu


@pytest.fixture
def transport() -> str:
    return "pubsub"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    assert settings.transport == "pubsub"
    return settings.model_copy(update={"pubsub_keepalive_s": WATCHDOG_S, "stream_backoff_base_s": 0.25,
                                       "stream_backoff_cap_s": 2.0})


@pytest.fixture
async def probes(control: ControlClient) -> list[str]:
    """Fresh opportunities without line items (their jobs end in Error at once, no signing), one per probe."""
    account = (await control.query("SELECT Id FROM Account LIMIT 1"))[0]["Id"]
    return [await control.create("Opportunity", {"Name": f"Pub/Sub probe {n}", "StageName": "Prospecting",
                                                 "CloseDate": "2027-06-30", "AccountId": account}, user=REP)
            for n in range(4)]


@pytest.fixture
async def no_cometd(control: ControlClient) -> AsyncIterator[None]:
    """Every event of the test came over Pub/Sub: the org never saw a Bayeux client."""
    yield
    assert await control.streaming_clients() == []


# ------------------------------------------------------------------------------------------- helpers


async def on_emulator(emulator: EmulatorThread, fn: Callable[[Emulator], Coroutine[Any, Any, T]]) -> T:
    return await asyncio.to_thread(emulator.call, fn(emulator.emulator), 60)


def rep_id(emu: Emulator) -> str:
    user = emu.org.store.user_by_username(REP)
    assert user is not None
    return str(user["Id"])


def move_stage(emu: Emulator, opp: str) -> None:
    emu.org.store.update("Opportunity", opp, {"StageName": PROPOSAL}, user_id=rep_id(emu))


def request_signature(emu: Emulator, opp: str) -> None:
    emu.org.store.insert("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "probe"}, user_id=rep_id(emu))


async def until(check: Callable[[], Awaitable[bool]], within_s: float = WAIT_S) -> None:
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110 - the state lives in another thread or process
            await asyncio.sleep(0.05)


def position(replay_id: Any) -> int:
    """The bus position of an opaque replay id the emulator issued."""
    assert isinstance(replay_id, bytes), replay_id
    found = decode_replay_id(replay_id)
    assert found is not None, replay_id
    return found


async def stored_positions(settings: Settings) -> dict[str, int]:
    """The committed replay ids in the outbox file (a connection of our own), as bus positions."""
    def read() -> dict[str, int]:
        store = OutboxStore(settings.data_dir / "outbox.sqlite")
        try:
            return {c: position(r) for c, r in store.replay_ids().items()}
        finally:
            store.close()

    return await asyncio.to_thread(read)


async def jobs_of(settings: Settings) -> list[Any]:
    def read() -> list[Any]:
        store = OutboxStore(settings.data_dir / "outbox.sqlite")
        try:
            return store.jobs()
        finally:
            store.close()

    return await asyncio.to_thread(read)


async def wait_for_job(daemon: Daemon, record: str, source: str | None = None) -> Any:
    async with asyncio.timeout(WAIT_S):
        while True:
            found = [j for j in await daemon.outbox.call(lambda s: s.jobs())
                     if j.record_id == record and (source is None or j.source == source)]
            if found:
                assert len(found) == 1, found
                return found[0]
            await asyncio.sleep(0.05)


async def retained(control: ControlClient) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for channel in CHANNELS:
        events = await control._json("GET", f"/_control/streaming/events?channel={channel}")
        out[channel] = [int(e["replayId"]) for e in events["events"]]
    return out


async def settle(daemon: Daemon, control: ControlClient) -> tuple[dict[str, int], dict[str, bytes]]:
    """Until every job has finished (its write-backs, change events too, are on the bus), every retained event
    of each channel is committed and the keepalives have carried every channel's position to the same place
    (the bus's newest event: a keepalive's latest_replay_id is committed too, so a quiet channel's position
    follows the bus): the committed bus position of each channel, and the opaque replay id committed for it.
    Nothing moves the bus after that until the test does, so a resubscription must resume from exactly there."""
    async with asyncio.timeout(WAIT_S):
        while True:
            await asyncio.sleep(0.2)
            if any(j.state in ACTIVE_STATES for j in await daemon.outbox.call(lambda s: s.jobs())):
                continue
            newest = {c: ids[-1] for c, ids in (await retained(control)).items() if ids}
            committed = {c: r for c in CHANNELS if isinstance(r := daemon.outbox.committed_replay_id(c), bytes)}
            positions = {c: position(r) for c, r in committed.items()}
            if (len(committed) == len(CHANNELS) and len(set(positions.values())) == 1
                    and all(positions[c] >= n for c, n in newest.items())):
                return positions, committed


def received(daemon: Daemon) -> dict[str, int]:
    registry = daemon.metrics.registry
    return {c: int(registry.get_sample_value("sfsign_events_received_total", {"channel": c}) or 0) for c in CHANNELS}


async def assert_each_delivered_once_after(control: ControlClient, daemon: Daemon, stored: dict[str, int],
                                           counted_before: dict[str, int] | None = None) -> None:
    """The daemon received exactly the events retained after `stored`: none from before, none twice."""
    ids = await retained(control)
    base = counted_before or {}
    got = {c: received(daemon)[c] - base.get(c, 0) for c in CHANNELS}
    expected = {c: len([r for r in ids[c] if r > stored.get(c, 0)]) for c in CHANNELS}
    assert got == expected, (got, expected, stored)


def stream_events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e.get("event") == f"salesforce.stream.{name}"]


def subscriptions(logs: Logs) -> dict[str, str | None]:
    """The first subscription per channel in `logs`: the replay id (hex) it started after, or its preset."""
    first: dict[str, str | None] = {}
    for entry in stream_events(logs, "subscribed"):
        assert entry["transport"] == "pubsub"
        first.setdefault(entry["channel"], entry["replay_id"] or entry["preset"])
    return first


def resumed_from(stored: dict[str, bytes]) -> dict[str, str]:
    return {c: stored[c].hex() if c in stored else ("EARLIEST" if c == PE else "LATEST") for c in CHANNELS}


# ------------------------------------------------------------------------------------------ the tests


async def test_a_stage_change_and_a_sign_request_are_signed_and_written_back_over_pubsub(
    settings: Settings, rules: Rules, control: ControlClient, logs: Logs, no_cometd: None,
) -> None:
    acme = await record_id(control, "Opportunity", ACME)
    globex = await record_id(control, "Opportunity", GLOBEX)
    before = await retained(control)
    async with run_daemon(settings, rules) as daemon:
        streams = await control.pubsub_streams()
        await control.update("Opportunity", acme, {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": globex}, user=REP)
        signed = [await wait_for_status(control, "Opportunity", r, within_s=WAIT_S) for r in (acme, globex)]
        jobs = {j.record_id: j for j in await settled_jobs(daemon)}
        await settle(daemon, control)
        await assert_each_delivered_once_after(control, daemon, {c: ids[-1] for c, ids in before.items() if ids})
        committed = {c: daemon.outbox.committed_replay_id(c) for c in CHANNELS}
    files = await control.files()

    assert sorted(s["topic"] for s in streams) == sorted(CHANNELS)  # one Subscribe stream per channel
    assert subscriptions(logs) == {OPP_CDC: "LATEST", QUOTE_CDC: "LATEST", PE: "EARLIEST"}  # a first start
    assert [s["Sign_Status__c"] for s in signed] == ["Signed", "Signed"]
    assert (jobs[acme].source, jobs[globex].source) == ("cdc", "event")
    for record in signed:  # the File on the record is the one the write-back names
        [file] = [f for f in files if f.get("Sign_Transaction_Id__c") == record["Sign_Transaction_Id__c"]]
        assert record["Signed_Document_Id__c"] == file["ContentDocumentId"]
    # opaque Pub/Sub ids, for the Quote channel too, which had no event: its keepalives carried its position
    assert all(isinstance(committed[c], bytes) for c in CHANNELS), committed


async def test_sfsign_run_killed_and_restarted_resumes_after_the_stored_opaque_ids_with_nothing_twice_or_lost(
    settings: Settings, rules: Rules, control: ControlClient, probes: list[str], logs: Logs, tmp_path: Path,
    no_cometd: None,
) -> None:
    acme = await record_id(control, "Opportunity", ACME)
    env = cli_env(settings, SFSIGN_SECRETS_DIR=str(tmp_path / "no-secrets"), SFSIGN_CPU_WORKERS="1",
                  SFSIGN_LOG_LEVEL="INFO", SFSIGN_LOG_FORMAT="json")
    assert env["SFSIGN_TRANSPORT"] == "pubsub"
    log = tmp_path / "run.log"
    proc = await start_run(env, log)
    try:
        await subscribed(proc, log)
        assert len(await control.pubsub_streams()) == len(CHANNELS)
        await control.update("Opportunity", acme, {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[0]}, user=REP)
        await wait_for_status(control, "Opportunity", acme, within_s=WAIT_S)
        await wait_for_status(control, "Opportunity", probes[0], within_s=WAIT_S)
        os.killpg(proc.pid, signal.SIGKILL)  # the crash: nothing flushed, nothing acknowledged
    finally:
        await kill(proc)
    assert '"transport": "pubsub"' in await asyncio.to_thread(log.read_text)
    stored = await stored_positions(settings)
    stored_raw = {c: r for c, r in (await asyncio.to_thread(_replay_ids, settings)).items()}
    jobs_before = await jobs_of(settings)
    assert {OPP_CDC, PE} <= set(stored)

    await control.update("Opportunity", probes[1], {"StageName": PROPOSAL}, user=REP)  # while away
    await control.publish("Sign_Request__e", {"RecordId__c": probes[2]}, user=REP)
    async with run_daemon(settings, rules) as daemon:
        await wait_for_job(daemon, probes[1], "cdc")
        await wait_for_job(daemon, probes[2], "event")
        await settle(daemon, control)
        await assert_each_delivered_once_after(control, daemon, stored)  # none from before the crash, none twice
    jobs = await jobs_of(settings)
    files = [f for f in await control.files() if f.get("Sign_Transaction_Id__c")]

    assert subscriptions(logs) == resumed_from(stored_raw)  # CUSTOM after each stored id
    assert sorted(j.record_id for j in jobs) == sorted([acme, *probes[:3]])  # one job per trigger, none lost
    assert [j.transaction_id for j in jobs[:len(jobs_before)]] == [j.transaction_id for j in jobs_before]
    assert len(files) == 1  # Acme's document, never a second one


def _replay_ids(settings: Settings) -> dict[str, Any]:
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        return dict(store.replay_ids())
    finally:
        store.close()


async def test_a_dropped_stream_resubscribes_after_the_stored_ids_and_loses_nothing(
    settings: Settings, rules: Rules, control: ControlClient, probes: list[str], emulator: EmulatorThread,
    logs: Logs, no_cometd: None,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        await wait_for_job(daemon, probes[1], "event")
        stored, stored_raw = await settle(daemon, control)
        counted = received(daemon)
        logs.clear()

        async def drop_then_publish(emu: Emulator) -> int:
            dropped = emu.pubsub.drop_streams()  # UNAVAILABLE, as Salesforce's maintenance or a network cut
            move_stage(emu, probes[2])  # for nobody: only the resubscription after the stored id delivers it
            request_signature(emu, probes[3])
            return dropped

        assert await on_emulator(emulator, drop_then_publish) == len(CHANNELS)
        await wait_for_job(daemon, probes[2], "cdc")
        await wait_for_job(daemon, probes[3], "event")
        await settle(daemon, control)
        await assert_each_delivered_once_after(control, daemon, stored, counted)
        readiness = ("ready: subscribed", "streaming disconnected; reconnecting")
        health = [e["event"] for e in logs if e["event"] in readiness]

    assert subscriptions(logs) == resumed_from(stored_raw)
    # A routine recovery, as CometD's cut long poll: one "recovering" for the three streams, no outage.
    [recovering] = stream_events(logs, "recovering")
    assert "UNAVAILABLE [sfdc.platform.eventbus.grpc.service.unavailable]" in recovering["reason"]
    assert len(stream_events(logs, "resubscribing")) == len(CHANNELS) - 1
    assert not stream_events(logs, "disconnected") and not stream_events(logs, "failure") and health == []
    assert stream_events(logs, "recovered")


async def test_a_half_open_stream_is_abandoned_by_the_keepalive_watchdog_and_nothing_is_lost(
    settings: Settings, rules: Rules, control: ControlClient, probes: list[str], emulator: EmulatorThread,
    logs: Logs, no_cometd: None,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await wait_for_job(daemon, probes[0], "cdc")
        stored, stored_raw = await settle(daemon, control)
        counted = received(daemon)
        logs.clear()

        async def hold_then_publish(emu: Emulator) -> None:
            emu.pubsub.set_hold(True)  # open streams, no events, no keepalives: a proxy dropped them silently
            move_stage(emu, probes[1])

        await on_emulator(emulator, hold_then_publish)
        await until(lambda: _true(bool(stream_events(logs, "recovering") + stream_events(logs, "failure"))))
        await control.hold_pubsub_streams(False)
        await wait_for_job(daemon, probes[1], "cdc")
        await settle(daemon, control)
        await assert_each_delivered_once_after(control, daemon, stored, counted)

    [first, *_] = stream_events(logs, "recovering") + stream_events(logs, "failure")
    assert f"no FetchResponse for {WATCHDOG_S:.0f} s" in first["reason"]
    expected = resumed_from(stored_raw)
    resumed = subscriptions(logs)
    assert resumed and resumed == {c: expected[c] for c in resumed}  # each after its stored id, if it had one


async def _true(value: bool) -> bool:
    return value


async def test_a_revoked_token_reauthenticates_once_and_resubscribes_after_the_stored_ids(
    settings: Settings, rules: Rules, control: ControlClient, probes: list[str], emulator: EmulatorThread,
    logs: Logs, no_cometd: None,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        await wait_for_job(daemon, probes[1], "event")
        _, stored_raw = await settle(daemon, control)
        assert daemon.authenticator is not None
        logins = daemon.authenticator.logins
        logs.clear()

        async def revoke_then_publish(emu: Emulator) -> int:
            revoked = emu.org.revoke(None)
            request_signature(emu, probes[2])  # the open streams end with UNAUTHENTICATED before delivering it
            return revoked

        assert await on_emulator(emulator, revoke_then_publish) >= 1
        await wait_for_job(daemon, probes[2], "event")
        await wait_for_status(control, "Opportunity", probes[2], within_s=WAIT_S)  # REST uses the new token too
        relogins = daemon.authenticator.logins - logins

    assert relogins == 1  # one refresh shared by the three streams and REST, never a loop on the stale token
    assert not stream_events(logs, "disconnected")
    auth = [e for e in stream_events(logs, "recovering") + stream_events(logs, "failure") if e["kind"] == "auth"]
    assert auth and all("UNAUTHENTICATED" in e["reason"] for e in auth), auth
    assert subscriptions(logs) == resumed_from(stored_raw)


async def test_an_undecodable_event_is_logged_parked_and_skipped(
    settings: Settings, rules: Rules, control: ControlClient, logs: Logs, no_cometd: None,
) -> None:
    globex = await record_id(control, "Opportunity", GLOBEX)
    async with run_daemon(settings, rules) as daemon:
        # A payload that is not Avro of the schema it names (the emulator sends such an event's JSON bytes).
        bad = await control.post("/_control/streaming/raw", {"channel": PE, "data": {
            "schema": schema_id("Sign_Request__e"), "payload": "not an object", "event": {"replayId": 0}}})
        await control.update("Opportunity", globex, {"StageName": PROPOSAL}, user=REP)
        assert (await wait_for_status(control, "Opportunity", globex, within_s=WAIT_S))["Sign_Status__c"] == "Signed"
        await until(lambda: _true(position(daemon.outbox.committed_replay_id(PE)) >= bad["replayId"]))
        parked = await daemon.outbox.call(lambda s: s.parked_events())
        jobs = await settled_jobs(daemon)

    [undecodable] = stream_events(logs, "undecodable_event")
    assert undecodable["channel"] == PE and "does not decode" in undecodable["error"]
    assert [p.channel for p in parked] == [PE] and "malformed" in parked[0].reason
    assert [j.record_id for j in jobs] == [globex]


async def test_check_proves_each_channel_over_pubsub_and_names_the_one_the_org_does_not_offer(
    settings: Settings, rules: Rules, control: ControlClient, no_cometd: None,
) -> None:
    ready = await asyncio.to_thread(run_cli, ["check"], settings)
    await control.post("/_control/streaming/cdc-entities", {"entities": ["Opportunity"]})  # Quote no longer selected
    missing = await asyncio.to_thread(run_cli, ["check"], settings)

    assert ready.returncode == 0, ready.stdout + ready.stderr
    for channel in CHANNELS:
        assert f"ok    streaming {channel}" in ready.stdout, ready.stdout
    assert f"Pub/Sub (SFSIGN_TRANSPORT=pubsub) at {settings.pubsub_url}" in ready.stdout
    assert missing.returncode == 1, missing.stdout
    assert f"FAIL  streaming {QUOTE_CDC}" in missing.stdout and "NOT_FOUND" in missing.stdout, missing.stdout
    assert f"ok    streaming {OPP_CDC}" in missing.stdout
