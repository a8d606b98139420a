"""The data a template receives: a neutral contract document, not a Salesforce record.

The worker maps Opportunity/Quote records onto this model; templates and the signer never see
Salesforce field names, so the documents layer can be tested and reused without an org.
Amounts are Decimal and serialised as strings so no float rounding reaches a contract.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class Party(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    street: str = ""
    city: str = ""
    postal_code: str = ""
    state: str = ""
    country: str = ""
    vat_id: str = ""
    email: str = ""
    phone: str = ""


class Contact(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    title: str = ""
    email: str = ""
    phone: str = ""


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    product_code: str = ""
    quantity: Decimal
    unit_price: Decimal
    discount_percent: Decimal = Decimal("0")
    total: Decimal  # after discount

    @field_serializer("quantity", "unit_price", "discount_percent", "total")
    def _dec(self, v: Decimal) -> str:
        return str(v)


class Totals(BaseModel):
    model_config = ConfigDict(frozen=True)

    subtotal: Decimal  # sum of list price x quantity
    discount: Decimal  # subtotal - net
    tax: Decimal = Decimal("0")
    total: Decimal  # what the customer pays

    @field_serializer("subtotal", "discount", "tax", "total")
    def _dec(self, v: Decimal) -> str:
        return str(v)


class Signatory(BaseModel):
    """Who signs for the seller; the template draws the box, the signer fills it.

    Named `Signatory` so it is not confused with `render.SignatureBox` (the box's position);
    `SignatureBox` below stays as an alias for code written against the first version.
    """

    model_config = ConfigDict(frozen=True)

    signer_name: str
    signer_title: str = ""
    location: str = ""
    reason: str = ""


SignatureBox = Signatory  # backwards-compatible alias; prefer Signatory


class DocumentSigner(BaseModel):
    """A person who signs the document after the seller's side (a customer, or an internal counter-signer).

    The template draws one signature box per signer, in this order; the first keeps the box (and the
    PDF field) a document without signers has, so existing documents keep working.
    `organisation` names who they sign for when it is not the customer (an internal counter-signer).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    role: str = ""
    organisation: str = ""


class ContractDocument(BaseModel):
    """Everything printed on a proposal or quote."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="'proposal' (Opportunity) or 'quote' (Quote)")
    title: str
    number: str  # e.g. Opportunity name or Quote number
    issue_date: date
    valid_until: date | None = None
    currency: str  # ISO 4217, e.g. EUR
    locale: str = "en"
    seller: Party
    customer: Party
    contact: Contact | None = None
    lines: list[LineItem]
    totals: Totals
    terms: list[str] = Field(default_factory=list)
    notes: str = ""
    signature: Signatory
    transaction_id: str  # printed in the footer so paper and record can be matched
    # Who signs after the seller, in signing order; empty: one unnamed customer box, as before signers existed.
    signers: list[DocumentSigner] = Field(default_factory=list)
    # The record's fields the rule lists (`fields:` in the rules file), by API name as written there:
    # the org's own custom fields reach a template without a change to this model.
    fields: dict[str, str | bool | None] = Field(default_factory=dict)


# The sample data of `sample_contract` (fictitious companies): what a template preview, the demo and the
# benchmarks fill a document with. (name, description, product code, list price) per product.
SAMPLE_CATALOGUE: tuple[tuple[str, str, str, str], ...] = (
    ("Platform licence, Enterprise", "Annual subscription per named user", "PLT-ENT", "1200.00"),
    ("Implementation services", "Remote consulting, per day", "SRV-IMP", "1450.00"),
    ("Premium support", "24/7 support with 1-hour response time, per year", "SUP-PRM", "9800.00"),
    ("Data migration", "Fixed-price migration of legacy records", "SRV-MIG", "7500.00"),
    ("Training workshop", "On-site, up to 12 participants, per day", "TRN-WS", "2200.00"),
    ("Sandbox environment", "Full-copy sandbox, per year", "PLT-SBX", "3600.00"),
    ("API add-on", "Additional 1,000,000 API calls per month", "PLT-API", "450.00"),
    ("Archive storage", "Long-term storage, per TB and year", "STO-ARC", "980.00"),
)
SAMPLE_SELLER_EUR = Party(
    name="Nordlicht Software GmbH",
    street="Hafenstraße 12",
    city="Hamburg",
    postal_code="20457",
    country="Germany",
    vat_id="DE123456789",
    email="sales@nordlicht.example",
    phone="+49 40 1234567",
)
SAMPLE_SELLER_OTHER = Party(
    name="Bluefin Analytics Inc.",
    street="500 Market Street, Suite 300",
    city="San Francisco",
    postal_code="94105",
    state="CA",
    country="United States",
    email="sales@bluefin.example",
    phone="+1 415 555 0100",
)
SAMPLE_CUSTOMER = Party(
    name="Müller & Söhne Logistik AG",
    street="Industriestraße 7",
    city="München",
    postal_code="80331",
    country="Germany",
    vat_id="DE987654321",
)
SAMPLE_CONTACT = Contact(
    name="Dr. Jana Novák",
    title="Head of Procurement",
    email="j.novak@mueller-soehne.example",
    phone="+49 89 7654321",
)
SAMPLE_TERMS: tuple[str, ...] = (
    "Prices are exclusive of statutory VAT unless stated otherwise.",
    "Payment within 30 days of invoice date without deduction.",
    "Subscriptions renew annually unless cancelled three months before the end of the term.",
    "This offer is subject to our General Terms and Conditions (version 2025-01).",
)
SAMPLE_NOTES = ("Implementation days are scheduled jointly after order confirmation. "
                "Travel expenses for on-site work are invoiced at cost.")
SAMPLE_SIGNATORY = Signatory(
    signer_name="Katrin Albers", signer_title="Head of Sales", location="Hamburg", reason="Binding offer"
)


def sample_contract(
    *,
    kind: str = "quote",
    currency: str = "EUR",
    line_count: int = 30,
    locale: str = "en",
    transaction_id: str = "sfs-demo-0000000000000001",
    variant: int = 0,
) -> ContractDocument:
    """Realistic demo data (fictitious companies) for `sfsign demo`, template previews and tests.

    Totals are computed from the lines exactly as the worker's mapping is expected to: subtotal is
    list price x quantity, discount the difference to the net line totals, tax 19 % (EUR) or
    8.25 % (other currencies) of the net amount. `variant` shuffles products and quantities so
    benchmarks can render many different documents.
    """
    lines = _sample_lines(line_count, variant)
    subtotal = sum((line.quantity * line.unit_price for line in lines), Decimal("0"))
    net = sum((line.total for line in lines), Decimal("0"))
    tax_rate = Decimal("0.19") if currency == "EUR" else Decimal("0.0825")
    tax = (net * tax_rate).quantize(Decimal("0.01"))
    return ContractDocument(
        kind=kind,
        title="Customer data platform rollout" if kind == "proposal" else "Platform subscription and services",
        number="Q-2025-00042" if kind == "quote" else "OPP-2025-0815",
        issue_date=date(2025, 11, 27),
        valid_until=date(2025, 12, 31),
        currency=currency,
        locale=locale,
        seller=SAMPLE_SELLER_EUR if currency == "EUR" else SAMPLE_SELLER_OTHER,
        customer=SAMPLE_CUSTOMER,
        contact=SAMPLE_CONTACT,
        lines=lines,
        totals=Totals(subtotal=subtotal, discount=subtotal - net, tax=tax, total=net + tax),
        terms=list(SAMPLE_TERMS),
        notes=SAMPLE_NOTES,
        signature=SAMPLE_SIGNATORY,
        transaction_id=transaction_id,
    )


def _sample_lines(line_count: int, variant: int) -> list[LineItem]:
    """`line_count` lines from the catalogue, quantities and discounts varied by position and `variant`."""
    lines: list[LineItem] = []
    for i in range(line_count):
        name, description, code, price = SAMPLE_CATALOGUE[(i + variant) % len(SAMPLE_CATALOGUE)]
        quantity = Decimal((i * 7 + variant * 3) % 40 + 1)
        unit_price = Decimal(price)
        discount = Decimal((0, 5, 10, 12.5)[i % 4]).quantize(Decimal("0.1"))
        gross = quantity * unit_price
        total = (gross * (Decimal(100) - discount) / Decimal(100)).quantize(Decimal("0.01"))
        lines.append(
            LineItem(
                name=name,
                description=description,
                product_code=f"{code}-{i + 1:03d}",
                quantity=quantity,
                unit_price=unit_price,
                discount_percent=discount,
                total=total,
            )
        )
    return lines
