"""The REST JSON of a record, as `records.SELECT`s ask for it, made into a typed `SignableRecord`.

Salesforce's JSON has its own shapes to get right (an `attributes` key on every row, a parent that is
null when the lookup is empty, a child subquery that is null when there are no children or that
comes in several batches, numbers as floats or strings): they are all handled here, once, and a row
that does not have the shape the query asked for is a `RecordParseError`, never a half-filled
contract. `fetch_records` is the one call that reads records and parses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from sfsign.salesforce.names import Record
from sfsign.salesforce.records import (
    AccountInfo,
    Address,
    BillingInfo,
    ContactInfo,
    LineItemInfo,
    OpportunityRecord,
    Querier,
    QuoteRecord,
    RecordParseError,
    SignableRecord,
    UserInfo,
    record_queries,
)


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


_PARSERS: dict[str, Callable[[Mapping[str, Any]], SignableRecord]] = {
    "Opportunity": parse_opportunity,
    "Quote": parse_quote,
}


def parse_records(
    sobject: str, ids: Iterable[str], results: Iterable[list[dict[str, Any]]], *, extra: Sequence[str] = ()
) -> dict[str, SignableRecord]:
    """The answers to `record_queries(sobject, ids, ...)` as typed records.

    Keys are the ids as Salesforce returns them (18 characters) and, for any 15-character id the
    caller asked for, that id too. Ids that do not exist (or are not visible) are simply absent."""
    if sobject not in _PARSERS:
        raise ValueError(f"cannot fetch {sobject!r}: only Opportunity and Quote are supported")
    parse = _PARSERS[sobject]
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
