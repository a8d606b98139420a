"""The dispatcher loop on a real outbox and the real steps, with a fake REST client whose record update is slow.

A job for a rule the rules file no longer has fails at once in the fetch step, and reporting that on the
record (the one Salesforce call it makes) takes a while: long enough to see whether the dispatcher keeps
re-querying the outbox for the job it is already running. Nothing of the worker is patched; the outbox
passed in counts the calls made through its async face.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sfsign.config import load_rules
from sfsign.outbox import JobState, NewJob, Outbox, OutboxStore
from sfsign.worker import Worker, WorkerConfig

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]
UPDATE_S = 0.6


class CountingOutbox(Outbox):
    """The real outbox, counting the calls the worker makes on it."""

    calls = 0

    async def call(self, fn: Callable[[OutboxStore], T]) -> T:
        self.calls += 1
        return await super().call(fn)


class SlowFakeRest:
    """Stands in for Salesforce: a record update that takes UPDATE_S and is remembered."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        await asyncio.sleep(UPDATE_S)
        self.updates.append(fields)


async def test_dispatcher_waits_while_its_only_job_runs_with_fake_slow_rest(tmp_path: Path) -> None:
    """A running job is due by its timestamp; the loop must not keep re-querying the outbox for it."""
    outbox = CountingOutbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    rest = SlowFakeRest()
    worker = Worker(outbox=outbox, rest=rest, rules=load_rules(REPO / "config" / "rules.yaml"),  # type: ignore[arg-type]
                    cpu_pool=Any,  # type: ignore[arg-type]
                    config=WorkerConfig(artifacts_dir=tmp_path / "artifacts", concurrency=4, poll_interval_s=5.0),
                    instance_url=lambda: "https://example.my.salesforce.com")
    [job] = (await outbox.call(lambda s: s.commit_event("/c", 1, [NewJob(
        transaction_id="tx-1", rule="rule-removed-since", sobject="Opportunity", record_id="006000000000001AAA",
        source="cdc", event_time_ms=1)]))).created
    outbox.calls = 0
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):  # a hang fails here, not a speed target
            while (await outbox.call(lambda s: s.get(job.id))).state is not JobState.ERROR:
                outbox.calls -= 1  # this test's own polling is not the dispatcher's
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await runner
        await worker.drain(1.0)
        await outbox.close()
    assert [u["Sign_Status__c"] for u in rest.updates] == ["Error"]  # the rep sees why, once
    # claim + next-due when the job arrives and when it ends (each wakes the loop), and the step's own
    # two updates (the error, then the state).
    assert outbox.calls <= 8, f"{outbox.calls} outbox calls while one job ran for {UPDATE_S} s"
