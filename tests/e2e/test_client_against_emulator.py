"""The Salesforce client layer against the embedded emulator (real HTTPS, OAuth, REST, CometD).

The client was written from the reference facts, the emulator independently; these tests check
that the two agree. Faults are injected in-process through the emulator's own objects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sfsign.emulator.server", reason="the emulator is not importable")

from sfsign.emulator.server import Emulator
from sfsign.salesforce.auth import AuthConfig, Authenticator
from sfsign.salesforce.events import ChangeEvent, PlatformEvent, parse_event
from sfsign.salesforce.pubsub_client import PubSubStream
from sfsign.salesforce.record_parsing import fetch_records
from sfsign.salesforce.records import OpportunityRecord, find_records_in_state
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient

CDC = "/data/OpportunityChangeEvent"
PE = "/event/Sign_Request__e"
WAIT_S = 15.0


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "emulator", long_poll_timeout_ms=1500, client_timeout_s=3.0) as emu:
        yield emu


def jwt_config(emulator: Emulator) -> AuthConfig:
    login = emulator.login
    return AuthConfig(login_url=emulator.url, flow="jwt", consumer_key=login.consumer_key, username=login.username,
                      private_key_file=login.private_key_file, ca_bundle=emulator.ca_file)


@pytest.fixture
async def auth(emulator: Emulator) -> AsyncIterator[Authenticator]:
    authenticator = Authenticator(jwt_config(emulator))
    yield authenticator
    await authenticator.aclose()


@pytest.fixture
async def rest(auth: Authenticator) -> AsyncIterator[SalesforceRest]:
    client = SalesforceRest(auth, api_version="68.0")
    yield client
    await client.close()


async def opportunity_ids(rest: SalesforceRest, n: int = 3) -> list[str]:
    rows = await rest.query(f"SELECT Id FROM Opportunity ORDER BY Name LIMIT {n}")
    assert rows, "the seeded org has no opportunities"
    return [str(r["Id"]) for r in rows]


def rep_user_id(emulator: Emulator) -> str:
    assert emulator.rep_username
    user = emulator.org.store.user_by_username(emulator.rep_username)
    assert user is not None
    return str(user["Id"])


# ------------------------------------------------------------------------------------------ OAuth


async def test_all_three_oauth_flows_against_emulator(emulator: Emulator) -> None:
    login = emulator.login
    configs = [
        jwt_config(emulator),
        AuthConfig(login_url=emulator.url, flow="client_credentials", consumer_key=login.consumer_key,
                   consumer_secret=login.consumer_secret, ca_bundle=emulator.ca_file),
        AuthConfig(login_url=emulator.url, flow="password", consumer_key=login.consumer_key,
                   consumer_secret=login.consumer_secret, username=login.username,
                   password=type(login.password)(login.password.get_secret_value()
                                                 + login.security_token.get_secret_value()),
                   ca_bundle=emulator.ca_file),
    ]
    for config in configs:
        authenticator = Authenticator(config)
        token = await authenticator.token()
        await authenticator.aclose()
        assert token.instance_url == emulator.url, config.flow
        assert token.org_id and token.org_id.startswith("00D"), config.flow


# ------------------------------------------------------------------------------------------- REST


async def test_fetch_records_and_reconciliation_query_against_emulator(rest: SalesforceRest) -> None:
    ids = await opportunity_ids(rest)
    records = await fetch_records(rest, "Opportunity", ids)
    assert set(ids) <= set(records)
    assert all(isinstance(r, OpportunityRecord) and r.name for r in records.values())
    assert rest.api_usage is not None and rest.api_usage[0] > 0
    stages = sorted({r.stage for r in records.values() if isinstance(r, OpportunityRecord) and r.stage})
    found = await find_records_in_state(rest, "Opportunity", "StageName", stages)
    assert all(len(i) == 18 for i in found)


async def test_update_many_reports_per_record_errors_against_emulator(rest: SalesforceRest) -> None:
    good = (await opportunity_ids(rest, 1))[0]
    results = await rest.update_many([
        ("Opportunity", good, {"Sign_Status__c": "Pending"}),
        ("Opportunity", "006000000000000AAA", {"Sign_Status__c": "Pending"}),
    ])
    assert results[0].success and not results[1].success
    assert results[1].error is not None and not results[1].error.transient
    assert (await rest.get("Opportunity", good, ["Sign_Status__c"]))["Sign_Status__c"] == "Pending"


async def test_content_version_upload_lookup_and_download_against_emulator(rest: SalesforceRest) -> None:
    opp = (await opportunity_ids(rest, 1))[0]
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    cv_id = await rest.insert_content_version(title="Contract", path_on_client="Contract.pdf", data=pdf,
                                              first_publish_location_id=opp, transaction_id="tx-e2e-1")
    assert cv_id.startswith("068")
    ref = await rest.find_content_version("tx-e2e-1")
    assert ref is not None and ref.id == cv_id and ref.content_document_id
    assert await rest.content_document_id(cv_id) == ref.content_document_id
    assert await rest.find_content_version("tx-unknown") is None
    assert await rest.download_version_data(cv_id) == pdf
    links = await rest.query(
        f"SELECT ContentDocumentId, LinkedEntityId FROM ContentDocumentLink WHERE LinkedEntityId = '{opp}'")
    assert ref.content_document_id in {r["ContentDocumentId"] for r in links}


async def test_expired_token_is_refreshed_once_against_emulator(
    emulator: Emulator, auth: Authenticator, rest: SalesforceRest
) -> None:
    await opportunity_ids(rest, 1)
    logins = auth.logins
    emulator.org.revoke(None)
    await opportunity_ids(rest, 1)
    assert auth.logins == logins + 1


# -------------------------------------------------------------------------------------- streaming


class Consumer:
    """Runs `messages()` in a task, commits every replay id at once, parses every event."""

    def __init__(self, client: StreamClient, committed: dict[str, int]) -> None:
        self.client = client
        self.committed = committed
        self.events: list[ChangeEvent | PlatformEvent] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.client.messages():
            event = parse_event(message)
            self.events.append(event)
            self.committed[event.channel] = event.replay_id
            self.changed.set()

    async def wait_for(self, predicate: Callable[[ChangeEvent | PlatformEvent], bool]) -> Any:
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self.task.done():
                    self.task.result()
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.aclose()


async def wait_ready(client: StreamClient) -> None:
    async with asyncio.timeout(WAIT_S):
        # readiness is plain attributes (as the daemon's health check reads them): poll
        while not (client.connected and set(client.channels) <= set(client.subscribed_replay)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def stream_client(auth: Authenticator, committed: dict[str, int], **kwargs: Any) -> StreamClient:
    return StreamClient(auth, channels=[CDC, PE], replay_source=committed.get, api_version="68.0",
                        long_poll_margin_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.5, **kwargs)


async def probe(rest: SalesforceRest, consumer: Consumer, record_id: str, reason: str) -> PlatformEvent:
    uuid = await rest.publish_event("Sign_Request__e", {"RecordId__c": record_id, "Reason__c": reason})
    event = await consumer.wait_for(lambda e: isinstance(e, PlatformEvent) and e.event_uuid == uuid)
    assert isinstance(event, PlatformEvent)
    return event


async def test_cdc_and_platform_events_arrive_against_emulator(
    emulator: Emulator, auth: Authenticator, rest: SalesforceRest
) -> None:
    committed: dict[str, int] = {}
    consumer = Consumer(stream_client(auth, committed), committed)
    try:
        await wait_ready(consumer.client)
        opp = (await opportunity_ids(rest, 1))[0]
        event = await probe(rest, consumer, opp, "first")
        assert event.fields["RecordId__c"] == opp

        emulator.org.store.update("Opportunity", opp, {"Description": "changed by a rep"},
                                  user_id=rep_user_id(emulator))
        change = await consumer.wait_for(lambda e: isinstance(e, ChangeEvent) and opp in e.record_ids)
        assert change.change_type == "UPDATE" and "Description" in change.changed_fields
        assert change.fields["Description"] == "changed by a rep"
    finally:
        await consumer.stop()


async def test_unknown_client_and_revoked_tokens_recover_against_emulator(
    emulator: Emulator, auth: Authenticator, rest: SalesforceRest
) -> None:
    committed: dict[str, int] = {}
    consumer = Consumer(stream_client(auth, committed), committed)
    try:
        await wait_ready(consumer.client)
        opp = (await opportunity_ids(rest, 1))[0]
        await probe(rest, consumer, opp, "before")

        emulator.bayeux.forget()
        await probe(rest, consumer, opp, "after forget")
        assert consumer.client.reconnects >= 1

        for mode in ("bayeux", "http"):
            logins = auth.logins
            emulator.org.faults.cometd_auth_failure = mode
            emulator.org.revoke(None)
            await probe(rest, consumer, opp, f"after revoke ({mode})")
            assert auth.logins == logins + 1, mode  # REST and streaming share one re-login
    finally:
        await consumer.stop()


async def test_replay_id_outside_retention_raises_then_resets_against_emulator(
    emulator: Emulator, auth: Authenticator, rest: SalesforceRest
) -> None:
    opp = (await opportunity_ids(rest, 1))[0]
    await rest.publish_event("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "old"})
    old = emulator.org.bus.last_replay_id
    await rest.publish_event("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "newer"})
    emulator.org.bus.purge(up_to_replay_id=emulator.org.bus.last_replay_id)

    committed = {PE: old}
    client = StreamClient(auth, channels=[PE], replay_source=committed.get, api_version="68.0")
    with pytest.raises(ReplayIdInvalid) as caught:
        async with asyncio.timeout(WAIT_S):
            async for _ in client.messages():
                pass
    assert (caught.value.channel, caught.value.replay_id) == (PE, old)
    client.reset_replay(PE)
    consumer = Consumer(client, committed)
    try:
        await wait_ready(client)
        assert client.subscribed_replay[PE] == -1
        await probe(rest, consumer, opp, "after reset")
    finally:
        await consumer.stop()


async def test_dropped_and_unanswered_long_polls_recover_against_emulator(
    emulator: Emulator, auth: Authenticator, rest: SalesforceRest
) -> None:
    committed: dict[str, int] = {}
    client = StreamClient(auth, channels=[CDC, PE], replay_source=committed.get, api_version="68.0",
                          long_poll_margin_s=0.5, backoff_base_s=0.05, backoff_cap_s=0.5)
    consumer = Consumer(client, committed)
    try:
        await wait_ready(client)
        opp = (await opportunity_ids(rest, 1))[0]
        await probe(rest, consumer, opp, "before")

        emulator.bayeux.drop_connections()  # TCP connections cut mid long-poll
        await probe(rest, consumer, opp, "after drop")

        emulator.org.faults.cometd_hold_connects = True  # half-open: connects accepted, never answered
        emulator.bayeux.wake_all("fault")
        async with asyncio.timeout(WAIT_S):
            while client.connected:  # noqa: ASYNC110 - the watchdog flips a plain attribute
                await asyncio.sleep(0.05)
        assert client.disconnected_since is not None
        emulator.org.faults.cometd_hold_connects = False
        await probe(rest, consumer, opp, "after half-open")
        assert client.connected
    finally:
        await consumer.stop()


async def test_pubsub_stream_closed_while_the_consumer_holds_its_window_resumes_after_the_committed_id(
    tmp_path: Path,
) -> None:
    """Salesforce closes a Subscribe stream that has nothing requested and gets no FetchRequest for 60 s (here
    0.5 s). The client holds a full window while its consumer is busy, so that close must cost nothing: the
    client subscribes again after the id the consumer committed and every event arrives once, in order."""
    async with Emulator(data_dir=tmp_path / "emulator", pubsub_fetch_idle_s=0.5) as emulator:
        auth = Authenticator(jwt_config(emulator))
        rest = SalesforceRest(auth, api_version="68.0")
        committed: dict[str, bytes] = {}
        stream = PubSubStream(auth, channels=[CDC], replay_source=committed.get, target=emulator.pubsub_target,
                              ca_bundle=emulator.ca_file, batch_size=2, backoff_base_s=0.05, backoff_cap_s=0.2)
        opp = (await opportunity_ids(rest, 1))[0]
        seen: list[str] = []

        async def consume() -> None:
            async for message in stream.messages():
                event = parse_event(message)
                assert isinstance(event, ChangeEvent)
                seen.append(str(event.fields.get("Description")))
                committed[CDC] = event.replay_id  # type: ignore[assignment]
                if len(seen) == 2:  # busy with the window: nothing requested until the server closed the stream
                    async with asyncio.timeout(WAIT_S):
                        while emulator.pubsub.streams:  # noqa: ASYNC110
                            await asyncio.sleep(0.05)
                if len(seen) == 5:
                    return

        task = asyncio.create_task(consume())
        try:
            async with asyncio.timeout(WAIT_S):
                while not emulator.pubsub.streams:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            for n in range(5):
                emulator.org.store.update("Opportunity", opp, {"Description": f"change {n}"},
                                          user_id=rep_user_id(emulator))
            await asyncio.wait_for(task, WAIT_S)
            assert seen == [f"change {n}" for n in range(5)]
            subscribes = [e for e in emulator.pubsub.subscribe_log if e["topic"] == CDC]
            assert len(subscribes) == 2 and subscribes[1]["preset"] == "CUSTOM"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()
            await rest.close()
            await auth.aclose()
