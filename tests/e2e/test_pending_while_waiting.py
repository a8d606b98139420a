"""Records whose job waits for a worker show `Pending`; the job a worker takes at once never does, and no
`Pending` ever lands after a record's `Signed`. Real daemon with one worker, held up by the emulator's
latency fault on queries (which a `/composite` carrying the fetch's queries inherits), real SQLite file,
emulator over HTTPS."""

from __future__ import annotations

import asyncio

from e2e_support import REP, record_id, run_daemon

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.outbox import JobState

NAMES = ("Acme Industries - Platform Renewal 2027", "Globex - Enterprise Rollout",
         "Brandt & Söhne - Premium Support", "Initech - Onboarding Package")
TRIGGER = {"StageName": "Proposal/Price Quote"}


async def test_queued_records_show_pending_once_and_every_record_ends_signed(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    first, *waiting = [await record_id(control, "Opportunity", n) for n in NAMES]
    held = settings.model_copy(update={"workers": 1, "pending_after_s": 1.0})
    seen: dict[str, list[tuple[str | None, str | None]]] = {r: [] for r in (first, *waiting)}

    async def watch() -> None:
        """Every status each record shows, in order (a status held for a second cannot be missed)."""
        while True:
            for rid, history in seen.items():
                rec = await control.get("Opportunity", rid, ["Sign_Status__c", "Sign_Transaction_Id__c"])
                state = (rec.get("Sign_Status__c"), rec.get("Sign_Transaction_Id__c"))
                if not history or history[-1] != state:
                    history.append(state)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
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
