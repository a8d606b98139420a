"""The org: sessions (OAuth access tokens), connected apps, the daily API counter and fault injection.

Everything the HTTP layers share lives here, so that REST, OAuth, CometD and the control API agree on
who is logged in, how many calls were made and which faults are armed. The record store and the event
bus are owned by the Org but implemented elsewhere (`store.py`, `bus.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
import string
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import SecretStr

from sfsign import metadata as md
from sfsign.emulator import versions

if TYPE_CHECKING:
    from sfsign.emulator.bus import EventBus
    from sfsign.emulator.store import OrgStore

TOKEN_ALPHABET = string.ascii_letters + string.digits + "._"
INVALID_SESSION_BODY = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
LIMIT_EXCEEDED_BODY = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
CHILD_BATCH_DEFAULT = 200  # children of one relationship per batch before Salesforce pages them
CHILD_BATCH_MAX = 2000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Session:
    """An issued access token. `app` is the consumer key of the connected app that issued it."""

    token: str = field(repr=False)
    user_id: str
    username: str
    app: str
    issued_at_ms: int
    revoked: bool = False


@dataclass
class ConnectedApp:
    """A connected app as an admin configures it (the parts the OAuth flows look at).

    `certificate_pem` is the X.509 certificate uploaded for "Use digital signatures" (JWT bearer);
    `run_as_username` is the execution user of the client credentials flow; JWT bearer logins are
    allowed only for `preauthorized_usernames` ("Admin approved users are pre-authorized").
    """

    consumer_key: str
    consumer_secret: SecretStr
    certificate_pem: str | None = None
    run_as_username: str | None = None
    preauthorized_usernames: set[str] = field(default_factory=set)
    name: str = "sfsign"
    password_flow_enabled: bool = True
    client_credentials_enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "consumer_key": self.consumer_key,
            "consumer_secret": self.consumer_secret.get_secret_value(),
            "certificate_pem": self.certificate_pem,
            "run_as_username": self.run_as_username,
            "preauthorized_usernames": sorted(self.preauthorized_usernames),
            "name": self.name,
            "password_flow_enabled": self.password_flow_enabled,
            "client_credentials_enabled": self.client_credentials_enabled,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectedApp:
        return cls(
            consumer_key=data["consumer_key"],
            consumer_secret=SecretStr(data["consumer_secret"]),
            certificate_pem=data.get("certificate_pem"),
            run_as_username=data.get("run_as_username"),
            preauthorized_usernames=set(data.get("preauthorized_usernames", [])),
            name=data.get("name", "sfsign"),
            password_flow_enabled=data.get("password_flow_enabled", True),
            client_credentials_enabled=data.get("client_credentials_enabled", True),
        )


# --------------------------------------------------------------------------------------------- faults

FAULT_MODES = ("respond", "abort_before", "abort_after", "hold_after")
HOLD_AFTER_MAX_S = 300.0  # a held answer is dropped after this long, whatever the client does


@dataclass
class ErrorFault:
    """Answer requests under `prefix` with an error, or drop the connection before/after handling.

    `count` limits how many requests are hit (None: unlimited); `rate` hits each matching request with
    that probability (None: every one). `abort_after` lets the request take effect and then drops the
    connection: the "did my upload happen?" case. `hold_after` lets it take effect and never answers
    (until the client gives up, or `HOLD_AFTER_MAX_S`): the window in which a client that crashes has
    written without knowing it.

    `body_contains` (respond only) hits only REST requests whose body holds that text (in a multipart
    request: a part's name, filename or content): the request Salesforce refuses as a whole for what one
    of its records carries, e.g. a malformed part in a batch upload.
    """

    id: str
    prefix: str
    status: int = 503
    error_code: str = "SERVER_UNAVAILABLE"
    message: str = "Server Unavailable"
    method: str | None = None
    count: int | None = None
    rate: float | None = None
    mode: str = "respond"
    hits: int = 0
    body_contains: str | None = None


@dataclass
class LatencyFault:
    id: str
    prefix: str
    seconds: float
    method: str | None = None


TORN_KINDS = ("truncated", "html", "html-502", "not-array")


@dataclass
class TornConnects:
    """Tear the next `count` /meta/connect answers that carry events (None: every one), *after* their
    events were dequeued, as a proxy or load balancer does when it cuts or replaces an answer: the
    events are gone from that Bayeux session, as in Salesforce, which keeps no per-client acknowledgement.

    `truncated`: 200 with the JSON cut in half; `html`: 200 with a proxy's HTML page; `html-502`: a
    load balancer's 502 page; `not-array`: 200 with a JSON object that is not a Bayeux message array.
    """

    kind: str
    count: int | None = 1
    hits: int = 0


@dataclass
class Faults:
    """Armed faults. HTTP faults are applied by a middleware to every non-control route; the CometD
    flags are read by the Bayeux server on each request."""

    errors: list[ErrorFault] = field(default_factory=list)
    latencies: list[LatencyFault] = field(default_factory=list)
    cometd_hold_connects: bool = False  # half-open: /meta/connect accepted, never answered
    cometd_auth_failure: str = "bayeux"  # "bayeux": 401::Authentication invalid; "http": raw HTTP 401
    cometd_torn: TornConnects | None = None
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_error(
        self,
        prefix: str,
        *,
        status: int = 503,
        error_code: str = "SERVER_UNAVAILABLE",
        message: str = "Server Unavailable",
        method: str | None = None,
        count: int | None = None,
        rate: float | None = None,
        mode: str = "respond",
        body_contains: str | None = None,
    ) -> ErrorFault:
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}")
        if body_contains is not None and (mode != "respond" or not body_contains):
            raise ValueError("body_contains needs a non-empty text and mode respond")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        fault = ErrorFault(
            id=secrets.token_hex(4),
            prefix=prefix,
            status=status,
            error_code=error_code,
            message=message,
            method=method.upper() if method else None,
            count=count,
            rate=rate,
            mode=mode,
            body_contains=body_contains,
        )
        with self._lock:
            self.errors.append(fault)
        return fault

    def add_latency(self, prefix: str, seconds: float, *, method: str | None = None) -> LatencyFault:
        fault = LatencyFault(secrets.token_hex(4), prefix, seconds, method.upper() if method else None)
        with self._lock:
            self.latencies.append(fault)
        return fault

    def tear_connects(self, kind: str, count: int | None = 1) -> TornConnects:
        if kind not in TORN_KINDS:
            raise ValueError(f"kind must be one of {TORN_KINDS}")
        if count is not None and count < 0:
            raise ValueError("count must be positive (or null: every answer)")
        with self._lock:
            self.cometd_torn = TornConnects(kind, count)
            return self.cometd_torn

    def take_torn_connect(self) -> str | None:
        """The kind of tear for this connect answer, if one is armed (consumes one of its `count`)."""
        with self._lock:
            torn = self.cometd_torn
            if torn is None or (torn.count is not None and torn.count <= 0):
                return None
            if torn.count is not None:
                torn.count -= 1
            torn.hits += 1
            return torn.kind

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            before = len(self.errors) + len(self.latencies)
            self.errors = [f for f in self.errors if f.id != fault_id]
            self.latencies = [f for f in self.latencies if f.id != fault_id]
            return len(self.errors) + len(self.latencies) != before

    def clear(self) -> None:
        with self._lock:
            self.errors.clear()
            self.latencies.clear()
            self.cometd_hold_connects = False
            self.cometd_auth_failure = "bayeux"
            self.cometd_torn = None

    def any_body_faults(self) -> bool:
        """Whether a `body_contains` fault is armed (only then is a request body looked at)."""
        with self._lock:
            return any(f.body_contains is not None for f in self.errors)

    def latency_for(self, method: str, path: str) -> float:
        with self._lock:
            return sum(
                f.seconds
                for f in self.latencies
                if path.startswith(f.prefix) and (f.method is None or f.method == method)
            )

    def error_for(
        self, method: str, path: str, modes: tuple[str, ...] = FAULT_MODES, body: bytes | None = None
    ) -> ErrorFault | None:
        """The first armed error fault that hits this request (consumes one of its `count`).

        `modes` narrows the faults considered: a composite subrequest can only get an error answer
        (`respond`), never a dropped connection, which belongs to the whole HTTP request. Without `body`
        (before the request is read) only faults without `body_contains` are considered; with it, only
        those with it."""
        with self._lock:
            for fault in self.errors:
                if not path.startswith(fault.prefix) or (fault.method and fault.method != method):
                    continue
                if (body is None) != (fault.body_contains is None):
                    continue
                if body is not None and fault.body_contains is not None \
                        and fault.body_contains.encode() not in body:
                    continue
                if fault.mode not in modes:
                    continue
                if fault.count is not None and fault.count <= 0:
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                fault.hits += 1
                return fault
            return None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "errors": [asdict(f) for f in self.errors],
                "latencies": [asdict(f) for f in self.latencies],
                "cometd_hold_connects": self.cometd_hold_connects,
                "cometd_auth_failure": self.cometd_auth_failure,
                "cometd_torn": asdict(self.cometd_torn) if self.cometd_torn is not None else None,
            }


# ------------------------------------------------------------------------------------------------ org


class Org:
    """One emulated org. Thread-safe where the store may call in from an executor thread."""

    api_version_max = versions.NEWEST_VERSION
    api_version_min = f"{versions.OLDEST}.0"

    def __init__(self, store: OrgStore, bus: EventBus, *, instance_url: str = "https://localhost") -> None:
        self.store = store
        self.bus = bus
        self.instance_url = instance_url
        self.faults = Faults()
        self.daily_api_max = 15000  # Developer Edition allocation
        self.query_child_batch_size = CHILD_BATCH_DEFAULT
        self.api_calls = 0
        self.api_calls_per_app: dict[str, int] = defaultdict(int)
        self._api_day = dt.datetime.now(dt.UTC).date()
        self.sessions: dict[str, Session] = {}
        self.connected_apps: dict[str, ConnectedApp] = {}
        self._passwords: dict[str, SecretStr] = {}  # username -> password + security token
        self._lock = threading.Lock()
        self._revoke_listeners: list[Callable[[], None]] = []
        #: The permission sets deployed with the package, by API name (assignable with the control API).
        self.permission_sets: dict[str, md.PermissionSetDef] = {}
        #: Custom notifications the org accepted (`notifications.send`), oldest first; not persisted.
        self.notifications: list[dict[str, Any]] = []

    @property
    def org_id(self) -> str:
        return self.store.org_id

    # -- connected apps and credentials

    def register_app(self, app: ConnectedApp) -> None:
        self.connected_apps[app.consumer_key] = app

    def set_password(self, username: str, password: str, security_token: str = "") -> None:
        """The username-password flow expects `password + security_token`, as Salesforce does."""
        self._passwords[username] = SecretStr(password + security_token)

    def check_password(self, username: str, password_and_token: str) -> bool:
        expected = self._passwords.get(username)
        return expected is not None and secrets.compare_digest(
            expected.get_secret_value().encode(), password_and_token.encode()
        )

    def active_user(self, username: str) -> dict[str, Any] | None:
        user = self.store.user_by_username(username)
        return user if user is not None and user.get("IsActive", True) else None

    # -- sessions

    def new_token(self) -> str:
        """An opaque token shaped like Salesforce's: `<15-char org id>!AQ<random>`."""
        return f"{self.org_id[:15]}!AQ" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(96))

    def issue_session(self, user: dict[str, Any], app: str) -> Session:
        session = Session(
            token=self.new_token(),
            user_id=user["Id"],
            username=user["Username"],
            app=app,
            issued_at_ms=now_ms(),
        )
        with self._lock:
            self.sessions[session.token] = session
        return session

    def session_for_token(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self.sessions.get(token)
        if session is None or session.revoked:
            return None
        user = self.store.record(session.user_id)  # a dict lookup: this runs on every request
        if user is None or user.get("IsDeleted") or not user.get("IsActive", True):
            return None
        return session

    def revoke(self, token: str | None = None) -> int:
        """Revoke one token, or every token when `token` is None; returns how many were revoked.

        Listeners (the Bayeux server) are told so that pending long polls re-validate at once, as
        Salesforce re-validates a connected streaming client's token.
        """
        with self._lock:
            targets = [self.sessions[token]] if token in self.sessions else []
            if token is None:
                targets = list(self.sessions.values())
            count = 0
            for session in targets:
                if not session.revoked:
                    session.revoked = True
                    count += 1
        for listener in list(self._revoke_listeners):
            listener()
        return count

    def on_revoke(self, listener: Callable[[], None]) -> None:
        self._revoke_listeners.append(listener)

    @staticmethod
    def bearer_token(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() in ("bearer", "oauth") and token.strip():
            return token.strip()
        return None

    def authenticate(self, request: web.Request) -> Session:
        """The session of the request's bearer token, else Salesforce's REST 401 (a JSON list)."""
        session = self.session_for_token(self.bearer_token(request))
        if session is None:
            raise web.HTTPUnauthorized(
                text=json.dumps(INVALID_SESSION_BODY),
                content_type="application/json",
                headers={"WWW-Authenticate": "Token"},
            )
        return session

    # -- API usage

    def _roll_day(self) -> None:
        today = dt.datetime.now(dt.UTC).date()
        if today != self._api_day:
            self._api_day = today
            self.api_calls = 0
            self.api_calls_per_app.clear()

    def count_api_call(self, session: Session) -> None:
        """Count one call against the daily allocation.

        Raises Salesforce's 403 REQUEST_LIMIT_EXCEEDED (not counted) once the allocation is used up;
        the response carries the limit header like any REST response.
        """
        with self._lock:
            self._roll_day()
            if self.api_calls >= self.daily_api_max:
                raise web.HTTPForbidden(
                    text=json.dumps(LIMIT_EXCEEDED_BODY),
                    content_type="application/json",
                    headers={"Sforce-Limit-Info": self._limit_info()},
                )
            self.api_calls += 1
            self.api_calls_per_app[session.app] += 1

    def _limit_info(self) -> str:
        return f"api-usage={self.api_calls}/{self.daily_api_max}"

    def limit_info_header(self) -> str:
        with self._lock:
            self._roll_day()
            return self._limit_info()

    def reset_api_usage(self, used: int = 0, maximum: int | None = None) -> None:
        with self._lock:
            self.api_calls = used
            self.api_calls_per_app.clear()
            if maximum is not None:
                self.daily_api_max = maximum

    # -- query settings

    def set_query_child_batch_size(self, size: int) -> None:
        """How many children of one relationship a query batch holds before the rest are paged."""
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= CHILD_BATCH_MAX:
            raise ValueError(f"the child batch size must be an integer from 1 to {CHILD_BATCH_MAX}")
        self.query_child_batch_size = size

    # -- persistence (server restart with state kept)

    def snapshot(self) -> dict[str, Any]:
        """Org-level state as JSON-able data; the store and bus snapshot themselves."""
        with self._lock:
            return {
                "api_calls": self.api_calls,
                "api_calls_per_app": dict(self.api_calls_per_app),
                "api_day": self._api_day.isoformat(),
                "daily_api_max": self.daily_api_max,
                "query_child_batch_size": self.query_child_batch_size,
                "sessions": [
                    {
                        "token": s.token,
                        "user_id": s.user_id,
                        "username": s.username,
                        "app": s.app,
                        "issued_at_ms": s.issued_at_ms,
                        "revoked": s.revoked,
                    }
                    for s in self.sessions.values()
                ],
                "connected_apps": [a.to_json() for a in self.connected_apps.values()],
                "passwords": {u: p.get_secret_value() for u, p in self._passwords.items()},
            }

    def restore_state(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.api_calls = int(data.get("api_calls", 0))
            self.api_calls_per_app = defaultdict(int, data.get("api_calls_per_app", {}))
            self._api_day = dt.date.fromisoformat(data.get("api_day", self._api_day.isoformat()))
            self.daily_api_max = int(data.get("daily_api_max", self.daily_api_max))
            self.query_child_batch_size = int(data.get("query_child_batch_size", self.query_child_batch_size))
            self.sessions = {s["token"]: Session(**s) for s in data.get("sessions", [])}
            self.connected_apps = {
                a["consumer_key"]: ConnectedApp.from_json(a) for a in data.get("connected_apps", [])
            }
            self._passwords = {u: SecretStr(p) for u, p in data.get("passwords", {}).items()}
