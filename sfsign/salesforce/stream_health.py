"""Whether the stream is up, and how long to wait before the next attempt after a failure.

An outage must show as one clear signal: `connected` flips to False once (with one
`salesforce.stream.disconnected` log line) and back once (`salesforce.stream.reconnected`), never a
flapping flag. A routine hiccup that the immediate recovery fixes (a long poll cut by a proxy,
`403::Unknown client`, a revoked token) is no outage: `connected` stays True and nothing alarming is
logged. Retries wait a capped exponential backoff with jitter, or the long backoff once the org's
daily event limit is spent. Kept apart from the protocol so readiness and alerting can be read here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from sfsign.salesforce.bayeux import Recover

log = structlog.get_logger("sfsign.salesforce.stream")  # one logger for the whole streaming client


class StreamHealth:
    """Connection state for readiness and logs, and the backoff after each failure."""

    def __init__(
        self, *, backoff_base_s: float, backoff_cap_s: float, long_backoff_s: float, rng: Callable[[], float]
    ) -> None:
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._long = long_backoff_s
        self._rng = rng
        self._failures = 0
        self._had_failure = False
        self.connected = False
        self.disconnected_since: float | None = time.time()
        self.reconnects = 0

    def delay(self, failures: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self._cap, self._base * 2 ** min(max(failures - 1, 0), 30))
        return ceiling / 2 + self._rng() * ceiling / 2

    def mark_connected(self) -> None:
        """The server accepted a session and its subscriptions (or answered a connect)."""
        down_since = self.disconnected_since
        self.connected = True
        self.disconnected_since = None
        if not self._had_failure:
            return
        self.reconnects += 1
        self._had_failure = False
        if down_since is None:  # a hiccup fixed by the immediate recovery: no outage to close
            log.info("salesforce.stream.recovered", reconnects=self.reconnects)
        else:
            log.info("salesforce.stream.reconnected", reconnects=self.reconnects,
                     down_s=round(time.time() - down_since, 1))

    def set_disconnected(self, reason: str) -> None:
        """The one "disconnected" signal of an outage: flips `connected` and logs, once."""
        if not self.connected:
            return
        self.connected = False
        self.disconnected_since = time.time()
        log.error("salesforce.stream.disconnected", reason=reason)

    def connect_ok(self) -> None:
        """A `/meta/connect` answered: the failure count starts again."""
        self._failures = 0
        if not self.connected:
            self.mark_connected()

    def failed(self, failure: Recover) -> float:
        """Count a failure, report it as routine or as an outage, and return the seconds to wait."""
        self._failures += 1
        self._had_failure = True
        if failure.kind == "long":
            delay = self._long
        elif failure.immediate and self._failures == 1:
            delay = 0.0
        else:
            delay = self.delay(self._failures)
        if self.connected and failure.immediate and self._failures == 1:
            # routine (proxy cut, forgotten client, revoked token): reported only if this recovery fails too
            log.info("salesforce.stream.recovering", kind=failure.kind, reason=failure.reason)
        else:
            self.set_disconnected(failure.reason)
            log.warning("salesforce.stream.failure", kind=failure.kind, reason=failure.reason,
                        failures=self._failures, retry_in_s=round(delay, 3))
        return delay
