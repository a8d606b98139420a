"""Chaos: a burst laced with poison events and other spellings of record ids, with a kill -9 in the middle.

Gap events naming something that is not an id, change events naming a bad id, change events whose
payload does not decode (on CometD: not an object; on Pub/Sub: not Avro of the schema it names), sign
requests that name burst records by their 15-character id or their upper-cased 18-character id, and
requests for a rule of another object arrive between the burst's chunks. The invariant is the usual one
(every record Signed, exactly one file each, no other file): poison never stops intake, a restart never
stalls on it, and no spelling of an id signs a record twice. The same poison reaches both transports.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

from chaos_support import REP, ChaosOrg, ChaosResult, _finish

from sfsign.emulator.bus import schema_id

CHANNEL = "/data/OpportunityChangeEvent"
# The schema id Salesforce's messages carry on both transports: with it the emulator encodes an injected
# payload as Avro for Pub/Sub, so the bad-id event decodes there too and is the same poison as on CometD.
SCHEMA = schema_id("OpportunityChangeEvent")
POISON_PER_ROUND = 3


async def _poison(org: ChaosOrg, rng: random.Random, ids: list[str], result: ChaosResult) -> None:
    """One of each kind, aimed at records of the burst."""
    target = rng.choice(ids)
    await org.control_post("/_control/streaming/gap", {
        "entity": "Opportunity", "recordIds": [target, f"{target[:12]}'--"], "user": REP})
    await org.control_post("/_control/streaming/raw", {
        "channel": CHANNEL, "data": {"schema": SCHEMA, "payload": {"ChangeEventHeader": {
            "entityName": "Opportunity", "changeType": "UPDATE", "recordIds": ["006"]}}}})
    # Not a payload: CometD delivers the string, Pub/Sub its JSON bytes under the schema, which no Avro
    # reader decodes (the header's first string would run past the end).
    await org.control_post("/_control/streaming/raw", {
        "channel": CHANNEL, "data": {"schema": SCHEMA, "payload": "not an object"}})
    async with org.emulator_lock:
        await org.control.publish("Sign_Request__e", {"RecordId__c": target[:15]}, user=REP)
        await org.control.publish("Sign_Request__e", {"RecordId__c": rng.choice(ids).upper()}, user=REP)
        await org.control.publish("Sign_Request__e", {"RecordId__c": target, "Rule__c": "quote-approved"},
                                  user=REP)
    result.faults["poison events"] += POISON_PER_ROUND
    result.faults["sign requests by another spelling"] += 2
    result.faults["sign requests for another object's rule"] += 1


def _parked(org: ChaosOrg) -> int:
    conn = sqlite3.connect(str(org.data_dir / "outbox.sqlite"), timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM parked_events").fetchone()[0])
    finally:
        conn.close()


async def test_burst_with_poison_events_and_id_spellings_signs_every_record_once(
    org: ChaosOrg, rng: random.Random
) -> None:
    ids = await org.create_opportunities(max(6, org.scale.records // 3))
    result = ChaosResult("poison events and id spellings", len(ids))
    started = time.monotonic()
    daemon = await org.start_daemon()
    half = len(ids) // 2
    await org.burst(ids[:half], rng)
    await _poison(org, rng, ids, result)
    await asyncio.sleep(rng.uniform(0.1, 1.0))
    await daemon.kill()  # the restart resumes from the committed position: it must not stall on the poison
    result.kills += 1
    daemon = await org.start_daemon()
    await _poison(org, rng, ids, result)
    await org.burst(ids[half:], rng)
    result = await _finish(org, result, ids, daemon, started)
    print(result.row(), result.notes)
    result.assert_invariant()
    parked = await asyncio.to_thread(_parked, org)
    # Each round's poison events are parked once; a round cut by the kill may not have been read yet
    # and is parked after the restart, never twice.
    assert parked == result.faults["poison events"], parked
