"""The signing listener: an aiohttp server of its own (apart from the ops endpoint) that serves the signing
pages and nothing else, reading and writing only the outbox.

Every answer carries the security headers (a CSP with no inline script or style, no framing, no referrer —
the token is in the URL —, nosniff, and no caching but for the style sheet). No access log: a request line
holds the link token. An error inside a handler is logged by its type with the route, never the URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from sfsign.config import ConfigError
from sfsign.config.settings import Settings
from sfsign.outbox.async_face import Outbox
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.signing.listener.documents import About, Documents
from sfsign.signing.listener.flows import Flows
from sfsign.signing.listener.i18n import from_accept_language
from sfsign.signing.listener.limits import Limits
from sfsign.signing.tokens import LinkKeys

log = structlog.get_logger("sfsign.signing.listener")
STATIC = Path(__file__).with_name("static")
DAY = 86_400.0

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(flows: Flows, *, secure: bool) -> web.Application:
    """The routes: a link's page, its four forms, its page images and its PDF, and the style sheet. Anything
    else is the unknown-link page."""
    app = web.Application(middlewares=[_headers(secure), _errors(flows)], client_max_size=64 * 1024)
    token = "{token:[^/]*}"
    app.router.add_get(f"/s/{token}", flows.show)
    app.router.add_post(f"/s/{token}/code", flows.send_code)
    app.router.add_post(f"/s/{token}/verify", flows.check_code)
    app.router.add_post(f"/s/{token}/sign", flows.sign)
    app.router.add_post(f"/s/{token}/decline", flows.decline)
    app.router.add_get(f"/s/{token}/pages/{{page:[0-9]{{1,4}}}}.png", flows.page_image)
    app.router.add_get(f"/s/{token}/document.pdf", flows.pdf)
    css = (STATIC / "signing.css").read_bytes()  # read once, when the app is built

    async def stylesheet(_request: web.Request) -> web.Response:
        return web.Response(body=css, content_type="text/css", charset="utf-8",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.router.add_get("/static/signing.css", stylesheet)
    return app


def _headers(secure: bool) -> Middleware:
    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _secure(exc, secure)
            raise
        _secure(response, secure)
        return response

    return headers


def _secure(response: web.StreamResponse, secure: bool) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    if secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


def _errors(flows: Flows) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound as exc:
            if exc.content_type == "text/html":
                raise
            raise flows.unknown(request) from None  # no route: the same page as an unknown link
        except web.HTTPMethodNotAllowed:
            raise flows.unknown(request) from None
        except web.HTTPException:
            raise
        except Exception as exc:
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
            log.error("signing.error", route=route, error=type(exc).__name__)
            html = flows.pages.message("error", from_accept_language(request.headers.get("Accept-Language")),
                                       About())
            raise web.HTTPInternalServerError(text=html, content_type="text/html") from None

    return errors


class SigningListener:
    """Serves the signing pages until `stop`; `port` is the bound port (useful with port 0)."""

    def __init__(self, flows: Flows, host: str, port: int, *, secure: bool) -> None:
        self.flows = flows
        self.host = host
        self._requested_port = port
        self._secure = secure
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        runner = web.AppRunner(build_app(self.flows, secure=self._secure), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the signing pages cannot listen on {self.host}:{self._requested_port} ({exc.strerror or exc}); "
                "set SFSIGN_SIGNING_PORT to a free port (0 = any, -1 = off) or SFSIGN_SIGNING_HOST"
            ) from None
        self._runner = runner
        self.port = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
        log.info("signing pages listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.flows.documents.close()


async def start_listener(outbox: Outbox, keys: LinkKeys, settings: Settings, artifacts_dir: Path, *,
                         clock: Clock | None = None, limits: Limits | None = None) -> SigningListener | None:
    """Start the signing pages on `outbox` as the settings say (None when SFSIGN_SIGNING_PORT is -1)."""
    if settings.signing_port < 0:
        return None
    secure = settings.signing_url.startswith("https://")
    flows = Flows(outbox, keys, Documents(artifacts_dir), clock or SystemClock(), secure=secure, limits=limits,
                  download_s=settings.signing_download_days * DAY, proxy_hops=settings.signing_proxy_hops)
    listener = SigningListener(flows, settings.signing_host, settings.signing_port, secure=secure)
    await listener.start()
    return listener
