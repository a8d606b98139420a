"""`Pending` on the records of jobs that wait, written once per job and never after the job's own write.

A rep who moves a stage or clicks "Send for signature" during a burst must not see nothing for minutes.
A record whose trigger is older than `pending_after_s` and whose job still waits shows `Pending`:
- a job no worker has claimed yet, while every worker is busy;
- a claimed job during a burst (more jobs running than CPU slots), when it queues for a CPU slot or
  lingers in a batch of Salesforce calls.
A lone document is claimed at once and never queues (fewer jobs than CPU slots), so it is never written
`Pending`: its record is written once, and it costs 3 API calls. Nor is a claimed job of a short burst
(`soon`: every running job will have written its record within another three times `pending_after_s`, by
the pace the pool keeps, so no record waits much more than four times it without news): its `Pending`
would show for a few seconds before `Signed`, and cost a call. A retrying job is left out: it shows its own
reason (`Worker._show_pending`).

Each round writes up to `write_batch_max` records in one write-back call of its own, at once rather
than in the write-back batcher, whose burst linger would let the note arrive after the document. A round
takes the claimed jobs that will be due by the next round too (up to `pending_after_s / 2`, at most the
poll interval, early), so a burst whose jobs were claimed over a second costs one call, not one a round.

A `Pending` write never lands after the job's own record write (`Signed`, `Error`, a note):
- an unclaimed job is not claimed while its write is in flight: the claim and the choice of jobs to
  announce take turns under `claim_lock`, and the dispatcher leaves the jobs in `announcing` alone;
- a claimed job calls `before_record_write` before it writes its record: from then on it is never
  announced, and a write already in flight for it is awaited first.

Knobs (`WorkerConfig`): `pending_after_s` (SFSIGN_PENDING_AFTER_S, 2 s), `write_batch_max` (800).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog

from sfsign.aio import wait_any
from sfsign.outbox import Job, Outbox
from sfsign.salesforce.record_fields import pending_fields
from sfsign.salesforce.writeback import WriteBack

log = structlog.get_logger("sfsign.pending")

WriteNow = Callable[[list[WriteBack]], Awaitable[Sequence[object]]]


class PendingNotes:
    """Chooses the waiting jobs, writes their `Pending` and keeps it ahead of each job's own write."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        write: WriteNow,
        after_s: float,
        batch_max: int,
        claimed: Callable[[], Iterable[Job]],
        workers_busy: Callable[[], bool],
        cpu_busy: Callable[[], bool],
        constrained: Callable[[], bool],
        announced: Callable[[], None],
        soon: Callable[[float], bool] = lambda _horizon_s: False,
    ) -> None:
        self._outbox = outbox
        self._write = write
        self._after_s = after_s
        self._batch_max = batch_max
        self._claimed = claimed  # the running jobs, as claimed
        self._workers_busy = workers_busy  # every worker runs a job: unclaimed jobs wait
        self._cpu_busy = cpu_busy  # more jobs run than CPU slots: claimed jobs queue
        self._constrained = constrained
        self._announced = announced  # wakes the dispatcher: the jobs in `announcing` may be claimed
        self._soon = soon  # whether every running job will have written its record within that many seconds
        self.claim_lock = asyncio.Lock()
        self.announcing: set[int] = set()  # unclaimed jobs whose Pending write is in flight
        self._in_flight: dict[int, asyncio.Future[None]] = {}  # claimed jobs whose Pending write is in flight
        self._writing: set[int] = set()  # claimed jobs that began writing their record: never announced
        self._shown: set[int] = set()  # claimed jobs announced by this process (their `Job` predates it)
        self._round_s = 0.0  # between two rounds: a round announces the claimed jobs due by the next one

    async def before_record_write(self, job_id: int) -> None:
        """The job is about to write its record: no `Pending` for it from now on, and one in flight lands
        first. No `await` before the job is marked, so a round cannot choose it in between."""
        self._writing.add(job_id)
        in_flight = self._in_flight.get(job_id)
        if in_flight is not None:
            await asyncio.shield(in_flight)

    def forget(self, job_id: int) -> None:
        """The job's task ended (a later claim reads `pending_shown_at` and `attempts` afresh)."""
        self._writing.discard(job_id)
        self._shown.discard(job_id)

    async def run(self, stop: asyncio.Event, poll_interval_s: float) -> None:
        """Announce rounds until `stop`; a failure is a note, logged and tried again next round."""
        interval = max(0.1, min(self._after_s / 2, poll_interval_s))
        self._round_s = interval
        while not stop.is_set():
            try:
                while not stop.is_set() and await self.announce_some():
                    pass
            except Exception as exc:  # a note: never stops the daemon, tried again next round
                log.warning("could not announce waiting jobs as Pending", error=f"{type(exc).__name__}: {exc}"[:300])
            await wait_any(stop, within_s=interval)

    async def announce_some(self) -> bool:
        """One round: returns whether a full batch went (more may be waiting)."""
        if not (self._workers_busy() or self._cpu_busy()) or self._constrained():
            return False  # nobody waits; or the API budget is tight, and this is not urgent
        unclaimed = await self._choose_unclaimed()
        claimed = self._choose_claimed(self._batch_max - len(unclaimed))
        jobs = unclaimed + claimed
        if not jobs:
            return False
        written = asyncio.get_running_loop().create_future()
        for job in claimed:
            self._in_flight[job.id] = written
            self._shown.add(job.id)
        try:
            await self._write_pending(jobs)
        except BaseException:
            self._shown.difference_update(job.id for job in claimed)  # not written: the next round tries again
            raise
        finally:
            for job in claimed:
                self._in_flight.pop(job.id, None)
            written.set_result(None)
            self.announcing.difference_update(job.id for job in unclaimed)
            self._announced()
        log.info("waiting jobs shown as Pending", jobs=len(jobs), claimed=len(claimed))
        return len(jobs) >= self._batch_max

    async def _choose_unclaimed(self) -> list[Job]:
        if not self._workers_busy():
            return []  # a free worker claims every due job at once: none can be waiting for one
        async with self.claim_lock:
            running = [job.id for job in self._claimed()]
            jobs = await self._outbox.waiting_unannounced(time.time() - self._after_s, self._batch_max, running)
            self.announcing.update(job.id for job in jobs)
        return jobs

    def _choose_claimed(self, limit: int) -> list[Job]:
        """Running jobs whose record has waited long enough, not written yet by this job nor announced.
        Synchronous: `before_record_write` cannot run between the choice and `_in_flight`."""
        if limit <= 0 or not self._cpu_busy() or self._soon(3 * self._after_s):
            return []
        older_than = time.time() - self._after_s + self._round_s
        chosen = [job for job in self._claimed()
                  if job.attempts == 0 and job.pending_shown_at is None and job.signed_visible_at is None
                  and job.created_at <= older_than and job.id not in self._writing and job.id not in self._shown]
        return chosen[:limit]

    async def _write_pending(self, jobs: list[Job]) -> None:
        writes = [WriteBack(job.sobject, job.record_id, pending_fields(job.transaction_id, None)) for job in jobs]
        results = await self._write(writes)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("could not show Pending on some waiting records", records=len(failed),
                        error=f"{type(failed[0]).__name__}: {failed[0]}"[:300])
        await self._outbox.mark_pending_shown([j.id for j in jobs], time.time())
