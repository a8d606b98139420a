"""Every object and field the daemon reads, taken from the daemon's own SOQL.

Under a minimum-access profile the integration user sees only the fields its permission set grants,
and a query naming one field it cannot see fails as a whole (`No such column`). The permission set
and `sfsign check` therefore need the exact list of fields behind the daemon's queries; reading it
from the SOQL the daemon sends (not from a second, hand-kept list) keeps the two from drifting apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from sfsign.config import RECORD_TYPE_PATH, Rules
from sfsign.salesforce.records import opportunity_select, quote_select

SELECTS = {"Opportunity": opportunity_select, "Quote": quote_select}

#: Relationship name → target object, per object, for the relationships the daemon's SOQL follows.
#: A name not listed here fails loudly (`UnknownRelationship`), so a new join cannot slip past the list.
RELATIONSHIPS: Mapping[str, Mapping[str, tuple[str, str | None]]] = {
    # (target object, lookup field on the source object; None for child relationships)
    "Opportunity": {"Account": ("Account", "AccountId"), "Owner": ("User", "OwnerId"),
                    "RecordType": ("RecordType", "RecordTypeId"),
                    "OpportunityLineItems": ("OpportunityLineItem", None),
                    "OpportunityContactRoles": ("OpportunityContactRole", None)},
    "Quote": {"Opportunity": ("Opportunity", "OpportunityId"), "Account": ("Account", "AccountId"),
              "RecordType": ("RecordType", "RecordTypeId"),
              "Contact": ("Contact", "ContactId"), "QuoteLineItems": ("QuoteLineItem", None)},
    "OpportunityLineItem": {"Product2": ("Product2", "Product2Id")},
    "QuoteLineItem": {"Product2": ("Product2", "Product2Id")},
    "OpportunityContactRole": {"Contact": ("Contact", "ContactId")},
}

_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "NULL", "TRUE", "FALSE", "ORDER", "BY",
             "ASC", "DESC", "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "INCLUDES", "EXCLUDES"}
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_DATETIME = re.compile(r"\b\d{4}-\d{2}-\d{2}T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})")
_TOKEN = re.compile(r"\(|\)|[A-Za-z_][A-Za-z0-9_.]*")


class UnknownRelationship(ValueError):
    pass


def _close(tokens: list[str], start: int) -> int:
    depth = 0
    for i in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced parentheses in SOQL")


def _add_path(out: dict[str, set[str]], sobject: str, path: str) -> None:
    names = path.split(".")
    if len(names) > 1 and names[0] == sobject and names[0] not in RELATIONSHIPS.get(sobject, {}):
        names = names[1:]  # `SELECT Opportunity.Name FROM Opportunity`
    current = sobject
    for rel in names[:-1]:
        target = RELATIONSHIPS.get(current, {}).get(rel)
        if target is None:
            raise UnknownRelationship(f"{current}.{rel}: add it to sfsign.reads.RELATIONSHIPS")
        if target[1] is not None:
            out.setdefault(current, set()).add(target[1])
        current = target[0]
    out.setdefault(current, set()).add(names[-1])


def _walk(tokens: list[str], out: dict[str, set[str]], parent: str | None) -> None:
    """Tokens of one `SELECT … FROM X …` (no outer parentheses)."""
    depth, from_at = 0, None
    for i, tok in enumerate(tokens):
        depth += {"(": 1, ")": -1}.get(tok, 0)
        if depth == 0 and tok.upper() == "FROM":
            from_at = i
            break
    if from_at is None:
        raise ValueError("SOQL without FROM")
    name = tokens[from_at + 1]
    if parent is None:
        sobject = name
    else:
        target = RELATIONSHIPS.get(parent, {}).get(name)
        if target is None:
            raise UnknownRelationship(f"{parent}.{name}: add it to sfsign.reads.RELATIONSHIPS")
        sobject = target[0]
    out.setdefault(sobject, set())
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if i == from_at or i == from_at + 1:
            i += 1
        elif tok == "(" and i + 1 < len(tokens) and tokens[i + 1].upper() == "SELECT":
            end = _close(tokens, i)
            _walk(tokens[i + 1:end], out, sobject)
            i = end + 1
        elif tok in "()" or tok.upper() in _KEYWORDS or tok.isdigit():
            i += 1
        else:
            _add_path(out, sobject, tok)
            i += 1


def fields_read(soqls: Iterable[str]) -> dict[str, set[str]]:
    """Object → the fields these queries select, filter or sort on, relationship lookups included."""
    out: dict[str, set[str]] = {}
    for soql in soqls:
        text = _DATETIME.sub(" ", _STRING.sub(" ", soql))
        _walk(_TOKEN.findall(text), out, None)
    return out


def daemon_queries(rule_fields: Mapping[str, Iterable[str]], multi_currency: bool = True,
                   record_types: Iterable[str] = (), signers: Iterable[str] | None = None) -> list[str]:
    """The SOQL the daemon sends for rules watching `rule_fields` (object → watched fields), with
    placeholder literals; `record_types`: the objects whose rules are limited to record types; `signers`:
    the objects whose rules name customer signers (None: every object, as the shipped permission set must
    allow any rule to). Each query comes from the function the daemon itself calls."""
    from sfsign.archive import due_query, latest_version_query
    from sfsign.reconcile import current_values_query, reconcile_query
    from sfsign.salesforce.files import (
        FileCalls,
        version_by_checksum_query,
        version_by_transaction_query,
        version_document_query,
    )
    from sfsign.salesforce.names import NotificationType
    from sfsign.salesforce.notifications import notification_type_query
    from sfsign.salesforce.record_fields import owner_query, shown_signature_query
    from sfsign.salesforce.signer_records import contact_roles_query, quote_signers_query, users_query
    from sfsign.salesforce.writeback import content_document_query

    cv, doc = "068000000000000AAA", "069000000000000AAA"
    now = datetime.now(UTC)
    out = [content_document_query([cv]), version_by_transaction_query("tx"), version_by_checksum_query(doc, "0"),
           version_document_query(cv), latest_version_query(doc), *FileCalls.files_by_transaction_queries(["tx"]),
           notification_type_query(NotificationType.SIGNATURE_OUTCOME)]
    for sobject, fields in rule_fields.items():
        if sobject in SELECTS:
            out.append(SELECTS[sobject](multi_currency) + " WHERE Id IN ('000000000000000AAA')")
        out.append(due_query(sobject, now))
        out.append(current_values_query(sobject, fields, ["000000000000000AAA"]))
        out.append(shown_signature_query(sobject, "000000000000000AAA"))
        typed = sobject in set(record_types)
        if typed and sobject in SELECTS:
            out.append(SELECTS[sobject](multi_currency, [RECORD_TYPE_PATH]) + " WHERE Id IN ('000000000000000AAA')")
        for field in fields:
            out.append(reconcile_query(sobject, field, ["x"], since=now, until=now,
                                       record_types=["x"] if typed else None))
    chosen = None if signers is None else set(signers)
    signing = [o for o in rule_fields if chosen is None or o in chosen]
    by_object = {"Opportunity": contact_roles_query, "Quote": quote_signers_query}  # as read_signers reads them
    out += [by_object[o](["000000000000000AAA"]) for o in signing if o in by_object]
    out += [owner_query(o, ["000000000000000AAA"]) for o in signing if o in by_object]  # the mirror's notices
    if signing:  # a counter-signer (`user:`) fits every object; the start check reads the users too
        out.append(users_query(["user@example.com", "005000000000000AAA"]))
    return out


def rules_reads(rules: Rules, multi_currency: bool = True) -> dict[str, set[str]]:
    """What the daemon reads under these rules."""
    objects = sorted({r.object for r in rules.rules})
    watched = {o: [r.field for r in rules.for_object(o)] for o in objects}
    signing = [o for o in objects if any(r.signers is not None for r in rules.for_object(o))]
    return fields_read(daemon_queries(watched, multi_currency, [o for o in objects if rules.uses_record_types(o)],
                                      signing))
