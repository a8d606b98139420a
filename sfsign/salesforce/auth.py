"""OAuth 2.0 for a server-to-server integration: JWT bearer, client credentials, username-password.

One `Authenticator` per process owns the current access token. REST and streaming share it, so a
token revoked under one of them is replaced once for both: `refresh(stale)` only logs in again if
the token the caller saw fail is still the current one. N concurrent 401s therefore cost one login.

TLS verification is always on. `ca_bundle` adds one CA (a corporate proxy's, or the emulator's) to
the system's and certifi's roots; it never replaces them.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import certifi
import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from sfsign.salesforce.errors import AuthError

log = structlog.get_logger(__name__)

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 180  # simple-salesforce's value; Salesforce rejects long-lived assertions


class AuthConfig(BaseModel):
    """How to obtain an access token. Secrets are SecretStr and never printed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    login_url: str = "https://login.salesforce.com"
    flow: Literal["jwt", "client_credentials", "password"] = "jwt"
    consumer_key: str
    username: str | None = None
    private_key_file: Path | None = None
    private_key_passphrase: SecretStr | None = None
    consumer_secret: SecretStr | None = None
    password: SecretStr | None = None
    api_version: str = "68.0"
    ca_bundle: Path | None = None
    timeout_s: float = 30.0

    @field_validator("login_url")
    @classmethod
    def _https_origin(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("login_url must be an https:// URL (TLS verification is never switched off)")
        return f"https://{parts.netloc}"

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        value = value.removeprefix("v")
        major, _, minor = value.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError("api_version must look like '68.0'")
        return value

    @model_validator(mode="after")
    def _flow_needs(self) -> AuthConfig:
        missing: list[str] = []
        if self.flow == "jwt":
            missing = [n for n in ("username", "private_key_file") if getattr(self, n) is None]
        elif self.flow == "client_credentials":
            missing = ["consumer_secret"] if self.consumer_secret is None else []
        else:
            missing = [n for n in ("username", "password", "consumer_secret") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"flow {self.flow!r} needs: {', '.join(missing)}")
        return self

    @property
    def token_url(self) -> str:
        return f"{self.login_url}/services/oauth2/token"

    @property
    def audience(self) -> str:
        """JWT `aud`: the login origin (login/test.salesforce.com, a My Domain, or the emulator)."""
        return self.login_url


class AccessToken(BaseModel):
    """A token and where to use it. Identity matters: `Authenticator.refresh` compares objects."""

    model_config = ConfigDict(frozen=True)

    access_token: SecretStr
    instance_url: str
    org_id: str | None = None
    user_id: str | None = None
    issued_at: datetime

    @property
    def bearer(self) -> str:
        """The Authorization header value. Only for building requests; never log it."""
        return f"Bearer {self.access_token.get_secret_value()}"


class TokenProvider(Protocol):
    """What REST and streaming need from authentication (lets tests substitute a fake)."""

    async def token(self) -> AccessToken: ...

    async def refresh(self, stale: AccessToken | None) -> AccessToken: ...

    @property
    def ssl_context(self) -> ssl.SSLContext: ...


def build_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """Verifying client context: system roots + certifi + the optional extra CA."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=str(ca_bundle))
    return ctx


def parse_token_response(body: dict[str, Any]) -> AccessToken:
    """Turn a token endpoint's 200 body into an AccessToken.

    `id` is `https://login.salesforce.com/id/<orgId>/<userId>`; `issued_at` epoch ms as a string.
    """
    access = body.get("access_token")
    instance = body.get("instance_url")
    if not isinstance(access, str) or not access or not isinstance(instance, str) or not instance:
        raise AuthError(200, "invalid_response", "token response lacks access_token or instance_url")
    org_id = user_id = None
    ident = body.get("id")
    if isinstance(ident, str):
        segments = [s for s in urlsplit(ident).path.split("/") if s]
        if len(segments) >= 3 and segments[-3] == "id":
            org_id, user_id = segments[-2], segments[-1]
    issued = datetime.now(UTC)
    raw_issued = body.get("issued_at")
    if isinstance(raw_issued, str | int) and str(raw_issued).isdigit():
        issued = datetime.fromtimestamp(int(raw_issued) / 1000, UTC)
    return AccessToken(
        access_token=SecretStr(access),
        instance_url=instance.rstrip("/"),
        org_id=org_id,
        user_id=user_id,
        issued_at=issued,
    )


def make_jwt_assertion(config: AuthConfig, private_key_pem: bytes, now: float | None = None) -> str:
    """Sign the JWT bearer assertion (RS256; iss=consumer key, sub=username, aud=login origin)."""
    passphrase = config.private_key_passphrase
    key = serialization.load_pem_private_key(
        private_key_pem, password=passphrase.get_secret_value().encode() if passphrase else None
    )
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": config.consumer_key,
        "sub": config.username,
        "aud": config.audience,
        "exp": issued + JWT_LIFETIME_S,
    }
    return jwt.encode(claims, key, algorithm="RS256")  # type: ignore[arg-type]


class Authenticator:
    """Mints and caches the access token; `refresh` coalesces concurrent re-logins into one."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._current: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.logins = 0  # how many token requests succeeded (diagnostics, tests)

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        return build_ssl_context(self.config.ca_bundle)

    @property
    def current(self) -> AccessToken | None:
        return self._current

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=self.ssl_context, transport=self._transport, timeout=self.config.timeout_s
            )
        return self._http

    async def token(self) -> AccessToken:
        """The current token, logging in first if there is none."""
        current = self._current
        if current is not None:
            return current
        async with self._lock:
            if self._current is None:
                self._current = await self._mint()
            return self._current

    async def refresh(self, stale: AccessToken | None) -> AccessToken:
        """Replace `stale` (the token a request just failed with) unless someone already did."""
        async with self._lock:
            if self._current is not None and self._current is not stale:
                return self._current
            self._current = await self._mint()
            return self._current

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _form(self) -> tuple[dict[str, str], dict[str, str]]:
        """The form body and extra headers for the configured flow."""
        cfg = self.config
        if cfg.flow == "jwt":
            assert cfg.private_key_file is not None
            pem = await asyncio.to_thread(cfg.private_key_file.read_bytes)
            assertion = await asyncio.to_thread(make_jwt_assertion, cfg, pem)
            return {"grant_type": JWT_GRANT, "assertion": assertion}, {}
        assert cfg.consumer_secret is not None
        secret = cfg.consumer_secret.get_secret_value()
        if cfg.flow == "client_credentials":
            basic = base64.b64encode(f"{cfg.consumer_key}:{secret}".encode()).decode()
            return {"grant_type": "client_credentials"}, {"Authorization": f"Basic {basic}"}
        assert cfg.password is not None and cfg.username is not None
        return {
            "grant_type": "password",
            "client_id": cfg.consumer_key,
            "client_secret": secret,
            "username": cfg.username,
            "password": cfg.password.get_secret_value(),
        }, {}

    async def _mint(self) -> AccessToken:
        try:
            form, headers = await self._form()
            await asyncio.to_thread(lambda: self.ssl_context)  # loads CA files once, off the loop
            client = self._client()
        except (OSError, ValueError, TypeError) as exc:
            # A missing/unreadable key or CA bundle is a configuration error: no retry will fix it.
            raise AuthError(None, "invalid_client_config", f"cannot build the token request: {type(exc).__name__}",
                            transient=False) from None
        try:
            response = await client.post(
                self.config.token_url, data=form, headers={"Accept": "application/json", **headers}
            )
        except httpx.HTTPError as exc:
            untrusted = _verify_failure(exc)
            if untrusted is not None:  # no retry makes a certificate trusted: stop and say which setting
                host = httpx.URL(self.config.token_url).host
                raise AuthError(None, "certificate_verify_failed",
                                f"CERTIFICATE_VERIFY_FAILED: the TLS certificate of {host} is not trusted "
                                f"({untrusted})", transient=False, fix=CA_BUNDLE_FIX) from None
            raise AuthError(None, "connection_error", f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            error = _oauth_error(response)
            if self.config.flow == "password" and error.error == "invalid_grant":
                error.fix = PASSWORD_FLOW_FIX
            raise error
        try:
            body = response.json()
        except ValueError:
            raise AuthError(200, "invalid_response", "token response is not JSON") from None
        if not isinstance(body, dict):
            raise AuthError(200, "invalid_response", "token response is not a JSON object")
        token = parse_token_response(body)
        self.logins += 1
        log.info("salesforce.login", flow=self.config.flow, instance_url=token.instance_url,
                 org_id=token.org_id)
        return token


CA_BUNDLE_FIX = (
    "if this network inspects TLS (a corporate proxy), set SFSIGN_CA_BUNDLE to the PEM file of the proxy's CA; "
    "against the emulator, to its ca.pem; otherwise check SFSIGN_LOGIN_URL names the org's real host"
)
PASSWORD_FLOW_FIX = (
    "check SFSIGN_USERNAME, SFSIGN_PASSWORD, SFSIGN_CONSUMER_KEY and SFSIGN_CONSUMER_SECRET. The username-password "
    "flow wants the security token appended to the password: SFSIGN_PASSWORD=<password><security token>, no space "
    "(a new token comes by email from Settings > Reset My Security Token; none is needed from a trusted IP range)"
)


def _verify_failure(exc: BaseException) -> str | None:
    """The verification message of the TLS error under an httpx error (it sits a few causes deep)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def _oauth_error(response: httpx.Response) -> AuthError:
    """Parse `{"error","error_description"}`; anything else keeps only the status and a short text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return AuthError(response.status_code, body["error"], str(body.get("error_description") or ""))
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        return AuthError(response.status_code, str(first.get("errorCode") or "error"),
                         str(first.get("message") or ""))
    return AuthError(response.status_code, "http_error", response.text[:200].strip())
