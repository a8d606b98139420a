"""OAuth flows against a fake token endpoint (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr, ValidationError

from sfsign.salesforce.auth import (
    JWT_GRANT,
    AuthConfig,
    Authenticator,
    build_ssl_context,
    make_jwt_assertion,
    parse_token_response,
)
from sfsign.salesforce.errors import AuthError

TOKEN_BODY = {
    "access_token": "00Dxx0000001gPL!AR8AQJXg5oj8jXSgxJfA0lBog.39AsX.LVpxezPwuX5VAIrrbbHMuol7GQxnMeYMN7cj8",
    "instance_url": "https://acme.my.salesforce.com",
    "id": "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS",
    "token_type": "Bearer",
    "issued_at": "1716912000000",
    "signature": "c2lnbmF0dXJl",
}


class TokenEndpoint:
    """Records token requests and answers with a scripted response."""

    def __init__(self, status: int = 200, body: Any = None, delay: float = 0.0) -> None:
        self.status = status
        self.body = body if body is not None else TOKEN_BODY
        self.delay = delay
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        body = dict(self.body) if isinstance(self.body, dict) else self.body
        if isinstance(body, dict) and "access_token" in body:
            body["access_token"] = f"{body['access_token']}-{len(self.requests)}"
        return httpx.Response(self.status, json=body)

    def form(self, index: int = -1) -> dict[str, str]:
        parsed = parse_qs(self.requests[index].content.decode())
        return {k: v[0] for k, v in parsed.items()}


def jwt_config(key_path: Path, login_url: str = "https://login.salesforce.com") -> AuthConfig:
    return AuthConfig(login_url=login_url, flow="jwt", consumer_key="3MVG9-consumer", username="int@acme.com",
                      private_key_file=key_path)


async def test_jwt_flow_with_fake_token_endpoint(rsa_key: tuple[Path, Any]) -> None:
    key_path, public_key = rsa_key
    endpoint = TokenEndpoint()
    auth = Authenticator(jwt_config(key_path, "https://test.salesforce.com/some/path"),
                         transport=httpx.MockTransport(endpoint))
    token = await auth.token()
    await auth.aclose()

    request = endpoint.requests[0]
    assert str(request.url) == "https://test.salesforce.com/services/oauth2/token"
    form = endpoint.form()
    assert form["grant_type"] == JWT_GRANT
    claims = jwt.decode(form["assertion"], public_key, algorithms=["RS256"], audience="https://test.salesforce.com")
    assert claims["iss"] == "3MVG9-consumer" and claims["sub"] == "int@acme.com"
    assert jwt.get_unverified_header(form["assertion"])["alg"] == "RS256"
    assert token.instance_url == "https://acme.my.salesforce.com"
    assert (token.org_id, token.user_id) == ("00Dxx0000001gPLEAY", "005xx000001SwiUAAS")
    assert token.issued_at == datetime.fromtimestamp(1716912000, UTC)
    assert token.bearer.startswith("Bearer 00Dxx")


def test_jwt_assertion_expires_three_minutes_after_signing(rsa_key: tuple[Path, Any]) -> None:
    key_path, public_key = rsa_key
    cfg = jwt_config(key_path, "https://acme.my.salesforce.com")
    now = time.time()
    assertion = make_jwt_assertion(cfg, key_path.read_bytes(), now=now)
    claims = jwt.decode(assertion, public_key, algorithms=["RS256"], audience="https://acme.my.salesforce.com")
    assert claims["exp"] == int(now) + 180


async def test_client_credentials_flow_sends_basic_auth_with_fake_transport() -> None:
    endpoint = TokenEndpoint()
    cfg = AuthConfig(login_url="https://acme.my.salesforce.com", flow="client_credentials",
                     consumer_key="ck", consumer_secret=SecretStr("s3cret"))
    auth = Authenticator(cfg, transport=httpx.MockTransport(endpoint))
    await auth.token()
    await auth.aclose()
    header = endpoint.requests[0].headers["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "ck:s3cret"
    assert endpoint.form() == {"grant_type": "client_credentials"}


async def test_password_flow_form_with_fake_transport() -> None:
    endpoint = TokenEndpoint()
    cfg = AuthConfig(login_url="https://login.salesforce.com", flow="password", consumer_key="ck",
                     consumer_secret=SecretStr("cs"), username="u@x.com", password=SecretStr("pw+token"))
    auth = Authenticator(cfg, transport=httpx.MockTransport(endpoint))
    await auth.token()
    await auth.aclose()
    assert endpoint.form() == {"grant_type": "password", "client_id": "ck", "client_secret": "cs",
                               "username": "u@x.com", "password": "pw+token"}


async def test_oauth_error_body_is_parsed_and_secrets_stay_out_with_fake_transport(
    rsa_key: tuple[Path, Any],
) -> None:
    endpoint = TokenEndpoint(400, {"error": "invalid_grant", "error_description": "audience is invalid"})
    auth = Authenticator(jwt_config(rsa_key[0]), transport=httpx.MockTransport(endpoint))
    with pytest.raises(AuthError) as caught:
        await auth.token()
    await auth.aclose()
    err = caught.value
    assert (err.status, err.error, err.description, err.transient) == (400, "invalid_grant", "audience is invalid",
                                                                       False)
    assertion = endpoint.form()["assertion"]
    assert assertion not in str(err) and assertion not in repr(err)


async def test_token_endpoint_outage_is_a_transient_auth_error_with_fake_transport() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cfg = AuthConfig(login_url="https://acme.my.salesforce.com", flow="client_credentials",
                     consumer_key="ck", consumer_secret=SecretStr("s3cret"))
    auth = Authenticator(cfg, transport=httpx.MockTransport(boom))
    with pytest.raises(AuthError) as caught:
        await auth.token()
    await auth.aclose()
    assert caught.value.transient and "s3cret" not in str(caught.value)


async def test_unreadable_key_is_a_permanent_config_error() -> None:
    auth = Authenticator(jwt_config(Path("/nonexistent/key.pem")), transport=httpx.MockTransport(TokenEndpoint()))
    with pytest.raises(AuthError) as caught:
        await auth.token()
    await auth.aclose()
    assert not caught.value.transient


async def test_token_is_cached_and_concurrent_refreshes_coalesce_with_fake_transport(
    rsa_key: tuple[Path, Any],
) -> None:
    endpoint = TokenEndpoint(delay=0.01)
    auth = Authenticator(jwt_config(rsa_key[0]), transport=httpx.MockTransport(endpoint))
    first = await auth.token()
    assert await auth.token() is first
    assert len(endpoint.requests) == 1

    # 10 callers saw `first` fail with a 401 at the same time: one login replaces it.
    results = await asyncio.gather(*(auth.refresh(first) for _ in range(10)))
    assert len(endpoint.requests) == 2
    assert all(r is results[0] for r in results) and results[0] is not first
    assert results[0].access_token.get_secret_value().endswith("-2")

    # A late 401 carrying the already replaced token does not log in again.
    assert await auth.refresh(first) is results[0]
    assert len(endpoint.requests) == 2
    await auth.aclose()


def test_config_validation_and_secret_hiding(rsa_key: tuple[Path, Any]) -> None:
    with pytest.raises(ValidationError, match="private_key_file"):
        AuthConfig(flow="jwt", consumer_key="ck", username="u")
    with pytest.raises(ValidationError, match="https"):
        AuthConfig(login_url="http://login.salesforce.com", flow="jwt", consumer_key="ck", username="u",
                   private_key_file=rsa_key[0])
    with pytest.raises(ValidationError, match="consumer_secret"):
        AuthConfig(flow="client_credentials", consumer_key="ck")
    cfg = AuthConfig(flow="password", consumer_key="ck", username="u", consumer_secret=SecretStr("cs-VALUE"),
                     password=SecretStr("pw-VALUE"), api_version="v61.0")
    assert cfg.api_version == "61.0"
    assert "cs-VALUE" not in repr(cfg) and "pw-VALUE" not in repr(cfg) and "pw-VALUE" not in str(cfg)


def test_access_token_repr_hides_the_token() -> None:
    token = parse_token_response(TOKEN_BODY)
    assert TOKEN_BODY["access_token"] not in repr(token) and TOKEN_BODY["access_token"] not in str(token)


def test_token_response_without_access_token_is_an_auth_error() -> None:
    with pytest.raises(AuthError):
        parse_token_response({"instance_url": "https://x.my.salesforce.com"})


def _self_signed_ca(tmp_path: Path) -> tuple[Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfsign unit test proxy CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "proxy-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, "sfsign unit test proxy CA"


def test_ssl_context_adds_the_extra_ca_to_the_public_roots(tmp_path: Path) -> None:
    ca_path, common_name = _self_signed_ca(tmp_path)
    ctx = build_ssl_context(ca_path)
    subjects = [json.dumps(c.get("subject")) for c in ctx.get_ca_certs()]
    assert any(common_name in s for s in subjects)
    assert len(subjects) > 1  # certifi's roots are still there
    assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
