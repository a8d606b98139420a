"""The twelve streaming scenarios of reference/streaming-notes.md (S1-S12), end to end.

The real daemon runs in this event loop (as a subprocess where it is SIGKILLed) with its real SQLite
outbox; the emulator runs on its own thread like a remote org. After each fault a probe event (a
stage change or a Sign_Request__e) is published and must become a job in the outbox, and the
emulator's subscribe log (`GET /_control/streaming/subscriptions`) says which replay id the daemon
resubscribed from. A fault and the probe that must survive it are applied in one step on the
emulator's loop, so the probe can only arrive through the path under test (e.g. a replay).

Timings are shortened for CI: the emulator's long poll is 1.5 s (Salesforce: 110 s) and the daemon's
stream client gets a 1 s watchdog margin and a 2 s backoff cap (production: 15 s and 60 s; see
the `settings` override). `SFSIGN_STREAM_OUTAGE_S` sets the S7 outage (default 4 s; the notes' 30 s by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sqlite3
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from e2e_support import REP, both_transports, record_id, replay_position, run_daemon, running_emulator, wait_for_status

from sfsign.commands.demo_rules import PASSPHRASE_ENV
from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import TOKEN_HEADER, ControlClient
from sfsign.emulator.pubsub_server import encode_replay_id
from sfsign.emulator.server import Emulator, EmulatorThread
from sfsign.outbox import OutboxStore

T = TypeVar("T")
Logs = list[MutableMapping[str, Any]]

OPP_CDC = "/data/OpportunityChangeEvent"
QUOTE_CDC = "/data/QuoteChangeEvent"
PE = "/event/Sign_Request__e"
CHANNELS = (OPP_CDC, QUOTE_CDC, PE)
PROPOSAL = "Proposal/Price Quote"
ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX_QUOTE = "Globex Enterprise Rollout - Proposal"

LONG_POLL_MS = 1500
MARGIN_S = 1.0
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0
OUTAGE_S = float(os.environ.get("SFSIGN_STREAM_OUTAGE_S", "4"))
WAIT_S = 45.0


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    """A short long poll, so watchdog and quiet-period checks take seconds, not minutes."""
    with running_emulator(tmp_path, long_poll_timeout_ms=LONG_POLL_MS) as emu:
        yield emu


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The e2e settings with CI stream timings (watchdog margin, backoff)."""
    return settings.model_copy(update={"stream_long_poll_margin_s": MARGIN_S, "stream_backoff_base_s": BACKOFF_BASE_S,
                                       "stream_backoff_cap_s": BACKOFF_CAP_S})


@pytest.fixture
async def ops(emulator: EmulatorThread) -> AsyncIterator[httpx.AsyncClient]:
    """Raw GETs on the control API (the ControlClient has no call for the streaming views)."""
    async with httpx.AsyncClient(base_url=emulator.url, verify=ssl.create_default_context(cafile=emulator.ca_file),
                                 headers={TOKEN_HEADER: emulator.control_token}, timeout=30.0) as client:
        yield client


@pytest.fixture
async def probes(control: ControlClient) -> list[str]:
    """Fresh opportunities (no line items: their jobs end in Error at once, no CPU spent on signing),
    created before any daemon runs; each one is used for one probe."""
    account = (await control.query("SELECT Id FROM Account LIMIT 1"))[0]["Id"]
    return [await control.create("Opportunity", {"Name": f"Streaming probe {n}", "StageName": "Prospecting",
                                                 "CloseDate": "2027-06-30", "AccountId": account}, user=REP)
            for n in range(4)]


# ------------------------------------------------------------------------------------------- helpers


async def on_emulator(
    emulator: EmulatorThread, fn: Callable[[Emulator], Coroutine[Any, Any, T]], within_s: float = 90
) -> T:
    """Run `fn` on the emulator's loop: a fault and a publish there happen before any request is served."""
    return await asyncio.to_thread(emulator.call, fn(emulator.emulator), within_s)


async def until(check: Callable[[], Awaitable[bool]], within_s: float = WAIT_S) -> None:
    """Poll `check` (state outside this loop: the emulator's thread, the log capture) until it holds."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110 - nothing to await: the state lives elsewhere
            await asyncio.sleep(0.02)


def rep_id(emu: Emulator) -> str:
    user = emu.org.store.user_by_username(REP)
    assert user is not None
    return str(user["Id"])


def move_stage(emu: Emulator, opp: str) -> None:
    emu.org.store.update("Opportunity", opp, {"StageName": PROPOSAL}, user_id=rep_id(emu))


def request_signature(emu: Emulator, opp: str) -> None:
    emu.org.store.insert("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "probe"}, user_id=rep_id(emu))


PRESETS = {"LATEST": -1, "EARLIEST": -2}  # a Pub/Sub start without a replay id, in CometD's numbers


async def subscribe_log(ops: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every subscribe the org saw, on either transport (one is in use per test), in CometD's terms:
    `channel`, `replay` (the position it resumed after, -1 new events only, -2 all retained), `successful`."""
    response = await ops.get("/_control/streaming/subscriptions")
    response.raise_for_status()
    log = list(response.json()["subscriptions"])
    response = await ops.get("/_control/pubsub/subscriptions")
    response.raise_for_status()
    for entry in response.json()["subscriptions"]:
        replay = entry["position"] if entry["preset"] == "CUSTOM" else PRESETS[entry["preset"]]
        log.append({"clientId": entry["rpcId"], "channel": entry["topic"], "replay": replay,
                    "successful": entry.get("successful", False), "error": entry.get("error")})
    return log


async def last_event_ids(ops: httpx.AsyncClient) -> dict[str, int]:
    """The newest retained replay id of each channel the daemon listens to."""
    out: dict[str, int] = {}
    for channel in CHANNELS:
        response = await ops.get("/_control/streaming/events", params={"channel": channel})
        response.raise_for_status()
        events = response.json()["events"]
        if events:
            out[channel] = int(events[-1]["replayId"])
    return out


async def retained_ids(ops: httpx.AsyncClient) -> dict[str, list[int]]:
    """The replay ids the emulator retains on each channel, oldest first."""
    out: dict[str, list[int]] = {}
    for channel in CHANNELS:
        response = await ops.get("/_control/streaming/events", params={"channel": channel})
        response.raise_for_status()
        out[channel] = [int(e["replayId"]) for e in response.json()["events"]]
    return out


def received(daemon: Daemon) -> dict[str, int]:
    """`sfsign_events_received_total` per channel, as the ops endpoint exports it."""
    registry = daemon.metrics.registry
    return {c: int(registry.get_sample_value("sfsign_events_received_total", {"channel": c}) or 0) for c in CHANNELS}


async def assert_each_delivered_once_after(
    ops: httpx.AsyncClient, daemon: Daemon, stored: dict[str, int], counted_before: dict[str, int] | None = None
) -> None:
    """The daemon received exactly the events retained after `stored` on its channels: none from before
    (a resubscribe from an older id) and none twice. Call it once the daemon has settled."""
    retained = await retained_ids(ops)
    counts = received(daemon)
    base = counted_before or {}
    got = {c: counts[c] - base.get(c, 0) for c in stored}
    expected = {c: len([r for r in retained[c] if r > stored[c]]) for c in stored}
    assert got == expected, (got, expected, stored)


def read_outbox(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Replay ids and jobs as they are on disk (a connection of our own, not the daemon's)."""
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        replay = {str(r["channel"]): replay_position(r["replay_id"] if r["replay_id"] is not None
                                                     else r["pubsub_replay_id"])
                  for r in conn.execute("SELECT channel, replay_id, pubsub_replay_id FROM replay")}
        jobs = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
        for job in jobs:  # a Pub/Sub job records its replay id as `0x…`: its bus position, as CometD's
            job["replay_id"] = None if job["replay_id"] is None else replay_position(job["replay_id"])
        return replay, jobs
    finally:
        conn.close()


async def outbox_file(settings: Settings) -> tuple[dict[str, int], list[dict[str, Any]]]:
    return await asyncio.to_thread(read_outbox, settings.data_dir / "outbox.sqlite")


async def wait_for_job(settings: Settings, record: str, source: str | None = None) -> dict[str, Any]:
    """The job of `record` in the outbox file (the probe arrived and was committed)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            _, jobs = await outbox_file(settings)
            found = [j for j in jobs if j["record_id"] == record and (source is None or j["source"] == source)]
            if found:
                assert len(found) == 1, found
                return found[0]
            await asyncio.sleep(0.05)


async def settle(daemon: Daemon, ops: httpx.AsyncClient, control: ControlClient, done: list[str]) -> dict[str, int]:
    """Wait until the worker is idle on `done` and every retained event is committed; the stored ids."""
    for opp in done:
        await wait_for_status(control, "Opportunity", opp, within_s=WAIT_S)
    async with asyncio.timeout(WAIT_S):
        while True:
            await asyncio.sleep(0.2)  # write-backs of the worker are change events too: let them land
            latest = await last_event_ids(ops)
            committed = {c: replay_position(r) for c in CHANNELS if (r := daemon.outbox.committed_replay_id(c))}
            if all(committed.get(c) == latest.get(c) for c in CHANNELS):
                return committed


def resubscribes(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Replay id of the first subscribe per channel in `entries` (-1 for a fresh subscription)."""
    first: dict[str, Any] = {}
    for entry in entries:
        first.setdefault(entry["channel"], entry["replay"])
    return first


def expected_replay(stored: dict[str, int]) -> dict[str, int]:
    return {c: stored.get(c, -1) for c in CHANNELS}


class HealthWatch:
    """Samples `daemon.health.subscribed` (what /readyz reports) and keeps its distinct runs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.runs: list[bool] = []
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            value = self.daemon.health.subscribed
            if not self.runs or self.runs[-1] != value:
                self.runs.append(value)
            await asyncio.sleep(0.01)

    async def wait_for(self, value: bool) -> None:
        """Until the sampler itself has recorded `value` (not merely the attribute: no lost run)."""
        async with asyncio.timeout(WAIT_S):
            while not (self.runs and self.runs[-1] == value):  # noqa: ASYNC110 - a plain attribute
                await asyncio.sleep(0.01)

    async def stop(self) -> list[bool]:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.runs


def stream_events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e.get("event") == f"salesforce.stream.{name}"]


def assert_silent(logs: Logs, health: list[bool]) -> None:
    """A routine recovery: readiness never dropped and nothing alarming was logged."""
    assert health == [True], health
    assert not stream_events(logs, "disconnected")
    assert not stream_events(logs, "failure")
    assert stream_events(logs, "recovered")


# ------------------------------------------------------------------------------------------ S1 - S3


@both_transports
async def test_s1_cdc_and_platform_events_arrive_and_replay_ids_are_stored_only_after_the_outbox_commit(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
) -> None:
    acme = await record_id(control, "Opportunity", ACME)
    quote = await record_id(control, "Quote", GLOBEX_QUOTE)
    before = await last_event_ids(ops)
    async with run_daemon(settings, rules) as daemon:
        first = await subscribe_log(ops)
        await control.update("Opportunity", acme, {"StageName": PROPOSAL}, user=REP)
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[0]}, user=REP)
        assert (await wait_for_status(control, "Opportunity", acme))["Sign_Status__c"] == "Signed"
        assert (await wait_for_status(control, "Quote", quote))["Sign_Status__c"] == "Signed"
        await wait_for_job(settings, probes[0], "event")
        stored = await settle(daemon, ops, control, [probes[0]])
        # Another process holds the outbox's write lock while one more event arrives: the daemon has
        # received it, but until its commit goes through neither the file nor the replay id the stream
        # resubscribes from (the outbox's committed id) may have moved.
        counted = received(daemon)
        lock = await asyncio.to_thread(OutboxLock, settings.data_dir / "outbox.sqlite")
        try:
            await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
            await until(lambda: _true(received(daemon)[PE] > counted[PE]))
            await asyncio.sleep(0.5)  # give a premature advance time to show (the commit is blocked anyway)
            cached_while_locked = replay_position(daemon.outbox.committed_replay_id(PE))
            on_file_while_locked = await asyncio.to_thread(lock.replay_id, PE)
        finally:
            await asyncio.to_thread(lock.release)
        job = await wait_for_job(settings, probes[1], "event")
        cached_after = replay_position(daemon.outbox.committed_replay_id(PE))
        await settle(daemon, ops, control, [probes[0], probes[1]])
        await assert_each_delivered_once_after(ops, daemon, {c: before.get(c, 0) for c in CHANNELS})
    on_file, jobs = await outbox_file(settings)

    # first start: new change events only (reconciliation covers records); every retained platform event
    assert resubscribes(first) == {OPP_CDC: -1, QUOTE_CDC: -1, PE: -2}
    assert cached_while_locked == on_file_while_locked == stored[PE] < job["replay_id"]
    assert cached_after == job["replay_id"]
    retained = await retained_ids(ops)
    assert on_file == {c: retained[c][-1] for c in CHANNELS}  # every channel, up to its newest event
    by_record = {j["record_id"]: j for j in jobs}
    assert set(by_record) == {acme, quote, probes[0], probes[1]}
    for found in by_record.values():
        assert found["replay_id"] in retained[found["channel"]]


class OutboxLock:
    """Another process's write transaction on the outbox file (as a backup tool or `sqlite3` shell might
    hold): the daemon's writes wait for it (busy timeout), its reads do not."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN IMMEDIATE")

    def replay_id(self, channel: str) -> int | None:
        row = self._conn.execute("SELECT replay_id, pubsub_replay_id FROM replay WHERE channel = ?",
                                 (channel,)).fetchone()
        return None if row is None else replay_position(row[0] if row[0] is not None else row[1])

    def release(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def daemon_process(settings: Settings, ops: httpx.AsyncClient, work: Path) -> AsyncIterator[int]:
    """`python -m sfsign.cli run` with production stream timings; yields its pid (and process group)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_") or k == PASSPHRASE_ENV}
    assert settings.private_key_file is not None and settings.ca_bundle is not None
    env.update({
        "SFSIGN_LOGIN_URL": settings.login_url, "SFSIGN_AUTH_FLOW": "jwt", "SFSIGN_CONSUMER_KEY": settings.consumer_key,
        "SFSIGN_USERNAME": settings.username, "SFSIGN_PRIVATE_KEY_FILE": str(settings.private_key_file),
        "SFSIGN_CA_BUNDLE": str(settings.ca_bundle), "SFSIGN_DATA_DIR": str(settings.data_dir),
        "SFSIGN_RULES_FILE": str(settings.rules_file), "SFSIGN_OPS_PORT": "0",
        "SFSIGN_TRANSPORT": settings.transport, "SFSIGN_PUBSUB_URL": settings.pubsub_url,
        "SFSIGN_SECRETS_DIR": str(work / "no-secrets"),
        "SFSIGN_CPU_WORKERS": "1", "SFSIGN_LOG_LEVEL": "INFO", "SFSIGN_LOG_FORMAT": "json",
    })
    before = len(await subscribe_log(ops))
    with (work / "daemon.log").open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfsign.cli", "run", env=env, cwd=work, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        async with asyncio.timeout(WAIT_S):
            while len([e for e in (await subscribe_log(ops))[before:] if e.get("successful")]) < len(CHANNELS):
                assert proc.returncode is None, (work / "daemon.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
        yield proc.pid
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@both_transports
async def test_s2_restart_after_a_crash_resumes_from_the_stored_ids_and_nothing_arrives_twice(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, tmp_path: Path,
) -> None:
    async with daemon_process(settings, ops, tmp_path) as pid:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        for opp in probes[:2]:
            await wait_for_job(settings, opp)
            await wait_for_status(control, "Opportunity", opp, within_s=WAIT_S)
        os.killpg(pid, signal.SIGKILL)  # the crash: nothing gets a chance to flush or acknowledge
    stored, jobs_before = await outbox_file(settings)
    assert {OPP_CDC, PE} <= set(stored)

    await control.update("Opportunity", probes[2], {"StageName": PROPOSAL}, user=REP)  # while away
    await control.publish("Sign_Request__e", {"RecordId__c": probes[3]}, user=REP)
    before = len(await subscribe_log(ops))
    async with run_daemon(settings, rules) as daemon:
        await wait_for_job(settings, probes[2], "cdc")
        await wait_for_job(settings, probes[3], "event")
        log = (await subscribe_log(ops))[before:]
        await settle(daemon, ops, control, probes[2:])
        await assert_each_delivered_once_after(ops, daemon, stored)  # none from before the crash, none twice
    _, jobs = await outbox_file(settings)

    assert resubscribes(log) == expected_replay(stored)
    assert all(e["successful"] for e in log), log
    assert sorted(j["record_id"] for j in jobs) == sorted(probes)
    assert [j["transaction_id"] for j in jobs[: len(jobs_before)]] == [j["transaction_id"] for j in jobs_before]


@both_transports
async def test_s2_a_channel_that_had_no_event_yet_still_gets_what_was_published_while_away(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
) -> None:
    async with run_daemon(settings, rules):
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await wait_for_job(settings, probes[0], "cdc")
    stored, _ = await outbox_file(settings)
    assert QUOTE_CDC not in stored
    quote = await record_id(control, "Quote", GLOBEX_QUOTE)
    await control.update("Quote", quote, {"Status": "Approved"}, user=REP)  # while away
    async with run_daemon(settings, rules):
        await control.update("Opportunity", probes[1], {"StageName": PROPOSAL}, user=REP)
        await wait_for_job(settings, probes[1], "cdc")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await wait_for_job(settings, quote)
    _, jobs = await outbox_file(settings)
    assert quote in {j["record_id"] for j in jobs}, "the quote approved while the daemon was down was never signed"


@both_transports
async def test_s3_an_event_whose_handling_fails_is_not_acknowledged_and_is_redelivered_after_restart(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    logs: Logs,
) -> None:
    gap_opp = probes[0]
    await control.update("Opportunity", gap_opp, {"StageName": PROPOSAL}, user=REP)  # before any subscription
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[1], {"StageName": PROPOSAL}, user=REP)
        await wait_for_job(settings, probes[1], "cdc")
        await settle(daemon, ops, control, [probes[1]])
        # The re-read a gap event needs fails: Salesforce answers every query with 503.
        fault = await control.post("/_control/faults/errors", {"prefix": "/services/data/v68.0/query", "status": 503})
        gap = (await control.post("/_control/streaming/gap", {"entity": "Opportunity", "recordIds": [gap_opp]}))

        async def retried_twice() -> bool:
            tries = [e for e in logs if "max_attempts" in e and replay_position(e.get("replay_id")) == gap["replayId"]]
            return len(tries) >= 2

        await until(retried_twice)
        assert daemon.outbox.committed_replay_id(OPP_CDC) is not None
        stored_while_failing, _ = await outbox_file(settings)
    stored, jobs = await outbox_file(settings)
    await ops.delete(f"/_control/faults/{fault['id']}")

    assert stored_while_failing[OPP_CDC] < gap["replayId"] and stored[OPP_CDC] < gap["replayId"]
    assert gap_opp not in {j["record_id"] for j in jobs}
    before = len(await subscribe_log(ops))
    async with run_daemon(settings, rules) as daemon:
        job = await wait_for_job(settings, gap_opp, "gap")
        log = (await subscribe_log(ops))[before:]
        await settle(daemon, ops, control, [gap_opp])
        await assert_each_delivered_once_after(ops, daemon, stored)  # the gap event once, and nothing older
    assert resubscribes(log)[OPP_CDC] == stored[OPP_CDC]
    assert job["replay_id"] == gap["replayId"]


# ------------------------------------------------------------------------------------------ S4 - S9


# CometD by nature: drives the Bayeux client registry (Pub/Sub: a dropped stream, test_pubsub_transport)
@pytest.mark.parametrize("transport", ["cometd"])
async def test_s4_unknown_client_rehandshakes_and_resubscribes_from_the_stored_ids_silently(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        before = len(await subscribe_log(ops))
        logs.clear()
        watch = HealthWatch(daemon)

        async def forget_then_publish(emu: Emulator) -> int:
            forgotten = emu.bayeux.forget()
            move_stage(emu, probes[2])  # queued for nobody: only the replay from the stored id delivers it
            return forgotten

        assert await on_emulator(emulator, forget_then_publish) == 1
        await wait_for_job(settings, probes[2], "cdc")
        log = (await subscribe_log(ops))[before:]
        health = await watch.stop()

    assert resubscribes(log) == expected_replay(stored)
    assert len({e["clientId"] for e in log}) == 1 and all(e["successful"] for e in log)
    assert [e["kind"] for e in stream_events(logs, "recovering")] == ["handshake"]
    assert_silent(logs, health)


@both_transports
async def test_s5_server_killed_and_restarted_reconnects_with_backoff_and_replays_what_was_published(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        counted = received(daemon)
        logs.clear()

        async def kill_restart_publish(emu: Emulator) -> None:
            await emu.stop()
            await asyncio.sleep(1.0)  # the scenario: the server stays down for a while (not a wait for anything)
            await emu.start()  # same port, org kept, Bayeux clients gone
            move_stage(emu, probes[2])
            request_signature(emu, probes[3])

        await on_emulator(emulator, kill_restart_publish)
        await wait_for_job(settings, probes[2], "cdc")
        await wait_for_job(settings, probes[3], "event")
        log = await subscribe_log(ops)  # the restarted server's log: only the resubscribes
        await settle(daemon, ops, control, probes[2:])
        await assert_each_delivered_once_after(ops, daemon, stored, counted)  # nothing from before, none twice

    assert resubscribes(log) == expected_replay(stored)
    delays = [e["retry_in_s"] for e in stream_events(logs, "failure")]
    assert delays and all(0 < d <= BACKOFF_CAP_S for d in delays), delays
    assert len(stream_events(logs, "disconnected")) == len(stream_events(logs, "reconnected")) == 1


# CometD by nature: cuts a held /meta/connect (Pub/Sub: UNAVAILABLE, test_pubsub_transport)
@pytest.mark.parametrize("transport", ["cometd"])
async def test_s6_tcp_connection_cut_mid_long_poll_loses_nothing_and_raises_no_alarm(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        before = len(await subscribe_log(ops))
        logs.clear()
        watch = HealthWatch(daemon)

        async def publish_then_cut(emu: Emulator) -> bool:
            if not any(c.pending is not None for c in emu.bayeux.clients.values()):
                return False  # between two long polls: try again
            move_stage(emu, probes[2])  # the server puts it in the held answer, which never arrives
            return emu.bayeux.drop_connections() >= 1

        await until(lambda: on_emulator(emulator, publish_then_cut))
        await wait_for_job(settings, probes[2], "cdc")
        # Quiet for longer than a long poll + the watchdog margin: no false timeout after the reconnect.
        await asyncio.sleep(LONG_POLL_MS / 1000 + MARGIN_S + 0.5)
        log = (await subscribe_log(ops))[before:]
        health = await watch.stop()
        still_subscribed = daemon.health.subscribed

    assert resubscribes(log) == expected_replay(stored)  # a new session: the cut answer may have held events
    assert [e["kind"] for e in stream_events(logs, "recovering")] == ["handshake"]
    assert_silent(logs, health)
    assert still_subscribed


@both_transports
async def test_s7_server_unreachable_gives_one_disconnected_signal_capped_backoff_and_recovery_with_replay(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        logs.clear()
        watch = HealthWatch(daemon)

        async def outage(emu: Emulator) -> None:
            await emu.stop()
            await asyncio.sleep(OUTAGE_S)  # the scenario: an outage this long (not a wait for anything)
            await emu.start()
            move_stage(emu, probes[2])
            request_signature(emu, probes[3])

        await on_emulator(emulator, outage, within_s=OUTAGE_S + 90)
        await wait_for_job(settings, probes[2], "cdc")
        await wait_for_job(settings, probes[3], "event")
        await watch.wait_for(True)
        log = await subscribe_log(ops)
        health = await watch.stop()
        metrics = daemon.metrics.registry
        disconnects = metrics.get_sample_value("sfsign_stream_disconnects_total")
        connected = metrics.get_sample_value("sfsign_stream_connected")

    assert disconnects == 1 and connected == 1  # the ops signal: one outage, recovered
    assert health == [True, False, True], health  # readiness dropped once and came back once
    [down] = stream_events(logs, "disconnected")
    assert down["log_level"] == "error"
    assert len(stream_events(logs, "reconnected")) == 1
    delays = [e["retry_in_s"] for e in stream_events(logs, "failure")]
    assert all(0 < d <= BACKOFF_CAP_S for d in delays), delays  # capped, never a tight loop
    assert max(delays) >= BACKOFF_CAP_S / 2, delays  # grew to the cap
    # Each delay is at least half its ceiling: an outage allows only so many attempts.
    growth = math.ceil(math.log2(BACKOFF_CAP_S / BACKOFF_BASE_S)) + 1
    assert len(delays) <= growth + math.ceil(OUTAGE_S / (BACKOFF_CAP_S / 2)) + 2, delays
    assert resubscribes(log) == expected_replay(stored)


# CometD by nature: Bayeux 401 / HTTP 401 on /meta/connect (Pub/Sub: UNAUTHENTICATED, test_pubsub_transport)
@pytest.mark.parametrize("transport", ["cometd"])
@pytest.mark.parametrize("mode", ["bayeux", "http"], ids=["S8-bayeux-401", "S9-raw-http-401"])
async def test_s8_s9_revoked_token_reauthenticates_once_and_resubscribes_from_the_stored_ids(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs, mode: str,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        assert daemon.authenticator is not None
        logins = daemon.authenticator.logins
        before = len(await subscribe_log(ops))
        logs.clear()

        async def revoke_then_publish(emu: Emulator) -> int:
            emu.org.faults.cometd_auth_failure = mode
            revoked = emu.org.revoke(None)
            request_signature(emu, probes[2])  # queued to the old session, which is never served again
            return revoked

        assert await on_emulator(emulator, revoke_then_publish) >= 1
        await wait_for_job(settings, probes[2], "event")
        await wait_for_status(control, "Opportunity", probes[2], within_s=WAIT_S)  # REST used the new token too
        log = (await subscribe_log(ops))[before:]
        relogins = daemon.authenticator.logins - logins

    assert relogins == 1  # never a loop on the stale token
    auth_failures = [e for e in stream_events(logs, "recovering") + stream_events(logs, "failure")
                     if e["kind"] == "auth"]
    assert len(auth_failures) == 1, auth_failures
    assert ("HTTP 401 INVALID_SESSION_ID" if mode == "http" else "401::Authentication invalid") in \
        auth_failures[0]["reason"]
    assert resubscribes(log) == expected_replay(stored)
    assert not stream_events(logs, "disconnected")


# ----------------------------------------------------------------------------------------- S10 - S12


@both_transports
async def test_s10_stored_id_outside_retention_at_start_subscribes_new_events_and_reconciles(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
) -> None:
    await control.update("Opportunity", probes[1], {"Description": "seen by an earlier run"}, user=REP)
    old = (await last_event_ids(ops))[OPP_CDC]
    store = await asyncio.to_thread(OutboxStore, settings.data_dir / "outbox.sqlite")
    left = old if settings.transport == "cometd" else encode_replay_id(old)  # the emulator's Pub/Sub id of it
    await asyncio.to_thread(store.commit_event, OPP_CDC, left, [])  # what an earlier run left in the outbox
    await asyncio.to_thread(store.close)
    await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)  # missed
    assert (await control.post("/_control/streaming/purge", {}))["purged"] >= 2  # both fell out of retention

    async with run_daemon(settings, rules):
        missed = await wait_for_job(settings, probes[0], "reconcile")

        async def subscribed_afresh() -> bool:  # the reconciliation can finish before the new subscription
            return any(e["channel"] == OPP_CDC and e["replay"] == -1 and e.get("successful")
                       for e in await subscribe_log(ops))

        await until(subscribed_afresh)  # a change made before it would be found by the gap's reconciliation
        await control.update("Opportunity", probes[2], {"StageName": PROPOSAL}, user=REP)
        probe = await wait_for_job(settings, probes[2], "cdc")
        log = await subscribe_log(ops)
    stored, _ = await outbox_file(settings)

    opp_log = [e for e in log if e["channel"] == OPP_CDC]
    assert (opp_log[0]["replay"], opp_log[0]["successful"]) == (old, False)
    refusal = "you provided was invalid" if settings.transport == "cometd" else "replayid.corrupted"
    assert refusal in opp_log[0]["error"]
    assert (opp_log[1]["replay"], opp_log[1]["successful"]) == (-1, True)
    assert missed["replay_id"] is None and probe["replay_id"] <= stored[OPP_CDC]


@both_transports
async def test_s11_stored_id_expiring_during_an_outage_is_refused_loudly_then_new_events_and_reconciliation(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])

        async def outage_past_retention(emu: Emulator) -> None:
            await emu.stop()
            await asyncio.sleep(1.0)  # the scenario: the server stays down for a while (not a wait for anything)
            await emu.start()
            move_stage(emu, probes[2])
            emu.org.bus.purge(up_to_replay_id=emu.org.bus.last_replay_id)  # the retention window passed

        await on_emulator(emulator, outage_past_retention)
        missed = await wait_for_job(settings, probes[2], "reconcile")

        async def subscribed_afresh() -> bool:  # the reconciliation can finish before the new subscription
            opp = [e for e in await subscribe_log(ops) if e["channel"] == OPP_CDC]
            refused = [i for i, e in enumerate(opp) if e["replay"] == stored[OPP_CDC] and not e.get("successful")]
            return bool(refused) and any(e["replay"] == -1 and e.get("successful") for e in opp[refused[0]:])

        await until(subscribed_afresh)  # a change made before it would be found by the gap's reconciliation
        await control.update("Opportunity", probes[3], {"StageName": PROPOSAL}, user=REP)
        await wait_for_job(settings, probes[3], "cdc")
        log = await subscribe_log(ops)
        clients = (await ops.get("/_control/streaming/clients")).json()["clients"]

    assert missed["source"] == "reconcile"
    for channel in (OPP_CDC, PE):
        attempts = [(e["replay"], e["successful"]) for e in log if e["channel"] == channel]
        start = -2 if channel == PE else -1  # what retention still holds of the platform events
        assert attempts[:2] == [(stored[channel], False), (start, True)], (channel, attempts)
    assert {e["channel"] for e in stream_events(logs, "replay_id_invalid")} == {OPP_CDC, PE}
    refused = [e for e in logs if e["log_level"] == "error" and {"channel", "replay_id"} <= e.keys()]
    assert {e["channel"] for e in refused} == {OPP_CDC, PE}  # loudly: the operator sees an error per channel
    if settings.transport == "cometd":  # one Bayeux client holds them all (Pub/Sub: a stream per channel)
        assert any(set(c["subscriptions"]) == set(CHANNELS) for c in clients), clients  # none dropped


# CometD by nature: holds /meta/connect unanswered (Pub/Sub: no keepalive, test_pubsub_transport)
@pytest.mark.parametrize("transport", ["cometd"])
async def test_s12_half_open_long_poll_is_abandoned_after_advice_timeout_plus_margin_and_nothing_is_lost(
    settings: Settings, rules: Rules, control: ControlClient, ops: httpx.AsyncClient, probes: list[str],
    emulator: EmulatorThread, logs: Logs,
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", probes[0], {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": probes[1]}, user=REP)
        stored = await settle(daemon, ops, control, probes[:2])
        before = len(await subscribe_log(ops))
        logs.clear()
        watch = HealthWatch(daemon)

        async def hold_then_publish(emu: Emulator) -> bool:
            if not any(c.pending is not None for c in emu.bayeux.clients.values()):
                return False  # between two long polls: try again
            emu.org.faults.cometd_hold_connects = True  # accepted, never answered
            move_stage(emu, probes[2])
            return True

        await until(lambda: on_emulator(emulator, hold_then_publish))
        await watch.wait_for(False)  # the watchdog fired
        await control.post("/_control/streaming/hold-connects", {"enabled": False})
        await wait_for_job(settings, probes[2], "cdc")
        await watch.wait_for(True)
        log = (await subscribe_log(ops))[before:]
        health = await watch.stop()

    [failure, *_] = stream_events(logs, "failure")
    assert f"no answer within {LONG_POLL_MS / 1000 + MARGIN_S:g} s" in failure["reason"]  # advice.timeout + margin
    assert health[:3] == [True, False, True], health
    assert resubscribes(log) == expected_replay(stored)  # the unanswered poll may have eaten events
