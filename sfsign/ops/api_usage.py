"""The org's API usage as the daemon last saw it, kept in the outbox's `meta` table.

Why it is stored: `sfsign status` runs in another process and must not call Salesforce (it works beside a
running daemon and without credentials), so the daemon copies the `Sforce-Limit-Info: api-usage=used/max`
figure it sees on every response into the outbox, and status reads it back from there. The daemon writes
it (`record_api_usage`), the status command reads it (`parse_api_usage`): both sides live here so the
stored format has one owner.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sfsign.aio import wait_any
from sfsign.outbox import Outbox, OutboxStore
from sfsign.outbox.meta import API_USAGE_KEY as API_USAGE_KEY  # re-exported: the status command reads it here

_API_USAGE = re.compile(r"^(\d+)/(\d+)@(\d+(?:\.\d+)?)$")


def format_api_usage(used: int, maximum: int, seen_at: float) -> str:
    """The `api_usage` meta value, e.g. "1234/15000@1767225600.5"."""
    return f"{int(used)}/{int(maximum)}@{seen_at:.1f}"


@dataclass(frozen=True)
class ApiUsage:
    used: int
    maximum: int
    seen_at: float

    @property
    def percent(self) -> float | None:
        return round(100 * self.used / self.maximum, 1) if self.maximum else None


def parse_api_usage(value: str | None) -> ApiUsage | None:
    """The stored `api_usage` value, or None when absent or unreadable (status must not fail on it)."""
    match = _API_USAGE.match(value or "")
    if match is None:
        return None
    return ApiUsage(int(match[1]), int(match[2]), float(match[3]))


def save_api_usage(store: OutboxStore, usage: tuple[int, int] | None, now: float) -> bool:
    """Persist the daemon's last seen (used, max), so `sfsign status` (another process) can show it."""
    if usage is None:
        return False
    store.set_meta(API_USAGE_KEY, format_api_usage(usage[0], usage[1], now))
    return True


async def record_api_usage(
    outbox: Outbox, usage: Callable[[], tuple[int, int] | None], stop: asyncio.Event, interval_s: float = 60.0
) -> None:
    """Daemon task: copy `SalesforceRest.api_usage` into the outbox every `interval_s` until `stop`."""
    last: tuple[int, int] | None = None
    while not stop.is_set():
        current = usage()
        if current is not None and current != last:
            await outbox.set_meta(API_USAGE_KEY, format_api_usage(current[0], current[1], time.time()))
            last = current
        await wait_any(stop, within_s=interval_s)
