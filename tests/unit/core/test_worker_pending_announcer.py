"""The Pending announcer against the dispatcher, on a real outbox with a fake REST client and a fake step: a
job whose Pending write is in flight is not claimed until that write is through, so its own write-back can
never be overtaken by it; a job the worker takes at once is never announced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sfsign.outbox import Job, JobState, NewJob, Outbox
from sfsign.salesforce.rest import CompositeResult
from sfsign.worker import Worker, WorkerConfig


class FakeRest:
    """Answers `/composite` write-backs as Salesforce would, each held until the test lets it through."""

    api_version = "68.0"

    def __init__(self) -> None:
        self.sent: list[list[Mapping[str, Any]]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.answered = asyncio.Event()

    def subrequest_url(self, path: str) -> str:
        return f"/services/data/v{self.api_version}/{path}"

    async def composite(self, subs: Sequence[Mapping[str, Any]], *, all_or_none: bool,
                        write: bool = True) -> list[CompositeResult]:
        self.sent.append(list(subs))
        self.arrived.set()
        await self.release.wait()
        out = []
        for sub in subs:
            records = (sub.get("body") or {}).get("records")
            if records is not None:
                ok = {"id": "a00000000000001AAA", "success": True, "errors": []}
                out.append(CompositeResult(sub["referenceId"], 200, [ok] * len(records)))
            else:
                out.append(CompositeResult(sub["referenceId"], 204, None))
        self.answered.set()
        return out


def _new_job(n: int) -> NewJob:
    return NewJob(transaction_id=f"tx-{n}", rule="r", sobject="Opportunity", record_id=f"006000000000{n:03d}AAA",
                  source="cdc", event_time_ms=1)


async def test_a_job_announced_pending_is_claimed_only_after_its_pending_write_with_fake_rest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    rest = FakeRest()
    worker = Worker(outbox=outbox, rest=rest, rules=Any, cpu_pool=Any,  # type: ignore[arg-type]
                    config=WorkerConfig(artifacts_dir=tmp_path / "artifacts", concurrency=1, poll_interval_s=0.2,
                                        pending_after_s=0.2),
                    instance_url=lambda: "https://example.my.salesforce.com")
    started: dict[str, bool] = {}  # transaction id -> whether its Pending write had been answered then
    hold_first = asyncio.Event()
    began = {"tx-1": asyncio.Event(), "tx-2": asyncio.Event()}

    async def fake_fetch(job: Job, rules: Any) -> Job:
        started[job.transaction_id] = rest.answered.is_set()
        began[job.transaction_id].set()
        if job.transaction_id == "tx-1":
            await hold_first.wait()
        return await outbox.update(job.id, state=JobState.DONE, done_at=time.time())

    worker._steps[JobState.QUEUED] = fake_fetch
    await outbox.call(lambda s: s.commit_event("/c", 1, [_new_job(1)]))
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            await began["tx-1"].wait()
            # The one worker is busy: the next job waits, and is announced once it has waited 0.2 s.
            await outbox.call(lambda s: s.commit_event("/c", 2, [_new_job(2)]))
            worker.wake()
            await rest.arrived.wait()
            hold_first.set()  # the worker is free while tx-2's Pending write is still in flight
            while worker.in_flight:  # noqa: ASYNC110 - a plain attribute
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # several dispatcher rounds with a free worker and tx-2 due
            assert "tx-2" not in started
            rest.release.set()
            await began["tx-2"].wait()
    finally:
        rest.release.set()  # never leave the batcher hanging on a held write
        stop.set()
        await runner
        await worker.drain(1.0)
        jobs = {j.transaction_id: j for j in await outbox.call(lambda s: s.jobs())}
        await outbox.close()
    assert started == {"tx-1": False, "tx-2": True}
    [write] = rest.sent
    patches = [s for s in write if s["method"] == "PATCH"]
    assert [p["url"] for p in patches] == ["/services/data/v68.0/sobjects/Opportunity/006000000000002AAA"]
    assert patches[0]["body"]["Sign_Status__c"] == "Pending" and patches[0]["body"]["Sign_Transaction_Id__c"] == "tx-2"
    assert jobs["tx-1"].pending_shown_at is None and jobs["tx-2"].pending_shown_at is not None
