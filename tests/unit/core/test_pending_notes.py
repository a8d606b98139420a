"""`Pending` for claimed jobs that wait during a burst, on a real outbox with a fake write-back call held until
the test lets it through: each waiting record is written once; a job that writes its own record waits for a
Pending write in flight, and is never announced once it began; nothing is announced while no job queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from sfsign.outbox import Job, NewJob, Outbox
from sfsign.pending import PendingNotes
from sfsign.salesforce.writeback import WriteBack


class HeldFakeWrite:
    """Stands in for the write-back call: remembers each call's records, answers once released."""

    def __init__(self) -> None:
        self.calls: list[list[WriteBack]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, items: list[WriteBack]) -> Sequence[object]:
        self.calls.append(items)
        self.arrived.set()
        await self.release.wait()
        return [None] * len(items)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    await box.open()
    yield box
    await box.close()


async def _jobs(outbox: Outbox, n: int) -> list[Job]:
    result = await outbox.call(lambda s: s.commit_event("/c", 1, [NewJob(
        transaction_id=f"tx-{k}", rule="r", sobject="Opportunity", record_id=f"006000000000{k:03d}AAA",
        source="cdc") for k in range(n)]))
    return result.created


def _notes(outbox: Outbox, write: HeldFakeWrite, claimed: list[Job], *, cpu_busy: bool) -> PendingNotes:
    return PendingNotes(outbox=outbox, write=write, after_s=0.0, batch_max=800, claimed=lambda: claimed,
                        workers_busy=lambda: False, cpu_busy=lambda: cpu_busy, constrained=lambda: False,
                        announced=lambda: None)


async def test_claimed_jobs_in_a_burst_show_pending_once_with_fake_write(outbox: Outbox) -> None:
    jobs = await _jobs(outbox, 3)
    write = HeldFakeWrite()
    write.release.set()
    notes = _notes(outbox, write, jobs, cpu_busy=True)
    assert await notes.announce_some() is False  # not a full batch
    assert await notes.announce_some() is False
    [call] = write.calls  # once per job
    assert [(w.record_id, w.fields["Sign_Status__c"], w.fields["Sign_Transaction_Id__c"]) for w in call] == [
        (j.record_id, "Pending", j.transaction_id) for j in jobs]
    assert all(j.pending_shown_at is not None for j in await outbox.call(lambda s: s.jobs()))


async def test_a_job_writing_its_record_waits_for_its_pending_write_in_flight_with_fake_write(
    outbox: Outbox,
) -> None:
    first, second = await _jobs(outbox, 2)
    write = HeldFakeWrite()
    notes = _notes(outbox, write, [first, second], cpu_busy=True)
    round_ = asyncio.create_task(notes.announce_some())
    await write.arrived.wait()
    own_write = asyncio.create_task(notes.before_record_write(first.id))
    await asyncio.sleep(0.05)
    assert not own_write.done()  # its Signed or Error would land before the Pending in flight
    write.release.set()
    await own_write
    await round_


async def test_a_job_that_began_writing_its_record_is_never_announced_with_fake_write(outbox: Outbox) -> None:
    first, second = await _jobs(outbox, 2)
    write = HeldFakeWrite()
    write.release.set()
    notes = _notes(outbox, write, [first, second], cpu_busy=True)
    await notes.before_record_write(first.id)
    await notes.announce_some()
    assert [[w.record_id for w in call] for call in write.calls] == [[second.record_id]]


async def test_no_pending_while_no_job_queues_with_fake_write(outbox: Outbox) -> None:
    """Fewer jobs run than CPU slots (a lone document) and a worker is free: nobody waits."""
    jobs = await _jobs(outbox, 1)
    write = HeldFakeWrite()
    write.release.set()
    assert await _notes(outbox, write, jobs, cpu_busy=False).announce_some() is False
    assert write.calls == []


async def test_claimed_jobs_of_a_burst_soon_written_are_left_alone_until_it_runs_late_with_fake_write(
    outbox: Outbox,
) -> None:
    jobs = [replace(job, created_at=job.created_at - 10) for job in await _jobs(outbox, 3)]  # waited long enough
    write = HeldFakeWrite()
    write.release.set()
    horizons: list[float] = []
    soon = [True]

    def written_within(horizon_s: float) -> bool:
        horizons.append(horizon_s)
        return soon[0]

    notes = PendingNotes(outbox=outbox, write=write, after_s=2.0, batch_max=800, claimed=lambda: jobs,
                         workers_busy=lambda: False, cpu_busy=lambda: True, constrained=lambda: False,
                         announced=lambda: None, soon=written_within)
    assert await notes.announce_some() is False
    assert write.calls == [] and horizons == [6.0]  # all written within three times pending_after_s: no call
    soon[0] = False  # the pool slowed down: the burst runs late
    assert await notes.announce_some() is False
    [call] = write.calls
    assert [w.record_id for w in call] == [j.record_id for j in jobs]


async def test_a_round_also_announces_the_jobs_due_by_the_next_round_with_fake_write(outbox: Outbox) -> None:
    """Rounds every second (half of pending_after_s 2 s): a job 1.5 s old is due before the next round, so
    it goes now, with the others of its burst, rather than costing a call of its own a second later."""
    created = await _jobs(outbox, 2)
    jobs = [replace(created[0], created_at=created[0].created_at - 1.5),  # due in 0.5 s
            replace(created[1], created_at=created[1].created_at - 0.5)]  # due in 1.5 s: the round after
    write = HeldFakeWrite()
    write.release.set()
    rounds: list[int] = []  # how many rounds had looked at the claimed jobs when each write came

    def claimed() -> list[Job]:
        rounds.append(len(write.calls))
        return jobs

    notes = PendingNotes(outbox=outbox, write=write, after_s=2.0, batch_max=800, claimed=claimed,
                         workers_busy=lambda: False, cpu_busy=lambda: True, constrained=lambda: False,
                         announced=lambda: None)
    stop = asyncio.Event()
    task = asyncio.create_task(notes.run(stop, poll_interval_s=5.0))
    try:
        await asyncio.wait_for(write.arrived.wait(), 10)
    finally:
        stop.set()
        await task
    assert [[w.record_id for w in call] for call in write.calls] == [[jobs[0].record_id]]
    assert rounds[0] == 0 and rounds.count(0) == 1  # written by the first round, not one a second later
