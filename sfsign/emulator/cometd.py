"""`/cometd/NN.0`: a Bayeux long-polling server that behaves like Salesforce's Streaming API.

Written from the facts sheet, not from our client: only `long-polling`, the replay extension (-1, -2,
stored id exclusive, the two-space invalid-replay error), `403::Unknown client` after the 40 s reconnect
timeout, Bearer token re-validated on every request (and while a long poll is held), the BAYEUX_BROWSER
cookie, a 32 KB request cap, and the API-version rules of the URI. Fault hooks (forget clients, drop
or hold long polls, raw HTTP 401) let tests drive a client through every recovery path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import string
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sfsign.emulator.bus import BusEvent
from sfsign.emulator.event_access import may_subscribe, visible_data
from sfsign.emulator.org import INVALID_SESSION_BODY, Org, Session
from sfsign.emulator.versions import streaming_version_served

MAX_REQUEST_BYTES = 32768
SUBSCRIBE_LOG_MAX = 10000
BROWSER_COOKIE = "BAYEUX_BROWSER"
CLIENT_ID_ALPHABET = string.ascii_lowercase + string.digits
VERSION_RE = re.compile(r"^(\d+)\.0$")
INVALID_REPLAY = (
    "400::The replayId {{{value}}} you provided was invalid.  Please provide a valid ID, -2 to replay all "
    "events, or -1 to replay only new events."
)
REPLAY_MAP_MISMATCH = (
    "400::The replayId for channel {{{channel}}} wasn't found using the provided replay ID map {{{map}}}. "
    "Ensure that the channel name you provided in the replay map is valid and matches the channel name "
    "used for subscribing."
)
PROXY_PAGE = ("<html><head><title>Access check</title></head>"
              "<body>Please wait while we check your request.</body></html>")
BAD_GATEWAY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
UNKNOWN_CLIENT_ADVICE = {"interval": 0, "reconnect": "handshake"}
AUTH_FAILED_ADVICE = {"reconnect": "none", "interval": 0}


def _java_map(value: Any) -> str:
    """Java's Map.toString(), which is how Salesforce echoes the replay map in its error."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_map(v)}" for k, v in value.items()) + "}"
    return str(value)


def _new_client_id() -> str:
    return "".join(secrets.choice(CLIENT_ID_ALPHABET) for _ in range(27))


@dataclass
class Subscription:
    channel: str
    served_up_to: int  # replay id up to which events were queued (or skipped, for -1)


@dataclass
class PendingConnect:
    request: web.Request
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reasons: set[str] = field(default_factory=set)

    def notify(self, reason: str) -> None:
        self.reasons.add(reason)
        self.wake.set()


@dataclass
class BayeuxClient:
    id: str
    browser_id: str
    user_id: str
    api_version: str
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    pending: PendingConnect | None = None
    advised: bool = False
    last_seen: float = field(default_factory=time.monotonic)


class BayeuxServer:
    """All Bayeux clients of the org; one instance per running server."""

    def __init__(
        self,
        org: Org,
        *,
        long_poll_timeout_ms: int = 110000,
        client_timeout_s: float = 40.0,
        max_events_per_response: int = 1000,
    ) -> None:
        self.org = org
        self.long_poll_timeout_ms = long_poll_timeout_ms
        self.client_timeout_s = client_timeout_s
        self.max_events_per_response = max_events_per_response
        self.clients: dict[str, BayeuxClient] = {}
        self.browsers: set[str] = set()
        self.subscribe_log: deque[dict[str, Any]] = deque(maxlen=SUBSCRIBE_LOG_MAX)
        self.delivered = 0
        self._sweeper: asyncio.Task[None] | None = None
        org.bus.add_subscriber(self._on_event)
        org.on_revoke(lambda: self.wake_all("revalidate"))

    # -- lifecycle

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        self.org.bus.remove_subscriber(self._on_event)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for client in list(self.clients.values()):
            self._drop(client, "forgotten")

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.client_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def expire(self) -> int:
        """Forget clients without a pending long poll whose last response is older than the timeout."""
        now = time.monotonic()
        stale = [
            c
            for c in self.clients.values()
            if c.pending is None and now - c.last_seen > self.client_timeout_s
        ]
        for client in stale:
            self._drop(client, "forgotten")
        return len(stale)

    def _drop(self, client: BayeuxClient, reason: str) -> None:
        self.clients.pop(client.id, None)
        if client.pending is not None:
            client.pending.notify(reason)

    # -- fault hooks

    def forget(self, client_id: str | None = None) -> int:
        """Forget one client or all now: their next request gets `403::Unknown client`."""
        targets = [c for c in self.clients.values() if client_id is None or c.id == client_id]
        for client in targets:
            self._drop(client, "forgotten")
        return len(targets)

    def drop_connections(self) -> int:
        """Abort the TCP connection of every held long poll. Events still queued stay for the client; a held
        poll already woken by events (its answer not yet written) takes them down with the connection, as a
        real server's answer in flight does: only a resubscription from the committed replay id gets them."""
        count = 0
        for client in self.clients.values():
            pending = client.pending
            if pending is not None and pending.request.transport is not None:
                pending.request.transport.abort()
                count += 1
        return count

    def wake_all(self, reason: str) -> None:
        for client in self.clients.values():
            if client.pending is not None:
                client.pending.notify(reason)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "clientId": c.id,
                "userId": c.user_id,
                "subscriptions": {ch: s.served_up_to for ch, s in c.subscriptions.items()},
                "queued": len(c.queue),
                "connected": c.pending is not None,
            }
            for c in self.clients.values()
        ]

    # -- field-level security (event_access.py, shared with the Pub/Sub API)

    def _may_subscribe(self, client: BayeuxClient, channel: str) -> bool:
        return may_subscribe(self.org, client.user_id, channel)

    def _message_for(self, client: BayeuxClient, event: BusEvent, channel: str) -> dict[str, Any]:
        """The event as this subscriber may see it (only the fields the subscribed user can read)."""
        message = event.message(channel)
        return {**message, "data": visible_data(self.org, client.user_id, message["data"])}

    # -- fan-out

    def _on_event(self, event: BusEvent) -> None:
        for client in self.clients.values():
            queued = False
            for channel in event.channels:
                sub = client.subscriptions.get(channel)
                if sub is not None and event.replay_id > sub.served_up_to:
                    client.queue.append(self._message_for(client, event, channel))
                    sub.served_up_to = event.replay_id
                    queued = True
            if queued and client.pending is not None:
                client.pending.notify("events")

    # -- HTTP

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/cometd", self.handle),
            web.post("/cometd/", self.handle),
            web.post("/cometd/{version}", self.handle),
            web.post("/cometd/{version}/", self.handle),
        ]

    def _version_error(self, version: str | None) -> str | None:
        uri = f"URI format: '/cometd/{self.org.api_version_max}'"
        if not version:
            return f"400::API version in the URI is mandatory. {uri}"
        match = VERSION_RE.match(version)
        if match is None or not streaming_version_served(int(match.group(1))):
            return f"400::Unsupported API version. Only API versions '37.0' and later are supported. {uri}"
        return None

    @staticmethod
    def _bayeux_response(replies: list[dict[str, Any]], status: int = 200) -> web.Response:
        return web.Response(
            text=json.dumps(replies, separators=(",", ":")), status=status, content_type="application/json"
        )

    @staticmethod
    def _parse(body: bytes | bytearray) -> list[dict[str, Any]] | None:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not data or not all(isinstance(m, dict) for m in data):
            return None
        return data

    @staticmethod
    def _base(msg: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"channel": msg.get("channel")}
        if "id" in msg:
            reply["id"] = msg["id"]
        return reply

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return self._bayeux_response(
                [{"successful": False, "error": "413::Maximum Request Size Exceeded"}], status=413
            )
        body = bytearray()
        while len(body) <= MAX_REQUEST_BYTES:  # read() may return less than asked: loop to EOF or cap
            chunk = await request.content.read(MAX_REQUEST_BYTES + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            return self._bayeux_response(
                [{"successful": False, "error": "413::Maximum Request Size Exceeded"}], status=413
            )
        messages = self._parse(body)
        if messages is None:
            return self._bayeux_response(
                [{"successful": False, "error": "400::Request body must be a JSON array of Bayeux messages"}],
                status=400,
            )
        version_error = self._version_error(request.match_info.get("version"))
        if version_error is not None:
            return self._bayeux_response(
                [{**self._base(m), "successful": False, "error": version_error} for m in messages]
            )
        if request.content_type != "application/json":
            return self._bayeux_response(
                [{**self._base(m), "successful": False, "error": "400::Content-Type must be application/json"}
                 for m in messages],
                status=400,
            )
        token = self.org.bearer_token(request)
        session = self.org.session_for_token(token)
        if session is None and self.org.faults.cometd_auth_failure == "http":
            return self._raw_401()
        return await self._process(request, messages, token, session)

    @staticmethod
    def _raw_401() -> web.Response:
        return web.Response(
            text=json.dumps(INVALID_SESSION_BODY), status=401, content_type="application/json"
        )

    async def _process(
        self,
        request: web.Request,
        messages: list[dict[str, Any]],
        token: str | None,
        session: Session | None,
    ) -> web.StreamResponse:
        replies: list[dict[str, Any]] = []
        cookies: dict[str, str] = {}
        connect: tuple[int, dict[str, Any], BayeuxClient] | None = None
        version = request.match_info["version"]
        for msg in messages:
            channel = msg.get("channel")
            if channel == "/meta/handshake":
                replies.append(self._handshake(request, msg, token, session, version, cookies))
                continue
            reply, client = self._check_client(request, msg, token, session)
            if reply is not None or client is None:
                replies.append(reply or {})
                continue
            client.last_seen = time.monotonic()
            if channel == "/meta/connect":
                if connect is not None or msg.get("connectionType") != "long-polling":
                    error = (
                        f"400::Invalid connection type {{{msg.get('connectionType')}}}"
                        if msg.get("connectionType") != "long-polling"
                        else "400::Only one /meta/connect per request"
                    )
                    replies.append({**self._base(msg), "clientId": client.id, "successful": False,
                                    "error": error})
                    continue
                connect = (len(replies), msg, client)
                replies.append({})
            elif channel == "/meta/subscribe":
                replies.append(self._subscribe(msg, client))
            elif channel == "/meta/unsubscribe":
                replies.append(self._unsubscribe(msg, client))
            elif channel == "/meta/disconnect":
                self._drop(client, "disconnected")
                replies.append({**self._base(msg), "clientId": client.id, "successful": True})
            else:
                replies.append({**self._base(msg), "clientId": client.id, "successful": False,
                                "error": f"403::Cannot create channel {{{channel}}}"})
        if connect is not None:
            index, msg, client = connect
            outcome = await self._connect(request, msg, client, token, hold=len(messages) == 1)
            if outcome is None:  # token revoked while held, raw HTTP 401 mode
                return self._raw_401()
            reply, events = outcome
            replies[index : index + 1] = [*events, reply]
            torn = self.org.faults.take_torn_connect() if events else None
            if torn is not None:
                return _torn_response(torn, replies)
        response = self._bayeux_response(replies)
        for name, value in cookies.items():
            response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="None")
        return response

    # -- meta channels

    def _handshake(
        self,
        request: web.Request,
        msg: dict[str, Any],
        token: str | None,
        session: Session | None,
        version: str,
        cookies: dict[str, str],
    ) -> dict[str, Any]:
        base = self._base(msg)
        if session is None:
            reason = "401::Authentication invalid" if token else "401::Request requires authentication"
            return {
                "ext": {"sfdc": {"failureReason": reason}, "replay": True},
                "advice": {"reconnect": "none"},
                **base,
                "error": "403::Handshake denied",
                "successful": False,
            }
        types = msg.get("supportedConnectionTypes")
        if isinstance(types, list) and "long-polling" not in types:
            offered = ",".join(str(t) for t in types)
            return {**base, "error": f"400::Invalid connection type {{{offered}}}", "successful": False}
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if browser not in self.browsers:
            browser = secrets.token_hex(16)
            self.browsers.add(browser)
            cookies[BROWSER_COOKIE] = browser
        client = BayeuxClient(_new_client_id(), browser, session.user_id, version)
        self.clients[client.id] = client
        return {
            "ext": {"replay": True, "payload.format": True},
            "minimumVersion": "1.0",
            "clientId": client.id,
            "supportedConnectionTypes": ["long-polling"],
            **base,
            "version": "1.0",
            "successful": True,
        }

    def _check_client(
        self, request: web.Request, msg: dict[str, Any], token: str | None, session: Session | None
    ) -> tuple[dict[str, Any] | None, BayeuxClient | None]:
        """The client a non-handshake message belongs to, or the Bayeux error reply."""
        base = self._base(msg)
        client_id = msg.get("clientId")
        if session is None:
            error = "401::Authentication invalid" if token else "401::Request requires authentication"
            return {
                **({"clientId": client_id} if client_id else {}),
                "advice": dict(AUTH_FAILED_ADVICE),
                **base,
                "error": error,
                "successful": False,
            }, None
        if not client_id:
            return {**base, "error": "403::Client has not completed handshake", "successful": False}, None
        self.expire()
        client = self.clients.get(str(client_id))
        if client is None:
            return {"advice": dict(UNKNOWN_CLIENT_ADVICE), **base, "error": "403::Unknown client",
                    "successful": False}, None
        if request.cookies.get(BROWSER_COOKIE) != client.browser_id:
            return {
                "clientId": client.id,
                "advice": dict(AUTH_FAILED_ADVICE),
                **base,
                "error": f"400::Client {client.id} has established a session, but no {BROWSER_COOKIE} "
                "cookie present",
                "successful": False,
            }, None
        if client.user_id != session.user_id:
            return {**base, "clientId": client.id, "successful": False,
                    "error": "400::Authenticated user id does not match the session's user id"}, None
        return None, client

    def _subscribe(self, msg: dict[str, Any], client: BayeuxClient) -> dict[str, Any]:
        channel = msg.get("subscription")
        base = {**self._base(msg), "clientId": client.id}
        if channel is not None:
            base["subscription"] = channel
        ext = msg.get("ext")
        replay_map = ext.get("replay") if isinstance(ext, dict) else None
        log: dict[str, Any] = {"clientId": client.id, "channel": channel, "replay": None, "at": time.time()}
        self.subscribe_log.append(log)

        def fail(error: str) -> dict[str, Any]:
            log.update(successful=False, error=error)
            return {**base, "error": error, "successful": False}

        if not isinstance(channel, str) or not channel:
            return fail("400::Channel name not specified")
        if not channel.startswith("/"):
            return fail("400::Channel subscriptions must start with a leading '/'")
        if not self.org.bus.channel_exists(channel):
            return fail(f"400::The channel you requested to subscribe to doesn't exist {{{channel}}}")
        if not self._may_subscribe(client, channel):
            return fail("403::User not allowed to subscribe CDC without View All Data permissions")
        value: Any = -1
        if replay_map is not None:
            if not isinstance(replay_map, dict) or channel not in replay_map:
                return fail(REPLAY_MAP_MISMATCH.format(channel=channel, map=_java_map(replay_map)))
            value = replay_map[channel]
            log["replay"] = value
        if not isinstance(value, int) or isinstance(value, bool):
            return fail(INVALID_REPLAY.format(value=value))
        events: list[BusEvent]
        if value == -1:
            events, mark = [], self.org.bus.last_replay_id
        elif value == -2:
            events, mark = self.org.bus.subscribe_point(channel, None)
        elif value >= 0 and self.org.bus.is_valid_replay(value):
            events, mark = self.org.bus.subscribe_point(channel, value)
        else:
            return fail(INVALID_REPLAY.format(value=value))
        client.subscriptions[channel] = Subscription(channel, mark)
        client.queue.extend(self._message_for(client, e, channel) for e in events)
        log["successful"] = True
        return {**base, "successful": True}

    def _unsubscribe(self, msg: dict[str, Any], client: BayeuxClient) -> dict[str, Any]:
        channel = msg.get("subscription")
        client.subscriptions.pop(str(channel), None)
        return {**self._base(msg), "clientId": client.id, "subscription": channel, "successful": True}

    async def _connect(
        self, request: web.Request, msg: dict[str, Any], client: BayeuxClient, token: str | None, *, hold: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Hold the long poll until events arrive, the timeout passes or the client is dropped.

        Returns the connect reply and the events to send before it, or None for a raw HTTP 401.
        """
        base = {"clientId": client.id, **self._base(msg)}
        if client.pending is not None:  # a newer long poll replaces the held one
            client.pending.notify("replaced")
        first = not client.advised
        client.advised = True
        deadline = time.monotonic() + self.long_poll_timeout_ms / 1000
        if hold and not first and not client.queue:
            pending = PendingConnect(request)
            client.pending = pending
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if self.org.faults.cometd_hold_connects:
                        remaining = 3600.0
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pending.wake.wait(), remaining)
                    pending.wake.clear()
                    if pending.reasons & {"replaced", "forgotten", "disconnected"}:
                        break
                    if self.org.faults.cometd_hold_connects:
                        continue
                    if "revalidate" in pending.reasons and self.org.session_for_token(token) is None:
                        break
                    if client.queue:
                        break
                    pending.reasons.discard("revalidate")
            finally:
                if client.pending is pending:
                    client.pending = None
                client.last_seen = time.monotonic()
            if "forgotten" in pending.reasons:
                return {"advice": dict(UNKNOWN_CLIENT_ADVICE), **self._base(msg),
                        "error": "403::Unknown client", "successful": False}, []
            if "disconnected" in pending.reasons:
                return {**base, "successful": True, "advice": {"reconnect": "none"}}, []
            if "replaced" in pending.reasons:  # the client has moved on to a newer long poll
                return {**base, "successful": True}, []
        client.last_seen = time.monotonic()
        if self.org.session_for_token(token) is None:
            if self.org.faults.cometd_auth_failure == "http":
                return None
            return {**base, "advice": dict(AUTH_FAILED_ADVICE), "error": "401::Authentication invalid",
                    "successful": False}, []
        events: list[dict[str, Any]] = []
        while client.queue and len(events) < self.max_events_per_response:
            events.append(client.queue.popleft())
        self.delivered += len(events)
        reply: dict[str, Any] = {**base, "successful": True}
        if first:
            reply["advice"] = {"interval": 0, "timeout": self.long_poll_timeout_ms, "reconnect": "retry"}
        return reply, events



def _torn_response(kind: str, replies: list[dict[str, Any]]) -> web.Response:
    """What a client gets when something between it and the server mangles an answer (see TornConnects)."""
    if kind == "truncated":
        text = json.dumps(replies, separators=(",", ":"))
        return web.Response(text=text[: len(text) // 2], status=200, content_type="application/json")
    if kind == "html":
        return web.Response(text=PROXY_PAGE, status=200, content_type="text/html")
    if kind == "html-502":
        return web.Response(text=BAD_GATEWAY_PAGE, status=502, content_type="text/html")
    return web.Response(text=json.dumps({"message": "upstream request timeout"}), status=200,
                        content_type="application/json")
