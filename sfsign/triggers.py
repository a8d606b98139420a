"""Event → jobs: which rules an event fires, and the deterministic transaction id of each job.

The transaction id is a UUIDv5 of (org, object, record, rule, trigger identity). The identity is the
CDC transaction key (plus the record, as one transaction can change many records) or the platform
event's EventUuid, so a replayed event always yields the same id and the outbox's unique index turns
it into a no-op. Replay ids are not used: Salesforce says they are not stable across org migrations.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sfsign.config import RuleConfig, Rules
from sfsign.outbox import REISSUE_SOURCE, AuditEvent, NewJob
from sfsign.record_types import EVENT_ANY_RULE_SOURCE, EVENT_SOURCE, REISSUE_ANY_RULE_SOURCE
from sfsign.salesforce.events import ChangeEvent, PlatformEvent, UpdateHeader, replay_label, update_header
from sfsign.salesforce.ids import InvalidId, canonical_id
from sfsign.salesforce.names import (
    ACTION_REISSUE,
    ACTION_SIGN,
    ACTION_VOID,
    AUDIT_REFUSED,
    ENVELOPE_ACTIONS,
    REASON_LENGTH,
    SIGN_REQUEST_ACTIONS,
    Record,
    SignRequest,
)

_NAMESPACE = uuid.UUID("5b0f2a56-7a5f-4c1e-9a57-5f1e3a2c9d10")

KEY_PREFIXES = {"006": "Opportunity", "0Q0": "Quote"}


def transaction_id(org_id: str, sobject: str, record_id: str, rule: str, identity: str) -> str:
    """Stable id of one trigger; 36 characters, fits `Sign_Transaction_Id__c` (Text 64).

    `record_id` is read in its canonical form, so every spelling of one record gives one id (the first
    15 characters of the canonical id are the case-sensitive id: ids derived before stay the same).
    """
    record = canonical_id(record_id)[:15]
    return str(uuid.uuid5(_NAMESPACE, f"{org_id[:15]}/{sobject}/{record}/{rule}/{identity}"))


@dataclass(frozen=True)
class EnvelopeRequest:
    """A rep's request about the record's envelope out for signature (`Action__c` Void or Resend): acted on by
    intake, against the envelopes the outbox holds for the record (of `rule`, when one is named)."""

    action: str
    sobject: str
    record_id: str
    rule: str | None
    reason: str | None
    requested_by: str | None
    request: str  # the event's identity: a replayed event does the same request once
    refusal: AuditEvent  # the audit row if there is nothing to act on (its detail completed by intake)


@dataclass
class Decision:
    """What an event asks for: jobs to create, records to re-read, and whether to reconcile."""

    jobs: list[NewJob] = field(default_factory=list)
    reread: list[tuple[str, str]] = field(default_factory=list)  # (sobject, record id) from gap events
    reconcile: list[str] = field(default_factory=list)  # sobjects whose overflow asks for reconciliation
    ignored: list[str] = field(default_factory=list)  # why parts of the event were not acted upon
    refused: list[AuditEvent] = field(default_factory=list)  # requests refused, for the record's audit trail
    envelope_requests: list[EnvelopeRequest] = field(default_factory=list)  # Void, Resend


def quiet_update(message: Any, rules: Rules) -> UpdateHeader | None:
    """The header of a CDC update that changed no field a rule of its object watches (sfsign's own write-backs,
    two of every three events in a burst): it fires nothing and needs no word in the log, so intake saves its
    position (`Outbox.pass_event`) without building the event. None for every other message."""
    header = update_header(message)
    if header is None:
        return None
    object_rules = rules.for_object(header.entity)
    if not object_rules or any(rule.field in header.changed_fields for rule in object_rules):
        return None  # no rule (logged as such), or one may fire: `decide_change` decides
    return header


def _fires(rule: RuleConfig, event: ChangeEvent) -> bool:
    if event.change_type in ("CREATE", "UNDELETE"):
        return event.fields.get(rule.field) in rule.values
    if event.change_type == "UPDATE":
        return rule.field in event.changed_fields and event.fields.get(rule.field) in rule.values
    return False


def decide_change(event: ChangeEvent, rules: Rules, org_id: str) -> Decision:
    decision = Decision()
    object_rules = rules.for_object(event.entity)
    if not object_rules:
        decision.ignored.append(f"no rule for {event.entity}")
        return decision
    if event.is_overflow:
        decision.reconcile.append(event.entity)
        return decision
    if event.is_gap:
        decision.reread.extend((event.entity, rid) for rid in event.record_ids)
        return decision
    for rule in object_rules:
        if not _fires(rule, event):
            continue
        for record_id in event.record_ids:
            identity = f"cdc:{event.transaction_key}:{event.sequence_number}"
            decision.jobs.append(
                NewJob(
                    transaction_id=transaction_id(org_id, event.entity, record_id, rule.name, identity),
                    rule=rule.name,
                    sobject=event.entity,
                    record_id=record_id,
                    source="cdc",
                    event_time_ms=event.commit_timestamp_ms,
                    requested_by=event.commit_user,
                )
            )
    return decision


def decide_sign_request(event: PlatformEvent, rules: Rules, org_id: str) -> Decision:
    """`Sign_Request__e`: sign this record now with the named rule (or the object's first rule, which the
    worker swaps for the rule covering the record's type once it has read the record).

    The record id is taken in its canonical 18-character form, so the 15-character id or the
    18-character id in another case of a record already signed meets that record's job in the
    duplicate check. A `Rule__c` that is not exactly the name of a rule of the record's object is
    refused (logged, and an audit event on the record), never matched loosely: a guess could sign
    with terms or a key nobody asked for. `Reason__c` rides with the job into its audit trail;
    `Action__c = Reissue` asks for a new version of a signed record (the outbox supersedes the old one); one
    that names no rule gets its rule from the outbox's memory at intake (`reissue_rule`). `Void` (with a
    reason) and `Resend` ask about the record's envelope out for signature (of the named rule, or any):
    an `EnvelopeRequest` intake acts on.
    """
    target = _record_of(event)
    if isinstance(target, str):
        return Decision(ignored=[target])
    asked = _Asked.read(event, *target, org_id)
    if asked.action not in SIGN_REQUEST_ACTIONS:
        known = ", ".join(repr(a) for a in SIGN_REQUEST_ACTIONS)
        return asked.refusal(f"{SignRequest.ACTION} {repr(asked.action)[:60]} is not one of {known}")
    rule = rules.by_name(asked.wanted) if isinstance(asked.wanted, str) and asked.named else None
    if asked.named and (rule is None or rule.object != asked.sobject):
        return asked.refusal(f"{SignRequest.RULE} {repr(asked.wanted)[:120]} is not a rule for {asked.sobject} " + (
            f"(it is a rule for {rule.object})" if rule is not None else "(no rule has that name)"))
    if asked.action in ENVELOPE_ACTIONS:
        if asked.action == ACTION_VOID and asked.reason is None:
            return asked.refusal(f"{ACTION_VOID} needs a reason in {SignRequest.REASON}: the signers are told why "
                                 "the document was withdrawn")
        return Decision(envelope_requests=[EnvelopeRequest(
            action=asked.action, sobject=asked.sobject, record_id=asked.record_id,
            rule=str(asked.wanted) if asked.named else None, reason=asked.reason, requested_by=asked.requested_by,
            request=f"pe:{asked.identity}", refusal=asked.refused_row(f"{asked.action}: "))])
    if rule is None:
        candidates = rules.for_object(asked.sobject)
        if not candidates:
            return Decision(ignored=[f"no rule for {asked.sobject}"])
        rule = candidates[0]
    created_ms = int(event.created_date.timestamp() * 1000) if event.created_date else None
    return Decision(jobs=[
        NewJob(
            transaction_id=transaction_id(org_id, asked.sobject, asked.record_id, rule.name, f"pe:{asked.identity}"),
            rule=rule.name,
            sobject=asked.sobject,
            record_id=asked.record_id,
            source=_sign_request_source(asked.action, asked.named, rule),
            event_time_ms=created_ms,
            requested_by=asked.requested_by,
            reason=asked.reason,
        )
    ])


@dataclass(frozen=True)
class _Asked:
    """What one `Sign_Request__e` asks, read once from its fields, and how to refuse it."""

    org_id: str
    sobject: str
    record_id: str
    identity: str  # the EventUuid, or the channel and replay id of an event without one
    requested_by: str | None
    reason: str | None
    action: Any  # Action__c as sent (checked against SIGN_REQUEST_ACTIONS first)
    wanted: Any  # Rule__c as sent

    @classmethod
    def read(cls, event: PlatformEvent, sobject: str, record_id: str, org_id: str) -> _Asked:
        raw_reason = event.fields.get(SignRequest.REASON)
        return cls(
            org_id=org_id, sobject=sobject, record_id=record_id,
            identity=event.event_uuid or f"replay:{event.channel}:{replay_label(event.replay_id)}",
            requested_by=str(event.fields.get(SignRequest.REQUESTED_BY_ID) or event.created_by_id or "") or None,
            reason=raw_reason.strip()[:REASON_LENGTH] or None if isinstance(raw_reason, str) else None,
            action=event.fields.get(SignRequest.ACTION) or ACTION_SIGN,
            wanted=event.fields.get(SignRequest.RULE),
        )

    @property
    def named(self) -> bool:
        return self.wanted is not None and self.wanted != ""

    def refused_row(self, why: str) -> AuditEvent:
        return AuditEvent(
            transaction_id=transaction_id(self.org_id, self.sobject, self.record_id, "refused", f"pe:{self.identity}"),
            sobject=self.sobject, record_id=self.record_id, event_type=AUDIT_REFUSED,
            actor=self.requested_by or "sfsign", detail=f"{SignRequest.NAME} refused: {why}",
        )

    def refusal(self, why: str) -> Decision:
        """Logged, and an audit event on the record, so whoever asked can see why nothing was signed."""
        return Decision(ignored=[why], refused=[self.refused_row(why)])


def _record_of(event: PlatformEvent) -> tuple[str, str] | str:
    """(object, canonical 18-character record id) the request names, or why it names none."""
    raw_id = event.fields.get(SignRequest.RECORD_ID)
    try:
        record_id = canonical_id(raw_id.strip() if isinstance(raw_id, str) else raw_id)
    except InvalidId as exc:
        return f"{SignRequest.RECORD_ID} is not an Opportunity or Quote id: {exc}"
    sobject = KEY_PREFIXES.get(record_id[:3])
    if sobject is None:
        return f"{SignRequest.RECORD_ID} {record_id!r} is not an Opportunity or Quote id"
    return sobject, record_id


def _sign_request_source(action: str, named: bool, rule: RuleConfig) -> str:
    """A Re-issue of the named rule, or of no rule named (its rule is chosen at intake, `reissue_rule`); a
    request for the named rule; or, when no rule was named and the object's first rule is limited to record
    types, one whose rule the worker chooses once it has read the record's type."""
    if action == ACTION_REISSUE:
        return REISSUE_SOURCE if named else REISSUE_ANY_RULE_SOURCE
    return EVENT_SOURCE if named or rule.record_types is None else EVENT_ANY_RULE_SOURCE


def reissue_rule(job: NewJob, signed_rules: Sequence[str]) -> NewJob | str:
    """The rule of a Re-issue that named none, from the rules that hold a signed document of the record in the
    outbox (current, not superseded; the memory survives the job purge), in the rules file's order.

    "Re-issue" with no rule named means "a new version of the document this record was signed with", which
    need not be the object's first rule when rules are limited to record types. One such rule: the job takes
    it and becomes a plain Re-issue, which supersedes that document at insert; its transaction id stays the
    one derived from the event, so a replayed event still meets the job. None (never signed, or a fresh data
    directory): the job is left as it is and signs like a Send for Signature naming no rule, the covering rule
    taken once the record's type is read. Several: which document is meant cannot be known, and guessing
    could supersede the wrong contract, so the request is refused; the returned text says why and how to ask.
    """
    if job.source != REISSUE_ANY_RULE_SOURCE or not signed_rules:
        return job
    if len(signed_rules) == 1:
        return replace(job, rule=signed_rules[0], source=REISSUE_SOURCE)
    names = [repr(name) for name in signed_rules]
    return (f"Not re-issued: this {job.sobject} has signed documents of {len(names)} rules "
            f"({', '.join(names)}) and the Re-issue named none; name the rule to re-issue in "
            f"{SignRequest.RULE}: {', '.join(names[:-1])} or {names[-1]}.")


def decide_current_state(
    sobject: str, record_id: str, values: dict[str, object], rules: Rules, org_id: str, identity: str
) -> list[NewJob]:
    """Jobs for a record read back after a gap event or during reconciliation.

    Only records in a trigger state *without* a transaction id qualify, so a record sfsign already
    handled is never signed twice by a re-read.
    """
    if values.get(Record.TRANSACTION_ID):
        return []
    record_id = canonical_id(record_id)
    jobs = []
    for rule in rules.for_object(sobject):
        if values.get(rule.field) in rule.values:
            jobs.append(
                NewJob(
                    transaction_id=transaction_id(org_id, sobject, record_id, rule.name, identity),
                    rule=rule.name,
                    sobject=sobject,
                    record_id=record_id,
                    source="gap" if identity.startswith("gap:") else "reconcile",
                )
            )
            break
    return jobs
