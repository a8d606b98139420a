"""Issue 11, part 3: our Bayeux client against a Bayeux server the project does not write.

faye (npm, `tests/bayeux/server.js`) runs on 127.0.0.1 over HTTPS with a CA minted for the test; the real
StreamClient talks to it. The one faked collaborator is the token provider (faye needs no Salesforce
login): it hands out a token whose instance URL is the faye server and the CA's verifying SSL context.

faye speaks the Bayeux 1.0 spec's own dialect: errors as `code:args:message` (`401:<clientId>:Unknown
client` when its engine has forgotten a client), advice on handshake and connect replies only, no replay
extension. Its server extensions (armed through the script's control API) inject what CometD servers
send (`402::session_unknown`) and `advice.reconnect` on successful replies.

Without node and npm these tests skip, except in CI (`CI` set), where they fail: `.ci/run` installs the
server with `npm ci --prefix tests/bayeux`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sfsign.emulator.tls import ensure_tls
from sfsign.salesforce.auth import AccessToken
from sfsign.salesforce.stream import StreamClient

BAYEUX_DIR = Path(__file__).resolve().parents[1] / "bayeux"
CDC = "/data/OpportunityChangeEvent"
WAIT_S = 30.0


def _faye_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BAYEUX_DIR / "node_modules" / "faye").is_dir():
        return "faye is not installed: run `npm ci --prefix tests/bayeux`"
    return None


class FakeTokenProvider:
    """A TokenProvider whose instance URL is the faye server (faye has no login); trusts the test CA."""

    def __init__(self, instance_url: str, context: ssl.SSLContext) -> None:
        self.instance_url = instance_url
        self._context = context
        self.refreshes = 0
        self._current = self._mint()

    def _mint(self) -> AccessToken:
        return AccessToken(access_token=SecretStr(f"interop-token-{self.refreshes}"), instance_url=self.instance_url,
                           issued_at=datetime.now(UTC))

    async def token(self) -> AccessToken:
        return self._current

    async def refresh(self, stale: AccessToken | None) -> AccessToken:
        self.refreshes += 1
        self._current = self._mint()
        return self._current

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._context


@dataclass
class Faye:
    """The running faye server and its control API."""

    url: str
    context: ssl.SSLContext
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.url, verify=self.context, timeout=10.0)

    async def control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await (self.http.post(path, json=body or {}) if body is not None or path != "/_control/log"
                          else self.http.get(path))
        response.raise_for_status()
        return dict(response.json())

    async def meta_log(self) -> list[dict[str, Any]]:
        return list((await self.control("/_control/log"))["meta"])

    async def publish(self, n: int) -> None:
        await self.control("/_control/publish", {"channel": CDC, "data": {
            "schema": "s", "event": {"replayId": n}, "payload": {"ChangeEventHeader": {"entityName": "Opportunity"}}}})

    async def arm(self, **arm: Any) -> None:
        await self.control("/_control/arm", arm)


@pytest.fixture
def faye_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    missing = _faye_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the independent Bayeux server cannot run in CI: {missing}")
        pytest.skip(missing)
    tls = ensure_tls(tmp_path / "tls")
    env = {**os.environ, "BAYEUX_CERT": str(tls.cert_file), "BAYEUX_KEY": str(tls.key_file), "BAYEUX_TIMEOUT": "2"}
    errors = tmp_path / "faye.stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(["node", str(BAYEUX_DIR / "server.js")], cwd=BAYEUX_DIR, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # {"port": N} once listening; nothing else is written there
        if not line:
            raise AssertionError(f"faye did not start: {errors.read_text()[-2000:]}")
        port = json.loads(line)["port"]
        yield f"https://localhost:{port}", tls.client_context()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def faye(faye_server: tuple[str, ssl.SSLContext]) -> AsyncIterator[Faye]:
    server = Faye(*faye_server)
    try:
        yield server
    finally:
        await server.http.aclose()


@dataclass
class Consumer:
    """The real StreamClient consumed as the daemon does: a replay id is committed after each message."""

    client: StreamClient
    auth: FakeTokenProvider
    committed: dict[str, int]
    received: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start consuming (after the test armed what the first handshake or subscribe should meet)."""
        self.task = asyncio.create_task(self.run(), name="interop-consumer")

    async def run(self) -> None:
        async for message in self.client.messages():
            replay = int(message["data"]["event"]["replayId"])
            self.committed[message["channel"]] = replay
            self.received.put_nowait(replay)

    async def next(self) -> int:
        return await asyncio.wait_for(self.received.get(), WAIT_S)


@pytest.fixture
async def consumer(faye: Faye) -> AsyncIterator[Consumer]:
    committed: dict[str, int] = {}
    auth = FakeTokenProvider(faye.url, faye.context)
    client = StreamClient(auth, channels=[CDC], replay_source=committed.get, api_version="68.0",
                          long_poll_margin_s=3.0, backoff_base_s=0.05, backoff_cap_s=0.5)
    state = Consumer(client, auth, committed)
    try:
        yield state
    finally:
        task = state.task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        if task is not None and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def session_ready(faye: Faye, consumer: Consumer, *, after: int = 0) -> str:
    """Wait until a session opened after log entry `after` is subscribed and polling; its client id."""
    async with asyncio.timeout(WAIT_S):
        while True:
            log = (await faye.meta_log())[after:]
            subscribed = {m["clientId"] for m in log if m["channel"] == "/meta/subscribe"}
            polling = [m["clientId"] for m in log if m["channel"] == "/meta/connect" and m["clientId"] in subscribed]
            if polling and consumer.client.client_id == polling[-1] and consumer.client.connected:
                return str(polling[-1])
            await asyncio.sleep(0.05)


async def deliver(faye: Faye, consumer: Consumer, n: int) -> None:
    await faye.publish(n)
    assert await consumer.next() == n


async def test_handshake_subscribe_connect_and_delivery_with_fake_token_provider(
    faye: Faye, consumer: Consumer
) -> None:
    consumer.start()
    client_id = await session_ready(faye, consumer)
    for n in (1, 2, 3):
        await deliver(faye, consumer, n)
    log = await faye.meta_log()
    assert [m["channel"] for m in log[:2]] == ["/meta/handshake", "/meta/subscribe"]
    assert {m["clientId"] for m in log[1:]} == {client_id}  # one session throughout
    assert consumer.client.server_supports_replay is False  # faye has no replay extension


@pytest.mark.parametrize(
    "arm",
    [{"forget": True}, {"error": "402::session_unknown"}],
    ids=["faye-401-unknown-client", "cometd-402-session-unknown"],
)
async def test_lost_session_on_subscribe_rehandshakes_and_delivery_continues_with_fake_token_provider(
    faye: Faye, consumer: Consumer, arm: dict[str, Any]
) -> None:
    await faye.arm(channel="/meta/subscribe", **arm)  # hits the consumer's first subscribe
    consumer.start()
    client_id = await session_ready(faye, consumer)
    await deliver(faye, consumer, 1)
    log = await faye.meta_log()
    handshakes = [m for m in log if m["channel"] == "/meta/handshake"]
    assert len(handshakes) == 2, log
    subscribes = [m["clientId"] for m in log if m["channel"] == "/meta/subscribe"]
    assert len(subscribes) == 2 and subscribes[-1] == client_id and subscribes[0] != client_id
    assert consumer.client.reconnects >= 1 and consumer.auth.refreshes == 0


@pytest.mark.parametrize(
    "fault",
    ["forget", "402-without-advice"],
    ids=["faye-401-unknown-client", "cometd-402-session-unknown"],
)
async def test_lost_session_on_connect_rehandshakes_and_delivery_continues_with_fake_token_provider(
    faye: Faye, consumer: Consumer, fault: str
) -> None:
    consumer.start()
    first = await session_ready(faye, consumer)
    await deliver(faye, consumer, 1)
    mark = len(await faye.meta_log())
    if fault == "forget":
        assert (await faye.control("/_control/forget"))["forgotten"] == 1
    else:
        await faye.arm(channel="/meta/connect", error="402::session_unknown", advice=None)
    second = await session_ready(faye, consumer, after=mark)
    assert second != first
    await deliver(faye, consumer, 2)
    assert consumer.client.client_id == second
    assert consumer.auth.refreshes == 0  # faye's 401 names an unknown client, not a bad token


@pytest.mark.parametrize("reconnect", ["handshake", "none"])
async def test_advice_reconnect_on_a_successful_connect_is_followed_with_fake_token_provider(
    faye: Faye, consumer: Consumer, reconnect: str
) -> None:
    consumer.start()
    first = await session_ready(faye, consumer)
    await deliver(faye, consumer, 1)
    mark = len(await faye.meta_log())
    await faye.arm(channel="/meta/connect", advice={"reconnect": reconnect, "interval": 0, "timeout": 2000})
    second = await session_ready(faye, consumer, after=mark)
    log = (await faye.meta_log())[mark:]
    advised = next(i for i, m in enumerate(log) if m["channel"] == "/meta/connect" and m.get("armed"))
    assert log[advised]["clientId"] == first
    # after the advised reply the old session is never polled again; a new one was handshaken
    later = log[advised + 1 :]
    assert later[0]["channel"] == "/meta/handshake"
    assert all(m["clientId"] != first for m in later)
    await deliver(faye, consumer, 2)
    assert consumer.client.client_id == second != first
