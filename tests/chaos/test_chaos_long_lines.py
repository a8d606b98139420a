"""Chaos: opportunities whose line items Salesforce pages, signed under 503s on the line batches and a
kill -9 in the middle of the burst. Beyond the invariant (each record signed once), every signed PDF
holds every line, in order."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import time

import pytest
from chaos_support import REP, REST_PREFIX, ChaosOrg, ChaosResult, Scale, _finish, rest_client

LINES = 450  # three child batches of the emulator's 200
MARKER = re.compile(r"LN\d{5}")
QUERY_MORE = f"{REST_PREFIX}query/01g"  # the later batches (locators), not the query itself

pytestmark = pytest.mark.skipif(subprocess.run(["which", "pdftotext"], capture_output=True).returncode != 0,
                                reason="pdftotext (poppler-utils) is needed to read the signed PDFs")


async def _add_lines(org: ChaosOrg, opp: str) -> None:
    [entry] = await org.control.query("SELECT Id, UnitPrice FROM PricebookEntry WHERE CurrencyIsoCode = 'EUR' "
                                      "ORDER BY Id LIMIT 1")
    await org.control.bulk_create("OpportunityLineItem", [
        {"OpportunityId": opp, "PricebookEntryId": entry["Id"], "Quantity": 1 + n % 3,
         "UnitPrice": entry["UnitPrice"], "SortOrder": n, "Description": f"LN{n:05d}"}
        for n in reversed(range(1, LINES + 1))], user=REP)


async def _markers_of_signed_pdfs(org: ChaosOrg, ids: list[str]) -> dict[str, list[str]]:
    rows = await org.statuses(ids)
    versions = {f["Sign_Transaction_Id__c"]: f["Id"] for f in await org.control.files() if f["IsLatest"]}
    out: dict[str, list[str]] = {}
    async with rest_client(org) as rest:
        for rid in ids:
            pdf = await rest.download_version_data(versions[rows[rid]["Sign_Transaction_Id__c"]])
            text = await asyncio.to_thread(subprocess.run, ["pdftotext", "-", "-"], input=pdf,
                                           capture_output=True, check=True)
            out[rid] = MARKER.findall(text.stdout.decode("utf-8"))
    return out


async def test_paged_line_items_under_503s_and_a_kill_are_signed_complete_and_once(
    org: ChaosOrg, rng: random.Random, scale: Scale
) -> None:
    ids = await org.create_opportunities(max(4, scale.records // 5), tag="Long lines")
    for opp in ids:
        await _add_lines(org, opp)
    result = ChaosResult("paged line items under 503s and kill -9", len(ids))
    await org.control_post("/_control/faults/errors", {
        "prefix": QUERY_MORE, "method": "GET", "status": 503, "errorCode": "SERVER_UNAVAILABLE",
        "message": "Server Unavailable", "count": 3})  # the first three: a rate could miss every call
    started = time.monotonic()
    daemon = await org.start_daemon()
    await org.burst(ids[: len(ids) // 2], rng)
    await asyncio.sleep(rng.uniform(0.1, 1.5))
    await daemon.kill()
    result.kills += 1
    await org.burst(ids[len(ids) // 2:], rng)  # while the daemon is down: back through the replay
    daemon = await org.start_daemon()
    await org.wait_settled(ids, daemon)
    result.faults.update(await org.fault_hits())
    await _finish(org, result, ids, daemon, started)
    print(result.row(), result.notes)
    assert result.faults["503 SERVER_UNAVAILABLE"] >= 1
    result.assert_invariant()
    expected = [f"LN{n:05d}" for n in range(1, LINES + 1)]
    assert all(markers == expected for markers in (await _markers_of_signed_pdfs(org, ids)).values())
