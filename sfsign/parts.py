"""The supervisor's model of a part: what it runs, when it stops, how it drains and closes.

Kept apart from `sfsign.daemon` so that the stop order is data the supervisor reads (each part declares
its `Stop`), testable without building a daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Stop(IntEnum):
    """When a part stops: lower first; parts of one value stop together, in the reverse of their start order."""

    NEW_WORK = 0  # intake and the loops that create or send work: cancelled at once, so no new job arrives
    IN_FLIGHT = 1  # the worker: drained up to `shutdown_grace_s`, then cancelled


@dataclass(frozen=True)
class Part:
    """One long-running part of the daemon, as the supervisor starts and stops it.

    `run` is its entry point (a task named `name`); it should return only when the daemon stops, and an
    exception from it stops the daemon. `drain` is awaited before the task is cancelled (let in-flight
    work finish), `close` after (release what the part holds, such as the stream).
    """

    name: str
    run: Callable[[], Coroutine[Any, Any, object]]
    stop: Stop = Stop.NEW_WORK
    drain: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None


async def stop_parts(running: list[tuple[Part, asyncio.Task[object]]]) -> None:
    """Stop the parts in the order they declare: per `Stop` value, drain, cancel, then close each part
    (in the reverse of the start order); wait for every task once all are cancelled."""
    for when in sorted({part.stop for part, _ in running}):
        stopping = [(part, task) for part, task in reversed(running) if part.stop == when]
        for part, _ in stopping:
            if part.drain is not None:
                await part.drain()
        for _, task in stopping:
            task.cancel()
        for part, _ in stopping:
            if part.close is not None:
                await part.close()
    tasks = [task for _, task in running]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
