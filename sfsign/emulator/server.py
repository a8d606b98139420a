"""The emulator as a running HTTPS server: `Emulator` (asyncio) and `EmulatorThread` (its own loop).

Binds 127.0.0.1 only, serves HTTPS with its own CA, mounts OAuth, REST, CometD and the control API on
one aiohttp application, and keeps the org's state across `restart()` (and across processes with a
state file) so tests can kill and revive "Salesforce" under a running client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
import string
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from sfsign import metadata as md
from sfsign.emulator import seed as seed_mod
from sfsign.emulator.bus import DEFAULT_CDC_ENTITIES, EventBus
from sfsign.emulator.cometd import BayeuxServer
from sfsign.emulator.control import Control
from sfsign.emulator.notifications import deploy_notification_types
from sfsign.emulator.oauth import oauth_routes
from sfsign.emulator.org import HOLD_AFTER_MAX_S, ConnectedApp, Org
from sfsign.emulator.pubsub_server import DEFAULT_FETCH_IDLE_S, DEFAULT_KEEPALIVE_S, PubSubServer
from sfsign.emulator.rest import rest_routes
from sfsign.emulator.schema import build_org_schema
from sfsign.emulator.store import OrgStore
from sfsign.emulator.tls import TlsMaterial, ensure_tls

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUMER_KEY_ALPHABET = string.ascii_letters + string.digits + "._"
DEMO_PASSWORD = "sfsign-demo-Passw0rd"  # a fake, printed on purpose for `sfsign demo`
CLIENT_MAX_SIZE = 2 * 1024**3 + 16 * 1024**2  # REST enforces its own per-resource caps
JWT_KEY_FILE = "jwt-private-key.pem"
JWT_CERT_FILE = "jwt-certificate.pem"


@dataclass(frozen=True)
class EmulatorLogin:
    """How a client logs in to the emulator's default connected app."""

    username: str
    consumer_key: str
    consumer_secret: SecretStr
    password: SecretStr  # fake demo password; the password flow wants password + security_token
    security_token: SecretStr
    private_key_file: Path  # RSA key for the JWT bearer flow (0600, in the data dir)
    certificate_file: Path  # its certificate, as uploaded to the connected app
    login_url: str  # the token endpoint's base URL (the emulator itself)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def ensure_jwt_keypair(directory: Path) -> tuple[Path, Path]:
    """The default app's RSA key (0600) and self-signed certificate; reused when present. Blocking."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file, cert_file = directory / JWT_KEY_FILE, directory / JWT_CERT_FILE
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        if isinstance(key, rsa.RSAPrivateKey) and cert.public_key() == key.public_key():
            return key_file, cert_file
    except (OSError, ValueError):
        pass
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfsign emulator JWT")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Emulator:
    """An embedded Salesforce org on https://localhost:PORT. Use `async with Emulator(...)`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        metadata_dir: Path | None = None,
        long_poll_timeout_ms: int = 110000,
        client_timeout_s: float = 40.0,
        port: int = 0,
        seed: bool = True,
        state_file: Path | None = None,
        cdc_entities: tuple[str, ...] | None = None,
        pubsub_port: int = 0,
        pubsub_keepalive_s: float = DEFAULT_KEEPALIVE_S,
        pubsub_fetch_idle_s: float = DEFAULT_FETCH_IDLE_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.pubsub_port = pubsub_port
        self.pubsub_keepalive_s = pubsub_keepalive_s
        self.pubsub_fetch_idle_s = pubsub_fetch_idle_s
        self._pubsub: PubSubServer | None = None
        self.metadata_dir = metadata_dir
        self.long_poll_timeout_ms = long_poll_timeout_ms
        self.client_timeout_s = client_timeout_s
        self.port = port
        self.seed = seed
        self.state_file = state_file
        self.cdc_entities = cdc_entities
        self._org: Org | None = None
        self._state: dict[str, Any] | None = None
        self._tls: TlsMaterial | None = None
        self._login: EmulatorLogin | None = None
        self._runner: web.AppRunner | None = None
        self._bayeux: BayeuxServer | None = None
        self._control_token = SecretStr(secrets.token_urlsafe(32))
        self._default_username: str | None = None
        self._rep_username: str | None = None
        self._security_token: SecretStr | None = None

    # -- properties

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def pubsub_target(self) -> str:
        """The Pub/Sub API's gRPC target (`localhost:PORT`, TLS with the same CA as `url`)."""
        return f"localhost:{self.pubsub_port}"

    @property
    def pubsub(self) -> PubSubServer:
        return self._require(self._pubsub)

    @property
    def ca_file(self) -> Path:
        return self._require(self._tls).ca_file

    @property
    def tls(self) -> TlsMaterial:
        return self._require(self._tls)

    @property
    def org(self) -> Org:
        return self._require(self._org)

    @property
    def bayeux(self) -> BayeuxServer:
        return self._require(self._bayeux)

    @property
    def login(self) -> EmulatorLogin:
        return self._require(self._login)

    @property
    def control_token(self) -> str:
        return self._control_token.get_secret_value()

    @property
    def rep_username(self) -> str | None:
        """A sales rep of the seeded org (acts in control calls that name no user)."""
        return self._rep_username

    @staticmethod
    def _require(value: T | None) -> T:
        if value is None:
            raise RuntimeError("the emulator is not started")
        return value

    # -- lifecycle

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._tls is None:
            self._tls = await loop.run_in_executor(None, ensure_tls, self.data_dir / "tls")
        key_file, cert_file = await loop.run_in_executor(None, ensure_jwt_keypair, self.data_dir / "jwt")
        org = await loop.run_in_executor(None, self._build_org)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        org.instance_url = self.url
        self._org = org
        self._login = self._default_app(org, key_file, cert_file)
        org.bus.bind_loop(loop)
        self._bayeux = BayeuxServer(
            org, long_poll_timeout_ms=self.long_poll_timeout_ms, client_timeout_s=self.client_timeout_s
        )
        app = web.Application(middlewares=[self._fault_middleware], client_max_size=CLIENT_MAX_SIZE)
        app.add_routes(oauth_routes(org))
        app.add_routes(self._bayeux.routes())
        pubsub = PubSubServer(org, self._tls, port=self.pubsub_port, keepalive_s=self.pubsub_keepalive_s,
                              fetch_idle_s=self.pubsub_fetch_idle_s)
        await pubsub.start()
        self.pubsub_port = pubsub.port
        self._pubsub = pubsub
        control = Control(org, self._bayeux, self.control_token, default_user=self._rep_username, pubsub=pubsub)
        app.add_routes(control.routes())
        app.add_routes(rest_routes(org))
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.SockSite(runner, sock, ssl_context=self._tls.server_context())
        await site.start()
        self._runner = runner
        self._bayeux.start()
        log.info("emulator listening on %s, Pub/Sub API on %s", self.url, self.pubsub_target)

    async def stop(self) -> None:
        """Stop serving, like a killed server: held long polls see their connection drop."""
        if self._runner is None:
            return
        bayeux, runner = self._require(self._bayeux), self._runner
        for site in list(runner.sites):  # no new connection first: a client must not reconnect to a dying server
            await site.stop()
        bayeux.drop_connections()
        await bayeux.stop()
        if self._pubsub is not None:
            await self._pubsub.stop()
        await runner.cleanup()
        self._runner = None
        self._state = await asyncio.get_running_loop().run_in_executor(None, self._save_state)

    async def restart(self) -> None:
        """Stop and start again on the same port; the org's state survives, Bayeux clients do not."""
        await self.stop()
        await self.start()

    # -- org construction and persistence

    def _build_org(self) -> Org:
        meta = md.load_schema(self.metadata_dir)
        schema = build_org_schema(meta)
        state = self._state
        if state is None and self.state_file is not None and self.state_file.exists():
            state = json.loads(self.state_file.read_text())
        if state is not None:
            store = OrgStore.restore(state["store"], schema)
        else:
            store = OrgStore(schema)
        events = [name for name, obj in schema.objects.items() if obj.is_event]
        # The CDC selection deployed with the package (PlatformEventChannelMember), as in a real org.
        selected = self.cdc_entities if self.cdc_entities is not None else (meta.cdc_entities or DEFAULT_CDC_ENTITIES)
        bus = EventBus(cdc_entities=selected, platform_events=events)
        org = Org(store, bus)
        org.permission_sets = dict(meta.permission_sets)
        if state is not None:
            bus.restore(state["bus"])
            org.restore_state(state["org"])
            self._default_username = state.get("default_username")
            self._rep_username = state.get("rep_username")
            if state.get("security_token"):
                self._security_token = SecretStr(state["security_token"])
        elif self.seed:
            result = seed_mod.seed_org(store)
            self._default_username = result.integration_username
            self._rep_username = result.rep_username
        deploy_notification_types(store, meta)  # as a deploy of the package adds them (after the seed: its ids)
        bus.attach(store)
        return org

    def _save_state(self) -> dict[str, Any]:
        org = self.org
        state = {
            "store": org.store.snapshot(),
            "bus": org.bus.snapshot(),
            "org": org.snapshot(),
            "default_username": self._default_username,
            "rep_username": self._rep_username,
            "security_token": self._security_token.get_secret_value() if self._security_token else None,
        }
        if self.state_file is not None:
            tmp = self.state_file.with_suffix(".tmp")
            _write_private(tmp, json.dumps(state).encode())
            tmp.replace(self.state_file)
        return state

    def _default_app(self, org: Org, key_file: Path, cert_file: Path) -> EmulatorLogin:
        """Register (or refresh after a restore) the default connected app and the demo password."""
        username = self._default_username or self._first_active_username(org)
        app = next((a for a in org.connected_apps.values() if a.name == "sfsign"), None)
        if app is None:
            app = ConnectedApp(
                consumer_key="3MVG9" + _random(CONSUMER_KEY_ALPHABET, 80),
                consumer_secret=SecretStr(secrets.token_hex(32).upper()),
            )
        app.certificate_pem = cert_file.read_text()
        app.run_as_username = username
        app.preauthorized_usernames.add(username)
        org.register_app(app)
        if self._security_token is None:
            self._security_token = SecretStr(_random(string.ascii_letters + string.digits, 24))
        security = self._security_token
        org.set_password(username, DEMO_PASSWORD, security.get_secret_value())
        return EmulatorLogin(
            username=username,
            consumer_key=app.consumer_key,
            consumer_secret=app.consumer_secret,
            password=SecretStr(DEMO_PASSWORD),
            security_token=security,
            private_key_file=key_file,
            certificate_file=cert_file,
            login_url=self.url,
        )

    @staticmethod
    def _first_active_username(org: Org) -> str:
        for user in org.store.users.values():
            if user.get("IsActive", True):
                return str(user["Username"])
        raise RuntimeError("the org has no active user to log in as (start with seed=True)")

    # -- middleware

    @web.middleware
    async def _fault_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Armed faults apply to every route except the control API."""
        if request.path.startswith("/_control/"):
            return await handler(request)
        faults = self.org.faults
        delay = faults.latency_for(request.method, request.path)
        if delay > 0:
            await asyncio.sleep(delay)
        fault = faults.error_for(request.method, request.path)
        if fault is None:
            return await handler(request)
        if fault.mode in ("abort_after", "hold_after"):
            await handler(request)
        if fault.mode == "hold_after":
            # The write happened; the answer never comes. aiohttp cancels this wait when the client
            # disconnects (handler_cancellation), so a killed client frees it at once.
            await asyncio.sleep(HOLD_AFTER_MAX_S)
        if fault.mode in ("abort_before", "abort_after", "hold_after"):
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if request.path.startswith("/services/oauth2/"):
            return web.json_response(
                {"error": fault.error_code, "error_description": fault.message}, status=fault.status
            )
        headers = {}
        if request.path.startswith("/services/data/v"):
            headers["Sforce-Limit-Info"] = self.org.limit_info_header()
        return web.json_response(
            [{"message": fault.message, "errorCode": fault.error_code}], status=fault.status, headers=headers
        )


class EmulatorThread:
    """An Emulator on its own thread and event loop, for synchronous tests and `sfsign demo`."""

    def __init__(self, **kwargs: Any) -> None:
        self.emulator = Emulator(**kwargs)
        self.loop_errors: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        started: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
            try:
                loop.run_until_complete(self.emulator.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="sfsign-emulator", daemon=True)
        self._thread.start()
        started.result(timeout)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the emulator's loop and wait for its result."""
        if self._loop is None:
            raise RuntimeError("the emulator thread is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def restart(self) -> None:
        self.call(self.emulator.restart())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self.call(self.emulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop = None
        self._thread = None

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def ca_file(self) -> Path:
        return self.emulator.ca_file

    @property
    def pubsub_target(self) -> str:
        return self.emulator.pubsub_target

    @property
    def org(self) -> Org:
        return self.emulator.org

    @property
    def login(self) -> EmulatorLogin:
        return self.emulator.login

    @property
    def control_token(self) -> str:
        return self.emulator.control_token
