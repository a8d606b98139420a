"""`aio.Wakeup`, the flag the worker's dispatcher and the batchers sleep on: it keeps a `set` made before the
sleep, wakes a sleeper, ends a sleep after its timeout, and follows a stop event."""

from __future__ import annotations

import asyncio

from sfsign.aio import Wakeup


async def test_a_set_before_the_sleep_is_kept_until_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await asyncio.wait_for(wakeup.wait(), 5)  # returns at once: the flag is set
    wakeup.clear()
    assert not wakeup.is_set()


async def test_a_set_wakes_the_sleeper() -> None:
    wakeup = Wakeup()
    sleeper = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    assert not sleeper.done()
    wakeup.set()
    await asyncio.wait_for(sleeper, 5)


async def test_a_sleep_ends_after_its_timeout_unset() -> None:
    wakeup = Wakeup()
    await asyncio.wait_for(wakeup.wait(0.01), 5)
    assert not wakeup.is_set()


async def test_it_follows_a_stop_event() -> None:
    wakeup, stop = Wakeup(), asyncio.Event()
    follower = wakeup.follow(stop)
    sleeper = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(sleeper, 5)
    assert wakeup.is_set()
    await follower
