"""Salesforce record ids in one canonical spelling: the 18-character case-safe form.

One record has many spellings: the 15-character id (case-sensitive: `006Dn...a` and `006Dn...A` are
two records), its 18-character form, and that form in any other case (a spreadsheet upper-cased it; the
3-character suffix says which of the first 15 characters are upper case, so the case can be restored).
sfsign compares ids, derives transaction ids from them and keeps them in a unique index, so every id
that enters from outside is turned into the canonical form here first.

An 18-character id is taken when its suffix (in any case) matches its first 15 characters as written,
or when those are all in one case (the id went through upper() or lower()) and the suffix restores
them. Anything else is refused: a mixed-case id whose suffix disagrees with it (Salesforce's own
`MALFORMED_ID` example, `001900K0001pPuOAAU`), an upper-case bit on a digit, a character outside the
suffix alphabet. Restoring the case of such an id would pick a record nobody named.

The emulator has its own id code (sfsign/emulator/ids.py): the two sides must not share it.
"""

from __future__ import annotations

import string

_SUFFIX = string.ascii_uppercase + "012345"  # 32 symbols: a 5-bit map of upper-case letters per chunk
_ALNUM = frozenset(string.ascii_letters + string.digits)


class InvalidId(ValueError):
    """Not a Salesforce id in any spelling; the message says why and quotes (a bounded part of) the input."""


def _suffix(id15: str) -> str:
    out = []
    for start in (0, 5, 10):
        bits = sum(1 << pos for pos, ch in enumerate(id15[start:start + 5]) if "A" <= ch <= "Z")
        out.append(_SUFFIX[bits])
    return "".join(out)


def canonical_id(value: object) -> str:
    """The 18-character id of `value` (15 or 18 characters, any case of an 18-character one); raises
    InvalidId for anything else."""
    if not isinstance(value, str):
        raise InvalidId(f"a Salesforce id must be a string, not {type(value).__name__}")
    shown = repr(value[:40]) + ("…" if len(value) > 40 else "")
    if len(value) not in (15, 18) or not set(value) <= _ALNUM:
        raise InvalidId(f"{shown} is not a Salesforce id (15 or 18 letters and digits)")
    if len(value) == 15:
        return value + _suffix(value)
    head, suffix = value[:15], value[15:].upper()
    if _suffix(head) == suffix:
        return head + suffix
    if any(ch not in _SUFFIX for ch in suffix):
        raise InvalidId(f"{shown}: the last 3 characters are not a case-safe id suffix")
    if head != head.upper() and head != head.lower():
        raise InvalidId(f"{shown}: the suffix does not match the case of the first 15 characters")
    restored = []
    for i, ch in enumerate(head):
        upper = bool(_SUFFIX.index(suffix[i // 5]) >> (i % 5) & 1)
        if upper and not ch.isalpha():
            raise InvalidId(f"{shown}: the suffix marks character {i + 1} as an upper-case letter")
        restored.append(ch.upper() if upper else ch.lower())
    return "".join(restored) + suffix


def is_canonical(value: object) -> bool:
    """True if `value` is an id already in its canonical 18-character form."""
    try:
        return canonical_id(value) == value
    except InvalidId:
        return False
