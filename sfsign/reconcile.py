"""Reconciliation: records sitting in a trigger state without a transaction id become jobs.

The stream is how triggers normally arrive; reconciliation is how sfsign catches up with what it did
not see: an overflow event, a stored replay id past the retention window, a parked event, a channel
without a position, or a trigger the stream never delivered. Every job goes through the same outbox
and the same duplicate checks as events, so a reconciliation can never double-sign a record an event
already queued.

Entry points: `Reconciler.run()` in the daemon (requests persisted in the outbox's meta table, plus the
periodic safety net), and `reconcile_once()` for `sfsign reconcile`. Knobs:

- `reconcile_interval_s` (SFSIGN_RECONCILE_INTERVAL_S, 900 s; 0 turns the periodic pass off);
- `PERIODIC_RECONCILE_GRACE_S` (120 s): the periodic pass leaves a record changed this recently (at
  most one interval) to the stream, whose event says who moved the record and when;
- the API governor: near the daily allocation the periodic pass is skipped (requested ones still run).

A requested reconciliation queries once the stream is subscribed, so that what moves after the query
arrives as an event. A Pub/Sub stream started for new events only (LATEST) is subscribed before Salesforce
has fixed where it starts, and says so only with its first answer (an event, or a keepalive within
270 s): an object queried before that is queried once more after it, and its request stays pending (in
SQLite) until then. The first query still runs at once, so what moved while sfsign was down is signed
without waiting for the keepalive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules, Settings
from sfsign.governor import ApiGovernor
from sfsign.outbox import NewJob, Outbox
from sfsign.outbox.meta import reconcile_since
from sfsign.salesforce.names import Record
from sfsign.salesforce.records import record_type_filter
from sfsign.salesforce.rest import QueryPage, SalesforceRest
from sfsign.salesforce.soql import soql_datetime, soql_id_list, soql_quote, validate_api_name, validate_field_path
from sfsign.triggers import decide_current_state

log = structlog.get_logger("sfsign.reconcile")

PERIODIC_RECONCILE_GRACE_S = 120.0
RETRY_CAP_S = 300.0
#: How often a reconciliation waiting for a stream to confirm where it starts looks again (a SQLite read).
UNCONFIRMED_POLL_S = 1.0

#: Called with each query page a reconciliation reads, and whether it is the first page of its query
#: (whose `total_size` announces the query's work): `sfsign reconcile` draws its progress line from it.
PageFn = Callable[[QueryPage, bool], None]


def current_values_query(sobject: str, fields: Iterable[str], ids: Iterable[str]) -> str:
    """The watched fields of records, for a gap event (which carries no values)."""
    names = sorted({*fields, "Id", Record.TRANSACTION_ID})
    return f"SELECT {', '.join(names)} FROM {sobject} WHERE Id IN {soql_id_list(ids)}"


def reconcile_query(
    sobject: str, field: str, values: list[str], since: datetime | None, until: datetime | None = None,
    record_types: list[str] | None = None,
) -> str:
    """Records in a trigger state that sfsign never handled (no transaction id), oldest first; only those of
    the rule's `record_types` when it has them."""
    validate_api_name(sobject)
    validate_field_path(field)
    where = f"{field} IN ({', '.join(soql_quote(v) for v in values)}) AND {Record.TRANSACTION_ID} = null"
    if record_types is not None:
        where += f" AND {record_type_filter(record_types)}"
    if since is not None:
        where += f" AND LastModifiedDate >= {soql_datetime(since)}"
    if until is not None:
        where += f" AND LastModifiedDate < {soql_datetime(until)}"
    return f"SELECT Id, {field}, {Record.TRANSACTION_ID} FROM {sobject} WHERE {where} ORDER BY LastModifiedDate"


def known_org(org_id: str | None) -> str:
    """The org id every transaction id is derived from; a token without one cannot derive any."""
    if not org_id:
        raise RuntimeError("not authenticated")
    return org_id


async def reconcile(
    rest: SalesforceRest, outbox: Outbox, rules: Rules, org_id: str | None, sobjects: list[str],
    since: datetime | None = None, *, until: datetime | None = None, unseen_only: bool = False,
    on_page: PageFn | None = None, on_created: Callable[[], None] | None = None,
) -> int:
    """Queue every record sitting in a trigger state without a transaction id; return how many jobs.

    Pages through the query result and commits each page, so memory stays bounded whatever the org's
    size; `on_created` (the worker's wake-up) is called after each page that queued a job. `until`
    leaves out records changed since then; `unseen_only` leaves out records that ever had a job for the
    rule (see `OutboxStore.records_with_jobs`).
    """
    created = 0
    org = known_org(org_id)
    for sobject in dict.fromkeys(sobjects):
        for rule in rules.for_object(sobject):
            soql = reconcile_query(sobject, rule.field, rule.values, since, until, rule.record_types)
            page, first = await rest.query_page(soql), True
            while True:
                if on_page is not None:
                    on_page(page, first)
                rows = page.records
                if unseen_only and rows:
                    seen = await outbox.records_with_jobs(sobject, rule.name, [str(r["Id"]) for r in rows])
                    rows = [r for r in rows if str(r["Id"]) not in seen]
                jobs: list[NewJob] = []
                for row in rows:
                    record_id = str(row["Id"])
                    jobs.extend(decide_current_state(sobject, record_id, row, rules, org, f"reconcile:{record_id}"))
                result = await outbox.commit_event(None, None, jobs)
                created += len(result.created)
                if result.created and on_created is not None:
                    on_created()
                if not page.next_records_url:
                    break
                page, first = await rest.query_page(next_records_url=page.next_records_url), False
    log.info("reconciliation done", objects=sobjects, jobs_created=created)
    return created


class Reconciler:
    """The daemon's reconciliations: those requested (persisted first, so a crash cannot lose one) and
    the periodic safety net."""

    def __init__(
        self, outbox: Outbox, rest: SalesforceRest, *, rules: Callable[[], Rules], org_id: str | None,
        wake: Callable[[], None], subscribed: Callable[[], bool], interval_s: float, governor: ApiGovernor,
        stop: asyncio.Event, unconfirmed: Callable[[], set[str]] = set,
    ) -> None:
        self.outbox = outbox
        self.rest = rest
        self.rules = rules  # read at each pass: a reload applies to the next one
        self.org_id = org_id
        self.wake = wake
        self.subscribed = subscribed
        self.unconfirmed = unconfirmed  # objects whose stream may not have started yet (Pub/Sub LATEST)
        self.interval_s = interval_s
        self.governor = governor
        self.stop = stop
        self._requested = asyncio.Event()

    async def run(self) -> None:
        loops = [self._requested_loop()]
        if self.interval_s > 0:
            loops.append(self._periodic_loop())
        await asyncio.gather(*loops)

    async def request(self, sobjects: list[str], since: datetime | None = None) -> None:
        """Remember (in SQLite) that these objects need reconciling (only records changed `since`, or all),
        then wake the loop.

        Persisted first, so a crash between an overflow event's commit and the reconciliation
        cannot lose it: the next start runs what is pending.
        """
        now = datetime.now(UTC).isoformat()
        for sobject in sobjects:
            await self.outbox.request_reconcile(sobject, now, since)
        self._requested.set()

    async def _pass(self, sobjects: list[str], since: datetime | None = None, *, until: datetime | None = None,
                    unseen_only: bool = False) -> int:
        return await reconcile(self.rest, self.outbox, self.rules(), self.org_id, sobjects, since, until=until,
                               unseen_only=unseen_only, on_created=self.wake)

    async def _requested_loop(self) -> None:
        delay = 1.0
        # Objects queried while their stream's start was not confirmed yet (see `unconfirmed`), with the
        # request that pass answered: the request stays pending, and is passed again once confirmed.
        early: dict[str, str] = {}
        while not self.stop.is_set():
            self._requested.clear()
            pending = await self.outbox.pending_reconciles()
            # Query only once the subscription is live: a record that moves after the query but before
            # the (re)subscription from -1 would be seen by neither.
            while pending and not self.subscribed() and not self.stop.is_set():
                await wait_any(self.stop, within_s=0.1)
            early = {o: r for o, r in early.items() if pending.get(o) == r}
            failed = False
            for sobject, requested in pending.items():
                unconfirmed = sobject in self.unconfirmed()  # read before the query, never after
                if unconfirmed and early.get(sobject) == requested:
                    continue  # queried already: once more when the stream has started, not on every tick
                try:
                    await self._pass([sobject], reconcile_since(requested))
                except Exception as exc:
                    failed = True
                    log.error("reconciliation failed; will retry", sobject=sobject,
                              error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                    continue
                if unconfirmed:
                    early[sobject] = requested
                    log.info("reconciling again once the stream shows where it starts", sobject=sobject)
                    continue
                early.pop(sobject, None)
                if not await self.outbox.reconcile_done(sobject, requested):
                    self._requested.set()  # asked again during the pass: another pass, after this one's query
            timeout = delay if failed else (UNCONFIRMED_POLL_S if early else None)
            delay = min(delay * 2, RETRY_CAP_S) if failed else 1.0
            await wait_any(self.stop, self._requested, within_s=timeout)

    async def _periodic_loop(self) -> None:
        """The safety net for triggers the stream never delivered, whatever the cause (an event lost
        between Salesforce and us, a CDC entity deselected for a while, a bug): every interval, one paged
        query per rule for records in a trigger state without a transaction id, queued only if the outbox
        has never had a job for them. Records changed within the last interval (two minutes at most) are
        left to the stream, whose event says who moved the record and when; records last changed before
        sfsign first subscribed are left alone (what sat in a trigger state before the install is the
        operator's call: `sfsign reconcile`).
        """
        interval = self.interval_s
        while not self.stop.is_set():
            await wait_any(self.stop, within_s=interval)
            if self.stop.is_set():
                return
            if self.governor.constrained():  # near the daily API allocation: the stream carries on alone
                continue
            first = await self.outbox.first_subscribed_at()
            if first is None:  # never subscribed yet: nothing can have been missed
                continue
            until = datetime.now(UTC) - timedelta(seconds=min(interval, PERIODIC_RECONCILE_GRACE_S))
            try:
                created = await self._pass(sorted({r.object for r in self.rules().rules}),
                                           since=datetime.fromisoformat(first), until=until, unseen_only=True)
            except Exception as exc:  # Salesforce down: the next pass tries again, never stop the daemon
                log.error("periodic reconciliation failed; next pass in one interval", interval_s=interval,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if created:
                log.warning("periodic reconciliation found records whose trigger never arrived on the stream",
                            jobs_created=created)


async def reconcile_once(
    settings: Settings, rules: Rules, since: datetime | None = None, on_page: PageFn | None = None,
) -> int:
    """`sfsign reconcile`: one reconciliation pass from the command line, beside or without a daemon.

    It writes to the same outbox (SQLite allows a second writer; the unique transaction id and the
    duplicate checks make a concurrent daemon harmless); a running daemon picks the jobs up.
    """
    from sfsign.connections import SalesforceSession

    outbox = Outbox(settings.data_dir / "outbox.sqlite")
    await outbox.open()
    try:
        async with SalesforceSession(settings) as session:
            token = await session.login()
            objects = sorted({r.object for r in rules.rules})
            return await reconcile(session.rest, outbox, rules, token.org_id, objects, since=since, on_page=on_page)
    finally:
        await outbox.close()
