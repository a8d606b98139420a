"""`/services/oauth2/token`: JWT bearer, client credentials and username-password, as Salesforce does them.

Errors are Salesforce's: HTTP 400 with `{"error": ..., "error_description": ...}`. Where the facts sheet
does not pin the description down, the emulator picks the one Salesforce is reported to give for the
closest case (documented in docs/emulator.md) and never says more than Salesforce would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509

from sfsign.emulator.org import ConnectedApp, Org, Session

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_MAX_LIFETIME_S = 300  # how far in the future `exp` may be; Salesforce asks for "a few minutes"
CLOCK_SKEW_S = 30
SCOPE = "api"


class OAuthError(Exception):
    """A token-endpoint failure, rendered as Salesforce's JSON error body (never holds secrets)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers={"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"},
        )


def _audiences(org: Org) -> set[str]:
    base = org.instance_url.rstrip("/")
    return {
        base,
        base + "/",
        "https://login.salesforce.com",
        "https://test.salesforce.com",
        "https://login.salesforce.com/",
        "https://test.salesforce.com/",
    }


def _unknown_client() -> OAuthError:
    return OAuthError("invalid_client_id", "client identifier invalid")


def _client_app(org: Org, client_id: str | None, client_secret: str | None) -> ConnectedApp:
    app = org.connected_apps.get(client_id or "")
    if app is None:
        raise _unknown_client()
    expected = app.consumer_secret.get_secret_value().encode()
    if client_secret is None or not hmac.compare_digest(expected, client_secret.encode()):
        raise OAuthError("invalid_client", "invalid client credentials")
    return app


def _jwt_login(org: Org, assertion: str | None) -> tuple[ConnectedApp, dict[str, Any]]:
    if not assertion:
        raise OAuthError("invalid_grant", "invalid assertion")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    app = org.connected_apps.get(str(claims.get("iss", "")))
    if app is None:
        raise _unknown_client()
    if header.get("alg") != "RS256" or not app.certificate_pem:
        raise OAuthError("invalid_grant", "invalid assertion")
    try:
        public_key = x509.load_pem_x509_certificate(app.certificate_pem.encode()).public_key()
        jwt.decode(
            assertion,
            key=public_key,  # type: ignore[arg-type]
            algorithms=["RS256"],
            options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    aud = claims.get("aud")
    if not isinstance(aud, str) or aud not in _audiences(org):
        raise OAuthError("invalid_grant", "audience is invalid")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise OAuthError("invalid_grant", "invalid assertion")
    now = time.time()
    if exp <= now - CLOCK_SKEW_S:
        raise OAuthError("invalid_grant", "expired authorization code")
    if exp > now + JWT_MAX_LIFETIME_S + CLOCK_SKEW_S:
        raise OAuthError("invalid_grant", "invalid assertion")
    username = str(claims.get("sub", ""))
    user = org.store.user_by_username(username)
    if user is None or username not in app.preauthorized_usernames:
        raise OAuthError("invalid_grant", "user hasn't approved this consumer")
    if not user.get("IsActive", True):
        raise OAuthError("invalid_grant", "inactive user")
    return app, user


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _client_credentials(
    org: Org, request: web.Request, form: dict[str, str]
) -> tuple[ConnectedApp, dict[str, Any]]:
    creds = _basic_credentials(request) or (form.get("client_id", ""), form.get("client_secret", ""))
    app = _client_app(org, creds[0], creds[1])
    if not app.client_credentials_enabled or not app.run_as_username:
        raise OAuthError("invalid_grant", "no client credentials user enabled")
    user = org.active_user(app.run_as_username)
    if user is None:
        raise OAuthError("invalid_grant", "no client credentials user enabled")
    return app, user


def _password(org: Org, form: dict[str, str]) -> tuple[ConnectedApp, dict[str, Any]]:
    app = _client_app(org, form.get("client_id"), form.get("client_secret"))
    username = form.get("username", "")
    user = org.active_user(username)
    if (
        not app.password_flow_enabled
        or user is None
        or not org.check_password(username, form.get("password", ""))
    ):
        raise OAuthError("invalid_grant", "authentication failure")
    return app, user


def token_response(org: Org, app: ConnectedApp, session: Session) -> dict[str, str]:
    """Salesforce's token response; `signature` = base64 HMAC-SHA256(id + issued_at) keyed with the
    consumer secret, which lets a client check that the id URL came from the server."""
    identity = f"{org.instance_url}/id/{org.org_id}/{session.user_id}"
    issued_at = str(session.issued_at_ms)
    mac = hmac.new(
        app.consumer_secret.get_secret_value().encode(), (identity + issued_at).encode(), hashlib.sha256
    )
    return {
        "access_token": session.token,
        "signature": base64.b64encode(mac.digest()).decode(),
        "scope": SCOPE,
        "instance_url": org.instance_url,
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
    }


def oauth_routes(org: Org) -> list[web.RouteDef]:
    async def token(request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return OAuthError("invalid_request", "invalid content type").response()
        form = {k: str(v) for k, v in (await request.post()).items()}
        grant = form.get("grant_type", "")
        try:
            if grant == JWT_GRANT:
                app, user = _jwt_login(org, form.get("assertion"))
            elif grant == "client_credentials":
                app, user = _client_credentials(org, request, form)
            elif grant == "password":
                app, user = _password(org, form)
            elif not grant:
                raise OAuthError("invalid_request", "grant type not supported")
            else:
                raise OAuthError("unsupported_grant_type", "grant type not supported")
        except OAuthError as exc:
            return exc.response()
        session = org.issue_session(user, app.consumer_key)
        return web.json_response(
            token_response(org, app, session),
            headers={"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"},
        )

    async def revoke(request: web.Request) -> web.Response:
        form = await request.post()
        if org.revoke(str(form.get("token", "")) or "-") == 0:
            return OAuthError("unsupported_token_type", "this token type is not supported").response()
        return web.Response(status=200)

    return [
        web.post("/services/oauth2/token", token),
        web.post("/services/oauth2/revoke", revoke),
    ]
