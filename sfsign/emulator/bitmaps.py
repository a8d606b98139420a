"""Change Data Capture's field bitmaps, as the Pub/Sub API sends `changedFields`, `nulledFields`, `diffFields`.

Salesforce's "Event Deserialization Considerations" page: a bitmap field is a list of strings; the first
holds a hex bitmap (`0x650004E0`) of the event schema's top-level, non-compound fields, and each compound
field with changed components adds a `"<parentPos>-<childBitmap>"` entry whose bitmap indexes the fields of
the compound's nested record (`'4-0x10'`). Bit i of the number is field i of the schema: Salesforce's
decoder (`ChangeEventHeaderUtility.py`) reverses the bit string of the hex, and its Java twin reverses the
bytes before `BitSet.valueOf`, which both read bit i of the number as position i. The Java decoder parses
two hex digits per byte, so the hex is written byte-aligned (an even number of digits), upper case as in
the documentation's examples. A list without top-level changes has no `0x` entry (both decoders check
for the prefix before reading the first element); no fields gives an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchemaField:
    """A top-level field of an event schema; `children` are the nested fields of a compound field."""

    name: str
    children: tuple[str, ...] | None = None


def hex_bitmap(positions: Iterable[int]) -> str:
    """`{1, 2}` → `0x06`: bit i set for each position i, byte-aligned upper-case hex."""
    value = 0
    for position in positions:
        value |= 1 << position
    width = max(1, (value.bit_length() + 7) // 8)
    return "0x" + value.to_bytes(width, "big").hex().upper()


def encode(fields: Sequence[SchemaField], names: Iterable[str]) -> list[str]:
    """Field names (`Amount`, `BillingAddress.City`) → the bitmap list; unknown names raise KeyError."""
    index = {f.name: i for i, f in enumerate(fields)}
    top: set[int] = set()
    nested: dict[int, set[int]] = {}
    for name in names:
        parent, _, child = name.partition(".")
        position = index[parent]
        children = fields[position].children
        if child:
            if children is None:
                raise KeyError(name)
            nested.setdefault(position, set()).add(children.index(child))
        elif children is not None:  # the whole compound: every component
            nested.setdefault(position, set()).update(range(len(children)))
        else:
            top.add(position)
    out = [hex_bitmap(top)] if top else []
    out += [f"{position}-{hex_bitmap(bits)}" for position, bits in sorted(nested.items())]
    return out
