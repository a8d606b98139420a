"""Record values a template cannot print (NUL, control bytes, lone surrogates) are removed or replaced when
the record becomes a document, and the job log says which field changed, never what it held."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sfsign.config import Rules, load_rules
from sfsign.documents.render import render_pdf
from sfsign.mapping import build_document, printable
from sfsign.salesforce.records import AccountInfo, Address, ContactInfo, LineItemInfo, OpportunityRecord

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules(REPO / "config" / "rules.yaml")


def _opp(name: str, account: str, street: str, description: str) -> OpportunityRecord:
    return OpportunityRecord(
        id="0065g00000AbCdEAAV", name=name, currency="EUR",
        account=AccountInfo(name=account, billing_address=Address(street=street, city="Köln")),
        primary_contact=ContactInfo(name="Jane Doe"),
        lines=[LineItemInfo(name="Cloud Suite", description=description, quantity=Decimal(1),
                            unit_price=Decimal(10), total_price=Decimal(10))],
    )


@pytest.mark.parametrize(
    ("value", "multiline", "expected", "changed"),
    [
        ("Acme\x00 AG", False, "Acme AG", 1),
        ("bell\x07 esc\x1b[31m red", False, "bell esc[31m red", 2),
        ("DEL\x7f and C1\x85\x9f", False, "DEL and C1 ", 3),
        ("two\nlines\tand a tab", False, "two lines and a tab", 2),
        ("two\nlines\tand a tab", True, "two\nlines\tand a tab", 0),
        ("windows\r\nline\rends", True, "windows\nline\nends", 0),
        ("page\x0cbreak", True, "page\nbreak", 1),
        ("lone \ud83d surrogate", False, "lone \ufffd surrogate", 1),
        ("nonchar \ufffe\U0010ffff\ufdd0", False, "nonchar \ufffd\ufffd\ufffd", 3),
        ("e\u0301 \U0001f468\u200d\U0001f469\u200d\U0001f467 \u200f\u05e9\u05dc\u05d5\u05dd", False,
         "e\u0301 \U0001f468\u200d\U0001f469\u200d\U0001f467 \u200f\u05e9\u05dc\u05d5\u05dd", 0),
    ],
)
def test_printable_removes_controls_and_keeps_text(value: str, multiline: bool, expected: str, changed: int) -> None:
    assert printable(value, multiline=multiline) == (expected, changed)


def test_build_document_cleans_record_values_and_logs_fields_not_values(rules: Rules) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    secretish = "Geheim\x00Projekt"
    record = _opp(name=secretish, account="Acme\x1b AG\n", street="Hauptstr. 1\r\nHinterhaus\x07",
                  description="Line\x00one\x0b")
    with capture_logs() as logs:
        doc = build_document(record, rule, rules, "tx-1", NOW)
    assert doc.number == "GeheimProjekt"
    assert doc.customer.name == "Acme AG "
    assert doc.customer.street == "Hauptstr. 1\nHinterhaus"  # an address keeps its lines
    assert doc.lines[0].description == "Lineone\n"
    assert doc.lines[0].total == Decimal("10.00")  # amounts survive the round trip exactly
    fields = {entry["field"]: entry["characters"] for entry in logs if "field" in entry}
    assert fields == {"number": 1, "customer.name": 2, "customer.street": 1, "lines[0].description": 2}
    assert all(entry["log_level"] == "warning" for entry in logs)
    assert secretish not in repr(logs) and "GeheimProjekt" not in repr(logs)


def test_clean_record_is_left_alone_and_logs_nothing(rules: Rules) -> None:
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    with capture_logs() as logs:
        build_document(_opp("Renewal 2027 \U0001f680", "Müller AG", "Ring 2\nTor 3", "ok"), rule, rules, "tx-1",
                       NOW)
    assert logs == []


def test_record_with_control_bytes_renders(rules: Rules) -> None:
    """The bytes that made Typst fail ('could not be displayed with font') are gone before rendering."""
    rule = rules.by_name("opportunity-proposal")
    assert rule is not None
    record = _opp(name="Deal\x00\x01\x02", account="Acme\x1f\x7f AG", street="x\x85y", description="\x9f")
    rendered = render_pdf(build_document(record, rule, rules, "tx-1", NOW), "proposal")
    assert rendered.notes == ()  # nothing left for the renderer to replace
