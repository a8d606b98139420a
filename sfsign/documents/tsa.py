"""RFC 3161 timestamp clients: failover across TSAs, one client and HTTP session per URL and process.

Why it looks like this:
- pyHanko's `HTTPTimeStamper` without a session opens a new aiohttp session per request, and each
  new timestamper first fetches a dummy token to size the signature (signing-notes.md, pitfall 4).
  So clients are cached: one `HTTPTimeStamper` with its own session per (URL, credentials), and one
  failover wrapper per URL list, which keeps the dummy token between documents.
- An aiohttp session belongs to the event loop that created it, so the cache is per event loop.
  The synchronous entry point (`sign.sign_pdf_bytes`, used in the process pool) runs every call on
  one background loop per process (`run_on_process_loop`), which makes "per loop" mean "per process".
- Fail closed: when every TSA fails, `TimestampUnavailable` names each URL and the reason; nothing
  is ever signed without the timestamp the level asked for.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import hashlib
import hmac
import os
import secrets
import threading
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from asn1crypto import cms
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper

from sfsign.documents.errors import TimestampUnavailable
from sfsign.documents.specs import TsaAuth as TsaAuth

DEFAULT_TIMEOUT_SECONDS = 10.0
_T = TypeVar("_T")
_PROCESS_SALT = secrets.token_bytes(32)


def redact_url(url: str) -> str:
    """The URL as it may appear in messages and logs: no user info, no query (API keys live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def _reason(exc: BaseException) -> str:
    """A short cause without the request URL (which may carry credentials) or any header."""
    cause = exc.__cause__ or exc
    if isinstance(cause, aiohttp.ClientResponseError):
        return f"HTTP {cause.status} {cause.message}".strip()
    if isinstance(cause, aiohttp.ClientConnectorError):
        return f"cannot connect ({cause.os_error.strerror or type(cause.os_error).__name__})"
    if isinstance(cause, asyncio.TimeoutError | TimeoutError):
        return "no answer in time"
    if isinstance(cause, aiohttp.ClientError | OSError):
        return type(cause).__name__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FailoverTimeStamper(TimeStamper):
    """Asks each TSA in order and returns the first token; raises `TimestampUnavailable` if none answers.

    It is a pyHanko `TimeStamper`, so it also serves pyHanko's dummy-token size estimate (with the
    same failover); pyHanko reserves 50% extra, which absorbs a second TSA's longer chain.
    """

    def __init__(self, members: Sequence[tuple[str, TimeStamper]]):
        super().__init__()
        if not members:
            raise ValueError("at least one TSA is needed")
        self.members = tuple(members)

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        failures: list[str] = []
        for url, member in self.members:
            try:
                token: cms.ContentInfo = await member.async_timestamp(message_digest, md_algorithm)
                return token
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one TSA moves on to the next
                failures.append(f"{redact_url(url)} ({_reason(exc)})")
        raise TimestampUnavailable("no timestamp authority answered; tried: " + "; ".join(failures))


class _LoopClients:
    """Timestampers and sessions bound to one event loop."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, bytes | None], aiohttp.ClientSession] = {}
        self.members: dict[tuple[str, bytes | None], HTTPTimeStamper] = {}
        self.failovers: dict[tuple[tuple[str, ...], bytes | None], FailoverTimeStamper] = {}

    async def aclose(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self.members.clear()
        self.failovers.clear()
        for session in sessions:
            await session.close()


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def _auth_tag(auth: TsaAuth | None) -> bytes | None:
    if auth is None:
        return None
    secret = f"{auth.username}\0{auth.password.get_secret_value()}".encode()
    return hmac.new(_PROCESS_SALT, secret, hashlib.sha256).digest()


def get_timestamper(
    urls: Sequence[str], auth: TsaAuth | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> FailoverTimeStamper:
    """The cached failover timestamper for `urls` on the running event loop (call it on that loop)."""
    if not urls:
        raise ValueError("at least one TSA URL is needed")
    loop = asyncio.get_running_loop()
    with _clients_lock:
        clients = _clients.setdefault(loop, _LoopClients())
    tag = _auth_tag(auth)
    key = (tuple(urls), tag)
    cached = clients.failovers.get(key)
    if cached is not None:
        return cached
    # A header rather than `auth=`: aiohttp deprecates BasicAuth objects for 4.0.
    headers = (
        {"Authorization": aiohttp.encode_basic_auth(auth.username, auth.password.get_secret_value())} if auth else None
    )
    members: list[tuple[str, TimeStamper]] = []
    for url in urls:
        member = clients.members.get((url, tag))
        if member is None:
            session = clients.sessions.get((url, tag))
            if session is None:
                session = clients.sessions[(url, tag)] = aiohttp.ClientSession()
            member = clients.members[(url, tag)] = HTTPTimeStamper(
                url, timeout=timeout, headers=headers, session=session
            )
        members.append((url, member))
    failover = clients.failovers[key] = FailoverTimeStamper(members)
    return failover


async def aclose_timestampers() -> None:
    """Close the HTTP sessions of the running loop's timestampers (daemon shutdown, tests)."""
    with _clients_lock:
        clients = _clients.pop(asyncio.get_running_loop(), None)
    if clients is not None:
        await clients.aclose()


# -- one background event loop per process for synchronous callers ------------------------------

_process_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_process_loop_lock = threading.Lock()


def _loop_for_this_process() -> asyncio.AbstractEventLoop:
    global _process_loop
    with _process_loop_lock:
        if _process_loop is not None and _process_loop[0] == os.getpid():  # not inherited through fork
            return _process_loop[1]
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="sfsign-signing-loop", daemon=True).start()
        _process_loop = (os.getpid(), loop)
        return loop


def run_on_process_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` on this process's background loop and wait: lets synchronous code (a pool worker)
    reuse the timestampers' HTTP sessions across calls, which `asyncio.run` per call could not."""
    future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, _loop_for_this_process())
    return future.result()


@atexit.register
def _close_process_loop() -> None:
    if _process_loop is None or _process_loop[0] != os.getpid():
        return
    loop = _process_loop[1]
    if loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(aclose_timestampers(), loop).result(timeout=5)
        except Exception:  # best effort at interpreter exit
            pass
        loop.call_soon_threadsafe(loop.stop)
