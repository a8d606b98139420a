"""Records whose job waits show `Pending`: for a worker (one worker, held up by the emulator's latency fault
on queries, which a `/composite` carrying the fetch's queries inherits), or, claimed at once during a burst,
for the one CPU process and the batches (uploads held up by a latency fault). The job a worker takes at once
in a quiet moment never does, and no `Pending` ever lands after a record's `Signed`. Real daemon, real
SQLite file, emulator over HTTPS."""

from __future__ import annotations

import asyncio

from e2e_support import REP, record_id, run_daemon, settled_jobs

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import JobState

BURST = ("Acme Industries - Platform Renewal 2027", "Acme Industries - API Add-on",
         "Brandt & Söhne - Enterprise Upgrade", "Brandt & Söhne - Premium Support", "Globex - Enterprise Rollout",
         "Initech - Onboarding Package")
NAMES = ("Acme Industries - Platform Renewal 2027", "Globex - Enterprise Rollout",
         "Brandt & Söhne - Premium Support", "Initech - Onboarding Package")
TRIGGER = {"StageName": "Proposal/Price Quote"}
UPLOADS = ("/services/data/v68.0/composite/sobjects", "/services/data/v68.0/sobjects/ContentVersion")  # many, one


async def _watch(control: ControlClient, seen: dict[str, list[tuple[str | None, str | None]]]) -> None:
    """Every status each record shows, in order (a status held for a second cannot be missed)."""
    while True:
        for rid, history in seen.items():
            rec = await control.get("Opportunity", rid, ["Sign_Status__c", "Sign_Transaction_Id__c"])
            state = (rec.get("Sign_Status__c"), rec.get("Sign_Transaction_Id__c"))
            if not history or history[-1] != state:
                history.append(state)
        await asyncio.sleep(0.05)


async def test_queued_records_show_pending_once_and_every_record_ends_signed(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    first, *waiting = [await record_id(control, "Opportunity", n) for n in NAMES]
    held = settings.model_copy(update={"workers": 1, "pending_after_s": 1.0})
    seen: dict[str, list[tuple[str | None, str | None]]] = {r: [] for r in (first, *waiting)}
    watcher = asyncio.create_task(_watch(control, seen))
    try:
        # Each fetch now takes seconds (two queries of 1 s in its composite): the one worker is held up.
        await control.post("/_control/faults/latency", {"prefix": "/services/data/v68.0/query", "ms": 1000})
        async with run_daemon(held, rules) as daemon:
            await control.update("Opportunity", first, TRIGGER, user=REP)
            async with asyncio.timeout(60):
                while daemon.worker is None or daemon.worker.in_flight != 1:  # noqa: ASYNC110 - an attribute
                    await asyncio.sleep(0.02)
            for rid in waiting:
                await control.update("Opportunity", rid, TRIGGER, user=REP)
            async with asyncio.timeout(180):
                while True:
                    jobs = await daemon.outbox.call(lambda s: s.jobs())
                    if len(jobs) == len(NAMES) and all(j.state is JobState.DONE for j in jobs):
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2 * held.pending_after_s)  # a late Pending write would land by now
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    by_record = {j.record_id: j for j in jobs}
    final = {rid: await control.get("Opportunity", rid, ["Sign_Status__c", "Sign_Transaction_Id__c"])
             for rid in seen}
    for rid, record in final.items():
        assert record["Sign_Status__c"] == "Signed", (rid, seen[rid])
        assert record["Sign_Transaction_Id__c"] == by_record[rid].transaction_id
    for rid, history in seen.items():
        statuses = [status for status, _tx in history]
        if "Signed" in statuses:  # never Pending after Signed: the race this guards against
            assert "Pending" not in statuses[statuses.index("Signed"):], (rid, history)
    # The job a worker took at once was never written Pending; each job that waited was, once, with its
    # transaction id.
    assert "Pending" not in [s for s, _tx in seen[first]], seen[first]
    assert by_record[first].pending_shown_at is None
    for rid in waiting:
        assert ("Pending", by_record[rid].transaction_id) in seen[rid], (rid, seen[rid])
        assert by_record[rid].pending_shown_at is not None
    for rid in seen:
        files = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == by_record[rid].transaction_id]
        assert len(files) == 1, files


async def test_claimed_jobs_waiting_in_a_burst_show_pending_once_and_every_record_ends_signed(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """Every job of the burst is claimed at once (300 workers), then queues for the one CPU process and in
    the upload batch, whose call takes seconds: each record shows `Pending` once, before its `Signed`."""
    ids = [await record_id(control, "Opportunity", n) for n in BURST]
    burst = settings.model_copy(update={"pending_after_s": 0.5})
    assert burst.cpu_workers == 1 and burst.workers > len(ids)
    seen: dict[str, list[tuple[str | None, str | None]]] = {r: [] for r in ids}
    watcher = asyncio.create_task(_watch(control, seen))
    try:
        for uploads in UPLOADS:  # a burst's first document goes alone, at once: its upload is held up too
            await control.post("/_control/faults/latency", {"prefix": uploads, "method": "POST", "ms": 1500})
        async with run_daemon(burst, rules) as daemon:
            await control.bulk_update("Opportunity", ids, TRIGGER, user=REP)
            async with asyncio.timeout(180):
                while True:
                    jobs = await settled_jobs(daemon, within_s=180)
                    if len(jobs) == len(ids) and all(j.state is JobState.DONE for j in jobs):
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2 * burst.pending_after_s)  # a late Pending write would land by now
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    by_record = {j.record_id: j for j in jobs}
    files = await control.files()
    for rid, history in seen.items():
        tx = by_record[rid].transaction_id
        assert history[-1] == ("Signed", tx), (rid, history)
        shown = [state for state in history if state[0] is not None]
        assert shown == [("Pending", tx), ("Signed", tx)], (rid, history)  # Pending once, never after Signed
        assert by_record[rid].pending_shown_at is not None
        assert len([f for f in files if f["Sign_Transaction_Id__c"] == tx]) == 1
