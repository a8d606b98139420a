"""Fakes shared by the Salesforce client unit tests (imported by conftest and the test modules)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime

from pydantic import SecretStr

from sfsign.salesforce.auth import AccessToken
from sfsign.salesforce.errors import AuthError


class FakeAuth:
    """A TokenProvider: tokens tok1, tok2, … ; `refresh(stale)` mints only if `stale` is current."""

    def __init__(self, instance_url: str = "https://org.example.com") -> None:
        self.instance_url = instance_url
        self.minted: list[AccessToken] = []
        self.refresh_calls = 0
        self.fail_refresh: AuthError | None = None
        self.fail_token: list[AuthError] = []  # raised by the next token() calls, in order
        self._current = self._mint()

    def _mint(self) -> AccessToken:
        token = AccessToken(
            access_token=SecretStr(f"tok{len(self.minted) + 1}"),
            instance_url=self.instance_url,
            org_id="00D000000000001AAA",
            user_id="005000000000001AAA",
            issued_at=datetime.now(UTC),
        )
        self.minted.append(token)
        return token

    async def token(self) -> AccessToken:
        if self.fail_token:
            raise self.fail_token.pop(0)
        return self._current

    async def refresh(self, stale: AccessToken | None) -> AccessToken:
        self.refresh_calls += 1
        if self.fail_refresh is not None:
            raise self.fail_refresh
        if stale is self._current:
            self._current = self._mint()
        return self._current

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context()
