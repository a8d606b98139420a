"""Small asyncio helpers shared by the supervisor and the worker."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, within_s: float | None = None) -> None:
    """Return when any event is set or `within_s` seconds pass; never leaves a waiter task behind."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
