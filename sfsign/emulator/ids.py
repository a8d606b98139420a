"""Salesforce record ids: 15-character case-sensitive ids and their 18-character case-safe form.

Clients (and humans pasting ids into spreadsheets) rely on the 3-character suffix that encodes the case
of the first 15 characters, so the emulator must produce ids a real client would accept and must accept
ids in any case as Salesforce does. Ids are deterministic when drawn from a seeded `IdGenerator`, which
keeps seed data and test fixtures stable across runs.
"""

from __future__ import annotations

import itertools
import random
import string

_SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ID_CHARS = set(string.ascii_letters + string.digits)

# The emulated org lives on an imaginary pod; the 2 characters after the key prefix identify it.
POD = "Dn"

KEY_PREFIXES: dict[str, str] = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "Organization": "00D",
    "OpportunityContactRole": "00K",
    "OpportunityLineItem": "00k",
    "CurrencyType": "02c",
    "ContentVersion": "068",
    "ContentDocument": "069",
    "ContentDocumentLink": "06A",
    "CustomNotificationType": "0ML",
    "Pricebook2": "01s",
    "Product2": "01t",
    "PricebookEntry": "01u",
    "RecordType": "012",
    "Quote": "0Q0",
    "QuoteLineItem": "0QL",
}

EMPTY_ID = "000000000000000AAA"
#: The Master record type every object has: describe lists it with this id, and records never carry it.
MASTER_RECORD_TYPE_ID = "012000000000000AAA"


def checksum(id15: str) -> str:
    """The 3-character suffix: one letter per 5-character chunk, a bitmap of its upper-case letters."""
    out = []
    for chunk in range(3):
        bits = 0
        for pos, ch in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << pos
        out.append(_SUFFIX_ALPHABET[bits])
    return "".join(out)


def to18(id15: str) -> str:
    """Append the case-safe suffix to a 15-character id (an 18-character id is returned normalised)."""
    if len(id15) == 18:
        normalised = normalize_id(id15)
        if normalised is None:
            raise ValueError(f"invalid Salesforce id: {id15!r}")
        return normalised
    if len(id15) != 15 or not set(id15) <= _ID_CHARS:
        raise ValueError(f"invalid Salesforce id: {id15!r}")
    return id15 + checksum(id15)


def normalize_id(value: str) -> str | None:
    """The canonical 18-character id for a 15- or 18-character id in any case, or None if malformed.

    Salesforce accepts an 18-character id whatever the case of its letters: the suffix says which of the
    first 15 characters are upper case, so the original case can be restored. Stricter where unsure: an
    id whose mixed-case first 15 characters disagree with its suffix is malformed (the REST error page's
    `MALFORMED_ID` example is such an id); only an id written all in one case is restored.
    """
    if not isinstance(value, str) or not set(value) <= _ID_CHARS:
        return None
    if len(value) == 15:
        return value + checksum(value)
    if len(value) != 18:
        return None
    suffix = value[15:].upper()
    if checksum(value[:15]) == suffix:
        return value[:15] + suffix
    if any(ch not in _SUFFIX_ALPHABET for ch in suffix):
        return None
    if value[:15] not in (value[:15].upper(), value[:15].lower()):
        return None
    chars = list(value[:15])
    for chunk, sch in enumerate(suffix):
        bits = _SUFFIX_ALPHABET.index(sch)
        for pos in range(5):
            i = chunk * 5 + pos
            upper = bool(bits & (1 << pos))
            if upper:
                if not chars[i].isalpha():
                    return None
                chars[i] = chars[i].upper()
            elif chars[i].isalpha():
                chars[i] = chars[i].lower()
    base = "".join(chars)
    return base + checksum(base)


def is_valid_id(value: object) -> bool:
    """True for a well-formed 15- or 18-character id (an 18-character one must have a matching suffix)."""
    if not isinstance(value, str):
        return False
    if len(value) == 15:
        return set(value) <= _ID_CHARS
    if len(value) == 18:
        return set(value) <= _ID_CHARS and checksum(value[:15]) == value[15:]
    return False


def _base62(n: int, width: int) -> str:
    digits = []
    for _ in range(width):
        n, rem = divmod(n, 62)
        digits.append(_BASE62[rem])
    if n:
        raise OverflowError("id counter exhausted")
    return "".join(reversed(digits))


class IdGenerator:
    """Hands out ids from a counter, so the same sequence of inserts yields the same ids."""

    def __init__(self, start: int = 1, pod: str = POD) -> None:
        self._counter = itertools.count(start)
        self._next = start
        self.pod = pod

    @property
    def next_value(self) -> int:
        """The counter value the next id will use (persisted by snapshots)."""
        return self._next

    def new_id(self, key_prefix: str) -> str:
        if len(key_prefix) != 3:
            raise ValueError(f"key prefix must have 3 characters: {key_prefix!r}")
        n = next(self._counter)
        self._next = n + 1
        id15 = f"{key_prefix}{self.pod}0{_base62(n, 9)}"
        return id15 + checksum(id15)


_default = IdGenerator(start=random.SystemRandom().randrange(62**6, 62**7))


def new_id(key_prefix: str, generator: IdGenerator | None = None) -> str:
    """A fresh 18-character id with `key_prefix` (from `generator` when given, for determinism)."""
    return (generator or _default).new_id(key_prefix)
