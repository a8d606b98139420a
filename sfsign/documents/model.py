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


class SignatureBox(BaseModel):
    """Who signs for the seller; the template draws the box, the signer fills it."""

    model_config = ConfigDict(frozen=True)

    signer_name: str
    signer_title: str = ""
    location: str = ""
    reason: str = ""


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
    signature: SignatureBox
    transaction_id: str  # printed in the footer so paper and record can be matched
