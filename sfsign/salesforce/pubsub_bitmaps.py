"""Change Data Capture's bitmap field lists (Pub/Sub) → field names, as CometD spells them.

Over Pub/Sub, `ChangeEventHeader.changedFields`, `nulledFields` and `diffFields` do not list names: the
first entry is a hex bitmap (`"0x400080"`) whose bit *i* (counted from the least significant bit) marks
the *i*-th field of the event's Avro schema; further entries `"<parentPos>-<hex>"` mark the fields of the
compound field at top-level position `parentPos` (an address, a person name), named `Parent.Child`
(`"3-0x02"` → `BillingAddress.City`). Source: Salesforce's "Event Deserialization Considerations" and its
reference decoders (forcedotcom/pub-sub-api `python/util/ChangeEventHeaderUtility.py`,
`java/.../utility/EventParser.java`), whose rules this follows: the value schema of a compound field is
the record inside its union (`[null, X]`, `[string, X]`, `[null, string, X]`), and when every child of a
compound is marked, the compound's own name stands for them (EventParser's rule).

A bitmap that does not fit the schema (a bit past its last field, a parent that is not a compound, a
string that is not hex) raises `BitmapError`: the event cannot be read as Salesforce meant it, and the
caller turns that into a malformed event rather than guess which fields changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_NESTED = re.compile(r"(\d+)-(0x[0-9a-fA-F]+)")


class BitmapError(ValueError):
    """A bitmap entry that does not fit the event's schema."""


class SchemaFields:
    """The field names of a record schema and of its compound fields, resolved once per schema id."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        if schema.get("type") != "record":
            raise BitmapError("the event schema is not an Avro record")
        named: dict[str, Mapping[str, Any]] = {}
        _index_named(schema, named, schema.get("namespace"))
        self.names: list[str] = []
        self.children: dict[int, list[str]] = {}
        for position, field in enumerate(schema.get("fields") or []):
            self.names.append(str(field["name"]))
            child = _compound(field.get("type"), named)
            if child is not None:
                self.children[position] = [str(f["name"]) for f in child.get("fields") or []]

    def decode(self, entries: Sequence[str] | None) -> list[str]:
        """Field names of a bitmap list, in schema order; entries that are names already pass through."""
        names: list[str] = []
        for entry in entries or ():
            if entry.startswith(("0x", "0X")):
                names.extend(self.names[i] for i in _bits(entry, len(self.names), "top-level"))
                continue
            nested = _NESTED.fullmatch(entry)
            if nested is None:
                names.append(entry)  # a name (a CometD-style list): kept as it is
                continue
            parent = int(nested.group(1))
            if parent >= len(self.names):
                raise BitmapError(f"{entry!r}: the schema has no field at position {parent}")
            children = self.children.get(parent)
            if children is None:
                raise BitmapError(f"{entry!r}: field {self.names[parent]!r} is not a compound field")
            marked = [children[i] for i in _bits(nested.group(2), len(children), self.names[parent])]
            if marked and len(marked) == len(children):
                names.append(self.names[parent])
            else:
                names.extend(f"{self.names[parent]}.{child}" for child in marked)
        return list(dict.fromkeys(names))


def _bits(bitmap: str, size: int, what: str) -> Iterable[int]:
    try:
        value = int(bitmap[2:], 16)
    except ValueError:
        raise BitmapError(f"{bitmap!r} is not a hex bitmap") from None
    if value >> size:
        raise BitmapError(f"{bitmap!r} marks a field past the {size} fields of the {what} schema")
    return (i for i in range(size) if value >> i & 1)


def _index_named(node: Any, named: dict[str, Mapping[str, Any]], namespace: str | None) -> None:
    """Every named record of the schema by its short and full name: a later use may give only the name."""
    if isinstance(node, list):
        for item in node:
            _index_named(item, named, namespace)
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    if kind == "record":
        space = node.get("namespace", namespace)
        name = str(node.get("name", ""))
        named[name] = node
        if space and "." not in name:
            named[f"{space}.{name}"] = node
        for field in node.get("fields") or []:
            _index_named(field.get("type"), named, space)
    elif isinstance(kind, list | dict):
        _index_named(kind, named, namespace)
    elif kind == "array":
        _index_named(node.get("items"), named, namespace)
    elif kind == "map":
        _index_named(node.get("values"), named, namespace)


def _compound(field_type: Any, named: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record of a compound field's type, unwrapped from its optional union, or None."""
    value = field_type
    if isinstance(value, list):
        kinds = [_kind(v, named) for v in value]
        if len(value) == 2 and kinds[0] in ("null", "string"):
            value = value[1]
        elif len(value) == 3 and kinds[0] == "null" and kinds[1] == "string":
            value = value[2]
        else:
            return None
    if isinstance(value, str):
        value = named.get(value)
    if isinstance(value, Mapping) and value.get("type") == "record":
        return value
    return None


def _kind(node: Any, named: Mapping[str, Mapping[str, Any]]) -> str:
    if isinstance(node, str):
        return "record" if node in named else node
    if isinstance(node, Mapping):
        return str(node.get("type"))
    return "union"
