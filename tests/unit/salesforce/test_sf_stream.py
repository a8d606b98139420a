"""StreamClient state machine against a scripted fake Bayeux server (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sf_fakes import FakeAuth

from sfsign.salesforce.bayeux import BayeuxError
from sfsign.salesforce.errors import AuthError
from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient, SubscriptionFailed

CDC = "/data/OpportunityChangeEvent"
PE = "/event/Sign_Request__e"
INVALID_REPLAY = ("400::The replayId {{{rid}}} you provided was invalid.  Please provide a valid ID, -2 to "
                  "replay all events, or -1 to replay only new events.")

Step = Callable[[dict[str, Any], "FakeBayeux"], Any]


def event(channel: str, replay_id: int) -> dict[str, Any]:
    return {"channel": channel, "data": {"schema": "s", "event": {"replayId": replay_id},
                                         "payload": {"ChangeEventHeader": {"entityName": "Opportunity"}}}}


class FakeBayeux:
    """A Salesforce-like CometD endpoint. Connects are answered from `connect_script` (a reply list, an
    httpx.Response, an exception or a coroutine function); when it is empty the connect blocks."""

    def __init__(self, advice_timeout_ms: int = 110_000) -> None:
        self.advice_timeout_ms = advice_timeout_ms
        self.received: list[tuple[str, dict[str, Any]]] = []  # (token, message)
        self.clients = 0
        self.valid_tokens = {"tok1"}
        self.connect_script: deque[Any] = deque()
        self.subscribe_errors: dict[tuple[str, int], str] = {}
        self.subscribe_script: deque[dict[str, Any]] = deque()  # one-shot reply fields, e.g. {"error": ...}
        self.handshake_script: deque[Any] = deque()
        self.blocked = asyncio.Event()
        self.cookies: list[tuple[str, str | None]] = []

    def sent(self, channel: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m["channel"] == channel]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/cometd/68.0"
        assert request.headers["Content-Type"] == "application/json"
        token = request.headers["Authorization"].removeprefix("Bearer ")
        messages = json.loads(request.content)
        for m in messages:
            self.received.append((token, m))
            self.cookies.append((m["channel"], request.headers.get("cookie")))
        if token not in self.valid_tokens:
            return httpx.Response(401, json=[{"message": "Session expired or invalid",
                                              "errorCode": "INVALID_SESSION_ID"}])
        (message,) = messages
        channel = message["channel"]
        if channel == "/meta/handshake":
            if self.handshake_script:
                return httpx.Response(200, json=self.handshake_script.popleft())
            self.clients += 1
            return httpx.Response(200, headers={"set-cookie": f"BAYEUX_BROWSER=b{self.clients}; Path=/; Secure"},
                                  json=[{
                "ext": {"replay": True, "payload.format": True}, "minimumVersion": "1.0",
                "clientId": f"client{self.clients}", "supportedConnectionTypes": ["long-polling"],
                "channel": "/meta/handshake", "id": message["id"], "version": "1.0", "successful": True}])
        if channel == "/meta/subscribe":
            sub = message["subscription"]
            rid = message["ext"]["replay"][sub]
            error = self.subscribe_errors.get((sub, rid))
            reply: dict[str, Any] = {"clientId": message["clientId"], "channel": "/meta/subscribe",
                                     "id": message["id"], "subscription": sub, "successful": error is None}
            if error:
                reply["error"] = error
            if self.subscribe_script:
                reply.update(self.subscribe_script.popleft())
            return httpx.Response(200, json=[reply])
        if channel == "/meta/disconnect":
            return httpx.Response(200, json=[{"channel": "/meta/disconnect", "successful": True}])
        assert channel == "/meta/connect"
        assert message["connectionType"] == "long-polling"
        if not self.connect_script:
            self.blocked.set()
            await asyncio.Event().wait()  # a long poll with nothing to deliver
        step = self.connect_script.popleft()
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, httpx.Response):
            return step
        if callable(step):
            return await step(message)
        return httpx.Response(200, json=[self._fill(m, message) for m in step])

    def _fill(self, reply: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        if reply.get("channel") == "/meta/connect":
            reply = {"clientId": message["clientId"], "id": message["id"], **reply}
        return reply


def ok_connect(first: bool = False, timeout_ms: int = 110_000) -> dict[str, Any]:
    reply: dict[str, Any] = {"channel": "/meta/connect", "successful": True}
    if first:
        reply["advice"] = {"interval": 0, "timeout": timeout_ms, "reconnect": "retry"}
    return reply


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def make_client(server: FakeBayeux, auth: FakeAuth, replay: dict[str, int], sleeps: Callable[[float], Awaitable[None]],
                channels: list[str] | None = None, **kwargs: Any) -> StreamClient:
    return StreamClient(auth, channels=channels or [CDC, PE], replay_source=replay.get, api_version="68.0",
                        transport=httpx.MockTransport(server), sleep=sleeps, rng=lambda: 1.0, **kwargs)


async def take(client: StreamClient, n: int, on_message: Callable[[dict[str, Any]], None] | None = None
               ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stream = client.messages()
    async for message in stream:
        out.append(message)
        if on_message:
            on_message(message)
        if len(out) == n:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return out


async def test_handshake_subscribe_connect_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    # reply first in one batch, last in the other: order inside the array does not matter
    server.connect_script.extend([
        [ok_connect(first=True), event(CDC, 43), event(PE, 7)],
        [event(CDC, 44), ok_connect()],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {CDC: 42}, sleeps)
    assert not client.connected and client.disconnected_since is not None
    messages = await take(client, 3)
    assert [m["data"]["event"]["replayId"] for m in messages] == [43, 7, 44]

    (handshake,) = server.sent("/meta/handshake")
    assert handshake["supportedConnectionTypes"] == ["long-polling"] and handshake["ext"] == {"replay": True}
    assert handshake["version"] == "1.0"
    subs = server.sent("/meta/subscribe")
    assert [(s["subscription"], s["ext"]["replay"], s["clientId"]) for s in subs] == [
        (CDC, {CDC: 42}, "client1"), (PE, {PE: -1}, "client1")]
    assert all(token == "tok1" for token, _ in server.received)
    assert client.connected and client.disconnected_since is None and client.reconnects == 0
    assert client.last_message_at is not None and client.server_supports_replay
    assert sleeps.delays == []
    assert server.cookies[0] == ("/meta/handshake", None)
    assert all(cookie == "BAYEUX_BROWSER=b1" for _, cookie in server.cookies[1:])  # cookie jar kept
    await client.aclose()
    assert server.sent("/meta/disconnect")[0]["clientId"] == "client1"


async def test_unknown_client_rehandshakes_and_resubscribes_from_committed_id_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [ok_connect(first=True), event(CDC, 43)],
        [{"advice": {"interval": 0, "reconnect": "handshake"}, "channel": "/meta/connect", "id": "304",
          "error": "403::Unknown client", "successful": False}],
        [ok_connect(first=True), event(CDC, 44)],
    ])
    committed = {CDC: 42}
    sleeps = Sleeps()
    client = make_client(server, fake_auth, committed, sleeps, channels=[CDC])

    def commit(message: dict[str, Any]) -> None:
        committed[message["channel"]] = message["data"]["event"]["replayId"]

    messages = await take(client, 2, on_message=commit)
    assert [m["data"]["event"]["replayId"] for m in messages] == [43, 44]
    assert len(server.sent("/meta/handshake")) == 2
    assert [s["ext"]["replay"] for s in server.sent("/meta/subscribe")] == [{CDC: 42}, {CDC: 43}]
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client1", "client1", "client2"]
    assert sleeps.delays == []  # the first Unknown client is handled at once
    assert client.reconnects == 1 and client.connected
    assert fake_auth.refresh_calls == 0
    await client.aclose()


async def test_unknown_client_without_channel_field_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"error": "403::Unknown client", "successful": False, "advice": {"interval": 0, "reconnect": "handshake"}}],
        [ok_connect(), event(CDC, 1)],
    ])
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert len(server.sent("/meta/handshake")) == 2
    await client.aclose()


async def test_bayeux_401_refreshes_the_token_once_then_rehandshakes_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.valid_tokens = {"tok1", "tok2"}

    async def revoke(message: dict[str, Any]) -> httpx.Response:
        server.valid_tokens.discard("tok1")
        return httpx.Response(200, json=[{
            "clientId": message["clientId"], "advice": {"reconnect": "none", "interval": 0},
            "channel": "/meta/connect", "id": message["id"], "error": "401::Authentication invalid",
            "successful": False}])

    server.connect_script.extend([revoke, [ok_connect(first=True), event(CDC, 9)]])
    client = make_client(server, fake_auth, {CDC: 5}, Sleeps(), channels=[CDC])
    messages = await take(client, 1)
    assert messages[0]["data"]["event"]["replayId"] == 9
    assert fake_auth.refresh_calls == 1
    tokens = [(token, m["channel"]) for token, m in server.received]
    assert tokens == [("tok1", "/meta/handshake"), ("tok1", "/meta/subscribe"), ("tok1", "/meta/connect"),
                      ("tok2", "/meta/handshake"), ("tok2", "/meta/subscribe"), ("tok2", "/meta/connect")]
    assert [s["ext"]["replay"] for s in server.sent("/meta/subscribe")] == [{CDC: 5}, {CDC: 5}]
    await client.aclose()


async def test_raw_http_401_invalid_session_refreshes_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.valid_tokens = {"tok2"}  # tok1 was revoked before we started
    server.connect_script.append([ok_connect(first=True), event(PE, 3)])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[PE])
    assert len(await take(client, 1)) == 1
    assert fake_auth.refresh_calls == 1
    assert [t for t, _ in server.received] == ["tok1", "tok2", "tok2", "tok2"]
    assert sleeps.delays == []
    await client.aclose()


async def test_token_still_refused_after_refresh_backs_off_and_never_reuses_the_stale_token_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.valid_tokens = {"tok3"}  # the first refresh yields a token that is refused too
    server.connect_script.append([ok_connect(first=True), event(PE, 3)])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[PE])
    assert len(await take(client, 1)) == 1
    assert fake_auth.refresh_calls == 2
    assert [t for t, m in server.received if m["channel"] == "/meta/handshake"] == ["tok1", "tok2", "tok3"]
    assert sleeps.delays == [1.0]  # the second consecutive auth failure waits (base 0.5, doubled)
    await client.aclose()


async def test_handshake_denied_with_401_failure_reason_refreshes_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.valid_tokens = {"tok1", "tok2"}
    server.handshake_script.append([{
        "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}, "replay": True},
        "advice": {"reconnect": "none"}, "channel": "/meta/handshake", "error": "403::Handshake denied",
        "successful": False}])
    server.connect_script.append([ok_connect(first=True), event(PE, 3)])
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[PE])
    assert len(await take(client, 1)) == 1
    assert fake_auth.refresh_calls == 1
    assert [t for t, m in server.received if m["channel"] == "/meta/handshake"] == ["tok1", "tok2"]
    await client.aclose()


async def test_permanent_auth_failure_is_raised_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.valid_tokens = set()
    fake_auth.fail_refresh = AuthError(400, "invalid_grant", "user hasn't approved this consumer")
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[PE])
    with pytest.raises(AuthError, match="invalid_grant"):
        await take(client, 1)
    await client.aclose()


async def test_token_endpoint_outage_backs_off_and_retries_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    fake_auth.fail_token = [AuthError(None, "connection_error", "login host unreachable")] * 2
    server.connect_script.append([ok_connect(first=True), event(PE, 3)])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[PE])
    assert len(await take(client, 1)) == 1
    assert sleeps.delays == [0.5, 1.0]
    await client.aclose()


async def test_invalid_replay_id_raises_and_reset_replay_subscribes_from_minus_one_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.subscribe_errors[(CDC, 42)] = INVALID_REPLAY.format(rid=42)
    server.connect_script.extend([
        [ok_connect(first=True), event(CDC, 100), event(PE, 8)],
        [{"channel": "/meta/connect", "error": "403::Unknown client", "successful": False,
          "advice": {"reconnect": "handshake"}}],
        [ok_connect(first=True), event(CDC, 101)],
    ])
    committed = {CDC: 42, PE: 7}
    client = make_client(server, fake_auth, committed, Sleeps())

    with pytest.raises(ReplayIdInvalid) as caught:
        await take(client, 1)
    assert (caught.value.channel, caught.value.replay_id) == (CDC, 42)
    assert "was invalid" in caught.value.error

    client.reset_replay(CDC)
    # The daemon has not committed anything new on CDC yet: even after a rehandshake the refused id
    # is not sent again.
    got = await take(client, 3)
    assert [m["data"]["event"]["replayId"] for m in got] == [100, 8, 101]
    assert [(s["subscription"], s["ext"]["replay"]) for s in server.sent("/meta/subscribe")] == [
        (CDC, {CDC: 42}), (CDC, {CDC: -1}), (PE, {PE: 7}), (CDC, {CDC: -1}), (PE, {PE: 7})]
    assert len(server.sent("/meta/handshake")) == 2

    # Once a newer id is committed, it is used again.
    committed[CDC] = 101
    server.connect_script.extend([
        [{"channel": "/meta/connect", "error": "403::Unknown client", "successful": False,
          "advice": {"reconnect": "handshake"}}],
        [ok_connect(), event(CDC, 102)],
    ])
    await take(client, 1)
    assert server.sent("/meta/subscribe")[-2]["ext"]["replay"] == {CDC: 101}
    await client.aclose()


async def test_replay_map_mismatch_also_raises_replay_id_invalid_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.subscribe_errors[(CDC, 5)] = (
        "400::The replayId for channel {/data/OpportunityChangeEvent} wasn't found using the provided replay ID "
        "map {{}}. Ensure that the channel name you provided in the replay map is valid and matches the channel "
        "name used for subscribing.")
    client = make_client(server, fake_auth, {CDC: 5}, Sleeps(), channels=[CDC])
    with pytest.raises(ReplayIdInvalid):
        await take(client, 1)
    await client.aclose()


async def test_refused_subscription_raises_subscription_failed_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.subscribe_errors[(CDC, -1)] = "403::User not allowed to subscribe CDC without View All Data permissions"
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[CDC])
    with pytest.raises(SubscriptionFailed) as caught:
        await take(client, 1)
    assert caught.value.channel == CDC and "View All Data" in caught.value.error
    await client.aclose()


async def test_connection_errors_back_off_exponentially_up_to_the_cap_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.append([ok_connect(first=True)])
    server.connect_script.extend(httpx.ConnectError("refused") for _ in range(6))
    server.connect_script.append([ok_connect(), event(CDC, 1)])
    sleeps = Sleeps()
    states: list[tuple[bool, bool]] = []

    async def watch(delay: float) -> None:  # what a readiness probe would see during each backoff
        states.append((client.connected, client.disconnected_since is not None))
        await sleeps(delay)

    client = make_client(server, fake_auth, {}, watch, channels=[CDC], backoff_base_s=0.5, backoff_cap_s=4.0)
    assert len(await take(client, 1)) == 1
    assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert states == [(False, True)] * 6  # one continuous "disconnected" period, no flapping
    assert len(server.sent("/meta/handshake")) == 1  # same client id: connects were simply retried
    assert client.connected and client.reconnects == 1 and client.disconnected_since is None
    await client.aclose()


def test_backoff_jitter_stays_within_half_and_full_delay(fake_auth: FakeAuth) -> None:
    client = StreamClient(fake_auth, channels=[CDC], replay_source=lambda c: None, rng=lambda: 0.0,
                          backoff_base_s=1.0, backoff_cap_s=30.0)
    assert [client.backoff_delay(n) for n in (1, 2, 3, 10, 5000)] == [0.5, 1.0, 2.0, 15.0, 15.0]


async def test_server_errors_and_garbage_on_connect_start_a_new_session_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        httpx.Response(503, text="Service Unavailable"),
        httpx.Response(200, text="<html>proxy</html>"),
        httpx.ReadError("connection reset by peer"),
        [ok_connect(first=True), event(CDC, 1)],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert sleeps.delays == [0.5, 1.0, 2.0]
    # each of these answers may have carried events the server will not send this session again
    assert len(server.sent("/meta/handshake")) == 4
    await client.aclose()


async def test_watchdog_abandons_an_unanswered_long_poll_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    never = asyncio.Event()

    async def hang(message: dict[str, Any]) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    server.connect_script.extend([[ok_connect(first=True, timeout_ms=0)], hang, [ok_connect(), event(CDC, 1)]])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[CDC], long_poll_margin_s=0.05)
    assert len(await take(client, 1)) == 1
    assert len(server.sent("/meta/connect")) == 3
    assert len(server.sent("/meta/handshake")) == 2  # the unanswered poll may have carried events
    assert len(sleeps.delays) == 1
    await client.aclose()


async def test_server_pushed_disconnect_rehandshakes_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/disconnect", "successful": True}],
        [ok_connect(), event(CDC, 1)],
    ])
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert len(server.sent("/meta/handshake")) == 2
    await client.aclose()


async def test_daily_event_limit_uses_the_long_backoff_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/connect", "successful": False,
          "error": "403::Organization total events daily limit exceeded", "advice": {"reconnect": "none"}}],
        [ok_connect(), event(CDC, 1)],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[CDC], long_backoff_s=900.0)
    assert len(await take(client, 1)) == 1
    assert sleeps.delays == [900.0]
    await client.aclose()


async def test_advice_interval_is_honoured_between_connects_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/connect", "successful": True, "advice": {"interval": 2000, "timeout": 110000,
                                                                       "reconnect": "retry"}}],
        [ok_connect(), event(CDC, 1)],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert sleeps.delays == [2.0]
    await client.aclose()


async def test_aclose_unblocks_a_pending_long_poll_with_fake_transport(fake_auth: FakeAuth) -> None:
    server = FakeBayeux()
    client = make_client(server, fake_auth, {}, Sleeps(), channels=[CDC])
    consumer = asyncio.create_task(take(client, 1))
    await server.blocked.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await client.aclose()
    assert server.sent("/meta/disconnect")[0]["clientId"] == "client1"
    assert not client.connected


async def test_lost_session_cookie_on_connect_rehandshakes_after_backoff_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/connect", "successful": False,
          "error": "400::Client client1 has established a session, but no BAYEUX_BROWSER cookie present"}],
        [ok_connect(), event(CDC, 1)],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {}, sleeps, channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert len(server.sent("/meta/handshake")) == 2 and sleeps.delays == [0.5]
    await client.aclose()


def test_rejects_non_streaming_channels(fake_auth: FakeAuth) -> None:
    with pytest.raises(ValueError):
        StreamClient(fake_auth, channels=["OpportunityChangeEvent"], replay_source=lambda c: None)


# ------------------------------------------------------------------ torn answers (issue 11, part 2)


@pytest.mark.parametrize(
    "torn",
    [
        httpx.Response(200, headers={"content-type": "application/json"},
                       content=b'[{"channel":"/data/OpportunityChangeEvent","data":{"schema":"s","ev'),
        httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html><body>Please wait</body></html>"),
        httpx.Response(502, headers={"content-type": "text/html"}, content=b"<html>502 Bad Gateway</html>"),
        httpx.Response(200, json={"message": "upstream request timeout"}),
        httpx.Response(429, text="Too Many Requests"),
        httpx.Response(504, json=[{"channel": "/meta/connect", "successful": True}]),
    ],
    ids=["truncated-json", "html-200", "html-502", "json-object", "http-429", "http-504"],
)
async def test_torn_connect_answer_starts_a_new_session_from_the_committed_id_with_fake_transport(
    fake_auth: FakeAuth, torn: httpx.Response
) -> None:
    """The events inside an unreadable connect answer are gone from this session: only a new session,
    subscribed from the committed replay id, gets them replayed (retrying the same session loses them)."""
    server = FakeBayeux()
    server.connect_script.extend([
        [ok_connect(first=True), event(CDC, 43)],
        torn,  # the answer that carried event 44
        [ok_connect(first=True), event(CDC, 44)],  # the new session's replay from 43
    ])
    committed = {CDC: 42}
    client = make_client(server, fake_auth, committed, Sleeps(), channels=[CDC])

    def commit(message: dict[str, Any]) -> None:
        committed[message["channel"]] = message["data"]["event"]["replayId"]

    got = await take(client, 2, on_message=commit)
    assert [m["data"]["event"]["replayId"] for m in got] == [43, 44]
    assert [s["ext"]["replay"] for s in server.sent("/meta/subscribe")] == [{CDC: 42}, {CDC: 43}]
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client1", "client1", "client2"]
    assert client.take_gaps() == []  # the replay brought 44 back: nothing to reconcile
    await client.aclose()


async def test_torn_answer_before_any_commit_reports_the_blind_resubscription_as_a_gap_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    """Nothing committed on the channel yet (a fresh install): the new session can only subscribe from -1,
    which never brings back the events of the torn answer, so the channel is named for reconciliation,
    once; the platform-event channel replays from -2 and is no gap."""
    server = FakeBayeux()
    server.connect_script.extend([
        [ok_connect(first=True)],
        httpx.Response(200, json={"message": "upstream request timeout"}),  # carried events 43 and 44
        [ok_connect(first=True), event(CDC, 45)],
        [ok_connect(), event(CDC, 46)],
    ])
    client = make_client(server, fake_auth, {}, Sleeps(), replay_all=[PE])
    gaps: list[list[str]] = []
    got = await take(client, 2, on_message=lambda _: gaps.append(client.take_gaps()))
    assert [m["data"]["event"]["replayId"] for m in got] == [45, 46]
    assert [(s["subscription"], s["ext"]["replay"]) for s in server.sent("/meta/subscribe")] == [
        (CDC, {CDC: -1}), (PE, {PE: -2}), (CDC, {CDC: -1}), (PE, {PE: -2})]
    assert gaps == [[CDC], []]
    await client.aclose()


# ------------------------------------------------------------------ Bayeux dialects (issue 11, part 3)


@pytest.mark.parametrize(
    ("error", "code", "args", "message", "lost"),
    [
        ("403::Unknown client", 403, (), "Unknown client", True),
        ("401:2x8f0k3:Unknown client", 401, ("2x8f0k3",), "Unknown client", True),
        ("402::session_unknown", 402, (), "session_unknown", True),
        ("402::Unknown client", 402, (), "Unknown client", True),
        ("401::Authentication invalid", 401, (), "Authentication invalid", False),
        ("405:/bad,/worse:Invalid channel", 405, ("/bad", "/worse"), "Invalid channel", False),
        ("400::The replayId {42} you provided was invalid.  Please provide a valid ID", 400, (),
         "The replayId {42} you provided was invalid.  Please provide a valid ID", False),
        ("500::message: with a colon", 500, (), "message: with a colon", False),
        ("something went wrong", None, (), "something went wrong", False),
        (None, None, (), "", False),
    ],
)
def test_error_strings_are_parsed_by_the_bayeux_grammar(
    error: Any, code: int | None, args: tuple[str, ...], message: str, lost: bool
) -> None:
    parsed = BayeuxError.parse(error)
    assert (parsed.code, parsed.args, parsed.message, parsed.session_lost) == (code, args, message, lost)


@pytest.mark.parametrize("error", ["401:client1:Unknown client", "402::session_unknown", "402::Unknown client"])
async def test_lost_session_on_subscribe_rehandshakes_instead_of_retrying_or_failing_with_fake_transport(
    fake_auth: FakeAuth, error: str
) -> None:
    server = FakeBayeux()
    server.subscribe_script.append({"successful": False, "error": error})  # no advice, as faye sends it
    server.connect_script.append([ok_connect(first=True), event(CDC, 8)])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {CDC: 7}, sleeps, channels=[CDC])
    assert [m["data"]["event"]["replayId"] for m in await take(client, 1)] == [8]
    assert [s["clientId"] for s in server.sent("/meta/subscribe")] == ["client1", "client2"]
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client2"]
    assert fake_auth.refresh_calls == 0  # faye's 401 here is an unknown client, not a bad token
    assert sleeps.delays == []
    await client.aclose()


@pytest.mark.parametrize("advice", [None, {"reconnect": "handshake", "interval": 0}])
@pytest.mark.parametrize("error", ["401:client1:Unknown client", "402::session_unknown"])
async def test_lost_session_on_connect_rehandshakes_with_fake_transport(
    fake_auth: FakeAuth, error: str, advice: dict[str, Any] | None
) -> None:
    server = FakeBayeux()
    failed: dict[str, Any] = {"channel": "/meta/connect", "successful": False, "error": error}
    if advice:
        failed["advice"] = advice
    server.connect_script.extend([[ok_connect(first=True)], [failed], [ok_connect(first=True), event(CDC, 8)]])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {CDC: 7}, sleeps, channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client1", "client1", "client2"]
    assert [s["ext"]["replay"] for s in server.sent("/meta/subscribe")] == [{CDC: 7}, {CDC: 7}]
    assert fake_auth.refresh_calls == 0 and sleeps.delays == []
    await client.aclose()


async def test_advice_handshake_on_a_successful_connect_is_followed_after_its_events_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/connect", "successful": True, "advice": {"reconnect": "handshake"}}, event(CDC, 8)],
        [ok_connect(first=True), event(CDC, 9)],
    ])
    committed = {CDC: 7}
    sleeps = Sleeps()
    client = make_client(server, fake_auth, committed, sleeps, channels=[CDC])

    def commit(message: dict[str, Any]) -> None:
        committed[message["channel"]] = message["data"]["event"]["replayId"]

    assert [m["data"]["event"]["replayId"] for m in await take(client, 2, on_message=commit)] == [8, 9]
    # the old session is never polled again; the new one resumes after the event of the advised answer
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client1", "client2"]
    assert [s["ext"]["replay"] for s in server.sent("/meta/subscribe")] == [{CDC: 7}, {CDC: 8}]
    assert sleeps.delays == [] and client.connected
    await client.aclose()


async def test_advice_none_on_a_successful_connect_ends_the_session_and_backs_off_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.connect_script.extend([
        [{"channel": "/meta/connect", "successful": True, "advice": {"reconnect": "none"}}],
        [ok_connect(first=True), event(CDC, 8)],
    ])
    sleeps = Sleeps()
    client = make_client(server, fake_auth, {CDC: 7}, sleeps, channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client1", "client2"]
    assert len(server.sent("/meta/handshake")) == 2
    assert sleeps.delays == [0.5]  # a backoff before the new session: the server asked for no reconnect
    await client.aclose()


async def test_advice_handshake_on_a_successful_subscribe_is_followed_with_fake_transport(
    fake_auth: FakeAuth,
) -> None:
    server = FakeBayeux()
    server.subscribe_script.append({"advice": {"reconnect": "handshake"}})
    server.connect_script.append([ok_connect(first=True), event(CDC, 8)])
    client = make_client(server, fake_auth, {CDC: 7}, Sleeps(), channels=[CDC])
    assert len(await take(client, 1)) == 1
    assert [s["clientId"] for s in server.sent("/meta/subscribe")] == ["client1", "client2"]
    assert [c["clientId"] for c in server.sent("/meta/connect")] == ["client2"]
    await client.aclose()
