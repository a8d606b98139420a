"""The micro-batcher: when a batch goes, and that every job gets its own result or error (fake handlers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sfsign.batching import Batcher


class FakeHandler:
    def __init__(self, fail_on: set[int] | None = None, whole_call_error: Exception | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.whole_call_error = whole_call_error

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        if self.whole_call_error is not None:
            raise self.whole_call_error
        return [ValueError(f"bad {i}") if i in self.fail_on else i * 10 for i in items]


@pytest.fixture
async def stop() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


async def _run(batcher: Batcher[int, int], stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(batcher.run(stop))


async def test_lone_item_goes_at_once_when_no_other_job_can_join_with_fake_handler(stop: asyncio.Event) -> None:
    handler = FakeHandler()
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 60.0, waiting_for=lambda: 1)
    task = await _run(batcher, stop)
    assert await asyncio.wait_for(batcher.submit(7), 5) == 70  # not after the 60 s linger
    assert handler.calls == [[7]]
    stop.set()
    await task


async def test_items_wait_for_upstream_jobs_then_go_together_with_fake_handler(stop: asyncio.Event) -> None:
    handler = FakeHandler()
    upstream = {"n": 3}
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 60.0,
                                         waiting_for=lambda: upstream["n"])
    task = await _run(batcher, stop)
    first = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert handler.calls == []  # a third job is still on its way
    third = asyncio.create_task(batcher.submit(3))
    assert await asyncio.wait_for(asyncio.gather(*first, third), 5) == [10, 20, 30]
    assert handler.calls == [[1, 2, 3]]
    stop.set()
    await task


async def test_full_batch_goes_and_linger_bounds_the_wait_with_fake_handler(stop: asyncio.Event) -> None:
    handler = FakeHandler()
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=2, linger_s=lambda: 0.05, waiting_for=lambda: 99)
    task = await _run(batcher, stop)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(5))), 5)
    assert results == [0, 10, 20, 30, 40]
    assert handler.calls == [[0, 1], [2, 3], [4]]  # two full batches, the last one after the linger
    stop.set()
    await task


async def test_per_item_and_whole_call_errors_reach_only_their_jobs_with_fake_handler(stop: asyncio.Event) -> None:
    handler = FakeHandler(fail_on={2})
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 0.01, waiting_for=lambda: 3)
    task = await _run(batcher, stop)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad 2"
    handler.whole_call_error = ConnectionError("network down")
    down = await asyncio.gather(*(batcher.submit(i) for i in (4, 5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in down)
    stop.set()
    await task


async def test_cancelled_job_leaves_the_queue_before_the_batch_goes_with_fake_handler(stop: asyncio.Event) -> None:
    handler = FakeHandler()
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 0.2, waiting_for=lambda: 9)
    task = await _run(batcher, stop)
    leaving = asyncio.create_task(batcher.submit(1))
    staying = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert await asyncio.wait_for(staying, 5) == 20
    assert handler.calls == [[2]]
    stop.set()
    await task


class Refused(Exception):
    """A whole-request refusal (as Salesforce answers a malformed batch with 400)."""


class PoisonHandler:
    """Refuses any call that carries the poison item as a whole, like a request with one malformed part."""

    def __init__(self, poison: int) -> None:
        self.poison = poison
        self.calls: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        if self.poison in items:
            raise Refused(f"request refused: item {self.poison}")
        return [i * 10 for i in items]


async def test_batch_refused_as_a_whole_is_sent_again_item_by_item_with_fake_handler(stop: asyncio.Event) -> None:
    handler = PoisonHandler(poison=2)
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 0.01, waiting_for=lambda: 3,
                                         split_on=lambda exc: isinstance(exc, Refused))
    task = await _run(batcher, stop)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30  # the neighbours go on
    assert isinstance(results[1], Refused)  # only the item at fault gets the error
    assert handler.calls[0] == [1, 2, 3] and sorted(handler.calls[1:]) == [[1], [2], [3]]
    assert batcher.calls == 4
    stop.set()
    await task


async def test_failure_that_may_have_been_applied_is_never_split_with_fake_handler(stop: asyncio.Event) -> None:
    # An upload whose answer was lost may have created every file: sending them again one by one would
    # upload them twice, so the whole batch gets the error and each job looks its file up on retry.
    handler = FakeHandler(whole_call_error=TimeoutError("answer lost"))
    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 0.01, waiting_for=lambda: 2,
                                         split_on=lambda exc: isinstance(exc, Refused))
    task = await _run(batcher, stop)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert handler.calls == [[1, 2]]
    stop.set()
    await task


async def test_the_owner_sends_a_batch_early_or_holds_it_with_fake_handler(stop: asyncio.Event) -> None:
    """`early`: True sends before the linger though upstream jobs could still join; False holds a batch that
    every job has joined (waiting costs nothing now, says the owner); None leaves it to the batcher's rules."""
    handler = FakeHandler()
    verdict: dict[str, bool | None] = {"v": True}
    upstream = {"n": 5}
    asked: list[tuple[int, int]] = []

    def early(size: int, waiting_for: int) -> bool | None:
        asked.append((size, waiting_for))
        return verdict["v"]

    batcher: Batcher[int, int] = Batcher("t", handler, max_size=10, linger_s=lambda: 60.0,
                                         waiting_for=lambda: upstream["n"], early=early)
    task = await _run(batcher, stop)
    assert await asyncio.wait_for(batcher.submit(1), 5) == 10  # four more could join: sent anyway
    assert asked[-1] == (1, 5)
    verdict["v"], upstream["n"] = False, 1
    held = asyncio.create_task(batcher.submit(2))
    for _ in range(50):  # the loop turns; the batcher looks at the new item
        await asyncio.sleep(0)
    assert len(asked) >= 2 and asked[-1] == (1, 1)
    assert handler.calls == [[1]] and not held.done()  # held, though no other job can join
    verdict["v"] = None  # the batcher's own rules: every job has joined, so it goes
    batcher.poke()
    assert await asyncio.wait_for(held, 5) == 20
    assert handler.calls == [[1], [2]]
    stop.set()
    await task
