"""Intake turns the stream's gaps (channels resubscribed from -1) into persisted reconciliation requests.

Unit tests with a faked stream and a faked reconciler (named as such); the path through a real daemon,
emulator and outbox is tests/chaos/test_chaos_faults.py's torn-before-the-first-commit scenario.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from typing import Any, cast

from sfsign.intake import GAP_RECONCILE_MARGIN_S, Health, Intake

CDC = "/data/OpportunityChangeEvent"
QUOTE = "/data/QuoteChangeEvent"
PE = "/event/Sign_Request__e"


class FakeStream:
    def __init__(self) -> None:
        self.gaps: list[str] = []

    def take_gaps(self) -> list[str]:
        gaps, self.gaps = self.gaps, []
        return gaps


class FakeReconciler:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[list[str]] = []
        self.since: list[datetime | None] = []

    async def request(self, sobjects: list[str], since: datetime | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        self.requests.append(sobjects)
        self.since.append(since)


def _intake(stream: FakeStream, reconciler: FakeReconciler) -> Intake:
    nothing = cast(Any, None)
    return Intake(nothing, nothing, cast(Any, stream), rules=lambda: nothing, org_id="00D000000000001AAA",
                  reconciler=cast(Any, reconciler), wake=lambda: None, health=Health(), metrics=nothing,
                  ready=asyncio.Event(), max_attempts=5, stop=asyncio.Event())


async def test_gaps_of_change_event_channels_request_their_objects_with_fake_stream_and_reconciler() -> None:
    stream, reconciler = FakeStream(), FakeReconciler()
    intake = _intake(stream, reconciler)
    await intake._reconcile_gaps()
    assert reconciler.requests == []  # no gap, no request
    stream.gaps = [QUOTE, PE, CDC]  # a platform-event channel resubscribes from -2: never a gap to reconcile
    await intake._reconcile_gaps()
    await intake._reconcile_gaps()
    assert reconciler.requests == [["Opportunity", "Quote"]]
    # only what changed since this process started (with a margin for Salesforce's clock): the backlog from
    # before sfsign ran is not the gap's
    started = datetime.fromtimestamp(intake.health.started_at, UTC)
    assert [started - since for since in reconciler.since if since] == [
        datetime.fromtimestamp(GAP_RECONCILE_MARGIN_S, UTC) - datetime.fromtimestamp(0, UTC)]


async def test_a_gap_whose_request_cannot_be_persisted_is_requested_again_with_fake_stream_and_reconciler() -> None:
    """The stream names a gap once: if the outbox is busy when intake asks, the gap must not be forgotten."""
    stream, reconciler = FakeStream(), FakeReconciler(failures=1)
    intake = _intake(stream, reconciler)
    stream.gaps = [CDC]
    await intake._reconcile_gaps()
    assert reconciler.requests == [] and stream.gaps == []
    await intake._reconcile_gaps()
    assert reconciler.requests == [["Opportunity"]]
