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


class Wakeup:
    """A flag a hot loop sleeps on (`wait`) until it is `set`, a timeout passes, or an event it `follow`s is
    set: `asyncio.Event` with `wait_any`, without the two waiter tasks per sleep that `wait_any` creates. The
    worker's dispatcher and the batchers wake several times per document in a burst."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, within_s: float | None = None) -> None:
        """Return once set (at once if it is), or after `within_s` seconds."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = None if within_s is None else loop.call_later(within_s, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def follow(self, event: asyncio.Event) -> asyncio.Task[None]:
        """Set this when `event` is set (a stop event); cancel the task returned when done with it."""
        async def follow() -> None:
            await event.wait()
            self.set()
        return asyncio.create_task(follow(), name="wakeup-follows-event")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
