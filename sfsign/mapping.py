"""Salesforce records → the neutral `ContractDocument` a template prints.

This is where "can this record become a contract?" is decided. A record without line items, without
a customer or without a contact cannot be rendered; the reason is written on the record for the sales
rep, phrased as what to do, and the job stays retryable once the record is fixed.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from sfsign.config import RuleConfig, Rules
from sfsign.documents.model import Contact, ContractDocument, LineItem, Party, SignatureBox, Totals
from sfsign.salesforce.records import AccountInfo, Address, LineItemInfo, OpportunityRecord, QuoteRecord

CENT = Decimal("0.01")
log = structlog.get_logger("sfsign.mapping")

# Fields a template prints on several lines; in every other field a line break or tab becomes a space.
MULTILINE_FIELDS = frozenset({"street", "description", "notes", "terms"})
_LINE_BREAKS = re.compile("[\x0b\x0c\x85]")  # vertical tab, form feed, next line: a newline at most
_SPACES = re.compile("[\t\n\x0b\x0c\x85]")
# C0 and C1 controls and DEL: no font draws them, and PDF/A refuses a text it cannot draw.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Lone surrogates (JSON can carry them) and the 66 noncharacters are not text: printed as U+FFFD.
_NONCHARACTERS = "".join(chr(plane + 0xFFFE) + chr(plane + 0xFFFF) for plane in range(0, 0x110000, 0x10000))
_NOT_TEXT = re.compile("[\ud800-\udfff\ufdd0-\ufdef" + re.escape(_NONCHARACTERS) + "]")
# Anything `printable` might change: most values have none of it and are returned as they are.
_SUSPECT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + re.escape(_NONCHARACTERS) + "]")


# The document's title when the rule sets none, in the rule's language (as the template's labels are).
DEFAULT_TITLES = {
    "en": {"proposal": "Proposal", "quote": "Quote", "order": "Order confirmation"},
    "de": {"proposal": "Projektangebot", "quote": "Angebot", "order": "Auftragsbestätigung"},
}


def _default_title(rule: RuleConfig, rules: Rules, kind: str) -> str:
    """The rule's title, else what the document is, in the rule's language: the built-in order
    confirmation template is an order confirmation whichever object it prints."""
    if rule.title:
        return rule.title
    return DEFAULT_TITLES[rule.language]["order" if rules.templates.get(rule.name) == "order" else kind]


class NotRenderable(ValueError):
    """The record lacks data the document needs; the message tells the rep what to add."""


def _party(name: str | None, address: Address | None, phone: str | None = None) -> Party:
    address = address or Address()
    return Party(
        name=name or "",
        street=address.street or "",
        city=address.city or "",
        postal_code=address.postal_code or "",
        state=address.state or "",
        country=address.country or "",
        phone=phone or "",
    )


def _lines(items: list[LineItemInfo], what: str) -> list[LineItem]:
    if not items:
        raise NotRenderable(
            f"The {what} has no products (line items). Add at least one product, then set the stage again "
            "or run `sfsign retry`."
        )
    out = []
    for i, item in enumerate(items, 1):
        if item.quantity is None or item.unit_price is None:
            raise NotRenderable(f"Line {i} of the {what} has no quantity or sales price.")
        discount = item.discount_percent or Decimal("0")
        total = item.total_price
        if total is None:
            total = item.quantity * item.unit_price * (1 - discount / 100)
        out.append(
            LineItem(
                name=item.name or item.product_code or f"Item {i}",
                description=item.description or "",
                product_code=item.product_code or "",
                quantity=item.quantity,
                unit_price=item.unit_price,
                discount_percent=discount,
                total=total.quantize(CENT),
            )
        )
    return out


def _customer(account: AccountInfo | None, what: str) -> Party:
    if account is None or not account.name:
        raise NotRenderable(f"The {what} has no account, so there is no customer to address the document to.")
    return _party(account.name, account.billing_address, account.phone)


def printable(value: str, *, multiline: bool) -> tuple[str, int]:
    """`value` without what no template can print, and how many characters that changed.

    Control characters are dropped (a NUL or an escape sequence pasted from a terminal carries no
    meaning on paper), line breaks and tabs survive only where the template prints several lines,
    and what is not text at all becomes U+FFFD so the reader sees that something was there.
    """
    if _SUSPECT.search(value) is None:  # the common case, once per value of every document: one scan
        return value, 0
    text = value.replace("\r\n", "\n").replace("\r", "\n")  # a Windows line end is still one line end
    if multiline:
        text, changed = _LINE_BREAKS.subn("\n", text)
    else:
        text, changed = _SPACES.subn(" ", text)
    text, removed = _CONTROLS.subn("", text)
    text, replaced = _NOT_TEXT.subn("\ufffd", text)
    return text, changed + removed + replaced


def _printable_values(value: Any, path: str, field: str, changes: dict[str, int]) -> Any:
    if isinstance(value, str):
        # A rule's own fields (`fields.*`) may be long text areas: their line breaks are kept.
        text, changed = printable(value, multiline=field in MULTILINE_FIELDS or path.startswith("fields."))
        if changed:
            changes[path] = changed
        return text
    if isinstance(value, dict):
        return {k: _printable_values(v, f"{path}.{k}" if path else k, k, changes) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_values(v, f"{path}[{i}]", field, changes) for i, v in enumerate(value)]
    return value


def _texts(value: Any, out: list[str]) -> None:
    """Every string in `value` (a dumped document), in no particular order."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _texts(v, out)
    elif isinstance(value, list):
        for v in value:
            _texts(v, out)


def printable_document(document: ContractDocument) -> ContractDocument:
    """`document` with every text made printable (`printable`), each change noted in the job log by
    field and count, never by value: the values are customer data."""
    dumped = document.model_dump()
    texts: list[str] = []
    _texts(dumped, texts)
    if _SUSPECT.search("".join(texts)) is None:  # one character class: a match never spans two values
        return document  # the common case, once per document: one scan, no field paths built
    changes: dict[str, int] = {}
    cleaned = _printable_values(dumped, "", "", changes)
    if not changes:
        return document
    for field, count in changes.items():
        log.warning("unprintable characters removed or replaced in a printed value", field=field, characters=count)
    return ContractDocument.model_validate(cleaned)


def build_document(
    record: OpportunityRecord | QuoteRecord,
    rule: RuleConfig,
    rules: Rules,
    transaction_id: str,
    now: datetime,
) -> ContractDocument:
    """The document the template prints for `record`, every value printable (`printable_document`)."""
    return printable_document(_build_document(record, rule, rules, transaction_id, now))


def _build_document(
    record: OpportunityRecord | QuoteRecord,
    rule: RuleConfig,
    rules: Rules,
    transaction_id: str,
    now: datetime,
) -> ContractDocument:
    profile = rules.profiles[rule.profile]
    common: dict[str, Any] = {
        "seller": Party(**rules.seller.model_dump(exclude={"currency"})),
        "signature": SignatureBox(
            signer_name=profile.appearance.name,
            location=profile.appearance.location,
            reason=profile.appearance.reason,
        ),
        "currency": record.currency or rules.seller.currency,
        "terms": list(rule.terms),
        "notes": record.description or "",
        "transaction_id": transaction_id,
        "locale": rule.language,
        "fields": {f: record.fields.get(f) for f in rule.fields},
    }
    if isinstance(record, OpportunityRecord):
        return ContractDocument(**common, **_proposal_parts(record, rule, rules, now.date()))
    return ContractDocument(**common, **_quote_parts(record, rule, rules, now.date()))


def _proposal_parts(record: OpportunityRecord, rule: RuleConfig, rules: Rules, today: date) -> dict[str, Any]:
    """An opportunity's proposal: its products, its account, its primary contact; totals from the lines."""
    what = "opportunity"
    lines = _lines(record.lines, what)
    customer = _customer(record.account, what)
    contact = record.primary_contact
    if contact is None or not contact.name:
        raise NotRenderable(
            "The opportunity has no primary contact. Add a contact role marked Primary, then set the "
            "stage again or run `sfsign retry`."
        )
    subtotal = sum((li.quantity * li.unit_price for li in lines), Decimal("0")).quantize(CENT)
    total = sum((li.total for li in lines), Decimal("0")).quantize(CENT)
    return {
        "kind": "proposal",
        "title": _default_title(rule, rules, "proposal"),
        "number": record.name or record.id,
        "issue_date": today,
        "valid_until": today + timedelta(days=rule.valid_days) if rule.valid_days else None,
        "customer": customer,
        "contact": Contact(name=contact.name, title=contact.title or "", email=contact.email or "",
                           phone=contact.phone or ""),
        "lines": lines,
        "totals": Totals(subtotal=subtotal, discount=subtotal - total, total=total),
    }


def _quote_parts(record: QuoteRecord, rule: RuleConfig, rules: Rules, today: date) -> dict[str, Any]:
    """A quote: its lines, its bill-to (else its account), its contact; totals as Salesforce computed them
    where the quote carries them, else from the lines."""
    what = "quote"
    lines = _lines(record.lines, what)
    if record.contact is None or not record.contact.name:
        raise NotRenderable("The quote has no contact. Choose a contact on the quote, then approve it again.")
    customer = (
        _party(record.billing.name, record.billing.address)
        if record.billing.name
        else _customer(record.account, what)
    )
    quote_subtotal = (
        record.subtotal
        if record.subtotal is not None
        else sum((li.quantity * li.unit_price for li in lines), Decimal("0"))
    )
    net = record.total_price if record.total_price is not None else sum((li.total for li in lines), Decimal("0"))
    tax = record.tax or Decimal("0")
    grand = record.grand_total if record.grand_total is not None else net + tax
    return {
        "kind": "quote",
        "title": _default_title(rule, rules, "quote"),
        "number": record.quote_number or record.name or record.id,
        "issue_date": today,
        "valid_until": record.expiration_date
        or (today + timedelta(days=rule.valid_days) if rule.valid_days else None),
        "customer": customer,
        "contact": Contact(name=record.contact.name, title=record.contact.title or "",
                           email=record.contact.email or "", phone=record.contact.phone or ""),
        "lines": lines,
        "totals": Totals(
            subtotal=quote_subtotal.quantize(CENT),
            discount=(quote_subtotal - net).quantize(CENT),
            tax=tax.quantize(CENT),
            total=grand.quantize(CENT),
        ),
    }


# Characters a file name may keep: whatever a multipart header, a file system or a download dialog
# does with the rest, these pass. One record's name must never make the batch it rides in malformed.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9 \-_.()]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
TITLE_MAX = 255  # ContentVersion.Title


def file_title_for(rule: RuleConfig, document: ContractDocument, record_id: str) -> str:
    """The title reps see in Files, from the rule's pattern, as written (accents, emoji and all); only
    control characters (invisible, and a line break has no place in a title) become spaces."""
    title = rule.file_name.format(
        kind=document.title,
        number=document.number,
        name=document.customer.name,
        date=document.issue_date.isoformat(),
        transaction_id=document.transaction_id,
        record_id=record_id,
    )
    title = " ".join(_CONTROL.sub(" ", title).split())
    if title.lower().endswith(".pdf"):
        title = title[:-4].rstrip()
    return title[:TITLE_MAX] or document.transaction_id


def file_name_for(title: str, transaction_id: str) -> str:
    """The file name (`PathOnClient`, the upload's multipart filename) for `title`: ASCII letters, digits,
    space and `-_.()` only; accents lose their marks, anything else becomes `-`. Never a path."""
    ascii_only = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"([-.])[-.]+", r"\1", " ".join(_NOT_ALLOWED.sub("-", ascii_only).split()))
    return (name[: TITLE_MAX - 4].strip(" .-") or transaction_id) + ".pdf"
