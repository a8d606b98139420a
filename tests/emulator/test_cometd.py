"""The Bayeux server over real HTTPS: handshake, subscribe with replay, long polls, errors, fault hooks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sfsign.emulator.server import Emulator

OPP = "/data/OpportunityChangeEvent"
INVALID_REPLAY = ("400::The replayId {%s} you provided was invalid.  Please provide a valid ID, -2 to replay "
                  "all events, or -1 to replay only new events.")


async def test_handshake_reply_is_salesforces_and_sets_the_browser_cookie(bayeux: Any) -> None:
    response = await bayeux.post({"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                                  "supportedConnectionTypes": ["websocket", "long-polling"], "id": "305"})
    assert response.status_code == 200
    [reply] = response.json()
    assert set(reply) == {"ext", "minimumVersion", "clientId", "supportedConnectionTypes", "channel", "id",
                          "version", "successful"}
    assert reply["ext"] == {"replay": True, "payload.format": True}
    assert reply["supportedConnectionTypes"] == ["long-polling"]
    assert reply["channel"] == "/meta/handshake" and reply["id"] == "305" and reply["successful"] is True
    assert reply["version"] == "1.0" and reply["minimumVersion"] == "1.0"
    assert len(reply["clientId"]) == 27
    assert "BAYEUX_BROWSER" in response.cookies


async def test_handshake_offering_only_websocket_is_refused(bayeux: Any) -> None:
    [reply] = await bayeux.send({"channel": "/meta/handshake", "version": "1.0",
                                 "supportedConnectionTypes": ["websocket"], "id": "1"})
    assert reply["successful"] is False
    assert reply["error"] == "400::Invalid connection type {websocket}"


async def test_handshake_with_invalid_token_is_denied(bayeux: Any) -> None:
    [reply] = await bayeux.send({"channel": "/meta/handshake", "version": "1.0", "id": "1",
                                 "supportedConnectionTypes": ["long-polling"]}, token="00Dbogus!AQxyz")
    assert reply == {"ext": {"sfdc": {"failureReason": "401::Authentication invalid"}, "replay": True},
                     "advice": {"reconnect": "none"}, "channel": "/meta/handshake", "id": "1",
                     "error": "403::Handshake denied", "successful": False}


async def test_handshake_without_token_requires_authentication(http: httpx.AsyncClient) -> None:
    response = await http.post("/cometd/68.0", json=[{"channel": "/meta/handshake", "version": "1.0"}])
    [reply] = response.json()
    assert reply["error"] == "403::Handshake denied"
    assert reply["ext"]["sfdc"]["failureReason"] == "401::Request requires authentication"


async def test_first_connect_carries_advice_and_idle_connects_are_held(
    bayeux: Any, emulator: Emulator
) -> None:
    await bayeux.handshake()
    first, data = await bayeux.connect()
    assert first == {"clientId": bayeux.client_id, "channel": "/meta/connect", "id": first["id"],
                     "successful": True,
                     "advice": {"interval": 0, "timeout": emulator.long_poll_timeout_ms, "reconnect": "retry"}}
    assert data == []
    idle, data = await bayeux.connect()  # held for the long-poll timeout, then answered
    assert idle == {"clientId": bayeux.client_id, "channel": "/meta/connect", "id": idle["id"],
                    "successful": True}
    assert data == []


async def test_an_event_wakes_a_held_connect(bayeux: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    poll = asyncio.create_task(bayeux.connect())
    await asyncio.sleep(0.2)
    await ctl.touch(opp, 1)
    reply, data = await poll
    assert reply["successful"] is True
    assert [m["channel"] for m in data] == [OPP]
    assert data[0]["data"]["payload"]["Description"] == "touch 1"


async def test_subscribe_errors(bayeux: Any) -> None:
    await bayeux.start()
    unknown = await bayeux.subscribe("/data/NopeChangeEvent")
    assert unknown["successful"] is False
    assert unknown["error"] == "400::The channel you requested to subscribe to doesn't exist {/data/NopeChangeEvent}"
    assert unknown["subscription"] == "/data/NopeChangeEvent"
    no_slash = await bayeux.subscribe("data/OpportunityChangeEvent")
    assert no_slash["error"] == "400::Channel subscriptions must start with a leading '/'"
    [missing] = await bayeux.send({"channel": "/meta/subscribe", "clientId": bayeux.client_id, "id": "9"})
    assert missing["error"] == "400::Channel name not specified"


async def test_replay_map_that_does_not_name_the_channel(bayeux: Any) -> None:
    await bayeux.start()
    msg = bayeux.subscribe_msg(OPP)
    msg["ext"] = {"replay": {}}
    [reply] = await bayeux.send(msg)
    assert reply["error"] == (
        "400::The replayId for channel {/data/OpportunityChangeEvent} wasn't found using the provided replay "
        "ID map {{}}. Ensure that the channel name you provided in the replay map is valid and matches the "
        "channel name used for subscribing.")


@pytest.mark.parametrize("replay", [987654321, -3, "-2"])
async def test_invalid_replay_id_fails_the_subscribe_with_the_two_space_message(
    bayeux: Any, replay: object
) -> None:
    await bayeux.start()
    reply = await bayeux.subscribe(OPP, replay)
    assert reply["successful"] is False
    assert reply["error"] == INVALID_REPLAY % replay


async def test_replay_minus_one_new_only_minus_two_all_and_stored_id_exclusive(
    http: httpx.AsyncClient, token: str, ctl: Any, new_bayeux: Any
) -> None:
    opp = await ctl.an_opportunity()
    for n in range(3):
        await ctl.touch(opp, n)

    new_only = new_bayeux(http, token)
    await new_only.start((OPP, -1))
    assert (await new_only.connect())[1] == []

    everything = new_bayeux(http, token)
    await everything.start((OPP, -2))
    _, data = await everything.connect()
    descriptions = [m["data"]["payload"].get("Description") for m in data]
    assert descriptions[-3:] == ["touch 0", "touch 1", "touch 2"]
    ids = [m["data"]["event"]["replayId"] for m in data]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    after = new_bayeux(http, token)
    await after.start((OPP, ids[-3]))
    _, replayed = await after.connect()
    assert [m["data"]["event"]["replayId"] for m in replayed] == ids[-2:]

    await ctl.touch(opp, 3)
    for client in (new_only, everything, after):
        got = await client.events(1)
        assert [m["data"]["payload"]["Description"] for m in got] == ["touch 3"]


async def test_replay_ids_are_not_contiguous(emulator: Emulator, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    for n in range(10):
        await ctl.touch(opp, n)
    ids = [e.replay_id for e in emulator.org.bus.retained(OPP)][-10:]
    assert ids == sorted(ids)
    assert any(b - a > 1 for a, b in itertools.pairwise(ids))


async def test_stored_id_outside_retention_is_invalid(emulator: Emulator, bayeux: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await ctl.touch(opp, 1)
    stored = emulator.org.bus.last_replay_id
    await ctl.touch(opp, 2)
    purged = await ctl.post("/_control/streaming/retention", {"seconds": 0})
    assert purged["purged"] >= 2
    await bayeux.start()
    reply = await bayeux.subscribe(OPP, stored)
    assert reply["error"] == INVALID_REPLAY % stored


async def test_batched_connect_and_subscribe_are_answered_in_one_response(bayeux: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await ctl.touch(opp, 1)
    await bayeux.handshake()
    body = await bayeux.send([bayeux.connect_msg(), bayeux.subscribe_msg(OPP, -2),
                              bayeux.subscribe_msg("/event/Sign_Request__e", -1)])
    channels = [m["channel"] for m in body]
    assert channels.count("/meta/connect") == 1 and channels.count("/meta/subscribe") == 2
    assert all(m["successful"] for m in body if m["channel"].startswith("/meta/"))
    assert OPP in channels  # replayed events ride along the connect


async def test_forgotten_client_gets_unknown_client(bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    assert (await ctl.post("/_control/streaming/forget-clients"))["forgotten"] == 1
    [reply] = await bayeux.send(bayeux.connect_msg())
    assert reply == {"advice": {"interval": 0, "reconnect": "handshake"}, "channel": "/meta/connect",
                     "id": reply["id"], "error": "403::Unknown client", "successful": False}


async def test_forgetting_a_held_connect_answers_it_with_unknown_client(bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    poll = asyncio.create_task(bayeux.connect())
    await asyncio.sleep(0.2)
    await ctl.post("/_control/streaming/forget-clients")
    reply, _ = await poll
    assert reply["error"] == "403::Unknown client"


@pytest.fixture
async def quick_expiry(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "quick", long_poll_timeout_ms=300, client_timeout_s=0.3) as emu:
        yield emu


async def test_client_not_seen_after_the_reconnect_timeout_is_forgotten(
    quick_expiry: Emulator, new_bayeux: Any, get_token: Any
) -> None:
    async with httpx.AsyncClient(base_url=quick_expiry.url, verify=quick_expiry.tls.client_context()) as http:
        client = new_bayeux(http, await get_token(http, quick_expiry))
        await client.start((OPP, -1))
        reply, _ = await client.connect()  # held connects keep the client alive
        assert reply["successful"]
        await asyncio.sleep(1.0)
        [reply] = await client.send(client.connect_msg())
        assert reply["error"] == "403::Unknown client"
        assert reply["advice"] == {"interval": 0, "reconnect": "handshake"}


async def test_requests_without_the_browser_cookie_are_refused(
    bayeux: Any, emulator: Emulator, token: str, new_bayeux: Any
) -> None:
    await bayeux.start()
    async with httpx.AsyncClient(base_url=emulator.url, verify=emulator.tls.client_context()) as fresh:
        cookieless = new_bayeux(fresh, token)
        cookieless.client_id = bayeux.client_id
        [reply] = await cookieless.send(cookieless.connect_msg())
    assert reply["successful"] is False
    assert reply["error"] == (f"400::Client {bayeux.client_id} has established a session, but no "
                              "BAYEUX_BROWSER cookie present")


async def test_revoked_token_gets_bayeux_401_with_reconnect_none(bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    await ctl.post("/_control/streaming/revoke-tokens", {"mode": "bayeux"})
    [reply] = await bayeux.send(bayeux.connect_msg())
    assert reply == {"clientId": bayeux.client_id, "advice": {"reconnect": "none", "interval": 0},
                     "channel": "/meta/connect", "id": reply["id"], "error": "401::Authentication invalid",
                     "successful": False}


async def test_revocation_answers_a_held_connect(bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    poll = asyncio.create_task(bayeux.connect())
    await asyncio.sleep(0.2)
    await ctl.post("/_control/streaming/revoke-tokens")
    reply, _ = await poll
    assert reply["error"] == "401::Authentication invalid"


async def test_revoked_token_as_raw_http_401(
    bayeux: Any, http: httpx.AsyncClient, emulator: Emulator, ctl: Any, get_token: Any
) -> None:
    await bayeux.start((OPP, -1))
    await ctl.post("/_control/streaming/revoke-tokens", {"mode": "http"})
    response = await bayeux.post(bayeux.connect_msg())
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    # a new token works again
    bayeux.token = await get_token(http, emulator)
    await bayeux.handshake()


async def test_request_body_over_32k_is_413(bayeux: Any) -> None:
    await bayeux.handshake()
    big = [bayeux.subscribe_msg(OPP, -1) | {"pad": "x" * 33000}]
    response = await bayeux.post(big)
    assert response.status_code == 413
    assert response.json()[0]["error"] == "413::Maximum Request Size Exceeded"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/cometd", "400::API version in the URI is mandatory. URI format: '/cometd/68.0'"),
        ("/cometd/", "400::API version in the URI is mandatory. URI format: '/cometd/68.0'"),
        ("/cometd/36.0", "400::Unsupported API version. Only API versions '37.0' and later are supported. "
                         "URI format: '/cometd/68.0'"),
        ("/cometd/abc", "400::Unsupported API version. Only API versions '37.0' and later are supported. "
                        "URI format: '/cometd/68.0'"),
    ],
)
async def test_api_version_in_the_uri(http: httpx.AsyncClient, token: str, path: str, error: str) -> None:
    response = await http.post(path, json=[{"channel": "/meta/handshake", "version": "1.0", "id": "1"}],
                               headers={"Authorization": f"Bearer {token}"})
    [reply] = response.json()
    assert reply == {"channel": "/meta/handshake", "id": "1", "successful": False, "error": error}


async def test_versions_37_and_68_are_accepted(http: httpx.AsyncClient, token: str, new_bayeux: Any) -> None:
    for version in ("37.0", "68.0"):
        reply = await new_bayeux(http, token, version).handshake()
        assert reply["successful"]


async def test_dropped_long_poll_loses_no_event(bayeux: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    poll = asyncio.create_task(bayeux.connect())
    await asyncio.sleep(0.2)
    dropped = await ctl.post("/_control/streaming/drop-connections")
    assert dropped["dropped"] == 1
    with pytest.raises(httpx.TransportError):
        await poll
    await ctl.touch(opp, 7)
    got = await bayeux.events(1)
    assert got[0]["data"]["payload"]["Description"] == "touch 7"


async def test_half_open_connects_are_never_answered_until_released(
    bayeux: Any, emulator: Emulator, ctl: Any
) -> None:
    await bayeux.start((OPP, -1))
    await ctl.post("/_control/streaming/hold-connects", {"enabled": True})
    with pytest.raises(httpx.ReadTimeout):
        await bayeux.connect(read_timeout=emulator.long_poll_timeout_ms / 1000 + 1.0)
    await ctl.post("/_control/streaming/hold-connects", {"enabled": False})
    reply, _ = await bayeux.connect()
    assert reply["successful"] is True


async def test_disconnect_and_unsubscribe(bayeux: Any, ctl: Any) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    [unsub] = await bayeux.send({"channel": "/meta/unsubscribe", "clientId": bayeux.client_id,
                                 "subscription": OPP, "id": "u"})
    assert unsub == {"channel": "/meta/unsubscribe", "id": "u", "clientId": bayeux.client_id,
                     "subscription": OPP, "successful": True}
    await ctl.touch(opp, 1)
    assert (await bayeux.connect())[1] == []
    [bye] = await bayeux.send({"channel": "/meta/disconnect", "clientId": bayeux.client_id, "id": "d"})
    assert bye == {"channel": "/meta/disconnect", "id": "d", "clientId": bayeux.client_id, "successful": True}
    [reply] = await bayeux.send(bayeux.connect_msg())
    assert reply["error"] == "403::Unknown client"


async def test_subscribe_log_records_the_replay_id_the_server_saw(
    bayeux: Any, http: httpx.AsyncClient, emulator: Emulator
) -> None:
    await bayeux.start((OPP, -2))
    response = await http.get("/_control/streaming/subscriptions",
                              headers={"X-Control-Token": emulator.control_token})
    [entry] = response.json()["subscriptions"]
    assert entry["clientId"] == bayeux.client_id and entry["channel"] == OPP
    assert entry["replay"] == -2 and entry["successful"] is True


async def test_token_of_another_user_does_not_match_the_client(bayeux: Any, emulator: Emulator) -> None:
    await bayeux.start()
    rep = emulator.org.store.user_by_username(str(emulator.rep_username))
    assert rep is not None
    other = emulator.org.issue_session(rep, emulator.login.consumer_key)
    [reply] = await bayeux.send(bayeux.connect_msg(), token=other.token)
    assert reply["successful"] is False
    assert reply["error"] == "400::Authenticated user id does not match the session's user id"


async def test_chunked_request_body_over_32k_is_413(bayeux: Any, http: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        yield b'[{"channel":"/meta/handshake","pad":"'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}]'

    response = await http.post("/cometd/68.0", content=chunks(),
                               headers={"Authorization": f"Bearer {bayeux.token}",
                                        "Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [("truncated", 200, "application/json"), ("html", 200, "text/html"), ("html-502", 502, "text/html"),
     ("not-array", 200, "application/json")],
)
async def test_torn_connect_answer_loses_its_events_for_that_session_only(
    bayeux: Any, ctl: Any, new_bayeux: Any, http: httpx.AsyncClient, token: str, kind: str, status: int,
    content_type: str,
) -> None:
    opp = await ctl.an_opportunity()
    await bayeux.start((OPP, -1))
    armed = await ctl.post("/_control/streaming/torn-connects", {"kind": kind, "count": 1})
    assert armed == {"kind": kind, "count": 1}
    await ctl.touch(opp, 1)
    response = await bayeux.post(bayeux.connect_msg())
    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    if kind == "not-array":
        assert isinstance(response.json(), dict)
    else:
        with pytest.raises(ValueError):
            response.json()
    # the event was dequeued into the torn answer: this session never sees it again
    await ctl.touch(opp, 2)
    got = await bayeux.events(1)
    assert [e["data"]["payload"]["Description"] for e in got] == ["touch 2"]
    # a new session subscribed from the last replay id it processed gets it replayed
    events = (await ctl.get(f"/_control/streaming/events?channel={OPP}"))["events"]
    touched = next(i for i, e in enumerate(events) if e["data"]["payload"].get("Description") == "touch 1")
    before = events[touched - 1]["replayId"] if touched else -2
    fresh = new_bayeux(http, token)
    await fresh.start((OPP, before))
    replayed = [e["data"]["payload"].get("Description") for e in await fresh.events(2)]
    assert [d for d in replayed if d and d.startswith("touch")] == ["touch 1", "touch 2"]
    faults = await ctl.get("/_control/faults")
    assert faults["cometd_torn"] == {"kind": kind, "count": 0, "hits": 1}


async def test_torn_connects_only_tear_answers_that_carry_events(bayeux: Any, ctl: Any) -> None:
    await bayeux.start((OPP, -1))
    await ctl.post("/_control/streaming/torn-connects", {"kind": "html-502", "count": None})
    reply, data = await bayeux.connect()  # the idle poll ends with nothing to lose: answered as usual
    assert reply["successful"] is True and data == []


async def test_torn_connects_refuses_an_unknown_kind(ctl: Any, http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await http.post("/_control/streaming/torn-connects", json={"kind": "garbled"},
                               headers={"X-Control-Token": emulator.control_token})
    assert response.status_code == 400 and "kind must be one of" in response.json()["error"]
