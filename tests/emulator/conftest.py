"""The emulator as Salesforce's clients meet it: a real server on a random 127.0.0.1 port, over HTTPS.

What belongs here: probes of what goes over the wire, answered by the running server: OAuth flows, REST
status codes, headers and bodies, Bayeux envelopes and long polls, the control API, fault switches,
restarts. What belongs in tests/unit/emulator: the org's in-process parts (store, SOQL, ids, seed data,
field security) called directly, with no server and no network, fast enough to run with the unit tests.
One behaviour often has a test in each: the rule in the store there, the answer that carries it here.

Fixtures: the emulator, HTTPS clients that trust only its CA, tokens, and a minimal Bayeux driver for the
CometD tests (deliberately not the daemon's client).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from sfsign.emulator.server import Emulator, EmulatorLogin

LONG_POLL_MS = 1500
CLIENT_TIMEOUT_S = 3.0
API = "68.0"


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(data_dir=tmp_path / "emulator", long_poll_timeout_ms=LONG_POLL_MS,
                   client_timeout_s=CLIENT_TIMEOUT_S)
    async with emu:
        yield emu


@pytest.fixture
async def http(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=emulator.url, verify=emulator.tls.client_context(), timeout=10.0
    ) as client:
        yield client


def jwt_assertion(
    login: EmulatorLogin,
    aud: str,
    *,
    exp_in: float = 180,
    sub: str | None = None,
    iss: str | None = None,
    key: bytes | None = None,
) -> str:
    claims = {"iss": iss or login.consumer_key, "sub": sub or login.username, "aud": aud,
              "exp": int(time.time() + exp_in)}
    return jwt.encode(claims, key or login.private_key_file.read_bytes(), algorithm="RS256")


async def jwt_token(http: httpx.AsyncClient, emulator: Emulator) -> str:
    response = await http.post(
        "/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
              "assertion": jwt_assertion(emulator.login, "https://login.salesforce.com")},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
async def token(http: httpx.AsyncClient, emulator: Emulator) -> str:
    return await jwt_token(http, emulator)


class Bayeux:
    """A bare Bayeux long-polling driver: sends exactly what it is told, remembers the clientId."""

    def __init__(self, http: httpx.AsyncClient, token: str, version: str = API) -> None:
        self.http = http
        self.token = token
        self.path = f"/cometd/{version}"
        self.client_id: str | None = None
        self._id = 0

    def next_id(self) -> str:
        self._id += 1
        return str(self._id)

    async def post(self, messages: list[dict[str, Any]] | dict[str, Any], *, token: str | None = None,
                   read_timeout: float = 10.0) -> httpx.Response:
        return await self.http.post(
            self.path, json=messages, timeout=read_timeout,
            headers={"Authorization": f"Bearer {token if token is not None else self.token}"},
        )

    async def send(self, messages: list[dict[str, Any]] | dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
        response = await self.post(messages, **kw)
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, list)
        return body

    async def handshake(self) -> dict[str, Any]:
        [reply] = await self.send({"channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                                   "supportedConnectionTypes": ["long-polling"], "id": self.next_id(),
                                   "ext": {"replay": True}})
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        return reply

    def subscribe_msg(self, channel: str, replay: Any = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"channel": "/meta/subscribe", "clientId": self.client_id,
                               "subscription": channel, "id": self.next_id()}
        if replay is not None:
            msg["ext"] = {"replay": {channel: replay}}
        return msg

    async def subscribe(self, channel: str, replay: Any = None) -> dict[str, Any]:
        [reply] = await self.send(self.subscribe_msg(channel, replay))
        return reply

    def connect_msg(self) -> dict[str, Any]:
        return {"channel": "/meta/connect", "clientId": self.client_id, "connectionType": "long-polling",
                "id": self.next_id()}

    async def connect(self, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One long poll: (connect reply, data messages)."""
        body = await self.send(self.connect_msg(), **kw)
        replies = [m for m in body if m.get("channel") == "/meta/connect"]
        assert len(replies) == 1, body
        return replies[0], [m for m in body if m.get("channel") != "/meta/connect"]

    async def start(self, *subscriptions: tuple[str, Any]) -> None:
        """Handshake, first (immediate) connect, then subscribe."""
        await self.handshake()
        reply, _ = await self.connect()
        assert reply["successful"], reply
        for channel, replay in subscriptions:
            sub = await self.subscribe(channel, replay)
            assert sub["successful"], sub

    async def events(self, count: int, *, polls: int = 6) -> list[dict[str, Any]]:
        """Long-poll until `count` data messages arrived (fails after `polls` empty polls)."""
        out: list[dict[str, Any]] = []
        for _ in range(polls):
            reply, data = await self.connect()
            assert reply["successful"], reply
            out.extend(data)
            if len(out) >= count:
                return out
        raise AssertionError(f"expected {count} events, got {len(out)}: {out}")


@pytest.fixture
def bayeux(http: httpx.AsyncClient, token: str) -> Bayeux:
    return Bayeux(http, token)



class ControlApi:
    """The control API, as a test sees it."""

    def __init__(self, http: httpx.AsyncClient, emulator: Emulator) -> None:
        self.http = http
        self.headers = {"X-Control-Token": emulator.control_token}

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.http.post(path, json=body or {}, headers=self.headers)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.http.get(path, headers=self.headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def query(self, soql: str) -> list[dict[str, Any]]:
        return list((await self.post("/_control/query", {"q": soql}))["records"])

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any], user: str | None = None) -> None:
        body: dict[str, Any] = {"fields": fields}
        if user:
            body["user"] = user
        await self.post(f"/_control/records/{sobject}/{record_id}", body)

    async def an_opportunity(self) -> str:
        records = await self.query("SELECT Id FROM Opportunity WHERE IsClosed = false LIMIT 1")
        assert records, "the seeded org has no open opportunity"
        return str(records[0]["Id"])

    async def touch(self, opp: str, n: int) -> None:
        """A rep edits the description: one CDC UPDATE on the opportunity."""
        await self.update("Opportunity", opp, {"Description": f"touch {n}"})


@pytest.fixture
def ctl(http: httpx.AsyncClient, emulator: Emulator) -> ControlApi:
    return ControlApi(http, emulator)


@pytest.fixture
def make_assertion() -> Callable[..., str]:
    return jwt_assertion


@pytest.fixture
def get_token() -> Callable[[httpx.AsyncClient, Emulator], Awaitable[str]]:
    return jwt_token


@pytest.fixture
def new_bayeux() -> type[Bayeux]:
    return Bayeux
