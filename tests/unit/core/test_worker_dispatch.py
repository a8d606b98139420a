"""The dispatcher loop on a real outbox, with a fake step standing in for fetch/render/sign/upload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sfsign.outbox import Job, JobState, NewJob, Outbox
from sfsign.worker import Worker, WorkerConfig


async def test_dispatcher_waits_while_its_only_job_runs_with_a_fake_slow_step(tmp_path: Path) -> None:
    """A running job is due by its timestamp; the loop must not keep re-querying the outbox for it."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    worker = Worker(outbox=outbox, rest=Any, rules=Any, cpu_pool=Any,  # type: ignore[arg-type]
                    config=WorkerConfig(artifacts_dir=tmp_path / "artifacts", concurrency=4, poll_interval_s=5.0),
                    instance_url=lambda: "https://example.my.salesforce.com")
    step_seconds = 0.6
    done = asyncio.Event()

    async def fake_slow_fetch(job: Job, rules: Any) -> Job:
        await asyncio.sleep(step_seconds)
        finished = await outbox.update(job.id, state=JobState.DONE, done_at=time.time())
        done.set()
        return finished

    worker._steps[JobState.QUEUED] = fake_slow_fetch
    calls = 0
    real_call = outbox.call

    async def counting_call(fn: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_call(fn)

    outbox.call = counting_call  # type: ignore[method-assign]
    await real_call(lambda s: s.commit_event("/c", 1, [NewJob(
        transaction_id="tx-1", rule="r", sobject="Opportunity", record_id="006000000000001AAA", source="cdc",
        event_time_ms=1)]))
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(done.wait(), timeout=10)  # a hang fails here, not a speed target
    finally:
        stop.set()
        await runner
        await worker.drain(1.0)
    # claim + next-due when the job arrives and when it ends (each wakes the loop), and the step's own update.
    assert calls <= 8, f"{calls} outbox calls while one job ran for {step_seconds} s"
