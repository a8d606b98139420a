"""Typed records the daemon renders from, and the SOQL that reads them.

One query per batch of records fetches the record, its parents (account, owner, contact) and its
line items as child subqueries, so rendering N contracts costs ceil(N/200) API calls, not 4N. The
fields a model holds and the fields its SELECT names are kept side by side here, so a new field is
one edit in one place; `record_parsing` turns the REST JSON of the answers into these models, so
nothing else in the daemon ever handles raw Salesforce JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol
from urllib.parse import quote_plus

from pydantic import BaseModel, ConfigDict, Field

from sfsign.salesforce.names import Record
from sfsign.salesforce.soql import (
    soql_datetime,
    soql_id_list,
    soql_quote,
    validate_api_name,
    validate_field_path,
    validate_id,
)

MAX_IDS_PER_QUERY = 200
#: Budget for the URL-encoded `q=` parameter: Salesforce refuses URI + headers over 16,384 bytes.
MAX_ENCODED_SOQL = 14_000


class Querier(Protocol):
    async def query(self, soql: str) -> list[dict[str, Any]]: ...

    async def query_many(self, soqls: Sequence[str]) -> list[list[dict[str, Any]]]: ...


# ------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Address(_Model):
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None
    country: str | None = None


class AccountInfo(_Model):
    name: str | None = None
    billing_address: Address = Field(default_factory=Address)
    phone: str | None = None


class UserInfo(_Model):
    name: str | None = None
    email: str | None = None
    title: str | None = None


class ContactInfo(_Model):
    name: str | None = None
    title: str | None = None
    email: str | None = None
    phone: str | None = None
    role: str | None = None


class LineItemInfo(_Model):
    id: str | None = None
    name: str | None = None
    product_code: str | None = None
    description: str | None = None
    quantity: Decimal | None = None
    unit_price: Decimal | None = None
    list_price: Decimal | None = None
    discount_percent: Decimal | None = None
    total_price: Decimal | None = None
    sort_order: int | None = None


class BillingInfo(_Model):
    name: str | None = None
    address: Address = Field(default_factory=Address)


class OpportunityRecord(_Model):
    sobject: Literal["Opportunity"] = "Opportunity"
    id: str
    name: str | None = None
    stage: str | None = None
    amount: Decimal | None = None
    close_date: date | None = None
    currency: str | None = None
    description: str | None = None
    account: AccountInfo | None = None
    owner: UserInfo | None = None
    primary_contact: ContactInfo | None = None
    lines: list[LineItemInfo] = Field(default_factory=list)
    sign_transaction_id: str | None = None
    sign_status: str | None = None
    # The fields the rules list for templates (API name or path -> value as text, a checkbox as bool).
    fields: dict[str, str | bool | None] = Field(default_factory=dict)


class QuoteRecord(_Model):
    sobject: Literal["Quote"] = "Quote"
    id: str
    name: str | None = None
    quote_number: str | None = None
    status: str | None = None
    expiration_date: date | None = None
    currency: str | None = None
    description: str | None = None
    subtotal: Decimal | None = None
    discount: Decimal | None = None
    total_price: Decimal | None = None
    tax: Decimal | None = None
    shipping_handling: Decimal | None = None
    grand_total: Decimal | None = None
    email: str | None = None
    phone: str | None = None
    billing: BillingInfo = Field(default_factory=BillingInfo)
    opportunity_id: str | None = None
    opportunity_name: str | None = None
    owner: UserInfo | None = None  # Quote has no owner in Salesforce: the opportunity's owner
    account: AccountInfo | None = None
    contact: ContactInfo | None = None
    lines: list[LineItemInfo] = Field(default_factory=list)
    sign_transaction_id: str | None = None
    sign_status: str | None = None
    # The fields the rules list for templates (API name or path -> value as text, a checkbox as bool).
    fields: dict[str, str | bool | None] = Field(default_factory=dict)


SignableRecord = OpportunityRecord | QuoteRecord


class RecordParseError(ValueError):
    """The REST JSON for a record does not have the shape the query asked for."""


# --------------------------------------------------------------------------------------------- SOQL

_ACCOUNT = [
    "Account.Name", "Account.BillingStreet", "Account.BillingCity", "Account.BillingPostalCode",
    "Account.BillingState", "Account.BillingCountry", "Account.Phone",
]


def _extra(fields: list[str], extra: Sequence[str]) -> list[str]:
    """`extra` (fields the rules list for templates) not already selected, each checked as an API name."""
    seen = {f.lower() for f in fields}
    return [validate_field_path(f) for f in dict.fromkeys(extra) if f.lower() not in seen]


def opportunity_select(multi_currency: bool = True, extra: Sequence[str] = ()) -> str:
    """SELECT … FROM Opportunity, without the WHERE clause; `extra` fields in the same query."""
    fields = [
        "Id", "Name", "StageName", "Amount", "CloseDate", *(["CurrencyIsoCode"] if multi_currency else []),
        "Description", Record.TRANSACTION_ID, Record.STATUS, *_ACCOUNT,
        "Owner.Name", "Owner.Email", "Owner.Title",
        "(SELECT Id, Name, ProductCode, Product2.Name, Product2.ProductCode, Description, Quantity, UnitPrice,"
        " ListPrice, Discount, TotalPrice, SortOrder FROM OpportunityLineItems ORDER BY SortOrder, Name)",
        "(SELECT Contact.Name, Contact.Title, Contact.Email, Contact.Phone, Role FROM OpportunityContactRoles"
        " WHERE IsPrimary = true LIMIT 1)",
    ]
    subqueries = [f for f in fields if f.startswith("(")]
    fields = [f for f in fields if not f.startswith("(")]
    return f"SELECT {', '.join([*fields, *_extra(fields, extra), *subqueries])} FROM Opportunity"


def quote_select(multi_currency: bool = True, extra: Sequence[str] = ()) -> str:
    """SELECT … FROM Quote, without the WHERE clause; `extra` fields in the same query."""
    fields = [
        "Id", "Name", "QuoteNumber", "Status", "ExpirationDate",
        *(["CurrencyIsoCode"] if multi_currency else []), "Description", "Subtotal", "Discount",
        "TotalPrice", "Tax", "ShippingHandling", "GrandTotal", "Email", "Phone", "BillingName",
        "BillingStreet", "BillingCity", "BillingPostalCode", "BillingState", "BillingCountry",
        Record.TRANSACTION_ID, Record.STATUS, "OpportunityId", "Opportunity.Name",
        "Opportunity.Owner.Name", "Opportunity.Owner.Email", "Opportunity.Owner.Title", *_ACCOUNT,
        "Contact.Name", "Contact.Title", "Contact.Email", "Contact.Phone",
        "(SELECT Id, LineNumber, Product2.Name, Product2.ProductCode, Description, Quantity, UnitPrice,"
        " ListPrice, Discount, TotalPrice, SortOrder FROM QuoteLineItems ORDER BY SortOrder)",
    ]
    subqueries = [f for f in fields if f.startswith("(")]
    fields = [f for f in fields if not f.startswith("(")]
    return f"SELECT {', '.join([*fields, *_extra(fields, extra), *subqueries])} FROM Quote"


def record_type_filter(record_types: Sequence[str]) -> str:
    """A WHERE condition for records of these record types (DeveloperName); `Master` stands for records
    without a record type, made before the object had any (their RecordTypeId is null)."""
    names = [soql_quote(n) for n in record_types if n != "Master"]
    parts = [f"RecordType.DeveloperName IN ({', '.join(names)})"] if names else []
    if "Master" in record_types:
        parts.append("RecordTypeId = null")
    return parts[0] if len(parts) == 1 else f"({' OR '.join(parts)})"


def chunk_ids(prefix: str, ids: Sequence[str]) -> list[list[str]]:
    """Split ids so each `prefix WHERE Id IN (…)` stays ≤ 200 ids and within the URL budget."""
    base = len(quote_plus(prefix + " WHERE Id IN ()"))
    chunks: list[list[str]] = []
    current: list[str] = []
    size = base
    for record_id in ids:
        cost = len(quote_plus(f"'{record_id}',"))
        if current and (len(current) >= MAX_IDS_PER_QUERY or size + cost > MAX_ENCODED_SOQL):
            chunks.append(current)
            current, size = [], base
        current.append(record_id)
        size += cost
    if current:
        chunks.append(current)
    return chunks


_SELECTS: dict[str, Callable[..., str]] = {"Opportunity": opportunity_select, "Quote": quote_select}


def record_queries(
    sobject: str, ids: Iterable[str], *, multi_currency: bool = True, extra: Sequence[str] = ()
) -> list[str]:
    """The SOQL that reads these records with parents and line items: one query per ≤ 200 ids. Built
    apart from the call, so the worker can send them in one `/composite` with its other reads."""
    if sobject not in _SELECTS:
        raise ValueError(f"cannot fetch {sobject!r}: only Opportunity and Quote are supported")
    select = _SELECTS[sobject]
    wanted = list(dict.fromkeys(validate_id(i) for i in ids))
    prefix = select(multi_currency, extra)
    return [f"{prefix} WHERE Id IN {soql_id_list(chunk)}" for chunk in chunk_ids(prefix, wanted)]


async def find_records_in_state(
    rest: Querier,
    sobject: str,
    field: str,
    values: Iterable[str],
    since: datetime | None = None,
    limit: int = 200,
    record_types: Sequence[str] | None = None,
) -> list[str]:
    """Ids of records sitting in a trigger state without a transaction id (reconciliation), of these
    `record_types` (DeveloperName) only, when given.

    Oldest change first, so a later call with `since` = the last seen LastModifiedDate pages on.
    """
    validate_api_name(sobject)
    validate_field_path(field)
    literals = [soql_quote(v) for v in values]
    if not literals:
        return []
    if not 1 <= limit <= 2000:
        raise ValueError("limit must be between 1 and 2000")
    where = f"{field} IN ({', '.join(literals)}) AND {Record.TRANSACTION_ID} = null"
    if record_types is not None:
        where += f" AND {record_type_filter(record_types)}"
    if since is not None:
        where += f" AND LastModifiedDate >= {soql_datetime(since)}"
    soql = f"SELECT Id, {field} FROM {sobject} WHERE {where} ORDER BY LastModifiedDate LIMIT {int(limit)}"
    rows = await rest.query(soql)
    return [str(r["Id"]) for r in rows if isinstance(r, Mapping) and r.get("Id")]
