"""Group commit: the outbox calls made within one turn of the event loop go to the outbox thread as one
hand-off and share one SQLite transaction.

In a burst, a batched Salesforce call returns for a hundred jobs at once and each job then writes its step
(`mark_uploaded`, `mark_done`, …): one executor hand-off and one `BEGIN IMMEDIATE … COMMIT` each cost more
daemon CPU than the step's own write. Grouped, they cost that once per group. Nothing a caller relies on
changes:
- each call still runs alone as far as it can tell: inside the group it runs under a savepoint of its own,
  and a store transaction it opens (`JobChanges._transaction`) becomes a nested savepoint, so a step's state
  change and its audit row still go in (or roll back) together;
- a caller hears its result only after the group's COMMIT: what a step reports written is on disk, as
  before; if the COMMIT fails (or SQLite rolls the whole transaction back, as it does on a full disk), every
  call of the group gets that error, as each would have got it from its own COMMIT;
- a call that raises keeps what it wrote outside its own store transactions, as in autocommit before;
- calls run in the order they were made, one at a time, on the outbox's one thread;
- a lone call (nothing else queued) runs exactly as it did: no transaction around it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from typing import Any, Generic, TypeVar

S = TypeVar("S")
T = TypeVar("T")

#: One call's outcome: (True, value) or (False, the exception it raised).
Outcome = tuple[bool, Any]


def run_together(conn: sqlite3.Connection, store: S, calls: list[Callable[[S], Any]]) -> list[Outcome]:
    """Run `calls` against `store` in one transaction on `conn` (the outbox thread's side)."""
    if len(calls) == 1:
        return [_alone(store, calls[0])]
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:  # locked by another process beyond the busy timeout: one by one, as before
        return [_alone(store, call) for call in calls]
    outcomes: list[Outcome] = []
    try:
        for call in calls:
            conn.execute("SAVEPOINT outbox_call")
            try:
                outcomes.append((True, call(store)))
            except Exception as exc:
                outcomes.append((False, exc))
            if not conn.in_transaction:  # SQLite rolled the whole group back (disk full, I/O error)
                return [(False, _rolled_back(outcomes))] * len(calls)
            conn.execute("RELEASE outbox_call")
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not isinstance(exc, Exception):
            raise
        return [(False, exc)] * len(calls)
    return outcomes


def _alone(store: S, call: Callable[[S], Any]) -> Outcome:
    try:
        return True, call(store)
    except Exception as exc:
        return False, exc


def _rolled_back(outcomes: list[Outcome]) -> BaseException:
    """The error that ended the group's transaction (the last call's), for every call of the group."""
    ok, last = outcomes[-1]
    return last if not ok else sqlite3.OperationalError("the outbox transaction was rolled back")


class GroupCommit(Generic[S]):
    """The event loop's side: queue a call; on the next turn of the loop the calls queued by then go to the
    thread as one group. Groups are not held back while another runs: the thread takes them in order, and
    holding them left it idle while the busy loop came round to send the next one (a burst ran slower)."""

    def __init__(self, executor: Executor, run: Callable[[list[Callable[[S], Any]]], list[Outcome]]) -> None:
        self._executor = executor
        self._run = run
        self._queued: list[tuple[Callable[[S], Any], asyncio.Future[Any]]] = []
        self._scheduled = False

    async def call(self, fn: Callable[[S], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((fn, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)  # next turn: the calls made in this one go together
        return await future

    def _send(self) -> None:
        self._scheduled = False
        group = [(fn, future) for fn, future in self._queued if not future.cancelled()]
        self._queued = []
        if not group:
            return
        loop = asyncio.get_running_loop()
        try:
            done = self._executor.submit(self._run, [fn for fn, _ in group])
        except Exception as exc:  # the executor is shut down
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        done.add_done_callback(lambda finished: loop.call_soon_threadsafe(self._deliver, group, finished))

    def _deliver(self, group: list[tuple[Callable[[S], Any], asyncio.Future[Any]]],
                 finished: ThreadFuture[list[Outcome]]) -> None:
        try:
            outcomes = finished.result()
        except BaseException as exc:
            outcomes = [(False, exc)] * len(group)
        for (_, future), (ok, value) in zip(group, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
