"""Records → contract documents, and the reasons a record cannot become one."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sfsign.config import Rules, load_rules
from sfsign.mapping import NotRenderable, build_document, file_name_for, file_title_for
from sfsign.salesforce.records import (
    AccountInfo,
    Address,
    BillingInfo,
    ContactInfo,
    LineItemInfo,
    OpportunityRecord,
    QuoteRecord,
)

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules(REPO / "config" / "rules.yaml")


def _line(q: str, price: str, disc: str = "0", total: str | None = None) -> LineItemInfo:
    return LineItemInfo(name="Cloud Suite", product_code="CS-1", quantity=Decimal(q), unit_price=Decimal(price),
                        discount_percent=Decimal(disc), total_price=Decimal(total) if total else None)


def _opp(**kw: object) -> OpportunityRecord:
    base: dict[str, object] = {
        "id": "0065g00000AbCdEAAV", "name": "Acme renewal 2027", "currency": "USD",
        "account": AccountInfo(name="Acme Corp", billing_address=Address(street="1 Main St", city="Boston",
                                                                           country="USA")),
        "primary_contact": ContactInfo(name="Jane Doe", email="jane@acme.example"),
        "lines": [_line("2", "100.00", "10", "180.00"), _line("1", "50.00")],
    }
    base.update(kw)
    return OpportunityRecord(**base)  # type: ignore[arg-type]


def test_opportunity_becomes_a_proposal_with_totals(rules: Rules) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    doc = build_document(_opp(), rule, rules, "tx-1", NOW)
    assert (doc.kind, doc.number, doc.currency, doc.customer.name) == ("proposal", "Acme renewal 2027", "USD",
                                                                       "Acme Corp")
    assert [li.total for li in doc.lines] == [Decimal("180.00"), Decimal("50.00")]
    assert (doc.totals.subtotal, doc.totals.discount, doc.totals.total) == (
        Decimal("250.00"), Decimal("20.00"), Decimal("230.00"))
    assert doc.valid_until == date(2026, 12, 27) and doc.signature.signer_name == "Northwind Cloud GmbH"
    title = file_title_for(rule, doc, "0065g00000AbCdEAAV")
    assert title == "Proposal Acme renewal 2027 2026-11-27"
    assert file_name_for(title, "tx-1") == "Proposal Acme renewal 2027 2026-11-27.pdf"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"lines": []}, "has no products"),
        ({"primary_contact": None}, "no primary contact"),
        ({"account": None}, "no account"),
    ],
)
def test_opportunity_missing_data_is_not_renderable(rules: Rules, change: dict[str, object], reason: str) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    with pytest.raises(NotRenderable, match=reason):
        build_document(_opp(**change), rule, rules, "tx-1", NOW)


def test_quote_uses_its_own_totals_billing_name_and_expiry(rules: Rules) -> None:
    rule = rules.by_name("quote-approved")
    assert rule is not None
    quote = QuoteRecord(
        id="0Q05g000000AbCdCAK", quote_number="00000042", currency="EUR", subtotal=Decimal("250"),
        total_price=Decimal("230"), tax=Decimal("43.70"), grand_total=Decimal("273.70"),
        expiration_date=date(2027, 1, 31), billing=BillingInfo(name="Acme GmbH", address=Address(city="Berlin")),
        contact=ContactInfo(name="Jane Doe"), lines=[_line("2", "100.00", "10", "180.00"), _line("1", "50.00")],
    )
    doc = build_document(quote, rule, rules, "tx-2", NOW)
    assert (doc.number, doc.customer.name, doc.valid_until) == ("00000042", "Acme GmbH", date(2027, 1, 31))
    assert (doc.totals.discount, doc.totals.tax, doc.totals.total) == (
        Decimal("20.00"), Decimal("43.70"), Decimal("273.70"))


def test_file_names_never_become_paths(rules: Rules) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    doc = build_document(_opp(name="../../etc/passwd: a/b"), rule, rules, "tx-1", NOW)
    name = file_name_for(file_title_for(rule, doc, "0065g00000AbCdEAAV"), "tx-1")
    assert "/" not in name and ":" not in name and ".." not in name and name.endswith(".pdf")


@pytest.mark.parametrize(
    ("number", "title", "name"),
    [
        ("Müller & Söhne 🚀 Rollout", "Proposal Müller & Söhne 🚀 Rollout 2026-11-27",
         "Proposal Muller - Sohne Rollout 2026-11-27.pdf"),
        # control characters: DEL is removed, tab and newline become spaces (build_document cleans every value)
        ("Tab\tand\x7fdel\nline", "Proposal Tab anddel line 2026-11-27", "Proposal Tab anddel line 2026-11-27.pdf"),
        ("東京 (Tokyo) 50% \"off\"", "Proposal 東京 (Tokyo) 50% \"off\" 2026-11-27",
         "Proposal (Tokyo) 50- -off- 2026-11-27.pdf"),
    ],
)
def test_file_names_keep_allow_listed_characters_only_and_the_title_stays_as_written(
    rules: Rules, number: str, title: str, name: str
) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    doc = build_document(_opp(name=number), rule, rules, "tx-1", NOW)
    assert file_title_for(rule, doc, "0065g00000AbCdEAAV") == title
    got = file_name_for(title, "tx-1")
    assert got == name
    assert re.fullmatch(r"[A-Za-z0-9 \-_.()]+", got)


def test_a_name_of_nothing_but_disallowed_characters_falls_back_to_the_transaction_id() -> None:
    assert file_name_for("🚀🚀 ...", "tx-42") == "tx-42.pdf"
    assert len(file_name_for("x" * 400, "tx-42")) == 255
