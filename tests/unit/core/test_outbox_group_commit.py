"""The async outbox's group commit on a real SQLite file: calls made together share one transaction, yet each
call's state change and audit row stay all-or-nothing, a failing call leaves its neighbours' writes, and no
caller hears of a write before it is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sfsign.outbox import Job, JobState, NewJob, Outbox, OutboxStore, StepAudit


async def _opened(tmp_path: Path, jobs: int) -> tuple[Outbox, list[Job]]:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.open()
    created = (await outbox.commit_event(None, None, [
        NewJob(f"tx-{n}", "r", "Opportunity", f"006000000000{n:03d}AAA", "cdc") for n in range(jobs)])).created
    return outbox, created


def _transactions(outbox: Outbox) -> list[int]:
    """Counts the COMMITs the outbox's connection makes from now on (SQLite's commit hook)."""
    commits: list[int] = []
    outbox.store.db.conn.set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)
    return commits


def _trail(store: OutboxStore) -> list[tuple[str, str]]:
    rows = store.db.execute("SELECT transaction_id, event_type FROM audit ORDER BY id").fetchall()
    return [(str(t), str(e)) for t, e in rows]


async def test_steps_made_together_share_one_commit_each_with_its_audit_row(tmp_path: Path) -> None:
    outbox, jobs = await _opened(tmp_path, 20)
    commits = _transactions(outbox)
    done = await asyncio.gather(*(outbox.mark_fetched(job, document_json="{}", file_title="t", file_name="f.pdf")
                                  for job in jobs))
    assert [job.state for job in done] == [JobState.FETCHED] * 20
    assert len(commits) == 1
    assert _trail(outbox.store)[-20:] == [(job.transaction_id, "fetched") for job in jobs]
    await outbox.close()


async def test_a_lone_call_runs_as_before_in_its_own_transaction(tmp_path: Path) -> None:
    outbox, jobs = await _opened(tmp_path, 2)
    commits = _transactions(outbox)
    await outbox.mark_fetched(jobs[0], document_json="{}", file_title="t", file_name="f.pdf")
    await outbox.mark_fetched(jobs[1], document_json="{}", file_title="t", file_name="f.pdf")
    assert len(commits) == 2
    await outbox.close()


async def test_a_failing_call_rolls_back_its_own_change_only(tmp_path: Path) -> None:
    outbox, jobs = await _opened(tmp_path, 3)

    def half_then_fail(store: OutboxStore) -> None:
        with store._transaction() as conn:  # a store transaction, nested in the group
            store._apply(conn, jobs[1].id, {"state": JobState.FETCHED}, StepAudit())
            raise ValueError("the step found something wrong")

    results = await asyncio.gather(
        outbox.mark_fetched(jobs[0], document_json="{}", file_title="t", file_name="f.pdf"),
        outbox.call(half_then_fail),
        outbox.mark_fetched(jobs[2], document_json="{}", file_title="t", file_name="f.pdf"),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    states = {job.id: (await outbox.get(job.id)).state for job in jobs}
    assert states == {jobs[0].id: JobState.FETCHED, jobs[1].id: JobState.QUEUED, jobs[2].id: JobState.FETCHED}
    assert [e for t, e in _trail(outbox.store) if t == jobs[1].transaction_id] == ["queued"]
    await outbox.close()


async def test_a_group_that_sqlite_rolls_back_reports_the_failure_to_every_caller(tmp_path: Path) -> None:
    outbox, jobs = await _opened(tmp_path, 2)

    def disk_full(store: OutboxStore) -> None:
        store.db.conn.execute("ROLLBACK")  # what SQLite does to the whole transaction on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    results = await asyncio.gather(
        outbox.mark_fetched(jobs[0], document_json="{}", file_title="t", file_name="f.pdf"),
        outbox.call(disk_full),
        outbox.mark_fetched(jobs[1], document_json="{}", file_title="t", file_name="f.pdf"),
        return_exceptions=True)
    assert [type(r) for r in results] == [sqlite3.OperationalError] * 3
    assert [(await outbox.get(job.id)).state for job in jobs] == [JobState.QUEUED, JobState.QUEUED]
    await outbox.close()


async def test_a_cancelled_caller_that_was_not_sent_yet_writes_nothing(tmp_path: Path) -> None:
    outbox, jobs = await _opened(tmp_path, 1)
    task = asyncio.ensure_future(outbox.mark_fetched(jobs[0], document_json="{}", file_title="t", file_name="f.pdf"))
    await asyncio.sleep(0)  # queued; the group goes on the next turn of the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await outbox.get(jobs[0].id)).state is JobState.QUEUED
    await outbox.close()
