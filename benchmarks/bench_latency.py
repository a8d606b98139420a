"""Lone-document latency: stage change → `Signed` on the record, one record at a time, and API calls used.

Run: python benchmarks/bench_latency.py [--records 50]

The emulator runs on its own thread (a separate event loop, like a remote org); the daemon is the real one
(JWT login, our Bayeux client, simple-salesforce, SQLite outbox, Typst, pyHanko B-B) with the default
settings. Each record is moved only after the previous one is signed. Latency is measured from the change's
CDC commit timestamp to the moment the daemon finished writing `Signed` back (the job's `done_at`): both
clocks are this machine's. API calls are the emulator's per-org counter (every REST call counts once;
OAuth and CometD do not, as in Salesforce).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
from pathlib import Path

from sfsign.config import Rules
from sfsign.daemon import Daemon
from sfsign.demo import daemon_settings, demo_pki, write_demo_config
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread

REP = "lena.hoffmann@northwind.example"


async def create_records(control: ControlClient, count: int) -> list[str]:
    q = control.query
    pricebook = (await q("SELECT Id FROM Pricebook2 WHERE IsStandard = true"))[0]["Id"]
    entries = await q("SELECT Id, UnitPrice FROM PricebookEntry WHERE CurrencyIsoCode = 'EUR'")
    contact = (await q("SELECT Id, AccountId FROM Contact WHERE Account.BillingCountry = 'France' LIMIT 1"))[0]
    ids = []
    for i in range(count):
        opp = await control.create("Opportunity", {
            "Name": f"Latency {i:03d}", "AccountId": contact["AccountId"], "StageName": "Prospecting",
            "CloseDate": "2027-06-30", "CurrencyIsoCode": "EUR", "Pricebook2Id": pricebook}, user=REP)
        for j in range(3):
            entry = entries[(i + j) % len(entries)]
            await control.create("OpportunityLineItem", {
                "OpportunityId": opp, "PricebookEntryId": entry["Id"], "Quantity": 1 + j,
                "UnitPrice": entry["UnitPrice"]}, user=REP)
        await control.create("OpportunityContactRole", {
            "OpportunityId": opp, "ContactId": contact["Id"], "Role": "Decision Maker", "IsPrimary": True}, user=REP)
        ids.append(opp)
    return ids


async def run(emulator: EmulatorThread, work: Path, count: int) -> None:
    with demo_pki(work) as (pki, services):
        await _run(emulator, work, count, write_demo_config(work, pki, services))


async def _run(emulator: EmulatorThread, work: Path, count: int, rules: Rules) -> None:
    """Stage changes to "Proposal/Price Quote" (the demo signs those at B-T, then upgrades to B-LTA)."""
    settings = daemon_settings(emulator, work, rules.source)
    async with ControlClient(emulator.url, emulator.control_token, emulator.ca_file) as control:
        ids = await create_records(control, count)
        daemon = Daemon(settings, rules)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await asyncio.sleep(3)  # let the pool finish warming up, as a long-running daemon would be
        calls_before = (await control.api_usage())["used"]
        for rid in ids:
            await control.update("Opportunity", rid, {"StageName": "Proposal/Price Quote"}, user=REP)
            while True:
                if (await control.get("Opportunity", rid, ["Sign_Status__c"]))["Sign_Status__c"] == "Signed":
                    break
                await asyncio.sleep(0.005)
        calls = (await control.api_usage())["used"] - calls_before
        jobs = [j for j in await daemon.outbox.call(lambda s: s.jobs()) if j.record_id in set(ids)]
        daemon.request_stop()
        await task
    ms = sorted(j.done_at * 1000 - j.event_time_ms for j in jobs if j.done_at and j.event_time_ms)
    q = statistics.quantiles(ms, n=100)
    print(f"sfsign lone-document latency - {platform.machine()}, {len(os.sched_getaffinity(0))} cores,"
          f" Python {platform.python_version()}, {count} sequential stage changes, B-B, 3 line items")
    print(f"stage change -> Signed on the record: p50 {statistics.median(ms):.0f} ms, p95 {q[94]:.0f} ms, "
          f"p99 {q[98]:.0f} ms, max {ms[-1]:.0f} ms")
    print(f"API calls: {calls} for {count} documents = {calls / count:.2f} per document "
          "(the polling above uses the control API, which does not count)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sfsign-bench-") as tmp:
        work = Path(tmp)
        emulator = EmulatorThread(data_dir=work / "emulator")
        emulator.start()
        try:
            asyncio.run(run(emulator, work, args.records))
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
