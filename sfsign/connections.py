"""Settings → a connection to the org: the one place sfsign builds its Salesforce clients.

Every command that talks to Salesforce (`run`, `check`, `render`, `reconcile`, `ltv-refresh`, the demo) used
to wire the same four parts by hand: an `Authenticator` from the settings, a `SalesforceRest` on it,
a stream client with the stream knobs, and the API governor. One factory (as arq's `create_pool` is
for Redis) means they all log in, trust CAs, version their calls and subscribe the same way, so
"`sfsign check` passes" keeps meaning "the daemon will work", and what one opened is closed by one call.

`sfsign.salesforce` stays free of `Settings` (it is a client library that takes plain values); this
module is the only place that maps settings onto it.

Use it as an async context manager; nothing talks to Salesforce until the first call (or `login`),
so a caller decides how to treat a failed login (the daemon waits it out, `check` reports it):

    async with SalesforceSession(settings) as session:
        await session.login()
        records = await session.rest.query(...)
        stream = session.open_stream(rules.channels(), replay_source=outbox.committed_replay_id)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from sfsign.config import Settings, read_secret
from sfsign.governor import ApiGovernor
from sfsign.salesforce.auth import AccessToken, AuthConfig, Authenticator
from sfsign.salesforce.event_stream import EventStream
from sfsign.salesforce.events import ReplayId
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import StreamClient

if TYPE_CHECKING:
    from sfsign.salesforce.pubsub_client import PubSubStream

PASSPHRASE_ENV = "SFSIGN_PRIVATE_KEY_PASSPHRASE"


def auth_config(settings: Settings) -> AuthConfig:
    """The login half of the settings. The key passphrase is read here, from the environment or its
    `_FILE` variant, never from the settings object, so it is not in a settings dump."""
    return AuthConfig(
        login_url=settings.login_url,
        flow=settings.auth_flow,
        consumer_key=settings.consumer_key,
        username=settings.username or None,
        private_key_file=settings.private_key_file,
        private_key_passphrase=read_secret(PASSPHRASE_ENV),
        consumer_secret=settings.consumer_secret,
        password=settings.password,
        api_version=settings.api_version,
        ca_bundle=settings.ca_bundle,
    )


class SalesforceSession:
    """One org's clients, sharing one token: `authenticator`, `rest`, the `governor` over REST's view
    of the org's API usage, and the streams opened with `open_stream`. `aclose` closes all of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.authenticator = Authenticator(auth_config(settings))
        self.rest = SalesforceRest(self.authenticator, api_version=settings.api_version)
        self.governor = ApiGovernor(lambda: self.rest.api_usage, settings.api_budget_share)
        self._streams: list[EventStream] = []

    async def login(self) -> AccessToken:
        """Log in now (a no-op when already logged in) rather than on the first call, to report a
        refused login as such; raises `AuthError`, whose `transient` tells whether a retry may help."""
        return await self.authenticator.token()

    def open_stream(
        self, channels: Sequence[str], replay_source: Callable[[str], ReplayId | None], *,
        replay_all: Sequence[str] = (),
    ) -> EventStream:
        """A stream client on `channels` over the transport of `SFSIGN_TRANSPORT` (CometD or Pub/Sub), with the
        settings' knobs, the daemon's own, so a check subscribes as the daemon will. It connects when first
        iterated; the session closes it."""
        stream: EventStream
        if self.settings.transport == "pubsub":
            stream = self.open_pubsub(channels, replay_source, replay_all=replay_all)
        else:
            stream = StreamClient(
                self.authenticator,
                api_version=self.settings.api_version,
                channels=channels,
                replay_source=replay_source,
                replay_all=replay_all,
                long_poll_margin_s=self.settings.stream_long_poll_margin_s,
                backoff_base_s=self.settings.stream_backoff_base_s,
                backoff_cap_s=self.settings.stream_backoff_cap_s,
            )
            self._streams.append(stream)
        return stream

    def open_pubsub(
        self, channels: Sequence[str], replay_source: Callable[[str], ReplayId | None], *,
        replay_all: Sequence[str] = (),
    ) -> PubSubStream:
        """A Pub/Sub client (also for `sfsign check`'s GetTopic and GetSchema), trusting what REST trusts.
        grpc and fastavro (12 MB) are imported here, so a daemon on CometD never loads them."""
        from sfsign.salesforce.pubsub_client import PubSubStream

        stream = PubSubStream(
            self.authenticator, channels=channels, replay_source=replay_source, replay_all=replay_all,
            target=self.settings.pubsub_url, ca_bundle=self.settings.ca_bundle, batch_size=self.settings.pubsub_batch,
            keepalive_s=self.settings.pubsub_keepalive_s, backoff_base_s=self.settings.stream_backoff_base_s,
            backoff_cap_s=self.settings.stream_backoff_cap_s,
        )
        self._streams.append(stream)
        return stream

    async def aclose(self) -> None:
        """Streams first (CometD's `/meta/disconnect` needs the token), then REST (waits for in-flight calls),
        then the login client. Closing twice, or a stream the caller closed already, is harmless."""
        streams, self._streams = self._streams, []
        for stream in streams:
            with contextlib.suppress(Exception):  # a disconnect is best effort; the rest must still close
                await stream.aclose()
        try:
            await self.rest.close()
        finally:
            await self.authenticator.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
