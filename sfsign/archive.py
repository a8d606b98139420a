"""Archive-timestamp renewal (`sfsign ltv-refresh`, also run by the daemon on a schedule).

A B-LTA file stays verifiable as long as its newest document timestamp can be validated, that is
until the timestamp authority's certificate expires. Before then a new archive timestamp must be
added over the whole file (with fresh revocation data for the previous one). Which files are due is
asked of Salesforce, not of the local outbox: documents live for decades, the outbox only for its
retention period. `Sign_Archive_Due__c` on the record holds the expiry of the newest timestamp.

Each due record becomes one outbox job that starts in `ltv_pending`, so the worker's ordinary
upgrade path (download, timestamp, upload as a new version of the same File, write back) does the
work, with its retries and its upload guard. The job's transaction id is derived from the record's
transaction id and the due date it renews, so a second scan before the first job finishes, or a
crash, never adds a second archive timestamp for the same due date.

Entry points: `ArchiveScheduler.run()` in the daemon, `ltv_refresh_once()` for `sfsign ltv-refresh`.
Knobs (Settings): `ltv_refresh_interval_h` (SFSIGN_LTV_REFRESH_INTERVAL_H, 24 h; 0: the daemon does not
schedule it), `ltv_refresh_within_days` (SFSIGN_LTV_REFRESH_WITHIN_DAYS, 90 days before expiry); while
the org is near its daily API allocation the scan waits (renewals have days of margin), and after a
failed scan it is tried again within `RETRY_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules, Settings
from sfsign.governor import ApiGovernor
from sfsign.outbox import ARCHIVE_SOURCE, Outbox
from sfsign.salesforce.names import Record
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.soql import soql_datetime, validate_api_name, validate_id

log = structlog.get_logger("sfsign.archive")

_NAMESPACE = uuid.UUID("0c1b5c38-5d0c-4b57-a1c2-6a1e6f0f2b11")
SOURCE = ARCHIVE_SOURCE  # the outbox keeps these jobs out of the one-job-per-record rule
RETRY_AFTER_S = 300.0
CONSTRAINED_WAIT_S = 900.0


def archive_transaction_id(transaction_id: str, due: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{transaction_id}/{due}"))


def due_query(sobject: str, before: datetime) -> str:
    validate_api_name(sobject)
    return (
        f"SELECT Id, {Record.TRANSACTION_ID}, {Record.DOCUMENT_ID}, {Record.ARCHIVE_DUE} FROM {sobject} "
        f"WHERE {Record.LEVEL} = 'B-LTA' AND {Record.ARCHIVE_DUE} != null "
        f"AND {Record.ARCHIVE_DUE} < {soql_datetime(before)} ORDER BY {Record.ARCHIVE_DUE}"
    )


def latest_version_query(document_id: str) -> str:
    return f"SELECT LatestPublishedVersionId FROM ContentDocument WHERE Id = '{validate_id(document_id)}'"


async def queue_due_archive_timestamps(
    rest: SalesforceRest, outbox: Outbox, rules: Rules, *, within_days: float, now: datetime | None = None
) -> int:
    """Queue one archive-timestamp job per B-LTA record due within `within_days`; return how many."""
    before = (now or datetime.now(UTC)) + timedelta(days=within_days)
    created = 0
    for sobject in sorted({r.object for r in rules.rules}):
        rule = next(
            (r for r in rules.for_object(sobject) if rules.profiles[r.profile].level == "B-LTA"), None
        )
        if rule is None:
            continue  # no B-LTA profile for this object: nothing of ours to renew
        for row in await rest.query(due_query(sobject, before)):
            tx, document_id = row.get(Record.TRANSACTION_ID), row.get(Record.DOCUMENT_ID)
            if not tx or not document_id:
                continue
            docs = await rest.query(latest_version_query(str(document_id)))
            if not docs:
                log.warning("signed file no longer exists; cannot renew its archive timestamp",
                            record_id=row["Id"], content_document_id=document_id)
                continue
            job_tx = archive_transaction_id(str(tx), str(row[Record.ARCHIVE_DUE]))
            added = await outbox.add_archive_job(
                transaction_id=job_tx,
                rule=rule.name,
                sobject=sobject,
                record_id=str(row["Id"]),
                content_document_id=str(document_id),
                content_version_id=str(docs[0]["LatestPublishedVersionId"]),
                source=SOURCE,
            )
            if added:
                created += 1
                log.info("archive timestamp due; queued", record_id=row["Id"], due=row[Record.ARCHIVE_DUE],
                         transaction_id=job_tx)
    return created


class ArchiveScheduler:
    """Renews archive timestamps that come due: one scan at start, then one every interval."""

    def __init__(
        self, rest: SalesforceRest, outbox: Outbox, *, rules: Callable[[], Rules], interval_h: float,
        within_days: float, wake: Callable[[], None], governor: ApiGovernor, stop: asyncio.Event,
    ) -> None:
        self.rest = rest
        self.outbox = outbox
        self.rules = rules  # read at each scan: a reload applies to the next one
        self.interval_s = interval_h * 3600
        self.within_days = within_days
        self.wake = wake
        self.governor = governor
        self.stop = stop

    async def run(self) -> None:
        interval_s = self.interval_s
        while not self.stop.is_set():
            if self.governor.constrained():  # renewals can wait for the API budget (days of margin)
                await wait_any(self.stop, within_s=min(interval_s, CONSTRAINED_WAIT_S))
                continue
            try:
                queued = await queue_due_archive_timestamps(
                    self.rest, self.outbox, self.rules(), within_days=self.within_days
                )
                if queued:
                    self.wake()
                wait_s = interval_s
            except Exception as exc:  # Salesforce down: try again soon, never stop the daemon for this
                log.error("archive timestamp scan failed; will retry", error=f"{type(exc).__name__}: {exc}")
                wait_s = min(interval_s, RETRY_AFTER_S)
            await wait_any(self.stop, within_s=wait_s)


async def ltv_refresh_once(settings: Settings, rules: Rules, within_days: float) -> int:
    """`sfsign ltv-refresh`: queue the archive timestamps due within `within_days`; a daemon does the work."""
    from sfsign.connections import SalesforceSession

    outbox = Outbox(settings.data_dir / "outbox.sqlite")
    await outbox.open()
    try:
        async with SalesforceSession(settings) as session:
            return await queue_due_archive_timestamps(session.rest, outbox, rules, within_days=within_days)
    finally:
        await outbox.close()
