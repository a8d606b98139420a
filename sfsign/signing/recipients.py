"""Who signs one record's document: a rule's `signers` block applied to what the record says (its contact
roles, its quote contact and e-mail, the org's users), as `ResolvedSigner`s in steps.

Kept pure (`resolve_signers`) so every rule of the mapping is a unit test; `read_signers` only reads the
rows the block needs and hands them over. A signer that cannot be reached (no primary contact role, a
contact without an e-mail, an inactive counter-signer) is `SignerMissing`, a `NotRenderable`: the job ends
`Error` with a reason naming what to fix on the record, and stays retryable once it is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sfsign.config.signers import SignerEntry, SignersConfig
from sfsign.documents.model import DocumentSigner
from sfsign.mapping import NotRenderable
from sfsign.salesforce.records import Querier
from sfsign.salesforce.signer_records import (
    ContactRoleRow,
    QuoteSignerRow,
    UserRow,
    read_contact_roles,
    read_quote_signers,
    read_users,
)
from sfsign.signing.model import ResolvedSigner, SignerSource

RETRY = "then run `sfsign retry` or trigger the rule again"


class SignerMissing(NotRenderable):
    """A signer the rule asks for cannot be reached; the message says what to fix on the record (or in the
    org, for a counter-signing user) so a rep can fix it and retry."""


@dataclass(frozen=True)
class SignerRecords:
    """What the record and the org say about the possible signers (only what the rule needs is read)."""

    contact_roles: Sequence[ContactRoleRow] = ()
    quote: QuoteSignerRow | None = None
    users: Sequence[UserRow] = ()


def resolve_signers(signers: SignersConfig, sobject: str, records: SignerRecords) -> list[ResolvedSigner]:
    """The signers in steps (1-based; `parallel`: all in step 1). A person who appears twice (the primary
    contact is also the "Decision Maker") signs once, in the first step that names them; a step left
    without signers by that is dropped and the later steps move up."""
    found = [[s for entry in step for s in _entry_signers(entry, sobject, records)] for step in signers.steps]
    if signers.order == "parallel":
        found = [[s for step in found for s in step]]
    seen: set[str] = set()
    out: list[ResolvedSigner] = []
    for step in found:
        kept = []
        for signer in step:
            if signer.email.lower() not in seen:
                seen.add(signer.email.lower())
                kept.append(signer)
        if kept:
            number = out[-1].step + 1 if out else 1
            out += [ResolvedSigner(number, s.name, s.email, s.source, s.salesforce_id, s.role) for s in kept]
    return out


def _entry_signers(entry: SignerEntry, sobject: str, records: SignerRecords) -> list[ResolvedSigner]:
    if entry.source is SignerSource.CONTACT_ROLE:
        return _contact_roles(entry, sobject, records.contact_roles)
    if entry.source is SignerSource.USER:
        return [_user(entry.user or "", records.users)]
    return [_quote(entry.source, records.quote)]


def _contact_roles(entry: SignerEntry, sobject: str, roles: Sequence[ContactRoleRow]) -> list[ResolvedSigner]:
    where = "in the Contact Roles related list of the opportunity"
    if entry.is_primary:
        chosen = [r for r in roles if r.is_primary][:1]
        if not chosen:
            raise SignerMissing(f"{sobject} has no primary contact role: add the contact who signs {where} and "
                                f"mark them Primary, {RETRY}.")
    else:
        chosen = [r for r in roles if (r.role or "").lower() == (entry.contact_role or "").lower()]
        if not chosen:
            raise SignerMissing(f"{sobject} has no contact role {entry.contact_role!r}: add the contact who signs "
                                f"with the role {entry.contact_role!r} {where}, {RETRY}.")
    out = []
    for row in chosen:
        if not row.email:
            what = "the primary contact" if entry.is_primary else f"contact role {entry.contact_role!r}"
            raise SignerMissing(f"Contact {row.name or row.contact_id} ({what}) has no e-mail address, so they "
                                f"cannot be invited to sign: add their e-mail on the contact, {RETRY}.")
        out.append(ResolvedSigner(0, row.name or row.email, row.email, SignerSource.CONTACT_ROLE, row.contact_id,
                                  row.role))
    return out


def _quote(source: SignerSource, quote: QuoteSignerRow | None) -> ResolvedSigner:
    if quote is None:
        raise SignerMissing(f"The quote could not be read to find its signer, {RETRY}.")
    if source is SignerSource.QUOTE_CONTACT:
        if quote.contact_id is None:
            raise SignerMissing(f"The quote has no contact: choose the contact who signs on the quote, {RETRY}.")
        if not quote.contact_email:
            raise SignerMissing(f"Contact {quote.contact_name or quote.contact_id} (the quote's contact) has no "
                                f"e-mail address: add their e-mail on the contact, {RETRY}.")
        return ResolvedSigner(0, quote.contact_name or quote.contact_email, quote.contact_email,
                              SignerSource.QUOTE_CONTACT, quote.contact_id)
    if not quote.email:
        raise SignerMissing(f"The quote has no e-mail address: fill the quote's Email field with the signer's "
                            f"address, {RETRY}.")
    same_as_contact = quote.contact_email is not None and quote.contact_email.lower() == quote.email.lower()
    name = (quote.contact_name if same_as_contact else None) or quote.billing_name or quote.email
    return ResolvedSigner(0, name, quote.email, SignerSource.QUOTE_EMAIL)


def _user(ref: str, users: Sequence[UserRow]) -> ResolvedSigner:
    user = next((u for u in users if u.matches(ref)), None)
    fix = "in Setup > Users, or change the rule's `user:` in the rules file"
    if user is None:
        raise SignerMissing(f"The counter-signer {ref!r} the rule names is not a user of this org: create the user "
                            f"{fix}, {RETRY}.")
    if not user.is_active:
        raise SignerMissing(f"The counter-signer {user.name or ref} ({ref}) is an inactive user: activate them {fix}, "
                            f"{RETRY}.")
    if not user.email:
        raise SignerMissing(f"The counter-signer {user.name or ref} ({ref}) has no e-mail address: add it {fix}, "
                            f"{RETRY}.")
    return ResolvedSigner(0, user.name or user.email, user.email, SignerSource.USER, user.id)


async def read_signers(querier: Querier, signers: SignersConfig, sobject: str, record_id: str) -> list[ResolvedSigner]:
    """Read what the rule's signers need from the org (one query per kind it names) and resolve them."""
    sources = {entry.source for _, _, entry in signers.entries()}
    records = SignerRecords(
        contact_roles=await read_contact_roles(querier, record_id) if SignerSource.CONTACT_ROLE in sources else (),
        quote=await read_quote_signers(querier, record_id)
        if sources & {SignerSource.QUOTE_CONTACT, SignerSource.QUOTE_EMAIL} else None,
        users=await read_users(querier, signers.users()),
    )
    return resolve_signers(signers, sobject, records)


def dump_signers(signers: Sequence[ResolvedSigner]) -> str:
    """The resolved signers as the job keeps them (`jobs.signers_json`), so a restart does not read them again."""
    return json.dumps([{**asdict(s), "source": s.source.value} for s in signers])


def load_signers(text: str) -> list[ResolvedSigner]:
    return [ResolvedSigner(**{**row, "source": SignerSource(row["source"])}) for row in json.loads(text)]


def document_signers(signers: Sequence[ResolvedSigner], seller: str) -> list[DocumentSigner]:
    """One signature box per signer, in signing order; a counter-signing user signs for the seller."""
    return [DocumentSigner(name=s.name, role=s.role or "", organisation=seller if s.source is SignerSource.USER else "")
            for s in signers]
