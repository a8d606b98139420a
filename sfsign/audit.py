"""The audit relay: the outbox's audit rows, copied to `Signature_Event__c` on the record.

Entry point: `AuditRelay.run()`, one loop the supervisor starts and cancels. Knobs (Settings):

- `audit_flush_s` (SFSIGN_AUDIT_FLUSH_S, 30 s): how often rows not yet sent go out, and how old a row
  must be before this loop sends it (younger rows belong to jobs in flight, whose write-back carries
  them within a second);
- `AUDIT_ROWS_PER_CALL` (1,000): rows per API call, five sObject Collections in one `/composite`;
- the API governor: while the org is near its daily allocation the loop waits twelve intervals, so
  rows ride along with the write-backs instead of costing calls of their own.

Most rows ride along with the worker's write-backs; `lock` keeps the two senders from sending the same
row twice, so the relay owns it and hands it to the worker. At least once: a call whose outcome is
unknown is sent again, so an audit row may rarely appear twice in Salesforce; documents, which must be
exactly once, have their own guard.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from sfsign.aio import wait_any
from sfsign.governor import ApiGovernor
from sfsign.outbox import Outbox, audit_time
from sfsign.salesforce.composite import RecordResult
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import SignatureEvent
from sfsign.salesforce.record_fields import audit_records
from sfsign.salesforce.rest import SalesforceRest

log = structlog.get_logger("sfsign.audit")

AUDIT_ROWS_PER_CALL = 1000
#: The longest wait between two attempts after Salesforce refused a whole call.
RETRY_CAP_S = 300.0


class AuditRelay:
    """Sends the audit rows that no write-back carried, every `audit_flush_s`."""

    def __init__(
        self, outbox: Outbox, rest: SalesforceRest, *, flush_s: float, governor: ApiGovernor,
        stop: asyncio.Event,
    ) -> None:
        self.outbox = outbox
        self.rest = rest
        self.flush_s = flush_s
        self.governor = governor
        self.stop = stop
        #: Held while rows are read and sent: by this loop, and by the worker's write-back that sends rows along.
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        delay = self.flush_s
        while not self.stop.is_set():
            if self.governor.constrained():  # tight budget: audit rows ride along with the write-backs
                await wait_any(self.stop, within_s=self.flush_s * 12)
            async with self.lock:  # the worker's write-back also sends audit rows along: never the same row twice
                rows = await self.outbox.pending_audit(AUDIT_ROWS_PER_CALL,
                                                       older_than=audit_time(time.time() - self.flush_s))
                results = await self._send(rows, delay) if rows else None
            if not rows:
                await wait_any(self.stop, within_s=self.flush_s)
                continue
            if results is None:
                await wait_any(self.stop, within_s=delay)
                delay = min(delay * 2, RETRY_CAP_S)
                continue
            delay = self.flush_s
            await self._mark(rows, results)
            if len(rows) < AUDIT_ROWS_PER_CALL:
                await wait_any(self.stop, within_s=self.flush_s)

    async def _send(self, rows: list[dict[str, Any]], retry_in_s: float) -> list[RecordResult] | None:
        """One call for these rows; None when Salesforce did not take it (every row is tried again)."""
        try:
            return await self.rest.create_records(SignatureEvent.NAME, audit_records(rows))
        except SalesforceError as exc:
            log.warning("audit events not written yet; will retry", error=str(exc), retry_in_s=retry_in_s)
            return None

    async def _mark(self, rows: list[dict[str, Any]], results: list[RecordResult]) -> None:
        """Sent rows are done; a row Salesforce refused on its own is kept as failed, with the reason."""
        sent = [r["id"] for r, res in zip(rows, results, strict=True) if res.success]
        failed = [(r["id"], res.error) for r, res in zip(rows, results, strict=True) if not res.success]
        await self.outbox.mark_audit(sent, "sent")
        for row_id, error in failed:
            log.error("audit event refused by Salesforce", error=str(error))
            await self.outbox.mark_audit([row_id], "failed", str(error))
