"""Rules limited to record types: whether a fetched record is one its rule signs, and why not.

Change events carry only the fields that changed, so a record's type is known only once the record is
fetched; a trigger for a record of another type ends there, quietly for a stage change (the rule was
never meant for it), with a note on the record for a rep's explicit "Send for signature". A "Send for
signature" that named no rule takes the rule that covers the record's type; so does a Re-issue that named
none, unless the outbox remembers the rule the record was signed with (`sfsign.triggers.reissue_rule`).
"""

from __future__ import annotations

from sfsign.config import MASTER_RECORD_TYPE, RECORD_TYPE_PATH, RuleConfig, Rules
from sfsign.outbox import REISSUE_SOURCE
from sfsign.salesforce.records import SignableRecord

#: The source of a job for a Sign_Request__e that named its rule, and of one that named none: that one
#: starts with the object's first rule and takes, once the record is read, the rule covering its type.
EVENT_SOURCE = "event"
EVENT_ANY_RULE_SOURCE = "event-any-rule"
#: A Re-issue that named no rule for a record the outbox has no signed document of (a fresh data directory,
#: or never signed): it signs like a Send for Signature naming no rule, and is a Re-issue in the audit trail
#: and at fetch (a signature the record shows is superseded, not refused). A blank-rule Re-issue of a record
#: the outbox remembers signed takes that document's rule at intake and becomes a plain `reissue` job.
REISSUE_ANY_RULE_SOURCE = "reissue-any-rule"
#: Sources whose rule is chosen once the record's type is read.
ANY_RULE_SOURCES = frozenset({EVENT_ANY_RULE_SOURCE, REISSUE_ANY_RULE_SOURCE})
#: Sources that ask for a new version of a signed record.
REISSUE_SOURCES = frozenset({REISSUE_SOURCE, REISSUE_ANY_RULE_SOURCE})
#: Job sources a rep asked for by name (Sign_Request__e): they are told on the record why nothing came.
EXPLICIT_SOURCES = frozenset({EVENT_SOURCE, *ANY_RULE_SOURCES, *REISSUE_SOURCES})


class RecordTypeNotRead(LookupError):
    """The record was fetched without its record type (the rules were reloaded in between): fetch again."""


def record_type_of(record: SignableRecord) -> str:
    """The record's type (DeveloperName), Master for a record without one."""
    if RECORD_TYPE_PATH not in record.fields:
        raise RecordTypeNotRead(f"{record.sobject} {record.id} was read without its record type")
    value = record.fields[RECORD_TYPE_PATH]
    return value if isinstance(value, str) and value else MASTER_RECORD_TYPE


def covering_rule(rule: RuleConfig, rules: Rules, record: SignableRecord) -> RuleConfig | None:
    """For a Send for Signature that named no rule: the object's first rule covering the record's type,
    when `rule` (the object's first rule, all the intake could choose) does not cover it; else None."""
    if rule.record_types is None:
        return None
    record_type = record_type_of(record)
    if rule.covers(record_type):
        return None
    return next((r for r in rules.for_object(record.sobject) if r.covers(record_type)), None)


def uncovered_reason(rule: RuleConfig, rules: Rules, record: SignableRecord) -> str | None:
    """None when `rule` signs `record`; else why not, naming the rules of the object that would."""
    if rule.record_types is None:
        return None
    record_type = record_type_of(record)
    if rule.covers(record_type):
        return None
    others = [r.name for r in rules.for_object(record.sobject) if r.name != rule.name and r.covers(record_type)]
    why = (f"Not signed: rule {rule.name!r} signs only {record.sobject} records of record type "
           f"{', '.join(rule.record_types)}; this record's type is {record_type}.")
    if others:
        return why + f" Rule {', '.join(map(repr, others))} covers it: name it as the rule in Send for Signature."
    return why + " No rule covers that record type: ask your sfsign administrator."
