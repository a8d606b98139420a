"""Typed records the daemon renders from, and the SOQL that reads them.

One query per batch of records fetches the record, its parents (account, owner, contact) and its
line items as child subqueries, so rendering N contracts costs ceil(N/200) API calls, not 4N.
The REST JSON is parsed here (attributes, null parents, null subqueries) so nothing else in the
daemon ever handles raw Salesforce JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol
from urllib.parse import quote_plus

from pydantic import BaseModel, ConfigDict, Field

from sfsign.salesforce.names import Record
from sfsign.salesforce.rest import (
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


# -------------------------------------------------------------------------------------------- parse


def _dec(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordParseError(f"{field}: expected a number, got {value!r}")
    try:
        if isinstance(value, Decimal):
            return value
        if isinstance(value, int | float):
            return Decimal(str(value))
        if isinstance(value, str):
            return Decimal(value)
    except InvalidOperation:
        pass
    raise RecordParseError(f"{field}: expected a number, got {value!r}")


def _str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    raise RecordParseError(f"{field}: expected text, got {type(value).__name__}")


def _date(value: Any, field: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise RecordParseError(f"{field}: expected a date, got {value!r}")


def _int(value: Any, field: str) -> int | None:
    number = _dec(value, field)
    return int(number) if number is not None else None


def _parent(row: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """A child-to-parent relationship: a nested object, or null when the lookup is empty."""
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RecordParseError(f"{name}: expected a related record, got {type(value).__name__}")
    return value


def _children(row: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """A parent-to-child subquery: `{"totalSize","done","records"}`, or null when there are none.

    Only a complete one: a document rendered from the first batch of a paged subquery would miss
    lines without a trace, so a result that is not done (its later batches not read) is refused."""
    value = row.get(name)
    if value is None:
        return []
    if not isinstance(value, Mapping) or not isinstance(value.get("records"), list):
        raise RecordParseError(f"{name}: expected a subquery result")
    if value.get("done", True) is False:
        raise RecordParseError(f"{name}: incomplete subquery result ({len(value['records'])} of "
                               f"{value.get('totalSize')} records read)")
    return [r for r in value["records"] if isinstance(r, Mapping)]


def _account(row: Mapping[str, Any]) -> AccountInfo | None:
    acc = _parent(row, "Account")
    if acc is None:
        return None
    return AccountInfo(
        name=_str(acc.get("Name"), "Account.Name"),
        billing_address=Address(
            street=_str(acc.get("BillingStreet"), "Account.BillingStreet"),
            city=_str(acc.get("BillingCity"), "Account.BillingCity"),
            postal_code=_str(acc.get("BillingPostalCode"), "Account.BillingPostalCode"),
            state=_str(acc.get("BillingState"), "Account.BillingState"),
            country=_str(acc.get("BillingCountry"), "Account.BillingCountry"),
        ),
        phone=_str(acc.get("Phone"), "Account.Phone"),
    )


def _user(user: Mapping[str, Any] | None, where: str) -> UserInfo | None:
    if user is None:
        return None
    return UserInfo(
        name=_str(user.get("Name"), f"{where}.Name"),
        email=_str(user.get("Email"), f"{where}.Email"),
        title=_str(user.get("Title"), f"{where}.Title"),
    )


def _contact(contact: Mapping[str, Any] | None, role: str | None = None) -> ContactInfo | None:
    if contact is None:
        return None
    return ContactInfo(
        name=_str(contact.get("Name"), "Contact.Name"),
        title=_str(contact.get("Title"), "Contact.Title"),
        email=_str(contact.get("Email"), "Contact.Email"),
        phone=_str(contact.get("Phone"), "Contact.Phone"),
        role=role,
    )


def _line(row: Mapping[str, Any]) -> LineItemInfo:
    product = _parent(row, "Product2") or {}
    return LineItemInfo(
        id=_str(row.get("Id"), "line.Id"),
        # The product's name: OpportunityLineItem.Name is "<opportunity name> <product name>".
        name=_str(product.get("Name"), "Product2.Name") or _str(row.get("Name"), "line.Name"),
        product_code=_str(row.get("ProductCode"), "line.ProductCode")
        or _str(product.get("ProductCode"), "Product2.ProductCode"),
        description=_str(row.get("Description"), "line.Description"),
        quantity=_dec(row.get("Quantity"), "line.Quantity"),
        unit_price=_dec(row.get("UnitPrice"), "line.UnitPrice"),
        list_price=_dec(row.get("ListPrice"), "line.ListPrice"),
        discount_percent=_dec(row.get("Discount"), "line.Discount"),
        total_price=_dec(row.get("TotalPrice"), "line.TotalPrice"),
        sort_order=_int(row.get("SortOrder"), "line.SortOrder"),
    )


def parse_opportunity(row: Mapping[str, Any]) -> OpportunityRecord:
    record_id = _str(row.get("Id"), "Id")
    if not record_id:
        raise RecordParseError("Opportunity row without Id")
    roles = _children(row, "OpportunityContactRoles")
    primary = None
    if roles:
        primary = _contact(_parent(roles[0], "Contact"), _str(roles[0].get("Role"), "Role"))
    return OpportunityRecord(
        id=record_id,
        name=_str(row.get("Name"), "Name"),
        stage=_str(row.get("StageName"), "StageName"),
        amount=_dec(row.get("Amount"), "Amount"),
        close_date=_date(row.get("CloseDate"), "CloseDate"),
        currency=_str(row.get("CurrencyIsoCode"), "CurrencyIsoCode"),
        description=_str(row.get("Description"), "Description"),
        account=_account(row),
        owner=_user(_parent(row, "Owner"), "Owner"),
        primary_contact=primary,
        lines=[_line(r) for r in _children(row, "OpportunityLineItems")],
        sign_transaction_id=_str(row.get(Record.TRANSACTION_ID), Record.TRANSACTION_ID),
        sign_status=_str(row.get(Record.STATUS), Record.STATUS),
    )


def parse_quote(row: Mapping[str, Any]) -> QuoteRecord:
    record_id = _str(row.get("Id"), "Id")
    if not record_id:
        raise RecordParseError("Quote row without Id")
    opportunity = _parent(row, "Opportunity")
    return QuoteRecord(
        id=record_id,
        name=_str(row.get("Name"), "Name"),
        quote_number=_str(row.get("QuoteNumber"), "QuoteNumber"),
        status=_str(row.get("Status"), "Status"),
        expiration_date=_date(row.get("ExpirationDate"), "ExpirationDate"),
        currency=_str(row.get("CurrencyIsoCode"), "CurrencyIsoCode"),
        description=_str(row.get("Description"), "Description"),
        subtotal=_dec(row.get("Subtotal"), "Subtotal"),
        discount=_dec(row.get("Discount"), "Discount"),
        total_price=_dec(row.get("TotalPrice"), "TotalPrice"),
        tax=_dec(row.get("Tax"), "Tax"),
        shipping_handling=_dec(row.get("ShippingHandling"), "ShippingHandling"),
        grand_total=_dec(row.get("GrandTotal"), "GrandTotal"),
        email=_str(row.get("Email"), "Email"),
        phone=_str(row.get("Phone"), "Phone"),
        billing=BillingInfo(
            name=_str(row.get("BillingName"), "BillingName"),
            address=Address(
                street=_str(row.get("BillingStreet"), "BillingStreet"),
                city=_str(row.get("BillingCity"), "BillingCity"),
                postal_code=_str(row.get("BillingPostalCode"), "BillingPostalCode"),
                state=_str(row.get("BillingState"), "BillingState"),
                country=_str(row.get("BillingCountry"), "BillingCountry"),
            ),
        ),
        opportunity_id=_str(row.get("OpportunityId"), "OpportunityId"),
        opportunity_name=_str(opportunity.get("Name"), "Opportunity.Name") if opportunity else None,
        owner=_user(_parent(opportunity, "Owner"), "Opportunity.Owner") if opportunity else None,
        account=_account(row),
        contact=_contact(_parent(row, "Contact")),
        lines=[_line(r) for r in _children(row, "QuoteLineItems")],
        sign_transaction_id=_str(row.get(Record.TRANSACTION_ID), Record.TRANSACTION_ID),
        sign_status=_str(row.get(Record.STATUS), Record.STATUS),
    )


def _field_value(row: Mapping[str, Any], path: str) -> str | bool | None:
    """The value at `path` (a field the rule lists, or a parent's such as `Account.Name`) as a template
    prints it: text as is, a number as its exact decimal text, a checkbox as a bool, an empty lookup or
    field as None."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = next((v for k, v in value.items() if k.lower() == part.lower()), None)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float | Decimal):
        return str(value)
    raise RecordParseError(f"{path}: a compound field cannot be printed; list its parts (e.g. BillingCity)")


def _with_fields(record: SignableRecord, row: Mapping[str, Any], extra: Sequence[str]) -> SignableRecord:
    if not extra:
        return record
    return record.model_copy(update={"fields": {f: _field_value(row, f) for f in extra}})


_SELECTS: dict[str, tuple[Callable[..., str], Callable[[Mapping[str, Any]], SignableRecord]]] = {
    "Opportunity": (opportunity_select, parse_opportunity),
    "Quote": (quote_select, parse_quote),
}


# ------------------------------------------------------------------------------------------- fetch


def record_queries(
    sobject: str, ids: Iterable[str], *, multi_currency: bool = True, extra: Sequence[str] = ()
) -> list[str]:
    """The SOQL that reads these records with parents and line items: one query per ≤ 200 ids. Built
    apart from the call, so the worker can send them in one `/composite` with its other reads."""
    if sobject not in _SELECTS:
        raise ValueError(f"cannot fetch {sobject!r}: only Opportunity and Quote are supported")
    select, _parse = _SELECTS[sobject]
    wanted = list(dict.fromkeys(validate_id(i) for i in ids))
    prefix = select(multi_currency, extra)
    return [f"{prefix} WHERE Id IN {soql_id_list(chunk)}" for chunk in chunk_ids(prefix, wanted)]


def parse_records(
    sobject: str, ids: Iterable[str], results: Iterable[list[dict[str, Any]]], *, extra: Sequence[str] = ()
) -> dict[str, SignableRecord]:
    """The answers to `record_queries(sobject, ids, ...)` as typed records.

    Keys are the ids as Salesforce returns them (18 characters) and, for any 15-character id the
    caller asked for, that id too. Ids that do not exist (or are not visible) are simply absent."""
    if sobject not in _SELECTS:
        raise ValueError(f"cannot fetch {sobject!r}: only Opportunity and Quote are supported")
    _select, parse = _SELECTS[sobject]
    out: dict[str, SignableRecord] = {}
    for rows in results:
        for row in rows:
            record = _with_fields(parse(row), row, extra)
            out[record.id] = record
    for requested in dict.fromkeys(ids):
        if requested not in out and len(requested) == 15:
            match = next((r for key, r in out.items() if key[:15] == requested), None)
            if match is not None:
                out[requested] = match
    return out


async def fetch_records(
    rest: Querier, sobject: str, ids: Iterable[str], *, multi_currency: bool = True, extra: Sequence[str] = ()
) -> dict[str, SignableRecord]:
    """Read records with parents and line items: one SOQL query per ≤ 200 ids, five queries per API call.

    Keys as `parse_records`. `multi_currency=False` leaves out CurrencyIsoCode, which single-currency
    orgs do not have. `extra` are the fields the rules list for their templates, read in the same query
    (`record.fields`).
    """
    wanted = list(ids)
    soqls = record_queries(sobject, wanted, multi_currency=multi_currency, extra=extra)
    if len(soqls) == 1:
        results = [await rest.query(soqls[0])]
    else:  # a batch of many records: several queries in one /composite call
        results = await rest.query_many(soqls)
    return parse_records(sobject, wanted, results, extra=extra)


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
