"""Who signs a record's document (issue 14, part 1): the mapping from a rule's `signers` block and what the
record says to `ResolvedSigner`s in steps, and the errors that name what to fix on the record. Pure: the
rows are built here as the SOQL in `sfsign.salesforce.signer_records` returns them."""

from __future__ import annotations

from typing import Any

import pytest

from sfsign.config.signers import SignersConfig
from sfsign.mapping import NotRenderable
from sfsign.salesforce.signer_records import (
    ContactRoleRow,
    QuoteSignerRow,
    UserRow,
    parse_contact_role,
    parse_quote_signers,
    users_query,
)
from sfsign.signing.model import ResolvedSigner, SignerSource
from sfsign.signing.recipients import SignerMissing, SignerRecords, resolve_signers

OPP = "006000000000001AAA"
CLAIRE = ContactRoleRow(OPP, "003000000000001AAA", "Claire Lefèvre", "claire@acme.example", "Economic Buyer", True)
THOMAS = ContactRoleRow(OPP, "003000000000002AAA", "Thomas Moreau", "thomas@acme.example", "Decision Maker", False)
ANNE = ContactRoleRow(OPP, "003000000000003AAA", "Anne Roux", "anne@acme.example", "Decision Maker", False)
LEGAL = UserRow("005000000000009AAA", "legal@northwind.example", "Northwind Legal", "legal@northwind.example", True)


def _signers(steps: list[list[dict[str, Any]]], **terms: Any) -> SignersConfig:
    return SignersConfig.model_validate({"steps": steps, **terms})


def test_primary_then_role_and_counter_signer_in_steps() -> None:
    signers = _signers([[{"contact_role": "primary"}],
                        [{"contact_role": "Decision Maker"}, {"user": "LEGAL@northwind.example"}]])
    resolved = resolve_signers(signers, "Opportunity", SignerRecords([THOMAS, CLAIRE, ANNE], users=[LEGAL]))
    assert resolved == [
        ResolvedSigner(1, "Claire Lefèvre", "claire@acme.example", SignerSource.CONTACT_ROLE, CLAIRE.contact_id,
                       "Economic Buyer"),
        ResolvedSigner(2, "Thomas Moreau", "thomas@acme.example", SignerSource.CONTACT_ROLE, THOMAS.contact_id,
                       "Decision Maker"),
        ResolvedSigner(2, "Anne Roux", "anne@acme.example", SignerSource.CONTACT_ROLE, ANNE.contact_id,
                       "Decision Maker"),
        ResolvedSigner(2, "Northwind Legal", "legal@northwind.example", SignerSource.USER, LEGAL.id),
    ]


def test_parallel_puts_every_signer_in_step_one() -> None:
    signers = _signers([[{"contact_role": "primary"}], [{"user": LEGAL.id[:15]}]], order="parallel")
    resolved = resolve_signers(signers, "Opportunity", SignerRecords([CLAIRE], users=[LEGAL]))
    assert [(s.step, s.email) for s in resolved] == [(1, CLAIRE.email), (1, LEGAL.email)]


def test_a_person_named_twice_signs_once_and_the_empty_step_is_dropped() -> None:
    claire_decides = ContactRoleRow(OPP, CLAIRE.contact_id, CLAIRE.name, "CLAIRE@acme.example", "Decision Maker",
                                    False)
    signers = _signers([[{"contact_role": "primary"}], [{"contact_role": "Decision Maker"}],
                        [{"user": LEGAL.username}]])
    resolved = resolve_signers(signers, "Opportunity", SignerRecords([CLAIRE, claire_decides], users=[LEGAL]))
    assert [(s.step, s.email) for s in resolved] == [(1, CLAIRE.email), (2, LEGAL.email)]


def test_role_names_match_without_regard_to_case() -> None:
    resolved = resolve_signers(_signers([[{"contact_role": "decision maker"}]]), "Opportunity",
                               SignerRecords([THOMAS]))
    assert [s.email for s in resolved] == [THOMAS.email]


@pytest.mark.parametrize(("steps", "roles", "words"), [
    ([{"contact_role": "primary"}], [THOMAS],
     "Opportunity has no primary contact role: add the contact who signs in the Contact Roles related list of the "
     "opportunity and mark them Primary, then run `sfsign retry` or trigger the rule again."),
    ([{"contact_role": "Legal Counsel"}], [CLAIRE],
     "Opportunity has no contact role 'Legal Counsel': add the contact who signs with the role 'Legal Counsel'"),
    ([{"contact_role": "primary"}], [ContactRoleRow(OPP, CLAIRE.contact_id, "Claire Lefèvre", None, None, True)],
     "Contact Claire Lefèvre (the primary contact) has no e-mail address, so they cannot be invited to sign: add "
     "their e-mail on the contact"),
])
def test_an_unreachable_contact_names_the_fix_on_the_record(steps: list[dict[str, Any]], roles: list[ContactRoleRow],
                                                           words: str) -> None:
    with pytest.raises(SignerMissing) as caught:
        resolve_signers(_signers([steps]), "Opportunity", SignerRecords(roles))
    assert words in str(caught.value)
    assert isinstance(caught.value, NotRenderable), "the worker ends the job Error, retryable"


QUOTE = QuoteSignerRow("0Q0000000000001AAA", "maria@globex.example", "Globex Corporation", "003000000000004AAA",
                       "Maria Gonzalez", "maria@globex.example")


def test_quote_contact_and_quote_email() -> None:
    contact = resolve_signers(_signers([[{"quote_contact": True}]]), "Quote", SignerRecords(quote=QUOTE))
    assert contact == [ResolvedSigner(1, "Maria Gonzalez", "maria@globex.example", SignerSource.QUOTE_CONTACT,
                                      QUOTE.contact_id)]
    same = resolve_signers(_signers([[{"quote_email": True}]]), "Quote", SignerRecords(quote=QUOTE))
    assert same == [ResolvedSigner(1, "Maria Gonzalez", "maria@globex.example", SignerSource.QUOTE_EMAIL)]
    other = QuoteSignerRow(QUOTE.quote_id, "purchasing@globex.example", "Globex Corporation", None, None, None)
    [bare] = resolve_signers(_signers([[{"quote_email": True}]]), "Quote", SignerRecords(quote=other))
    assert (bare.name, bare.email, bare.salesforce_id) == ("Globex Corporation", "purchasing@globex.example", None)


@pytest.mark.parametrize(("entry", "quote", "words"), [
    ({"quote_contact": True}, QuoteSignerRow(QUOTE.quote_id, None, None, None, None, None),
     "The quote has no contact: choose the contact who signs on the quote"),
    ({"quote_contact": True}, QuoteSignerRow(QUOTE.quote_id, None, None, QUOTE.contact_id, "Maria Gonzalez", None),
     "Contact Maria Gonzalez (the quote's contact) has no e-mail address"),
    ({"quote_email": True}, QuoteSignerRow(QUOTE.quote_id, None, "Globex", None, None, None),
     "The quote has no e-mail address: fill the quote's Email field"),
])
def test_an_unreachable_quote_signer_names_the_fix(entry: dict[str, Any], quote: QuoteSignerRow, words: str) -> None:
    with pytest.raises(SignerMissing) as caught:
        resolve_signers(_signers([[entry]]), "Quote", SignerRecords(quote=quote))
    assert words in str(caught.value)


@pytest.mark.parametrize(("users", "words"), [
    ([], "The counter-signer 'legal@northwind.example' the rule names is not a user of this org"),
    ([UserRow(LEGAL.id, LEGAL.username, LEGAL.name, LEGAL.email, False)],
     r"The counter-signer Northwind Legal \(legal@northwind.example\) is an inactive user: activate them"),
])
def test_a_missing_or_inactive_counter_signer_is_named(users: list[UserRow], words: str) -> None:
    with pytest.raises(SignerMissing, match=words):
        resolve_signers(_signers([[{"user": LEGAL.username}]]), "Quote", SignerRecords(quote=QUOTE, users=users))


def test_rows_parse_as_rest_returns_them() -> None:
    role = parse_contact_role({"attributes": {"type": "OpportunityContactRole"}, "Id": "00K000000000001AAA",
                               "OpportunityId": OPP, "ContactId": CLAIRE.contact_id, "IsPrimary": True, "Role": None,
                               "Contact": {"attributes": {"type": "Contact"}, "Name": "Claire", "Email": ""}})
    assert role == ContactRoleRow(OPP, CLAIRE.contact_id, "Claire", None, None, True)
    quote = parse_quote_signers({"Id": QUOTE.quote_id, "Email": None, "BillingName": "Globex", "ContactId": None,
                                 "Contact": None})
    assert quote == QuoteSignerRow(QUOTE.quote_id, None, "Globex", None, None, None)


def test_the_user_query_names_usernames_quoted_and_ids_checked() -> None:
    soql = users_query(["o'brien@northwind.example", "005000000000009AAA"])
    assert soql == ("SELECT Id, Username, Name, Email, IsActive FROM User WHERE Username IN "
                    "('o\\'brien@northwind.example') OR Id IN ('005000000000009AAA')")
