"""A requested reconciliation queried before the stream confirmed where it starts is queried once more.

Unit test with a faked REST (it counts the queries and answers no records); the outbox is the real SQLite
one. The path through a real daemon, emulator and Pub/Sub stream is tests/chaos/test_chaos_outage.py's
`test_record_moved_between_the_startup_reconciliation_and_the_subscription_is_signed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sfsign.config import load_rules
from sfsign.governor import ApiGovernor
from sfsign.outbox import Outbox
from sfsign.reconcile import Reconciler
from sfsign.salesforce.rest import QueryPage

REPO = Path(__file__).resolve().parents[3]


class FakeRest:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def query_page(self, soql: str | None = None, *, next_records_url: str | None = None) -> QueryPage:
        assert soql is not None
        self.queries.append(soql)
        return QueryPage(records=[], total_size=0, next_records_url=None)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _opportunity_queries(rest: FakeRest) -> int:
    return sum(" FROM Opportunity " in q for q in rest.queries)


async def test_an_object_queried_before_its_stream_started_is_queried_again_after_with_fake_rest(
    tmp_path: Path,
) -> None:
    rules = load_rules(REPO / "config" / "rules.yaml")
    outbox, rest, stop = Outbox(tmp_path / "outbox.sqlite"), FakeRest(), asyncio.Event()
    await outbox.open()
    unconfirmed = {"Opportunity"}
    reconciler = Reconciler(
        outbox, cast(Any, rest), rules=lambda: rules, org_id="00D000000000001AAA", wake=lambda: None,
        subscribed=lambda: True, interval_s=0, governor=ApiGovernor(lambda: (0, 100_000), threshold=0.8),
        stop=stop, unconfirmed=lambda: set(unconfirmed),
    )
    running = asyncio.create_task(reconciler.run())
    try:
        await reconciler.request(["Opportunity", "Quote"])
        await _until(lambda: _opportunity_queries(rest) == 1, "the first query, at once")
        await _until(lambda: " FROM Quote " in " ".join(rest.queries), "Quote's query")
        # Quote's stream is confirmed: its request is done; Opportunity's waits, queried once, not per tick
        await asyncio.sleep(2.5)  # more than two of the loop's looks (UNCONFIRMED_POLL_S): the scenario
        assert _opportunity_queries(rest) == 1
        assert list(await outbox.pending_reconciles()) == ["Opportunity"]
        unconfirmed.clear()  # the stream answered: where it starts is known
        await _until(lambda: _opportunity_queries(rest) == 2, "the second query, once confirmed")
        for _ in range(100):
            if not await outbox.pending_reconciles():
                break
            await asyncio.sleep(0.01)
        assert await outbox.pending_reconciles() == {}
        assert _opportunity_queries(rest) == 2
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await outbox.close()
