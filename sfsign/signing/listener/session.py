"""The browser's session on one signing link: which recipient it opened, whether it typed the right code, and
the CSRF token every form carries.

Stateless: the cookie is `recipient.generation.authenticated_ms.expires_ms.nonce.mac`, MACed under a key made
when the listener starts, so nothing is stored per browser and a restart simply asks for a new code (the
outbox still remembers that the recipient proved their address; the browser has to prove it again). The
code is bound to the browser, not only to the recipient: a forwarded link shows no document until whoever
holds it types a code from the mailbox. The CSRF token is derived from the cookie (session-bound
synchronizer token): a form posted from another site carries neither, and one with a token from another
session or another link does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

COOKIE = "sfsign_session"
SESSION_S = 3_600.0  # a browser stays signed in to one link this long after its last right code or visit


@dataclass(frozen=True)
class Session:
    recipient_id: int
    generation: int
    authenticated_at: float | None
    expires_at: float
    nonce: str


class Sessions:
    """Makes and reads session cookies and their CSRF tokens under a per-process key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def new(self, recipient_id: int, generation: int, now: float, authenticated_at: float | None = None) -> Session:
        return Session(recipient_id, generation, authenticated_at, now + SESSION_S, secrets.token_urlsafe(16))

    def authenticated(self, session: Session, now: float) -> Session:
        """The same browser after a right code: a new nonce, so a CSRF token seen before the code is useless."""
        return Session(session.recipient_id, session.generation, now, now + SESSION_S, secrets.token_urlsafe(16))

    def cookie(self, session: Session) -> str:
        body = (f"{session.recipient_id}.{session.generation}.{round((session.authenticated_at or 0) * 1000)}."
                f"{round(session.expires_at * 1000)}.{session.nonce}")
        return f"{body}.{self._mac('cookie', body)}"

    def read(self, value: str | None, recipient_id: int, generation: int, now: float) -> Session | None:
        """The session the cookie holds when it is this listener's, for this recipient's current link, and not
        expired; otherwise None (whatever the string: a forged, stale or garbled cookie is just no session)."""
        if not value or len(value) > 256:
            return None
        body, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("cookie", body)):
            return None
        try:
            rid, gen, auth, expires, nonce = body.split(".", 4)
            session = Session(int(rid), int(gen), int(auth) / 1000 or None, int(expires) / 1000, nonce)
        except ValueError:
            return None
        if session.recipient_id != recipient_id or session.generation != generation or session.expires_at <= now:
            return None
        return session

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", f"{session.recipient_id}.{session.nonce}")

    def csrf_ok(self, session: Session | None, given: str | None) -> bool:
        return session is not None and bool(given) and hmac.compare_digest(self.csrf(session), str(given))

    def _mac(self, purpose: str, body: str) -> str:
        return hmac.new(self._key, f"{purpose}|{body}".encode(), hashlib.sha256).hexdigest()
