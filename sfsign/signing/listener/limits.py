"""Rate limits of the signing pages, in memory: per client address and per recipient.

A sliding window of request times per key. The outbox's own lock (5 wrong codes, 15 minutes) stops guessing
a code; these stop a client hammering links (guessing tokens: every unknown link counts against its
address) and a recipient's mailbox being flooded with codes. In memory is enough: one listener process, and
a restart that forgets the windows only gives back what a minute would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    count: int
    per_s: float


@dataclass(frozen=True)
class Limits:
    """The listener's limits (defaults: a person reading a long document and signing never meets them)."""

    per_ip: Limit = Limit(300, 60.0)  # every request under /s/, page images included
    per_recipient: Limit = Limit(120, 60.0)
    codes_per_recipient: Limit = Limit(5, 900.0)  # "send me a code"
    posts_per_recipient: Limit = Limit(20, 60.0)  # code checks, signatures, refusals


class Windows:
    """Counts requests per key in a sliding window; forgets keys whose window emptied (bounded memory)."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str, limit: Limit, now: float) -> bool:
        """Count this request and say whether it is within `limit`. A refused request counts too, so a client
        that keeps trying stays refused until it pauses."""
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.MAX_KEYS:
                self._sweep(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - limit.per_s:
            hits.popleft()
        hits.append(now)
        if len(hits) > limit.count * 2:
            hits.popleft()  # keep at most twice the limit: enough to stay refused, never unbounded
        return len(hits) <= limit.count

    def _sweep(self, now: float, horizon_s: float = 3_600.0) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - horizon_s]:
            del self._hits[key]
