"""SFSIGN_TRANSPORT: the connection factory builds the chosen client, and `sfsign check` proves each channel
over Pub/Sub (GetTopic + GetSchema) through the same TLS channel and headers the daemon uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_pubsub import FakePubSub, start, tls_files
from pubsub_schemas import ACCOUNT_CDC, SIGN_REQUEST
from sf_fakes import FakeAuth

from sfsign.check.org import _check_pubsub
from sfsign.config import Settings, load_rules
from sfsign.connections import SalesforceSession
from sfsign.salesforce.pubsub_client import PubSubStream
from sfsign.salesforce.stream import StreamClient

REPO = Path(__file__).resolve().parents[3]


def settings(**values: object) -> Settings:
    return Settings(auth_flow="client_credentials", consumer_key="key", consumer_secret="secret",  # type: ignore[arg-type]
                    **values)


async def test_the_transport_setting_chooses_the_client() -> None:
    assert settings().transport == "pubsub"  # Salesforce's recommended transport, since both pass the suites
    async with SalesforceSession(settings(transport="cometd")) as session:
        assert isinstance(session.open_stream(["/data/OpportunityChangeEvent"], lambda _c: None), StreamClient)
    async with SalesforceSession(settings(transport="pubsub", pubsub_batch=25)) as session:
        stream = session.open_stream(["/data/OpportunityChangeEvent"], lambda _c: None)
        assert isinstance(stream, PubSubStream) and stream._batch == 25
        assert stream._target == "api.pubsub.salesforce.com:7443"


def test_the_pubsub_settings_are_checked_at_start() -> None:
    assert settings(pubsub_url="https://api.pubsub.salesforce.com:443/").pubsub_url == "api.pubsub.salesforce.com:443"
    for bad in ({"pubsub_url": "api.pubsub.salesforce.com"}, {"pubsub_batch": 101}, {"transport": "websocket"}):
        with pytest.raises(ValueError):
            settings(**bad)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[FakePubSub, int, Path]]:
    ca, key, cert = tls_files(tmp_path)
    fake = FakePubSub({"opp": ACCOUNT_CDC, "sr": SIGN_REQUEST},
                      {"/data/OpportunityChangeEvent": "opp", "/event/Sign_Request__e": "sr"})
    grpc_server, port = await start(fake, key, cert)
    try:
        yield fake, port, ca
    finally:
        await grpc_server.stop(grace=None)


async def test_check_proves_each_pubsub_channel_with_a_fake_pubsub_server_and_a_fake_login(
    server: tuple[FakePubSub, int, Path],
) -> None:
    fake, port, ca = server
    rules = load_rules(REPO / "config" / "rules.yaml")
    async with SalesforceSession(settings(transport="pubsub", pubsub_url=f"localhost:{port}", ca_bundle=ca)) as session:
        real, session.authenticator = session.authenticator, FakeAuth()  # type: ignore[assignment]
        try:
            checks = {c.name: c for c in await _check_pubsub(rules, session)}
        finally:
            session.authenticator = real
    assert set(checks) == {f"streaming {c}" for c in rules.channels()}
    assert checks["streaming /data/OpportunityChangeEvent"].ok
    assert "AccountChangeEvent (opp)" in checks["streaming /data/OpportunityChangeEvent"].detail
    assert checks["streaming /event/Sign_Request__e"].ok
    missing = [c for c in checks.values() if not c.ok]
    assert missing and all("topic.not.found" in c.detail for c in missing)
    assert {m for m, _ in fake.calls} == {"GetTopic", "GetSchema"}  # nothing subscribed, nothing read
