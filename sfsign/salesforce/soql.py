"""What may go into SOQL text and REST URL paths: validated ids and names, quoted literals.

sfsign builds its SOQL as text, so every value that comes from a record, a rule or an event passes
through one of these first: an id or an API name is refused unless it has the shape Salesforce
gives it, and a string literal is quoted and escaped. Kept apart from the REST client because the
query builders (records, reconciliation, archive, write-back) need them without needing a client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

IN_LIMIT = 200  # ids per IN (...) list: keeps the query URL far below the 16 KB request-line limit
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_API_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_FIELD_PATH_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*$")
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def validate_id(value: str) -> str:
    """Return `value` if it is a 15/18-character Salesforce id, else raise ValueError.

    Ids go into SOQL and URL paths; refusing anything else closes both injection routes.
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"not a Salesforce id: {value!r}")
    return value


def validate_api_name(value: str) -> str:
    """An sObject or field API name (`Opportunity`, `Sign_Status__c`, `Sign_Request__e`)."""
    if not isinstance(value, str) or not _API_NAME_RE.match(value):
        raise ValueError(f"not a Salesforce API name: {value!r}")
    return value


def validate_field_path(value: str) -> str:
    """A field reference, possibly through relationships (`Account.Name`)."""
    if not isinstance(value, str) or not _FIELD_PATH_RE.match(value):
        raise ValueError(f"not a SOQL field reference: {value!r}")
    return value


def soql_quote(value: str) -> str:
    """A SOQL string literal: quoted, with backslash, quote and control characters escaped."""
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in str(value)) + "'"


def soql_id_list(ids: Iterable[str]) -> str:
    """`('006…','006…')` from validated ids."""
    return "(" + ",".join(f"'{validate_id(i)}'" for i in ids) + ")"


def soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal (unquoted, UTC, `Z`)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
