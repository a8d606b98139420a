"""The rules' signers against the org, before the daemon starts: the stage (or quote status) expiry moves a
record to is a value of the object's picklist, the contact roles a rule names are values of the contact
role picklist, and every counter-signing user exists and is active.

Each would otherwise surface weeks later, on the first expired envelope or the first record to sign, as a
job in `Error`; found at start, `run` refuses with the rules file's line and the fix (exit code 3), and
`check` reports the same words. One SOQL reads every named user; the describes are `check_rules`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sfsign.check.report import Check, fail, ok
from sfsign.config import RuleConfig, Rules
from sfsign.config.signers import EXPIRY_KEYS, line_key
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.signer_records import UserRow, read_users

SIGNERS_FIX = ("correct the rules file at the lines named, or add the value to the org's picklist, or create or "
               "activate the user in Setup > Users")
CONTACT_ROLE_OBJECT = "OpportunityContactRole"


def _active_values(describe: Mapping[str, Any], field: str) -> list[str] | None:
    """The active values of a picklist field; None when describe does not show it as a picklist."""
    spec = next((f for f in describe.get("fields") or [] if isinstance(f, Mapping) and f.get("name") == field), None)
    if spec is None or spec.get("type") not in ("picklist", "multipicklist"):
        return None
    return [str(v.get("value")) for v in spec.get("picklistValues") or [] if v.get("active", True)]


def expiry_problems(rules: Rules, describes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """An `on_expiry` value the object's picklist lacks would fail the write-back of every expiry."""
    problems = []
    for rule in _signing(rules):
        expiry = rule.signers.on_expiry if rule.signers else None
        if expiry is None or rule.object not in EXPIRY_KEYS or rule.object not in describes:
            continue
        key, field = EXPIRY_KEYS[rule.object]
        active = _active_values(describes[rule.object], field)
        if not active or expiry.value in active:
            continue
        problems.append(
            f"{rules.line_of(rule.name, line_key('on_expiry', key))}: rule {rule.name!r}: on_expiry moves the "
            f"{rule.object} to {expiry.value!r}, but {field} has no active value {expiry.value!r} in this org; use "
            f"one of: {', '.join(map(repr, active))} (the API names, as Setup > Object Manager shows them)")
    return problems


def contact_role_problems(rules: Rules, describe: Mapping[str, Any]) -> list[str]:
    """A role name the Role picklist lacks would match no contact role: every such record would end `Error`."""
    active = _active_values(describe, "Role")
    if not active:
        return []
    lowered = {v.lower() for v in active}
    problems = []
    for rule in _signing(rules):
        assert rule.signers is not None
        for s, e, entry in rule.signers.entries():
            role = entry.contact_role
            if role is None or entry.is_primary or role.lower() in lowered:
                continue
            problems.append(
                f"{rules.line_of(rule.name, line_key('steps', s, e))}: rule {rule.name!r}: no contact role is "
                f"{role!r} in this org (OpportunityContactRole.Role); use `primary` or one of: "
                f"{', '.join(map(repr, active))}")
    return problems


def user_problems(rules: Rules, users: list[UserRow]) -> list[str]:
    """A counter-signer who is not a user, or an inactive one, could never be invited."""
    problems = []
    for rule in _signing(rules):
        assert rule.signers is not None
        for s, e, entry in rule.signers.entries():
            if entry.user is None:
                continue
            at = f"{rules.line_of(rule.name, line_key('steps', s, e))}: rule {rule.name!r}"
            user = next((u for u in users if u.matches(entry.user)), None)
            if user is None:
                problems.append(f"{at}: the counter-signer {entry.user!r} is not a user of this org; use the "
                                "Username (or the 005 id) of an active user from Setup > Users")
            elif not user.is_active:
                problems.append(f"{at}: the counter-signer {entry.user!r} ({user.name}) is an inactive user; "
                                "activate them in Setup > Users, or name another user")
            elif not user.email:
                problems.append(f"{at}: the counter-signer {entry.user!r} ({user.name}) has no e-mail address; "
                                "add it in Setup > Users")
    return problems


async def check_signers(rest: SalesforceRest, rules: Rules, describes: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    """The signers of every rule against the org; nothing when no rule names signers. `describes`: the rule
    objects' describes `check_rules` already read."""
    signing = _signing(rules)
    if not signing:
        return []
    problems = expiry_problems(rules, describes)
    if any(r.signers and r.signers.roles() for r in signing):
        problems += contact_role_problems(rules, await _describe(rest, CONTACT_ROLE_OBJECT))
    refs = list(dict.fromkeys(u for r in signing if r.signers for u in r.signers.users()))
    if refs:
        problems += user_problems(rules, await read_users(rest, refs))
    if problems:
        return [fail("rule signers", "\n".join(problems), SIGNERS_FIX)]
    return [ok("rule signers", f"{len(signing)} rule(s) with signers: expiry values, contact roles and "
                               f"{len(refs)} counter-signer(s) found in the org")]


async def _describe(rest: SalesforceRest, sobject: str) -> Mapping[str, Any]:
    try:
        return await rest.describe(sobject)
    except SalesforceError as exc:
        if exc.transient:
            raise
        return {}  # the access check names what the integration user cannot see


def _signing(rules: Rules) -> list[RuleConfig]:
    return [r for r in rules.rules if r.signers is not None]
