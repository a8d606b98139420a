"""The envelopes' scheduler: reminders and expiry, when they fall due.

Entry point: `EnvelopeDue.run()`, a loop the supervisor starts and cancels. Due times are persisted on the
envelopes (`next_due_at`, anchored to the invitation and the last reminder, see `sfsign.signing.lifecycle`),
so the loop keeps nothing but a sleep: it runs `Outbox.run_due` for every envelope due by now, then sleeps
until the next due time, at most `MAX_SLEEP_S` (an envelope made meanwhile falls due days later, so a
minute's look-ahead never misses one), or until `wake()`. Each `run_due` is one transaction that finds the
due time moved when it already ran: a reminder goes out once, even after a restart or a second process.

"Now" comes from a `Clock`: the system clock in the daemon, a fake one in tests, which move time by days
without sleeping and `wake()` the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from sfsign.aio import wait_any
from sfsign.outbox import Outbox
from sfsign.signing.lifecycle import Clock, SystemClock

log = structlog.get_logger("sfsign.envelope_due")

MAX_SLEEP_S = 60.0
BATCH = 100
ERROR_WAIT_S = 5.0


class EnvelopeDue:
    """Sends due reminders and expires envelopes."""

    def __init__(self, outbox: Outbox, *, stop: asyncio.Event, clock: Clock | None = None,
                 on_change: Callable[[], None] = lambda: None, max_sleep_s: float = MAX_SLEEP_S) -> None:
        self.outbox = outbox
        self.stop = stop
        self.clock = clock or SystemClock()
        self.on_change = on_change  # what to wake when an envelope changed (the record mirror)
        self.max_sleep_s = max_sleep_s
        self._wake = asyncio.Event()
        self.passes = 0  # completed passes: a test waits for one after moving its clock

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            try:
                await self.run_once()
                sleep = await self._sleep_s()
            except Exception as exc:  # the outbox is busy, or a bug: try again shortly
                log.error("envelope scheduler pass failed; trying again", error=f"{type(exc).__name__}: {exc}"[:300])
                sleep = ERROR_WAIT_S
            self.passes += 1
            await wait_any(self._wake, self.stop, within_s=sleep)

    async def run_once(self) -> int:
        """Everything due by now; the number of envelopes that changed."""
        changed = 0
        while True:
            now = self.clock.now()
            due = await self.outbox.due_envelopes(now, BATCH)
            for envelope in due:
                outcome = await self.outbox.run_due(envelope.id, now)
                if outcome.expired:
                    log.info("envelope expired", transaction_id=envelope.transaction_id)
                if outcome.reminded:
                    log.info("reminders queued", transaction_id=envelope.transaction_id,
                             recipients=list(outcome.reminded))
                changed += bool(outcome.expired or outcome.reminded)
            if len(due) < BATCH:
                break
        if changed:
            self.on_change()
        return changed

    async def _sleep_s(self) -> float:
        next_at = await self.outbox.next_envelope_due_at()
        if next_at is None:
            return self.max_sleep_s
        return min(max(0.0, next_at - self.clock.now()), self.max_sleep_s)
