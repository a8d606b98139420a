"""Micro-batching: many jobs' Salesforce calls become one call, without making a lone job wait.

Each job still walks its own state machine in its own task (the exactly-once rules stay per job);
only the network call of a step is shared. A job `submit`s its item and awaits its own result; the
batcher hands up to `max_size` items to one `handler` call and gives each job back its result or its
own exception (a per-record failure fails that job only).

When to send, which is the whole trade-off between API calls and latency:
- at once when every job that could still join this batch is already waiting (`waiting_for()` says
  how many running jobs are upstream): a lone document never waits. During a burst, "at once" means
  once no new job has arrived for a moment (`settle_s()`), or the batches would follow the arrival of
  the streaming events one by one;
- when the batch is full;
- when its owner says so (`early(size, waiting_for)`: True, go now; False, hold, as only the owner
  knows that waiting costs nothing now; None, these rules): a burst's first batches, small so the first
  records show their outcome soon, or a fetch held while the process pool is busy anyway;
- when the oldest item has waited `linger_s()`: short while work trickles in, long during a burst,
  when bigger batches save API calls and the process pool, not the network, sets the pace.

A call refused as a whole (`split_on(exc)`: Salesforce answered the request with an error and certainly
applied none of it) may be the fault of one item: a malformed part, a value the request cannot carry.
Its items are then sent again one per call, so only the item at fault gets the error and its
neighbours go on. A failure that may have been applied (timeout, cut connection) is never split: that
would send the same items twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from sfsign.aio import Wakeup

log = structlog.get_logger("sfsign.batching")

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    since: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        handler: Handler[T, R],
        *,
        max_size: int,
        linger_s: Callable[[], float],
        waiting_for: Callable[[], int],
        on_batch: Callable[[int], None] | None = None,
        settle_s: Callable[[], float] | None = None,
        split_on: Callable[[BaseException], bool] | None = None,
        early: Callable[[int, int], bool | None] | None = None,
    ) -> None:
        self.name = name
        self._handler = handler
        self.max_size = max_size
        self._linger_s = linger_s
        self._waiting_for = waiting_for
        self._on_batch = on_batch
        self._settle_s = settle_s or (lambda: 0.0)
        self._split_on = split_on or (lambda _exc: False)
        self._early = early or (lambda _size, _waiting_for: None)
        self._queue: list[_Waiting[T, R]] = []
        self._changed = Wakeup()  # every step of every job pokes the three batchers: a cheap wake-up
        self.calls = 0  # handler calls made: what the API budget pays for
        self.items = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its own result (or exception)."""
        entry: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._changed.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            if entry in self._queue:  # not sent yet: leave quietly
                self._queue.remove(entry)
            raise

    def poke(self) -> None:
        """Something upstream changed (a job finished or failed): re-check whether to send now."""
        self._changed.set()

    def _due_in(self) -> float:
        """Seconds until the batch should go (0: now)."""
        if not self._queue:
            return float("inf")
        if len(self._queue) >= self.max_size:
            return 0.0
        waiting_for = self._waiting_for()
        early = self._early(len(self._queue), waiting_for)
        if early:
            return 0.0
        lingered = max(0.0, self._queue[0].since + self._linger_s() - time.monotonic())
        if early is None and len(self._queue) >= waiting_for:
            return min(self._settle_s(), lingered)  # nobody else can join, unless new jobs are still arriving
        return lingered

    async def run(self, stop: asyncio.Event) -> None:
        """Send batches until `stop`; one handler call at a time per batcher (bounded memory and calls)."""
        stopping = self._changed.follow(stop)
        try:
            while not stop.is_set():
                self._changed.clear()
                due = self._due_in()
                if due > 0:
                    await self._changed.wait(None if due == float("inf") else due)
                    continue
                batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size:]
                batch = [entry for entry in batch if not entry.future.done()]
                if batch:
                    await self._send(batch)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)

    async def _send(self, batch: list[_Waiting[T, R]]) -> None:
        self.items += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            results = await self._results([entry.item for entry in batch])
        except asyncio.CancelledError:
            for entry in batch:
                if not entry.future.done():
                    entry.future.cancel()
            raise
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    async def _results(self, items: list[T]) -> Sequence[R | BaseException]:
        """One result per item: the batch's, or (refused as a whole) each item's own, sent alone."""
        try:
            return await self._call(items)
        except Exception as exc:
            if len(items) < 2 or not self._split_on(exc):
                return [exc] * len(items)  # every job of the batch gets the same error
            log.warning("batch refused as a whole; sending its items one by one", batcher=self.name,
                        items=len(items), error=str(exc))
        return await asyncio.gather(*(self._alone(item) for item in items))

    async def _alone(self, item: T) -> R | BaseException:
        try:
            return (await self._call([item]))[0]
        except Exception as exc:
            return exc

    async def _call(self, items: list[T]) -> Sequence[R | BaseException]:
        self.calls += 1
        results = await self._handler(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: handler returned {len(results)} results for {len(items)} items")
        return results

