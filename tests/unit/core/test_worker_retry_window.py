"""The retry window on a real outbox, with a fake REST client standing in for the record update:
a job is given up by time, never once its file may be in Salesforce, and only once its record says so."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from job_paths import UPGRADED, ltv_pending, signed, uploaded

from sfsign.outbox import Job, JobState, NewJob, Outbox, OutboxStore
from sfsign.salesforce.errors import SalesforceError
from sfsign.worker import Worker, WorkerConfig

WINDOW_S = 3600.0


class FakeRest:
    """Records the updates the worker writes on the record, or fails them."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: SalesforceError | None = None

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.updates.append((sobject, record_id, fields))


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    await box.open()
    yield box
    await box.close()


def _worker(outbox: Outbox, rest: FakeRest, tmp_path: Path) -> Worker:
    return Worker(outbox=outbox, rest=rest, rules=Any, cpu_pool=Any,  # type: ignore[arg-type]
                  config=WorkerConfig(artifacts_dir=tmp_path / "artifacts", retry_for_s=WINDOW_S,
                                      backoff_base_s=1.0, backoff_cap_s=600.0),
                  instance_url=lambda: "https://example.my.salesforce.com")


Walk = Callable[[OutboxStore, Job], Job]


async def _job(outbox: Outbox, walk: Walk | None = None, *, attempts: int = 0,
               failing_since: float | None = None) -> Job:
    """A job walked by the outbox's steps to its state (`walk`), failing since `failing_since`."""
    [job] = (await outbox.call(lambda s: s.commit_event(None, None, [NewJob(
        transaction_id="tx-1", rule="opp", sobject="Opportunity", record_id="006000000000001AAA",
        source="cdc")]))).created
    if walk is not None:
        job = await outbox.call(lambda s: walk(s, job))
    if failing_since is not None:
        job = await outbox.schedule_retry(job, time.time(), "503 SERVER_UNAVAILABLE", "SERVER_UNAVAILABLE",
                                          attempts=attempts, failing_since=failing_since)
    return job


async def test_first_failure_starts_the_window_and_the_job_retries_with_fake_rest(
    outbox: Outbox, tmp_path: Path
) -> None:
    rest = FakeRest()
    job = await _job(outbox)
    await _worker(outbox, rest, tmp_path)._schedule_retry(job, "503 SERVER_UNAVAILABLE", "SERVER_UNAVAILABLE", False)
    again = await outbox.call(lambda s: s.get(job.id))
    assert again.state is JobState.QUEUED and again.attempts == 1 and again.failing_since is not None
    assert again.next_attempt_at > time.time() and rest.updates == [(
        "Opportunity", "006000000000001AAA",
        {"Sign_Transaction_Id__c": "tx-1", "Sign_Status__c": "Pending",
         "Sign_Error__c": "retrying: 503 SERVER_UNAVAILABLE"})]  # the rep sees it waits, and why


async def test_job_failing_past_its_window_is_dead_and_its_record_says_what_to_do_with_fake_rest(
    outbox: Outbox, tmp_path: Path
) -> None:
    rest = FakeRest()
    job = await _job(outbox, attempts=40, failing_since=time.time() - WINDOW_S - 1)
    await _worker(outbox, rest, tmp_path)._schedule_retry(job, "503 SERVER_UNAVAILABLE", "SERVER_UNAVAILABLE", False)
    dead = await outbox.call(lambda s: s.get(job.id))
    assert dead.state is JobState.DEAD and dead.attempts == 41
    [(_, record_id, fields)] = rest.updates
    assert record_id == "006000000000001AAA" and fields["Sign_Status__c"] == "Error"
    assert fields["Sign_Error__c"] == dead.last_error
    assert dead.last_error is not None and dead.last_error.startswith("Gave up after 41 attempts over 1h00m: 503")
    assert "run `sfsign retry tx-1`" in dead.last_error


def _ltv_uploaded(store: OutboxStore, job: Job) -> Job:
    return store.mark_ltv_uploaded(store.mark_ltv_upgraded(ltv_pending(store, job), UPGRADED), "068000000000002AAA")


@pytest.mark.parametrize(
    ("walk", "state"),
    [
        (uploaded, JobState.UPLOADED),
        (_ltv_uploaded, JobState.LTV_UPLOADED),
        (lambda s, j: s.set_upload_uncertain(signed(s, j), True), JobState.SIGNED),  # the insert may have landed
    ],
)
async def test_job_whose_file_may_be_in_salesforce_is_never_given_up_with_fake_rest(
    outbox: Outbox, tmp_path: Path, walk: Walk, state: JobState
) -> None:
    rest = FakeRest()
    job = await _job(outbox, walk, failing_since=time.time() - 10 * WINDOW_S)
    await _worker(outbox, rest, tmp_path)._schedule_retry(job, "503 SERVER_UNAVAILABLE", "SERVER_UNAVAILABLE", False)
    again = await outbox.call(lambda s: s.get(job.id))
    assert again.state is state and again.attempts == 1
    # Never Error or dead; a record already showing Signed (the long-term upgrade) is not told Pending either.
    statuses = [f.get("Sign_Status__c") for _, _, f in rest.updates]
    assert statuses == ([] if again.signed_visible_at is not None else ["Pending"])
    assert again.next_attempt_at - time.time() <= 600.0  # capped backoff: it comes back within 10 min


async def test_job_past_its_window_keeps_retrying_while_its_record_cannot_be_told_with_fake_rest(
    outbox: Outbox, tmp_path: Path
) -> None:
    rest = FakeRest()
    rest.fail = SalesforceError(503, "SERVER_UNAVAILABLE", "Server Unavailable")
    job = await _job(outbox, failing_since=time.time() - WINDOW_S - 1)
    await _worker(outbox, rest, tmp_path)._schedule_retry(job, "503 SERVER_UNAVAILABLE", "SERVER_UNAVAILABLE", False)
    again = await outbox.call(lambda s: s.get(job.id))
    assert again.state is JobState.QUEUED and again.attempts == 1  # not dead: it may yet finish
