"""Link tokens and one-time codes: what proves a browser holds a recipient's invitation, and their mailbox.

The database holds no token and no code, only what cannot be turned back into one:
- a link token is derived, `base64url(HMAC-SHA256(link key, transaction id | recipient id | generation))`
  (256 bits), so an invitation sent again after a crash, or by `resend`, carries a link that still works
  although the token was never stored; the outbox keeps its SHA-256 and finds a recipient by the hash of
  whatever string a browser sent, so an unknown and a malformed token take the same path;
- a code is 6 digits from `secrets`, kept as an HMAC under a key of its own (a bare hash of one of 10^6
  codes is reversed by trying them all) and compared with `hmac.compare_digest`;
- a code on its way to the mailer travels in the mail row sealed (AES-GCM under a third key), so a mail
  re-selected after a restart can still be sent, and the row forgets it once the relay took the mail.

The link key comes from `SFSIGN_LINK_KEY` (environment or secrets directory) or, when that is not set, is
generated once into the data directory as an owner-only file. Losing it kills every open link: the
invitations then have to be sent again with a new generation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sfsign.config.settings import read_secret
from sfsign.private_files import private_dir, write_private

LINK_KEY_ENV = "SFSIGN_LINK_KEY"
LINK_KEY_FILE = "link.key"
MIN_KEY_BYTES = 32

CODE_DIGITS = 6
CODE_TTL_S = 600.0  # a code is valid 10 minutes
CODE_MAX_FAILURES = 5  # wrong tries before the recipient is locked …
CODE_LOCK_S = 900.0  # … for 15 minutes


class LinkKeyError(ValueError):
    """The configured link key is unusable (too short); the message names the variable, never the value."""


class LinkKeys:
    """The per-install secret and the three keys derived from it (links, codes, sealed mail secrets): each
    use has its own key, so a value computed for one can never stand in for another."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise LinkKeyError(f"{LINK_KEY_ENV} must be at least {MIN_KEY_BYTES} bytes")
        self._link = _subkey(key, b"sfsign link token v1")
        self._code = _subkey(key, b"sfsign one-time code v1")
        self._seal = AESGCM(_subkey(key, b"sfsign mail seal v1"))

    def __repr__(self) -> str:
        return "LinkKeys(<secret>)"

    @classmethod
    def load(cls, data_dir: Path) -> LinkKeys:
        """The configured key, else the one generated into `data_dir` (made on first use, mode 0600)."""
        configured = read_secret(LINK_KEY_ENV)
        if configured is not None:
            return cls(configured.get_secret_value().encode("utf-8"))
        return cls(_generated_key(data_dir / LINK_KEY_FILE))

    def link_token(self, transaction_id: str, recipient_id: int, generation: int) -> str:
        """The recipient's link token: the same inputs always give the same token (43 characters, 256 bits)."""
        mac = hmac.new(self._link, f"{transaction_id}|{recipient_id}|{generation}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")

    def code_mac(self, recipient_id: int, code: str) -> str:
        """What the database keeps of a code: bound to the recipient, useless without the key."""
        return hmac.new(self._code, f"{recipient_id}|{code}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def code_matches(self, recipient_id: int, given: str, stored_mac: str) -> bool:
        """Whether `given` is the code whose HMAC is `stored_mac`, in constant time whatever `given` is."""
        return hmac.compare_digest(self.code_mac(recipient_id, given.strip()), stored_mac)

    def seal(self, secret: str, context: str) -> str:
        """`secret` encrypted for the mail row that carries it; `context` (the mail's Message-ID) binds it
        to that row."""
        nonce = secrets.token_bytes(12)
        box = self._seal.encrypt(nonce, secret.encode(), context.encode())
        return base64.b64encode(nonce + box).decode("ascii")

    def unseal(self, sealed: str, context: str) -> str:
        raw = base64.b64decode(sealed)
        return self._seal.decrypt(raw[:12], raw[12:], context.encode()).decode()


def token_hash(token: str) -> str:
    """The SHA-256 a token is stored and looked up as. Takes any string a browser may send (empty, too long,
    not base64, lone surrogates) without raising, so malformed and unknown tokens are one code path."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_code() -> str:
    """A one-time code: 6 digits, uniformly from the operating system's CSPRNG."""
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def _subkey(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def _generated_key(path: Path) -> bytes:
    """Read the generated key, or create it. Written whole under a temporary name, then hard-linked into
    place (which fails if the name exists), so two processes starting at once agree on one key and none ever
    reads a half-written one."""
    private_dir(path.parent)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        write_private(tmp, secrets.token_bytes(MIN_KEY_BYTES))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: its key is the one
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise LinkKeyError(f"{path} holds no usable link key: remove it to make a new one (every open link dies)")
    return key
