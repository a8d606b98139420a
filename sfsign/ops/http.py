"""The ops endpoint: /healthz, /readyz and /metrics on aiohttp, in the daemon's own event loop.

In the daemon's loop on purpose: /healthz answering proves that loop still turns (a blocked loop is
the failure an orchestrator must restart for), and readiness and metrics read live daemon state
without locks. The server knows nothing of the daemon: it is given two coroutines, one for readiness
and one for the metrics text. It binds loopback unless configured otherwise (GDPR: the metrics carry
no personal data, but nothing is exposed beyond the host by default), and it writes no access log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sfsign.config import ConfigError

log = structlog.get_logger("sfsign.ops.http")


@dataclass(frozen=True)
class Readiness:
    """Ready when every check passed; `reasons` says, in words, what is not."""

    reasons: tuple[str, ...] = ()
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.reasons

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ready": self.ready, **self.checks}
        if self.reasons:
            body["reasons"] = list(self.reasons)
        return body


class OpsServer:
    """Serves the three endpoints until `stop`; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Callable[[], Awaitable[Readiness]],
        metrics: Callable[[], Awaitable[bytes]],
    ) -> None:
        self.host = host
        self._requested_port = port
        self._readiness = readiness
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the ops endpoint cannot listen on {self.host}:{self._requested_port} ({exc.strerror or exc}); "
                "set SFSIGN_OPS_PORT to a free port (0 = any, -1 = no ops endpoint) or SFSIGN_OPS_HOST"
            ) from None
        self._runner = runner
        self.port = _bound_port(runner)
        log.info("ops endpoint listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        readiness = await self._readiness()
        return web.json_response(readiness.as_json(), status=200 if readiness.ready else 503)

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        body = await self._metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the ops endpoint has no bound TCP address")
