"""OAuth token endpoint over real HTTPS: the three flows, the token response, each error body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from sfsign.emulator.org import ConnectedApp
from sfsign.emulator.server import Emulator, EmulatorLogin

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def jwt_assertion(login: EmulatorLogin, aud: str, *, exp_in: float = 180, sub: str | None = None,
                  iss: str | None = None, key: bytes | None = None) -> str:
    claims = {"iss": iss or login.consumer_key, "sub": sub or login.username, "aud": aud,
              "exp": int(time.time() + exp_in)}
    return jwt.encode(claims, key or login.private_key_file.read_bytes(), algorithm="RS256")

TOKEN_URL = "/services/oauth2/token"


async def _jwt(http: httpx.AsyncClient, assertion: str) -> httpx.Response:
    return await http.post(TOKEN_URL, data={"grant_type": JWT_GRANT, "assertion": assertion})


def _error(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"}
    return body["error"], body["error_description"]


@pytest.mark.parametrize("aud", ["https://login.salesforce.com", "https://test.salesforce.com", "SELF"])
async def test_jwt_bearer_returns_salesforce_token_response(
    http: httpx.AsyncClient, emulator: Emulator, aud: str
) -> None:
    audience = emulator.url if aud == "SELF" else aud
    response = await _jwt(http, jwt_assertion(emulator.login, audience))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at"}
    user = emulator.org.store.user_by_username(emulator.login.username)
    assert user is not None
    org_id = emulator.org.org_id
    assert body["instance_url"] == emulator.url
    assert body["instance_url"].startswith("https://localhost:")
    assert body["id"] == f"{emulator.url}/id/{org_id}/{user['Id']}"
    assert body["token_type"] == "Bearer"
    assert re.fullmatch(r"\d{13}", body["issued_at"])
    assert re.fullmatch(rf"{org_id[:15]}!AQ[A-Za-z0-9._]+", body["access_token"])
    secret = emulator.login.consumer_secret.get_secret_value().encode()
    expected = hmac.new(secret, (body["id"] + body["issued_at"]).encode(), hashlib.sha256).digest()
    assert base64.b64decode(body["signature"]) == expected


async def test_issued_token_authorizes_rest_and_revocation_ends_it(
    http: httpx.AsyncClient, emulator: Emulator, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    ok = await http.get("/services/data/v68.0/limits/", headers=headers)
    assert ok.status_code == 200, ok.text
    assert re.fullmatch(r"api-usage=\d+/15000", ok.headers["Sforce-Limit-Info"])
    revoked = await http.post("/services/oauth2/revoke", data={"token": token})
    assert revoked.status_code == 200
    denied = await http.get("/services/data/v68.0/limits/", headers=headers)
    assert denied.status_code == 401
    assert denied.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


async def test_jwt_wrong_audience(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await _jwt(http, jwt_assertion(emulator.login, "https://example.my.salesforce.com"))
    assert _error(response) == ("invalid_grant", "audience is invalid")


async def test_jwt_expired(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, exp_in=-120))
    assert _error(response) == ("invalid_grant", "expired authorization code")


async def test_jwt_exp_too_far_in_the_future(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, exp_in=3600))
    assert _error(response) == ("invalid_grant", "invalid assertion")


async def test_jwt_unknown_consumer_key(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, iss="3MVG9unknown"))
    assert _error(response) == ("invalid_client_id", "client identifier invalid")


async def test_jwt_signed_with_another_key(http: httpx.AsyncClient, emulator: Emulator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, key=other))
    assert _error(response) == ("invalid_grant", "invalid assertion")


async def test_jwt_garbage_assertion(http: httpx.AsyncClient) -> None:
    assert _error(await _jwt(http, "not-a-jwt")) == ("invalid_grant", "invalid assertion")


async def test_jwt_user_not_preauthorized(http: httpx.AsyncClient, emulator: Emulator) -> None:
    rep = emulator.rep_username
    assert rep is not None and rep != emulator.login.username
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, sub=rep))
    assert _error(response) == ("invalid_grant", "user hasn't approved this consumer")


async def test_jwt_unknown_user(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url, sub="nobody@example.com"))
    assert _error(response) == ("invalid_grant", "user hasn't approved this consumer")


async def test_jwt_inactive_user(http: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.org.store.update("User", _user_id(emulator, emulator.login.username), {"IsActive": False},
                              user_id=_user_id(emulator, emulator.login.username), system=True)
    response = await _jwt(http, jwt_assertion(emulator.login, emulator.url))
    assert _error(response) == ("invalid_grant", "inactive user")


def _user_id(emulator: Emulator, username: str) -> str:
    user = emulator.org.store.user_by_username(username)
    assert user is not None
    return str(user["Id"])


async def test_client_credentials_with_basic_auth_runs_as_the_run_as_user(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    login = emulator.login
    response = await http.post(
        TOKEN_URL, data={"grant_type": "client_credentials"},
        auth=(login.consumer_key, login.consumer_secret.get_secret_value()),
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"].endswith("/" + _user_id(emulator, login.username))


async def test_client_credentials_in_the_form(http: httpx.AsyncClient, emulator: Emulator) -> None:
    login = emulator.login
    response = await http.post(TOKEN_URL, data={
        "grant_type": "client_credentials", "client_id": login.consumer_key,
        "client_secret": login.consumer_secret.get_secret_value()})
    assert response.status_code == 200, response.text


async def test_client_credentials_wrong_secret(http: httpx.AsyncClient, emulator: Emulator) -> None:
    response = await http.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                               auth=(emulator.login.consumer_key, "wrong"))
    assert _error(response) == ("invalid_client", "invalid client credentials")


async def test_client_credentials_unknown_client(http: httpx.AsyncClient) -> None:
    response = await http.post(TOKEN_URL, data={"grant_type": "client_credentials"}, auth=("nope", "x"))
    assert _error(response) == ("invalid_client_id", "client identifier invalid")


async def test_client_credentials_without_run_as_user(http: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.org.register_app(ConnectedApp("3MVG9other", SecretStr("s3cret")))
    response = await http.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                               auth=("3MVG9other", "s3cret"))
    assert _error(response) == ("invalid_grant", "no client credentials user enabled")


async def test_password_flow_needs_password_plus_security_token(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    login = emulator.login
    form = {"grant_type": "password", "client_id": login.consumer_key,
            "client_secret": login.consumer_secret.get_secret_value(), "username": login.username}
    without_token = await http.post(TOKEN_URL, data={**form, "password": login.password.get_secret_value()})
    assert _error(without_token) == ("invalid_grant", "authentication failure")
    full = login.password.get_secret_value() + login.security_token.get_secret_value()
    response = await http.post(TOKEN_URL, data={**form, "password": full})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_password_flow_blocked_for_the_app(http: httpx.AsyncClient, emulator: Emulator) -> None:
    login = emulator.login
    emulator.org.connected_apps[login.consumer_key].password_flow_enabled = False
    full = login.password.get_secret_value() + login.security_token.get_secret_value()
    response = await http.post(TOKEN_URL, data={
        "grant_type": "password", "client_id": login.consumer_key,
        "client_secret": login.consumer_secret.get_secret_value(), "username": login.username,
        "password": full})
    assert _error(response) == ("invalid_grant", "authentication failure")


async def test_unsupported_grant_type(http: httpx.AsyncClient) -> None:
    response = await http.post(TOKEN_URL, data={"grant_type": "authorization_code", "code": "x"})
    assert _error(response) == ("unsupported_grant_type", "grant type not supported")


async def test_default_app_private_key_is_private_and_outside_the_repo(emulator: Emulator) -> None:
    key_file = emulator.login.private_key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert emulator.data_dir in key_file.parents
    assert emulator.login.consumer_secret.get_secret_value() not in repr(emulator.login)
