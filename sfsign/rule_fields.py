"""The rules' fields checked against the org's own schema (`describe`) before the daemon subscribes.

A rule may watch any field of Opportunity or Quote, including the org's custom fields, which the rules
file cannot know offline. A field the org lacks (a typo, a field not deployed to this org, a record type
field in an org without record types) or a value its picklist does not have would otherwise never fire,
and the rep would wait for a document that never comes: so the daemon refuses to start and names the
rules file's line and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sfsign.config import Rules

PICKLISTS = frozenset({"picklist", "multipicklist"})
COMPOUND = frozenset({"address", "location"})


def _value_problems(rules: Rules, rule_name: str, field: Mapping[str, Any], values: list[str]) -> list[str]:
    if field.get("type") not in PICKLISTS:
        return []
    active = [str(v.get("value")) for v in field.get("picklistValues") or [] if v.get("active", True)]
    missing = [v for v in values if v not in active]
    if not missing or not active:
        return []
    return [
        f"{rules.line_of(rule_name, 'values')}: rule {rule_name!r}: {field.get('name')} has no active value "
        f"{', '.join(map(repr, missing))} in this org; use one of: {', '.join(map(repr, active))} "
        "(the API names, as Setup > Object Manager shows them)"
    ]


def record_type_problems(rules: Rules, sobject: str, describe: Mapping[str, Any]) -> list[str]:
    """A rule limited to a record type the org lacks, or one no record can be given (inactive), would
    never sign: each such name, with the rules file's line and the names the org has."""
    infos = [i for i in describe.get("recordTypeInfos") or [] if isinstance(i, Mapping)]
    own = [i for i in infos if not i.get("master")]
    by_name = {str(i.get("developerName")): i for i in infos}
    active = [str(i.get("developerName")) for i in own if i.get("active")]
    where = f"Setup > Object Manager > {sobject} > Record Types"
    problems = []
    for rule in rules.for_object(sobject):
        if rule.record_types is None:
            continue
        at = rules.line_of(rule.name, "record_types")
        if not own:
            problems.append(
                f"{at}: rule {rule.name!r} is limited to record types {', '.join(map(repr, rule.record_types))}, "
                f"but {sobject} has no record types in this org (only Master); remove `record_types` from the rule "
                f"to sign every {sobject}, or create the record types in {where}")
            continue
        for name in rule.record_types:
            info = by_name.get(name)
            if info is not None and info.get("active", True):
                continue
            if info is not None:
                fix = f"activate it in {where}, or remove it from the rule"
                what = "is inactive, so no record can be given it"
            else:
                hint = next((n for n in by_name if n.lower() == name.lower()), None)
                fix = (f"the API name is spelt {hint!r} (record type names in the rules file are case-sensitive)"
                       if hint else f"use the Record Type Name (API name) from {where}: one of "
                       f"{', '.join(map(repr, active)) or '(none is active)'}")
                what = "does not exist in this org"
            problems.append(f"{at}: rule {rule.name!r} lists record type {name!r}: {sobject} record type {name!r} "
                            f"{what}; {fix}")
    return problems


def _fields(describe: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(f.get("name")): f for f in describe.get("fields") or [] if isinstance(f, Mapping)}


def watch_problems(rules: Rules, sobject: str, describe: Mapping[str, Any]) -> list[str]:
    """The rules for `sobject` whose watched field the org lacks (or hides) or whose trigger values its picklist
    lacks, each with line and fix: such a rule would start "ready" and never fire. The one place this is
    judged, for `check`, `run` and a reload alike (record types are `record_type_problems`)."""
    fields = _fields(describe)
    by_lower = {name.lower(): name for name in fields}
    problems: list[str] = []
    for rule in rules.for_object(sobject):
        field = fields.get(rule.field)
        if field is None:
            hint = by_lower.get(rule.field.lower())
            fix = (f"the API name is spelt {hint!r} (field names in the rules file are case-sensitive)"
                   if hint else
                   f"check the API name in Setup > Object Manager > {sobject} > Fields & Relationships, and "
                   "give the integration user read access to it (field-level security)")
            problems.append(
                f"{rules.line_of(rule.name, 'field')}: rule {rule.name!r} watches {sobject}.{rule.field}, which "
                f"this org does not have or the integration user cannot see; {fix}"
            )
            continue
        problems += _value_problems(rules, rule.name, field, rule.values)
    return problems


def template_field_problems(rules: Rules, sobject: str, describe: Mapping[str, Any]) -> list[str]:
    """The fields the rules for `sobject` list for their templates (`fields:`) that the org lacks, hides or
    cannot give as one value, each with line and fix; a parent's field is left to a query."""
    fields = _fields(describe)
    by_lower = {name.lower(): name for name in fields}
    problems: list[str] = []
    for rule in rules.for_object(sobject):
        for name in rule.fields:
            if "." in name:
                continue  # a parent's field (Account.Segment__c) is checked by a query: see check.check_rules
            if name in fields:
                if fields[name].get("type") in COMPOUND:
                    problems.append(
                        f"{rules.line_of(rule.name, 'fields')}: rule {rule.name!r} lists {sobject}.{name}, a compound "
                        "field a template cannot print as one value; list its parts instead (e.g. BillingCity)"
                    )
                continue
            hint = by_lower.get(name.lower())
            fix = (f"the API name is spelt {hint!r}" if hint else
                   f"check the API name in Setup > Object Manager > {sobject} > Fields & Relationships, and give "
                   "the integration user read access to it (field-level security)")
            problems.append(
                f"{rules.line_of(rule.name, 'fields')}: rule {rule.name!r} lists {sobject}.{name} for its template, "
                f"which this org does not have or the integration user cannot see; {fix}"
            )
    return problems
