"""Display formatting for documents and mails: money, quantities, percentages and dates per language.

Done in Python with `Decimal` (exact, half-up) so templates never do arithmetic or rounding, and shared by
the document templates (`render.build_template_data`) and the customer-signing mails, so a date reads the
same in the contract and in the invitation.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel

CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "INR": "₹"}
_ZERO_DECIMAL_CURRENCIES = frozenset({"JPY", "KRW", "CLP", "ISK", "VND"})
_MINUS = "\u2212"
_NBSP = "\u00a0"
_NNBSP = "\u202f"


class _NumberStyle(BaseModel):
    group: str
    decimal: str
    symbol_after: bool  # "1.234,50 €" rather than "€1,234.50"
    percent: str  # text between number and "%"


_STYLES = {
    "en": _NumberStyle(group=",", decimal=".", symbol_after=False, percent=""),
    "de": _NumberStyle(group=".", decimal=",", symbol_after=True, percent=_NBSP),
    "fr": _NumberStyle(group=_NNBSP, decimal=",", symbol_after=True, percent=_NNBSP),
}

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
}

_LOCALE_RE = re.compile(r"^(?P<lang>[A-Za-z]{2,3})(?:[-_](?P<region>[A-Za-z]{2}))?")


def lang_region(locale: str) -> tuple[str, str | None]:
    match = _LOCALE_RE.match(locale.strip())
    if not match:
        return "en", None
    region = match.group("region")
    return match.group("lang").lower(), region.upper() if region else None


def _group_digits(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return sep.join(parts)


def _format_number(value: Decimal, style: _NumberStyle, places: int | None) -> str:
    """places=None keeps the significant decimals (quantities); otherwise round half-up."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        text = f"{abs(value):.{places}f}"
    else:
        text = format(abs(value).normalize(), "f")
    integer, _, fraction = text.partition(".")
    out = _group_digits(integer, style.group)
    if fraction:
        out += style.decimal + fraction
    return (_MINUS if value < 0 else "") + out


def format_money(value: Decimal, currency: str, locale: str = "en") -> str:
    """ "€1,234.50" (en), "1.234,50 €" (de), "CHF 1,234.50" for currencies without a known symbol."""
    lang, _ = lang_region(locale)
    style = _STYLES.get(lang, _STYLES["en"])
    code = currency.upper()
    places = 0 if code in _ZERO_DECIMAL_CURRENCIES else 2
    rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = _MINUS if rounded < 0 else ""
    number = _format_number(abs(rounded), style, places)
    symbol = CURRENCY_SYMBOLS.get(code)
    if style.symbol_after:
        return f"{sign}{number}{_NBSP}{symbol or code}"
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{code}{_NBSP}{number}"


def format_quantity(value: Decimal, locale: str = "en") -> str:
    style = _STYLES.get(lang_region(locale)[0], _STYLES["en"])
    return _format_number(value, style, None)


def format_percent(value: Decimal, locale: str = "en") -> str:
    if value == 0:
        return "\u2013"  # en dash: no discount
    style = _STYLES.get(lang_region(locale)[0], _STYLES["en"])
    return f"{_format_number(value, style, None)}{style.percent}%"


def format_date(value: dt.date, locale: str = "en") -> str:
    lang, _ = lang_region(locale)
    months = _MONTHS.get(lang)
    if months is None:
        return value.isoformat()
    month = months.split()[value.month - 1]
    if lang == "de":
        return f"{value.day}. {month} {value.year}"
    return f"{value.day} {month} {value.year}"
