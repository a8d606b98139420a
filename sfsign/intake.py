"""Intake: streaming events → trigger decisions → jobs in the outbox.

Entry point: `Intake.run()`, which reads the stream one event at a time and keeps `Health` (and the
`ready` event) in step with the subscription. An event is acknowledged to Salesforce only through the
replay id, which moves in the same outbox commit as the event's jobs; the stream is not read while an
event fails, so events stay in order and none is skipped. Knobs (Settings):

- `intake_max_attempts` (SFSIGN_INTAKE_MAX_ATTEMPTS, 5): attempts at an event that fails while
  Salesforce answers before it is parked (kept with its reason, its objects reconciled) and intake
  moves on; an outage or a busy outbox is waited out and not counted;
- `intake_stuck_after_s` (read by the daemon's /readyz from `Health.intake_failing_since`);
- retry delays: `RETRY_FIRST_S` doubling up to `RETRY_CAP_S`.

A channel without a stored position after the first subscription is reconciled at start (see
`_reconcile_channels_without_position`); a replay id past the retention window is dropped after its
objects' reconciliation is persisted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules
from sfsign.ops.metrics import Metrics
from sfsign.outbox import AuditEvent, CommitResult, NewJob, Outbox, OutboxStore
from sfsign.reconcile import Reconciler, current_values_query, known_org
from sfsign.record_types import REISSUE_ANY_RULE_SOURCE, REISSUE_SOURCES
from sfsign.salesforce.errors import AuthError, SalesforceError
from sfsign.salesforce.event_stream import EventStream, complete_message, position_of
from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, ReplayId, parse_event, replay_label
from sfsign.salesforce.names import ACTION_VOID, AUDIT_ALREADY_SIGNED, AUDIT_REFUSED, Record, SignRequest
from sfsign.salesforce.record_fields import already_signed_note, note_fields
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import ReplayIdInvalid
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.triggers import (
    Decision,
    EnvelopeRequest,
    decide_change,
    decide_current_state,
    decide_sign_request,
    quiet_update,
    reissue_rule,
)

log = structlog.get_logger("sfsign.intake")

RETRY_FIRST_S = 0.5
RETRY_CAP_S = 30.0
WATCH_INTERVAL_S = 0.05
# A stream gap's reconciliation reaches this far before the process start (Salesforce's clock may differ).
GAP_RECONCILE_MARGIN_S = 120.0


@dataclass
class Health:
    """What /readyz and `sfsign demo` need to know about a running daemon."""

    started_at: float = field(default_factory=time.time)
    authenticated: bool = False
    subscribed: bool = False
    events_received: int = 0
    last_event_at: float | None = None
    org_id: str | None = None
    instance_url: str | None = None
    # channel -> commit time (epoch s) of the last event received: the replay lag gauge
    last_event_commit: dict[str, float] = field(default_factory=dict)
    # The event intake is working on while it fails: since when, which one, why (None while none fails)
    intake_failing_since: float | None = None
    intake_failing_event: str | None = None
    intake_last_error: str | None = None

    def intake_stuck(self, after_s: float) -> str | None:
        """Why intake is stuck, when the event it works on has been failing for `after_s` or longer."""
        since = self.intake_failing_since
        stalled = None if since is None else max(0.0, time.time() - since)
        if stalled is None or stalled < after_s:
            return None
        return (f"intake stuck: the event {self.intake_failing_event} has been failing for {stalled:.0f} s "
                f"and the replay id does not move ({self.intake_last_error})")


class Intake:
    """Turns each event of the stream into outbox jobs, in order, exactly once per trigger."""

    def __init__(
        self, outbox: Outbox, rest: SalesforceRest, stream: EventStream, *, rules: Callable[[], Rules],
        org_id: str | None, reconciler: Reconciler, wake: Callable[[], None], health: Health, metrics: Metrics,
        ready: asyncio.Event, max_attempts: int, stop: asyncio.Event, clock: Clock | None = None,
    ) -> None:
        self.outbox = outbox
        self.rest = rest
        self.stream = stream
        self.rules = rules  # read at each event: a reload applies to the next one
        self.org_id = org_id
        self.reconciler = reconciler
        self.wake = wake
        self.health = health
        self.metrics = metrics
        self.ready = ready
        self.max_attempts = max_attempts
        self.stop = stop
        # "Now" of a rep's Void or Resend: the envelopes' clock, so their timeline, due times and mails
        # agree with the reminders and expiry (`EnvelopeDue`), which a test moves by days.
        self.clock = clock or SystemClock()
        self._gaps: set[str] = set()  # channels resubscribed from -1 whose reconciliation is not requested yet

    async def run(self) -> None:
        await self._reconcile_channels_without_position()
        await asyncio.gather(self._read(), self._watch_stream())

    def unconfirmed_objects(self) -> set[str]:
        """The objects whose change-event stream may not have started yet (`EventStream.unconfirmed_starts`)."""
        return {o for c in self.stream.unconfirmed_starts if (o := _channel_object(c))}

    async def _read(self) -> None:
        while not self.stop.is_set():
            try:
                async for message in self.stream.messages(header_first=True):  # `_handle` completes them
                    if not await self._handle_until_done(message):
                        return  # stopping: the event was not committed and is replayed on the next start
            except ReplayIdInvalid as exc:
                log.error(
                    "stored replay id is outside the retention window; subscribing from new events "
                    "and reconciling",
                    channel=exc.channel,
                    replay_id=replay_label(exc.replay_id),
                )
                sobject = _channel_object(exc.channel)
                if sobject:
                    await self.reconciler.request([sobject])  # persisted before the position is dropped
                await self.outbox.reset_replay(exc.channel)
                self.stream.reset_replay(exc.channel)

    async def _handle_until_done(self, message: dict[str, Any]) -> bool:
        """Handle one event, retrying with backoff while it fails; park it when it keeps failing while
        Salesforce answers.

        A failure counts as an attempt only when it is the event's own: a permanent error, a bug, or a
        transient Salesforce error while a probe call (`/limits`) shows that Salesforce does answer. An
        outage (the probe fails too) and a busy outbox are waited out without counting, so they can never
        park good events. After `max_attempts` counted attempts the event is parked, its objects are
        reconciled, and the replay id moves past it. Returns False if the daemon is stopping.
        """
        delay = RETRY_FIRST_S
        attempts = 0
        cause = ""  # the last failure of the event's own handling (not of parking it)
        try:
            while not self.stop.is_set():
                parking = attempts >= self.max_attempts
                try:
                    if parking:
                        await self._park(message, f"failed {attempts} times while Salesforce answered: {cause}",
                                         attempts)
                    else:
                        await self._handle(message)
                    return True
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if not parking:
                        cause = error
                    self._failing(message, error)
                    if not parking and await self._event_is_at_fault(exc):
                        attempts += 1
                        if attempts >= self.max_attempts:
                            continue  # park it now
                    log.error("event parking failed; retrying" if parking else "event handling failed; retrying",
                              channel=message.get("channel"), replay_id=_replay_id_of(message), error=error,
                              attempts=attempts, max_attempts=self.max_attempts, retry_in_s=delay)
                await wait_any(self.stop, within_s=delay)
                delay = min(delay * 2, RETRY_CAP_S)
            return False
        finally:
            self.health.intake_failing_since = None
            self.health.intake_failing_event = None
            self.health.intake_last_error = None

    def _failing(self, message: dict[str, Any], error: str) -> None:
        """Show the failing event on /readyz (since when it fails, which one, why)."""
        if self.health.intake_failing_since is None:
            self.health.intake_failing_since = time.time()
            self.health.intake_failing_event = _event_label(message)
        self.health.intake_last_error = error[:300]

    async def _event_is_at_fault(self, exc: Exception) -> bool:
        """Whether this failure counts towards parking the event (see `_handle_until_done`)."""
        if isinstance(exc, sqlite3.OperationalError):
            return False  # the outbox is busy, locked or full: no event is to blame
        if isinstance(exc, AuthError):
            return False  # the login, not the event
        if isinstance(exc, SalesforceError) and exc.transient:
            try:
                await self.rest.limits()
            except Exception:
                return False  # Salesforce does not answer: an outage, waited out
        return True

    async def _park(self, message: dict[str, Any], reason: str, attempts: int) -> None:
        """Give up on an event without losing what it asked for: reconcile its objects (persisted
        first), then keep the event with its reason and move the replay id past it, in one commit."""
        complete_message(message)  # the whole event is kept, never a header-only one
        channel = str(message.get("channel") or "?")
        objects, replay_id = self._event_objects(message)
        if objects:
            await self.reconciler.request(objects)
        parked = await self.outbox.park_event(channel, replay_id, message, reason, attempts)
        self.metrics.events_parked.labels(channel).inc()
        log.error("event parked: intake moves on; `sfsign status` lists it", channel=channel,
                  replay_id=_shown(replay_id), parked_id=parked.id, reason=reason, attempts=attempts,
                  reconciling=objects)

    def _event_objects(self, message: dict[str, Any]) -> tuple[list[str], ReplayId | None]:
        """The objects whose records a (failed or malformed) event may have been about, and its replay id."""
        channel = str(message.get("channel") or "")
        try:
            event = parse_event(message)
        except MalformedEvent as exc:
            entity = exc.entity or _channel_object(exc.channel or channel)
            replay_id = exc.replay_id
        else:
            entity = event.entity if isinstance(event, ChangeEvent) else _channel_object(channel)
            replay_id = event.replay_id
        objects = [entity] if entity and self.rules().for_object(entity) else []
        return objects, replay_id

    async def _watch_stream(self) -> None:
        """Keep `health` and `ready` in step with the stream (readiness for ops and the demo)."""
        channels = set(self.stream.channels)
        while not self.stop.is_set():
            subscribed = self.stream.connected and channels <= set(self.stream.subscribed_replay)
            if subscribed != self.health.subscribed:
                self.metrics.stream_connected.set(1 if subscribed else 0)
                if subscribed:
                    log.info("ready: subscribed", channels=sorted(channels))
                else:
                    self.metrics.stream_disconnects.inc()
                    log.warning("streaming disconnected; reconnecting", channels=sorted(channels))
            self.health.subscribed = subscribed
            if subscribed and not self.ready.is_set():
                self.ready.set()
                await self.outbox.mark_first_subscribed()
            await self._reconcile_gaps()
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def _reconcile_gaps(self) -> None:
        """Reconcile the objects of channels the stream had to resubscribe from -1 (see
        `StreamClient.take_gaps`): the events the lost session held, or that were published before the new
        one, are never delivered. Requested after the new subscription is live, so a record that moves
        after the query arrives on the stream; a request that cannot be persisted yet is tried again."""
        self._gaps.update(self.stream.take_gaps())
        objects = sorted({o for c in self._gaps if (o := _channel_object(c))})
        if not objects:
            self._gaps.clear()
            return
        # Records changed before this process started are not the gap's: a channel without a position at
        # start was reconciled then, and what sat in a trigger state before sfsign ever ran is the operator's.
        since = datetime.fromtimestamp(self.health.started_at - GAP_RECONCILE_MARGIN_S, UTC)
        try:
            await self.reconciler.request(objects, since)
        except Exception as exc:  # the outbox is busy: the next tick asks again
            log.warning("could not request the reconciliation of a stream gap; retrying", objects=objects,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            return
        log.info("resubscribed without a replay position: reconciling what the lost session may have held",
                 channels=sorted(self._gaps), objects=objects, since=since.isoformat())
        self._gaps.clear()

    async def _reconcile_channels_without_position(self) -> None:
        """A change-event channel without a stored replay id subscribes from -1 (new events only). On the
        very first start that is the intent; on a later one it would skip what was published while sfsign
        was down on a channel that never had an event, so the objects of such channels are reconciled
        instead. (Platform-event channels without a position subscribe from -2 instead: a
        `Sign_Request__e` carries no state to query, so every retained one is read, deduped by EventUuid.)"""
        if await self.outbox.first_subscribed_at() is None:
            return
        fresh = [c for c in self.stream.channels if self.stream.stored_position(c) is None]
        if switched := [c for c in fresh if self.outbox.committed_replay_id(c) is not None]:
            log.warning("the stored replay positions are the other transport's: these channels start afresh and "
                        "their objects are reconciled once (SFSIGN_TRANSPORT sets the transport; see "
                        "docs/streaming.md)", channels=switched)
        objects = [o for c in fresh if (o := _channel_object(c))]  # another transport's position is none here
        if objects:
            log.info("no replay position for these objects' channels yet: reconciling them", objects=objects)
            await self.reconciler.request(objects)

    async def _handle(self, message: dict[str, Any]) -> None:
        if (replay_id := position_of(message)) is not None:  # a keepalive's position: no event to count
            await self.outbox.pass_event(str(message.get("channel", "")), replay_id)
            return
        self.health.events_received += 1
        self.health.last_event_at = time.time()
        channel = str(message.get("channel", ""))
        self.metrics.events_received.labels(channel).inc()
        if (quiet := quiet_update(message, self.rules())) is not None:  # asks for nothing: nothing to build
            if quiet.commit_timestamp_ms is not None:
                self.health.last_event_commit[quiet.channel] = quiet.commit_timestamp_ms / 1000
            await self.outbox.pass_event(quiet.channel, quiet.replay_id)
            return
        complete_message(message)  # a Pub/Sub change event may have come with its header only
        try:
            event = parse_event(message)
            committed = _commit_time(event)
            if committed is not None:
                self.health.last_event_commit[event.channel] = committed
        except MalformedEvent as exc:
            await self._park(message, f"malformed: {exc.reason}", attempts=1)
            return
        decision = await self._decide(event)
        if decision is None:
            log.info("event ignored", channel=channel, replay_id=_shown(getattr(event, "replay_id", None)))
            decision = Decision()
        if decision.reconcile:
            await self.reconciler.request(decision.reconcile)
        for request in decision.envelope_requests:
            await self._envelope_request(request, decision)
        result = await self._commit(event, decision)
        for job in result.created:
            self.metrics.jobs_created.labels(job.rule, job.source).inc()
            log.info("job queued", transaction_id=job.transaction_id, record_id=job.record_id, rule=job.rule,
                     source=job.source)
        for dup, why in result.duplicates:
            log.info("duplicate trigger ignored", transaction_id=dup.transaction_id, record_id=dup.record_id,
                     reason=why)
        for why in decision.ignored:
            log.warning("event not acted upon", channel=channel, replay_id=_shown(event.replay_id), reason=why)
        if result.created:
            self.wake()

    async def _commit(self, event: ChangeEvent | PlatformEvent, decision: Decision) -> CommitResult:
        """Commit what the event asks for with its replay id; the usual trigger in one look-and-commit call."""
        if decision.jobs and (result := await self.outbox.commit_unless_signed(
                event.channel, event.replay_id, decision.jobs, decision.refused,
                check=[job for job in decision.jobs if job.source not in REISSUE_SOURCES])) is not None:
            return result
        jobs, told = await self._tell_already_signed(decision.jobs)
        if not (jobs or told or decision.refused or decision.reconcile or decision.envelope_requests):
            await self.outbox.pass_event(event.channel, event.replay_id)  # it asks for nothing
            return CommitResult([], [])
        return await self.outbox.commit_event(event.channel, event.replay_id, jobs, [*decision.refused, *told])

    async def _decide(self, event: ChangeEvent | PlatformEvent | Any) -> Decision | None:
        """What the rules make of a parsed event; None for an event no rule is about."""
        rules, org_id = self.rules(), known_org(self.org_id)
        if isinstance(event, ChangeEvent):
            decision = decide_change(event, rules, org_id)
            for sobject, record_id in decision.reread:
                # A failure raises: the replay id must not move past a gap that was not resolved.
                values = await self._current_values(sobject, [record_id])
                for rid, row in values.items():
                    decision.jobs.extend(
                        decide_current_state(sobject, rid, row, rules, org_id, f"gap:{event.transaction_key}")
                    )
            return decision
        if isinstance(event, PlatformEvent) and event.name == SignRequest.NAME:
            decision = decide_sign_request(event, rules, org_id)
            await self._choose_reissue_rules(decision, rules)
            return decision
        return None

    async def _envelope_request(self, request: EnvelopeRequest, decision: Decision) -> None:
        """A rep's Void or Resend, on every envelope of the record out for signature (of the named rule). With
        none, it is refused as other requests are: a note on the record (written before the event commits, so
        a failed write is retried with the event) and a `refused` event in its audit trail. Done again for a
        replayed event, it changes nothing: a voided envelope stays as it is, a Resend finds its own request
        on the timeline."""
        live = await self.outbox.live_envelopes(request.sobject, request.record_id, request.rule)
        if not live:
            of_rule = f" by rule {request.rule!r}" if request.rule else ""
            undone = "withdrawn" if request.action == ACTION_VOID else "sent again"
            why = (f"this {request.sobject} has no document out for signature{of_rule}, so nothing was {undone}")
            try:
                await self.rest.update(request.sobject, request.record_id,
                                       note_fields(f"{request.action} refused: {why}."))
            except SalesforceError as exc:
                if exc.transient:
                    raise
                log.error("could not write the refusal on the record", record_id=request.record_id,
                          error_code=exc.error_code)
            decision.ignored.append(f"{request.action}: {why}")
            decision.refused.append(replace(request.refusal, detail=request.refusal.detail + why))
            return
        actor = f"rep {request.requested_by}" if request.requested_by else "rep"
        now = self.clock.now()
        for envelope in live:
            if request.action == ACTION_VOID:
                await self.outbox.void(envelope.transaction_id, request.reason or "", now, actor)
                log.info("envelope voided at the rep's request", transaction_id=envelope.transaction_id,
                         record_id=request.record_id)
            else:
                again = await self.outbox.resend_all(envelope.transaction_id, now, actor, request.request)
                log.info("invitations sent again at the rep's request", transaction_id=envelope.transaction_id,
                         record_id=request.record_id, recipients=again)

    async def _choose_reissue_rules(self, decision: Decision, rules: Rules) -> None:
        """A Re-issue that named no rule takes the rule of the record's signed document (`reissue_rule`); one
        that cannot be told which is refused, with a note on the record (written before the event commits,
        so a failed write is retried with the event) and a `refused` event in its audit trail."""
        kept: list[NewJob] = []
        for job in decision.jobs:
            chosen = await self._reissue_rule(job, rules)
            if isinstance(chosen, NewJob):
                kept.append(chosen)
                continue
            try:
                await self.rest.update(job.sobject, job.record_id, note_fields(chosen))
            except SalesforceError as exc:
                if exc.transient:
                    raise
                log.error("could not write the Re-issue refusal on the record", record_id=job.record_id,
                          error_code=exc.error_code)
            decision.ignored.append(chosen)
            decision.refused.append(AuditEvent(
                transaction_id=job.transaction_id, sobject=job.sobject, record_id=job.record_id,
                event_type=AUDIT_REFUSED, actor=job.requested_by or "sfsign",
                detail=f"{SignRequest.NAME} refused: {chosen}"))
        decision.jobs = kept

    async def _reissue_rule(self, job: NewJob, rules: Rules) -> NewJob | str:
        """`reissue_rule` for a Re-issue naming no rule, from the outbox; a replayed event whose job exists
        keeps its job as it is, to meet it as a duplicate."""
        if job.source != REISSUE_ANY_RULE_SOURCE:
            return job
        names = [rule.name for rule in rules.for_object(job.sobject)]
        signed = await self.outbox.call(lambda store: _signed_rules(store, job, names))
        return job if signed is None else reissue_rule(job, signed)

    async def _tell_already_signed(self, jobs: list[NewJob]) -> tuple[list[NewJob], list[AuditEvent]]:
        """The rule for a trigger on a record already signed (stage moved away and back, a second
        "Send for signature"): it signs nothing, and the rep is told so on the record (`Sign_Error__c`,
        while the status stays `Signed`) and in its audit trail, with the way to a new version: Re-issue.

        The note is written before the event commits, so a failed write is retried with the event; a
        replayed event whose job exists is an ordinary duplicate and says nothing twice.
        """
        keep: list[NewJob] = []
        told: list[AuditEvent] = []
        for job in jobs:
            signed = None
            if job.source not in REISSUE_SOURCES:
                signed = await self.outbox.signed_unless_known(job)
            if signed is None:
                keep.append(job)
                continue
            note = already_signed_note(signed.signed_at, signed.transaction_id)
            try:
                await self.rest.update(job.sobject, job.record_id, {Record.ERROR: note})
            except SalesforceError as exc:
                if exc.transient:
                    raise  # the event is handled again, note and all
                log.error("could not write the already-signed note on the record", record_id=job.record_id,
                          error_code=exc.error_code)
            detail = f"{job.source} trigger signed nothing: {note}"
            if job.reason:
                detail += f" Reason given: {job.reason}"
            told.append(AuditEvent(transaction_id=signed.transaction_id, sobject=job.sobject, record_id=job.record_id,
                                   event_type=AUDIT_ALREADY_SIGNED, actor=job.requested_by or "sfsign", detail=detail))
            log.info("trigger for a record already signed: nothing signed, the record says so",
                     record_id=job.record_id, rule=job.rule, signed_transaction_id=signed.transaction_id,
                     source=job.source)
        return keep, told

    async def _current_values(self, sobject: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The watched fields of records a gap event names: gap events carry no values."""
        fields = [r.field for r in self.rules().for_object(sobject)]
        rows = await self.rest.query(current_values_query(sobject, fields, ids))
        return {str(r["Id"]): r for r in rows}


def _signed_rules(store: OutboxStore, job: NewJob, names: list[str]) -> list[str] | None:
    """The rules (of `names`, in order) with a current signed document of the job's record; None when the job
    exists already (a replayed event)."""
    if store.has_transaction(job.transaction_id):
        return None
    return [name for name in names if store.signed_job(job.sobject, job.record_id, name) is not None]


def _commit_time(event: ChangeEvent | PlatformEvent | Any) -> float | None:
    """When Salesforce committed the event (epoch s): CDC commitTimestamp, platform events' CreatedDate."""
    if isinstance(event, ChangeEvent) and event.commit_timestamp_ms is not None:
        return event.commit_timestamp_ms / 1000
    if isinstance(event, PlatformEvent) and event.created_date is not None:
        return event.created_date.timestamp()
    return None


def _replay_id_of(message: dict[str, Any]) -> Any:
    """The replay id of a raw message, as it came (it may be what made the message malformed)."""
    data = message.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    return _shown(event.get("replayId")) if isinstance(event, dict) else None


def _shown(replay_id: Any) -> Any:
    """A replay id for a log line: Pub/Sub's bytes in hex, anything else as it is."""
    return replay_label(replay_id) if isinstance(replay_id, bytes) else replay_id


def _event_label(message: dict[str, Any]) -> str:
    """`<channel> replay id <n>` of a raw message, for /readyz."""
    return f"{message.get('channel')} replay id {_replay_id_of(message)}"


def _channel_object(channel: str) -> str | None:
    if channel.startswith("/data/") and channel.endswith("ChangeEvent"):
        return channel.removeprefix("/data/").removesuffix("ChangeEvent")
    return None
