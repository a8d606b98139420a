"""The record mirror: each envelope's state on its Opportunity or Quote, and the record owner told of the outcome.

Entry point: `EnvelopeMirror.run()`, a loop the supervisor starts and cancels. What the record shows:

| envelope | Sign_Status__c | also |
|---|---|---|
| sent | `Sent` | Sign_Sent_At__c, Sign_Expires_At__c, Sign_Progress__c "0 of 2 signed", the transaction id |
| viewed, partially signed | `Viewed` | Sign_Progress__c "1 of 2 signed" |
| refused | `Refused` | Sign_Decline_Reason__c (its first 255 characters; the audit row has it whole) |
| expired | `Expired` | the rule's `on_expiry` stage (Opportunity) or status (Quote) |
| voided | `Voided` | |
| completed | (left alone) | Sign_Progress__c "2 of 2 signed"; the job's write-back sets `Completed` with the files |

Which envelopes to write is persisted (`envelopes.version` against `synced_version`, see `outbox.envelope_sync`),
so nothing is lost across a restart, and each pass writes the state the envelope has then (never a stale
one). One pass writes every changed envelope in one call (`writeback.write_back_many`: up to 12 records in
one `/composite`, more as sObject Collections of 200), with the outbox's pending audit rows along (under the
audit relay's lock, as the worker's write-back does), so a refusal's `declined` event reaches the record with
its status. Every record succeeds or fails on its own: a failed one waits (2 s, doubling, at most 15 min,
persisted) and is written again with whatever state its envelope has by then. A record that is gone is
given up on; an expiry whose stage move Salesforce refuses (a validation rule, say) is written without the
move, with a note saying so.

The record owner (a Quote's: its opportunity's owner) gets a custom notification (`SFSIGN_NOTIFICATION_TYPE`)
when the customer declined, when the envelope expired (both once the record shows it), and when it completed
and the job is `done`: once each, the `notified_at` flag set in the outbox. A send whose outcome is
uncertain is not repeated (it may have been delivered; the record shows the outcome in any case). While an
envelope is live, a signer whose address the relay refused puts a note on the record (`Sign_Error__c`) and
their owner is told once (`sfsign.envelope_notices`).

Knobs: `poll_s` (1 s: how soon a change in the outbox reaches the record; `wake()` for sooner); the API
governor: while the org is near its daily allocation a pass waits `CONSTRAINED_WAIT_S`, so one call carries
more records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules
from sfsign.envelope_notices import rejection_note, rejection_notification
from sfsign.governor import ApiGovernor
from sfsign.outbox import Outbox, audit_time
from sfsign.outbox.envelope_models import Envelope, MirrorView, Recipient
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import (
    STATUS_EXPIRED,
    STATUS_REFUSED,
    STATUS_SENT,
    STATUS_VIEWED,
    STATUS_VOIDED,
    Record,
)
from sfsign.salesforce.record_fields import (
    EXPIRY_FIELDS,
    audit_records,
    envelope_fields,
    expiry_fields,
    note_fields,
    owner_of,
    owner_query,
    progress_text,
)
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.writeback import WriteBack, write_back_many
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.signing.model import EnvelopeState

log = structlog.get_logger("sfsign.envelope_mirror")

POLL_S = 1.0
BATCH_MAX = 200
CONSTRAINED_WAIT_S = 60.0
RETRY_FIRST_S = 2.0
RETRY_CAP_S = 900.0
#: The record is gone (deleted, or never was): nothing can show the envelope, so it is not written again.
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND", "INVALID_ID_FIELD",
                        "MALFORMED_ID"})

#: Envelope state → Sign_Status__c; None: the mirror leaves the status alone (the job writes `Completed`).
STATUS_OF: dict[EnvelopeState, str | None] = {
    EnvelopeState.SENT: STATUS_SENT,
    EnvelopeState.VIEWED: STATUS_VIEWED,
    EnvelopeState.PARTIALLY_SIGNED: STATUS_VIEWED,
    EnvelopeState.REFUSED: STATUS_REFUSED,
    EnvelopeState.EXPIRED: STATUS_EXPIRED,
    EnvelopeState.VOIDED: STATUS_VOIDED,
    EnvelopeState.COMPLETED: None,
}


def retry_delay(attempts: int) -> float:
    """How long a record write that failed `attempts` times before waits."""
    return min(RETRY_FIRST_S * 2 ** min(attempts, 16), RETRY_CAP_S)


def on_expiry_value(rules: Rules, view: MirrorView) -> str | None:
    """The stage or status the envelope's rule moves an expired record to (None: the rule says none, or the
    rule is gone from the rules file)."""
    rule = rules.by_name(view.envelope.rule)
    expiry = rule.signers.on_expiry if rule is not None and rule.signers is not None else None
    return expiry.value if expiry is not None and view.envelope.sobject in EXPIRY_FIELDS else None


def record_write(view: MirrorView, rules: Rules) -> WriteBack:
    """What the envelope's record is to show now."""
    envelope = view.envelope
    fields = envelope_fields(
        transaction_id=envelope.transaction_id, status=STATUS_OF[envelope.state], signed=view.signed,
        total=view.total, sent_at=audit_time(envelope.sent_at) if envelope.sent_at is not None else None,
        expires_at=audit_time(envelope.expires_at),
        decline_reason=envelope.reason if envelope.state is EnvelopeState.REFUSED else None,
        clear_note=envelope.state is EnvelopeState.SENT)
    stage = on_expiry_value(rules, view) if envelope.state is EnvelopeState.EXPIRED else None
    if stage is not None:
        fields.update(expiry_fields(envelope.sobject, stage))
    if view.rejected and not envelope.ended:  # a signer the relay refused: what the rep must fix
        fields.update(note_fields(rejection_note(view)))
    return WriteBack(envelope.sobject, envelope.record_id, fields)


def notification_text(view: MirrorView, stage: str | None, shown: object = None) -> tuple[str, str]:
    """The owner's notification: title and body (cut to the action's limits by the client). `stage`: the
    rule's `on_expiry` value; `shown`: what the record's field holds now (the move may have been refused)."""
    envelope = view.envelope
    what = view.file_title or f"{envelope.sobject} {envelope.record_id}"
    if envelope.state is EnvelopeState.REFUSED:
        return (f"Signature declined: {what}",
                f"{view.decliner or 'A signer'} declined to sign. Reason: {envelope.reason or '(none given)'}")
    if envelope.state is EnvelopeState.EXPIRED:
        field = EXPIRY_FIELDS[envelope.sobject]
        moved = "" if not stage else f" The {field} is now {stage}." if shown == stage else (
            f" The {field} could not be moved to {stage}: the record's {Record.ERROR} says why.")
        return (f"Signature request expired: {what}",
                f"The invitation to sign expired with {progress_text(view.signed, view.total)}.{moved}")
    return (f"Signed by every signer: {what}",
            f"All {view.total} signers signed. The signed document and its certificate of completion are in "
            "the record's Files.")


class EnvelopeMirror:
    """Writes changed envelopes to their records and tells the owners of outcomes, every `poll_s`."""

    def __init__(
        self, outbox: Outbox, rest: SalesforceRest, *, rules: Callable[[], Rules], notification_type: str,
        governor: ApiGovernor, audit_lock: asyncio.Lock, stop: asyncio.Event, clock: Clock | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.outbox = outbox
        self.rest = rest
        self.rules = rules
        self.notification_type = notification_type
        self.governor = governor
        self.audit_lock = audit_lock  # the relay's: no audit row is sent twice
        self.stop = stop
        self.clock = clock or SystemClock()
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something changed in the outbox: pass now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            if self.governor.constrained():  # tight budget: fewer, fuller calls
                await wait_any(self.stop, within_s=CONSTRAINED_WAIT_S)
            try:
                await self.pass_once()
            except Exception as exc:  # the outbox is busy, or a bug: the next pass tries again
                log.error("record mirror pass failed; trying again", error=f"{type(exc).__name__}: {exc}"[:300])
            await wait_any(self._wake, self.stop, within_s=self.poll_s)

    async def pass_once(self) -> None:
        """Write every changed envelope that is not waiting for a retry, then the notifications due."""
        while True:
            views = await self.outbox.envelopes_to_mirror(self.clock.now(), BATCH_MAX)
            if views:
                await self._write(views)
            if len(views) < BATCH_MAX:
                break
        await self._notify()
        await self._notify_rejections()

    # ------------------------------------------------------------------------------------ record writes

    async def _write(self, views: list[MirrorView]) -> None:
        rules = self.rules()
        items = [record_write(v, rules) for v in views]
        results = await self._send(items)
        retry_without_stage: list[tuple[MirrorView, WriteBack, SalesforceError]] = []
        for view, item, result in zip(views, items, results, strict=True):
            if not isinstance(result, SalesforceError):
                await self.outbox.mark_mirrored(view.envelope.id, view.envelope.version)
                log.info("record shows the envelope", transaction_id=view.envelope.transaction_id,
                         record_id=view.envelope.record_id, state=view.envelope.state.value)
            elif not result.transient and result.error_code not in GONE_CODES and \
                    EXPIRY_FIELDS[view.envelope.sobject] in item.fields:
                retry_without_stage.append((view, item, result))
            else:
                await self._failed(view, result)
        if retry_without_stage:
            await self._write_without_stage(retry_without_stage)

    async def _write_without_stage(self, failed: list[tuple[MirrorView, WriteBack, SalesforceError]]) -> None:
        """Expired, but Salesforce refused the `on_expiry` move: the status without it, and a note why."""
        items = []
        for view, item, error in failed:
            field = EXPIRY_FIELDS[view.envelope.sobject]
            fields = {k: v for k, v in item.fields.items() if k != field}
            fields.update(note_fields(f"The signature request expired; the {field} could not be moved to "
                                      f"{item.fields[field]!r} ({error.error_code}: {error.message})"))
            items.append(WriteBack(item.sobject, item.record_id, fields))
            log.error("on_expiry refused by Salesforce; writing Expired without it",
                      transaction_id=view.envelope.transaction_id, record_id=view.envelope.record_id,
                      error=str(error)[:300])
        for (view, _, _), result in zip(failed, await self._send(items), strict=True):
            if isinstance(result, SalesforceError):
                await self._failed(view, result)
            else:
                await self.outbox.mark_mirrored(view.envelope.id, view.envelope.version)

    async def _send(self, items: list[WriteBack]) -> list[Any]:
        """One call for these records, with pending audit rows along; per record its result or error."""
        async with self.audit_lock:
            rows = await self.outbox.pending_audit()
            try:
                outcome = await write_back_many(self.rest, items, audit_records(rows))
            except Exception as exc:
                error = exc if isinstance(exc, SalesforceError) else SalesforceError(
                    None, None, f"{type(exc).__name__}: {exc}"[:300], transient=True)
                return [error] * len(items)
            if rows and outcome.audit_results:
                sent = [r["id"] for r, ok in zip(rows, outcome.audit_results, strict=False) if ok is True]
                await self.outbox.mark_audit(sent, "sent")
        return list(outcome.records)

    async def _failed(self, view: MirrorView, error: SalesforceError) -> None:
        envelope = view.envelope
        if error.error_code in GONE_CODES:
            log.error("the envelope's record is gone; not writing it again", transaction_id=envelope.transaction_id,
                      record_id=envelope.record_id, error=str(error)[:300])
            await self.outbox.mark_mirrored(envelope.id, envelope.version)
            return
        delay = retry_delay(envelope.mirror_attempts)
        await self.outbox.mark_mirror_failed(envelope.id, str(error), self.clock.now() + delay)
        (log.warning if error.transient else log.error)(
            "record write failed; retrying", transaction_id=envelope.transaction_id, record_id=envelope.record_id,
            error=str(error)[:300], retry_in_s=delay, attempts=envelope.mirror_attempts + 1)

    # ------------------------------------------------------------------------------------ notifications

    async def _notify(self) -> None:
        now = self.clock.now()
        views = await self.outbox.outcomes_to_notify(now)
        if not views:
            return
        if not self.notification_type:
            for view in views:
                await self.outbox.mark_notified(view.envelope.id, now, "notifications are off "
                                                "(SFSIGN_NOTIFICATION_TYPE is empty)")
            return
        try:
            owners = await self._owners(views)
        except SalesforceError as exc:
            for view in views:
                await self._notify_failed(view, exc)
            return
        rules = self.rules()
        for view in views:
            owner, shown = owners.get(view.envelope.record_id, (None, None))
            await self._notify_one(view, owner, rules, shown)

    async def _owners(self, views: list[MirrorView]) -> dict[str, tuple[str, object]]:
        """Record id → (owner id, the value of the field an expiry moves), one query per object."""
        by_object: dict[str, list[str]] = {}
        for view in views:
            by_object.setdefault(view.envelope.sobject, []).append(view.envelope.record_id)
        objects = sorted(by_object)
        answers = await self.rest.query_many([owner_query(o, sorted(set(by_object[o]))) for o in objects])
        owners: dict[str, tuple[str, object]] = {}
        for obj, rows in zip(objects, answers, strict=True):
            for row in rows:
                owner = owner_of(row)
                if owner is not None:
                    owners[str(row["Id"])] = (owner, row.get(EXPIRY_FIELDS[obj]))
        return owners

    async def _notify_one(self, view: MirrorView, owner: str | None, rules: Rules, shown: object = None) -> None:
        envelope, now = view.envelope, self.clock.now()
        if owner is None:
            log.warning("no owner to notify of the envelope's outcome", transaction_id=envelope.transaction_id,
                        record_id=envelope.record_id)
            await self.outbox.mark_notified(envelope.id, now, "the record has no owner sfsign can read")
            return
        stage = on_expiry_value(rules, view) if envelope.state is EnvelopeState.EXPIRED else None
        title, body = notification_text(view, stage, shown)
        note, retry = await self._send_notification(envelope, owner, title, body)
        if retry is not None:
            await self._notify_failed(view, retry)
            return
        await self.outbox.mark_notified(envelope.id, now, note)
        if note is None:
            log.info("record owner notified", transaction_id=envelope.transaction_id, record_id=envelope.record_id,
                     outcome=envelope.state.value)

    async def _send_notification(self, envelope: Envelope, owner: str, title: str, body: str
                                 ) -> tuple[str | None, SalesforceError | None]:
        """Send one notification: (None, None) delivered; (why, None) not delivered and not to be sent again (it
        may have arrived, or Salesforce refused it for good); (None, error) to be tried again after a backoff."""
        try:
            await self.rest.send_notification(self.notification_type, [owner], title, body, envelope.record_id)
        except SalesforceError as exc:
            if exc.uncertain:  # it may have been delivered: once at most rather than twice
                log.warning("notification outcome unknown; not sent again", transaction_id=envelope.transaction_id,
                            error=str(exc)[:300])
                return f"outcome unknown: {exc}", None
            if exc.transient:
                return None, exc
            log.error("notification refused by Salesforce; not sent", transaction_id=envelope.transaction_id,
                      error=str(exc)[:300])
            return f"not sent: {exc}", None
        return None, None

    async def _notify_rejections(self) -> None:
        """The owner of each record whose signer's address the relay refused, told once per such signer."""
        now = self.clock.now()
        notices = await self.outbox.rejections_to_notify(now)
        if not notices:
            return
        if not self.notification_type:
            for notice in notices:
                await self.outbox.mark_rejection_notified(notice.recipient.id, now)
            return
        try:
            owners = await self._owners([n.view for n in notices])
        except SalesforceError as exc:
            for notice in notices:
                await self._rejection_failed(notice.recipient, exc)
            return
        for notice in notices:
            envelope, recipient = notice.view.envelope, notice.recipient
            owner = owners.get(envelope.record_id, (None, None))[0]
            if owner is None:
                log.warning("no owner to notify of a refused address", transaction_id=envelope.transaction_id,
                            record_id=envelope.record_id, recipient=recipient.id)
                await self.outbox.mark_rejection_notified(recipient.id, now)
                continue
            title, body = rejection_notification(notice.view, recipient)
            note, retry = await self._send_notification(envelope, owner, title, body)
            if retry is not None:
                await self._rejection_failed(recipient, retry)
                continue
            await self.outbox.mark_rejection_notified(recipient.id, now)
            if note is None:  # the recipient by id: their address never reaches a log line
                log.info("record owner notified of a refused address", transaction_id=envelope.transaction_id,
                         record_id=envelope.record_id, recipient=recipient.id)

    async def _rejection_failed(self, recipient: Recipient, error: SalesforceError) -> None:
        delay = retry_delay(recipient.rejection_notify_attempts)
        await self.outbox.mark_rejection_notify_failed(recipient.id, self.clock.now() + delay)
        log.warning("notification of a refused address not sent yet; retrying", recipient=recipient.id,
                    error=str(error)[:300], retry_in_s=delay)

    async def _notify_failed(self, view: MirrorView, error: SalesforceError) -> None:
        delay = retry_delay(view.envelope.notify_attempts)
        await self.outbox.mark_notify_failed(view.envelope.id, str(error), self.clock.now() + delay)
        log.warning("notification not sent yet; retrying", transaction_id=view.envelope.transaction_id,
                    error=str(error)[:300], retry_in_s=delay)
