"""The Pending announcer against the dispatcher, on a real outbox with a fake REST client and the real steps:
a job whose Pending write is in flight is not claimed until that write is through, so its own record write
can never be overtaken by it; a job the worker takes at once is never announced.

Each job names a rule the rules file no longer has, so its fetch step fails at once and writes `Error` on
the record: the one record write a job makes here, which the fake client holds for the first job (the one
worker stays busy) and records for both, in the order Salesforce would see them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sfsign.config import load_rules
from sfsign.outbox import JobState, NewJob, Outbox
from sfsign.salesforce.composite import CompositeResult
from sfsign.worker import Worker, WorkerConfig

REPO = Path(__file__).resolve().parents[3]


class FakeRest:
    """Answers `/composite` write-backs and record updates as Salesforce would; the first job's update and
    the Pending write are each held until the test lets them through. `writes` is what reached it, in order."""

    api_version = "68.0"

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, str]] = []  # (call, record id, Sign_Status__c)
        self.composite_arrived = asyncio.Event()
        self.release_composite = asyncio.Event()
        self.release_first = asyncio.Event()
        self.first_arrived = asyncio.Event()

    def subrequest_url(self, path: str) -> str:
        return f"/services/data/v{self.api_version}/{path}"

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        if record_id.endswith("001AAA"):
            self.first_arrived.set()
            await self.release_first.wait()
        self.writes.append(("update", record_id, fields["Sign_Status__c"]))

    async def composite(self, subs: Sequence[Mapping[str, Any]], *, all_or_none: bool,
                        write: bool = True) -> list[CompositeResult]:
        self.composite_arrived.set()
        await self.release_composite.wait()
        out = []
        for sub in subs:
            records = (sub.get("body") or {}).get("records")
            if records is not None:
                ok = {"id": "a00000000000001AAA", "success": True, "errors": []}
                out.append(CompositeResult(sub["referenceId"], 200, [ok] * len(records)))
            else:
                self.writes.append(("composite", str(sub["url"]).rsplit("/", 1)[-1], sub["body"]["Sign_Status__c"]))
                out.append(CompositeResult(sub["referenceId"], 204, None))
        return out


def _new_job(n: int) -> NewJob:
    return NewJob(transaction_id=f"tx-{n}", rule="rule-removed-since", sobject="Opportunity",
                  record_id=f"006000000000{n:03d}AAA", source="cdc", event_time_ms=1)


async def test_a_job_announced_pending_is_claimed_only_after_its_pending_write_with_fake_rest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    rest = FakeRest()
    worker = Worker(outbox=outbox, rest=rest, rules=load_rules(REPO / "config" / "rules.yaml"),  # type: ignore[arg-type]
                    cpu_pool=Any,  # type: ignore[arg-type]
                    config=WorkerConfig(artifacts_dir=tmp_path / "artifacts", concurrency=1, poll_interval_s=0.2,
                                        pending_after_s=0.2),
                    instance_url=lambda: "https://example.my.salesforce.com")
    await outbox.call(lambda s: s.commit_event("/c", 1, [_new_job(1)]))
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            await rest.first_arrived.wait()
            # The one worker is busy: the next job waits, and is announced once it has waited 0.2 s.
            await outbox.call(lambda s: s.commit_event("/c", 2, [_new_job(2)]))
            worker.wake()
            await rest.composite_arrived.wait()
            rest.release_first.set()  # the worker is free while tx-2's Pending write is still in flight
            while worker.in_flight:  # noqa: ASYNC110 - a plain attribute
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # several dispatcher rounds with a free worker and tx-2 due
            assert [w for w in rest.writes if w[1].endswith("002AAA")] == []  # tx-2 not claimed yet
            rest.release_composite.set()
            while len(rest.writes) < 3:  # noqa: ASYNC110 - a plain attribute
                await asyncio.sleep(0.01)
    finally:
        rest.release_first.set()
        rest.release_composite.set()  # never leave a held write hanging
        stop.set()
        await runner
        await worker.drain(1.0)
        jobs = {j.transaction_id: j for j in await outbox.call(lambda s: s.jobs())}
        await outbox.close()
    first, second = "006000000000001AAA", "006000000000002AAA"
    assert rest.writes == [("update", first, "Error"), ("composite", second, "Pending"), ("update", second, "Error")]
    assert jobs["tx-1"].pending_shown_at is None and jobs["tx-2"].pending_shown_at is not None
    assert jobs["tx-1"].state is JobState.ERROR and jobs["tx-2"].state is JobState.ERROR
