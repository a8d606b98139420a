"""aiosmtpd on 127.0.0.1, on a thread of its own, storing each accepted message as an .eml file.

It runs its own event loop on a background thread (as the local PKI's services do), so synchronous code,
pytest fixtures and the daemon's loop all reach it as a remote relay. What a test may change while it runs:
`rejected_recipients` (550 on RCPT, the relay's permanent refusal), `deferred` (451 on RCPT, a temporary
one) and `set_down()` (the port refuses connections, as a relay that is down).

Each file is written to a temporary name and renamed, so a reader polling the directory never sees half a
message; the envelope (Return-Path, Delivered-To) is prepended as a delivering server does.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
_TIMEOUT_S = 30.0
# aiosmtpd logs every command at DEBUG, AUTH's base64 credentials included: keep it at warnings.
logging.getLogger("mail.log").setLevel(logging.WARNING)


class ServerSecurity(StrEnum):
    """The URL scheme a client uses for each mode (the mailer's SFSIGN_SMTP_URL schemes)."""

    STARTTLS = "smtp"
    IMPLICIT_TLS = "smtps"
    PLAIN = "smtp+insecure"


@dataclass(frozen=True)
class ServerCredentials:
    """The one login the server accepts when AUTH is on."""

    username: str
    password: str = field(repr=False)


class _Handler:
    """aiosmtpd's hooks: refuse what the switches say, store the rest."""

    def __init__(self, owner: LocalMailServer) -> None:
        self._owner = owner

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self._owner.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in {r.lower() for r in self._owner.rejected_recipients}:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        if self._owner.deferred:
            return "451 4.3.0 Temporary local problem, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        head = f"Return-Path: <{envelope.mail_from}>\r\n".encode()
        head += b"".join(f"Delivered-To: {rcpt}\r\n".encode() for rcpt in envelope.rcpt_tos)
        path = await asyncio.to_thread(self._owner.store, head + content)
        if self._owner.after_store is not None:  # a test's hook: the message is kept, the 250 not yet sent
            await asyncio.to_thread(self._owner.after_store, path)
        return f"250 2.0.0 Ok: queued as {path.stem}"


class LocalMailServer:
    """An SMTP server on 127.0.0.1 that stores what it accepts under `directory` (a context manager).

    `cert_file`/`key_file` (a chain and its key, e.g. from `sfsign.localpki.tls_server`) are required for
    the TLS modes; with `credentials`, mail is accepted only after AUTH (PLAIN or LOGIN, over TLS only).
    """

    def __init__(self, directory: Path, *, security: ServerSecurity = ServerSecurity.STARTTLS,
                 cert_file: Path | None = None, key_file: Path | None = None,
                 credentials: ServerCredentials | None = None, port: int = 0) -> None:
        if security is not ServerSecurity.PLAIN and (cert_file is None or key_file is None):
            raise ValueError(f"{security.name} needs cert_file and key_file (sfsign.localpki.tls_server)")
        self.directory = directory
        self.security = security
        self.credentials = credentials
        self.rejected_recipients: set[str] = set()
        self.deferred = False
        #: Called with each stored message's path before the 250 goes out (tests: kill the sender right there).
        self.after_store: Callable[[Path], None] | None = None
        self.port = port
        self._tls: ssl.SSLContext | None = None
        if cert_file is not None and key_file is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls.load_cert_chain(str(cert_file), str(key_file))
        self._handler = _Handler(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"LocalMailServer(url={self.url!r}, directory={str(self.directory)!r})"

    @property
    def url(self) -> str:
        """The relay URL a client is configured with (SFSIGN_SMTP_URL)."""
        return f"{self.security.value}://{HOST}:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._server is None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalMailServer:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sfsign-local-mail", daemon=True)
        self._thread.start()
        self.set_down(False)
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=_TIMEOUT_S)
        loop.close()

    def set_down(self, down: bool) -> None:
        """Down: the port refuses connections (a relay that is off); up again on the same port."""
        if self._loop is None:
            raise RuntimeError("the server is not started")
        coro = self._close() if down else self._listen()
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=_TIMEOUT_S)

    def __enter__(self) -> LocalMailServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        implicit = self.security is ServerSecurity.IMPLICIT_TLS
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, HOST, self.port, ssl=self._tls if implicit else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def _protocol(self) -> SMTP:
        starttls = self.security is ServerSecurity.STARTTLS
        return SMTP(
            self._handler, hostname="localhost", ident="sfsign local mail", enable_SMTPUTF8=True,
            tls_context=self._tls if starttls else None, require_starttls=starttls,
            # Implicit TLS: the transport is TLS already, which aiosmtpd's own check does not see.
            auth_require_tls=self.security is not ServerSecurity.IMPLICIT_TLS,
            authenticator=self._authenticate if self.credentials is not None else None,
            timeout=_TIMEOUT_S,
        )

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        creds = self.credentials
        ok = (creds is not None and isinstance(auth_data, LoginPassword)
              and hmac.compare_digest(auth_data.login, creds.username.encode())
              and hmac.compare_digest(auth_data.password, creds.password.encode()))
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    # -- storage ---------------------------------------------------------------------------------

    def store(self, data: bytes) -> Path:
        """Write one message as `<arrival>-<id>.eml` (sortable by arrival), atomically; blocking."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        path = self.directory / f"{name}.eml"
        os.replace(tmp, path)
        return path
