from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from sfsign.documents.formatting import format_date, format_money, format_percent, format_quantity

NBSP = "\u00a0"


@pytest.mark.parametrize(
    ("value", "currency", "locale", "expected"),
    [
        ("1234567.891", "EUR", "en", "€1,234,567.89"),
        ("1234567.891", "EUR", "de", f"1.234.567,89{NBSP}€"),
        ("1234567.891", "EUR", "de_DE", f"1.234.567,89{NBSP}€"),
        ("1234.5", "USD", "en_US", "$1,234.50"),
        ("0.005", "USD", "en", "$0.01"),  # commercial rounding, half up
        ("0.004", "USD", "en", "$0.00"),
        ("-1500", "USD", "en", "\u2212$1,500.00"),
        ("-0.001", "EUR", "en", "€0.00"),  # no negative zero
        ("999.999", "EUR", "en", "€1,000.00"),
        ("150000", "JPY", "en", "¥150,000"),
        ("1234.5", "CHF", "en", f"CHF{NBSP}1,234.50"),
        ("1234.5", "chf", "de", f"1.234,50{NBSP}CHF"),
        ("1234.5", "EUR", "xx", "€1,234.50"),  # unknown locale falls back to English
        ("12", "EUR", "en", "€12.00"),
    ],
)
def test_format_money(value: str, currency: str, locale: str, expected: str) -> None:
    assert format_money(Decimal(value), currency, locale) == expected


def test_quantities_keep_significant_decimals_only() -> None:
    assert format_quantity(Decimal("10.00")) == "10"
    assert format_quantity(Decimal("2.50")) == "2.5"
    assert format_quantity(Decimal("12500")) == "12,500"
    assert format_quantity(Decimal("1E+3")) == "1,000"
    assert format_quantity(Decimal("1234.5"), "de") == "1.234,5"


def test_percentages() -> None:
    assert format_percent(Decimal("0")) == "\u2013"
    assert format_percent(Decimal("12.50")) == "12.5%"
    assert format_percent(Decimal("5"), "de") == f"5{NBSP}%"


def test_dates() -> None:
    day = dt.date(2025, 3, 7)
    assert format_date(day) == "7 March 2025"
    assert format_date(day, "de") == "7. März 2025"
    assert format_date(day, "fr_FR") == "7 mars 2025"
    assert format_date(day, "ja") == "2025-03-07"
