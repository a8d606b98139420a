"""The records customer signers come from, and the SOQL that reads them: an Opportunity's contact roles, a
Quote's contact and e-mail, and the internal users a rule names as counter-signers.

Read apart from the record the document is rendered from (`records.py`): only a rule with signers needs
them, and a rule names contact roles by role, not just the primary one the document prints. The rows are
plain data; which of them sign, in which step, is `sfsign.signing.recipients`'. `sfsign.reads` derives the
integration user's read list from the builders here, so a field added to a query is a field granted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sfsign.salesforce.records import Querier
from sfsign.salesforce.soql import IN_LIMIT, soql_id_list, soql_quote

#: A user id's key prefix; anything else a rule names as a user is a username.
USER_PREFIX = "005"


@dataclass(frozen=True)
class ContactRoleRow:
    """One OpportunityContactRole with its contact's name and e-mail (None when the contact has none)."""

    opportunity_id: str
    contact_id: str
    name: str
    email: str | None
    role: str | None
    is_primary: bool


@dataclass(frozen=True)
class QuoteSignerRow:
    """What a Quote says about who receives it: its contact (Quote.ContactId) and its own e-mail field,
    which Salesforce fills from the contact but a rep may change to anyone's address."""

    quote_id: str
    email: str | None
    billing_name: str | None
    contact_id: str | None
    contact_name: str | None
    contact_email: str | None


@dataclass(frozen=True)
class UserRow:
    id: str
    username: str
    name: str
    email: str | None
    is_active: bool

    def matches(self, ref: str) -> bool:
        """Whether a rule's `user:` names this user: by id (15 or 18 characters) or by username, which
        Salesforce compares without regard to case."""
        if ref.startswith(USER_PREFIX) and "@" not in ref:
            return self.id[:15] == ref[:15]
        return self.username.lower() == ref.lower()


def contact_roles_query(opportunity_ids: Iterable[str]) -> str:
    """The contact roles of these opportunities, oldest first (the order Salesforce lists them in)."""
    return ("SELECT Id, OpportunityId, ContactId, IsPrimary, Role, Contact.Name, Contact.Email "
            f"FROM OpportunityContactRole WHERE OpportunityId IN {soql_id_list(opportunity_ids)} "
            "ORDER BY CreatedDate, Id")


def quote_signers_query(quote_ids: Iterable[str]) -> str:
    return ("SELECT Id, Email, BillingName, ContactId, Contact.Name, Contact.Email "
            f"FROM Quote WHERE Id IN {soql_id_list(quote_ids)}")


def users_query(refs: Sequence[str]) -> str:
    """The users a rule names (usernames or ids), active or not: an inactive one is reported, not missed."""
    ids = [r for r in refs if r.startswith(USER_PREFIX) and "@" not in r]
    names = [r for r in refs if r not in ids]
    if len(refs) > IN_LIMIT or not refs:
        raise ValueError(f"between 1 and {IN_LIMIT} users per query, not {len(refs)}")
    where = [f"Username IN ({', '.join(soql_quote(n) for n in names)})"] if names else []
    where += [f"Id IN {soql_id_list(ids)}"] if ids else []
    return f"SELECT Id, Username, Name, Email, IsActive FROM User WHERE {' OR '.join(where)}"


def _text(row: dict[str, Any] | None, key: str) -> str | None:
    """A text field's value, None when empty (Salesforce returns null or "" for a blank field)."""
    value = (row or {}).get(key)
    if value is None:
        return None
    return str(value).strip() or None


def parse_contact_role(row: dict[str, Any]) -> ContactRoleRow:
    contact = row.get("Contact") or {}
    return ContactRoleRow(opportunity_id=str(row["OpportunityId"]), contact_id=str(row["ContactId"]),
                          name=_text(contact, "Name") or "", email=_text(contact, "Email"),
                          role=_text(row, "Role"), is_primary=bool(row.get("IsPrimary")))


def parse_quote_signers(row: dict[str, Any]) -> QuoteSignerRow:
    contact = row.get("Contact")
    return QuoteSignerRow(quote_id=str(row["Id"]), email=_text(row, "Email"), billing_name=_text(row, "BillingName"),
                          contact_id=_text(row, "ContactId"), contact_name=_text(contact, "Name"),
                          contact_email=_text(contact, "Email"))


def parse_user(row: dict[str, Any]) -> UserRow:
    return UserRow(id=str(row["Id"]), username=str(row.get("Username") or ""), name=_text(row, "Name") or "",
                   email=_text(row, "Email"), is_active=bool(row.get("IsActive")))


async def read_contact_roles(querier: Querier, opportunity_id: str) -> list[ContactRoleRow]:
    return [parse_contact_role(r) for r in await querier.query(contact_roles_query([opportunity_id]))]


async def read_quote_signers(querier: Querier, quote_id: str) -> QuoteSignerRow | None:
    rows = await querier.query(quote_signers_query([quote_id]))
    return parse_quote_signers(rows[0]) if rows else None


async def read_users(querier: Querier, refs: Sequence[str]) -> list[UserRow]:
    """The users named by `refs` that exist (a missing one is simply absent)."""
    if not refs:
        return []
    return [parse_user(r) for r in await querier.query(users_query(list(refs)))]
