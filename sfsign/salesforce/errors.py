"""Errors raised by the Salesforce client layer, classified for the retry policy of the workers.

The workers never look at HTTP statuses or Salesforce error codes themselves: they ask an error
whether it is `transient` (retry with backoff), whether it `needs_long_backoff` (the org's API
allocation is exhausted, retrying in seconds only burns what is left) and whether the outcome of a
write is `uncertain` (the request may have been applied: look before writing again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Error codes after which the same request can succeed later.
TRANSIENT_CODES: frozenset[str] = frozenset(
    {
        "SERVER_UNAVAILABLE",
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_LIMIT_EXCEEDED",
        "QUERY_TIMEOUT",
        "TXN_SECURITY_METERING_ERROR",
        "INVALID_SESSION_ID",  # only reaches callers if a fresh token was refused too; auth may recover
        "REQUEST_RUNNING_TOO_LONG",
        "CONCURRENT_REQUEST_LIMIT_EXCEEDED",
        "INVALID_QUERY_LOCATOR",  # a released or expired cursor: the query itself, run again, succeeds
    }
)

#: Error codes that a retry can never fix: the data, the schema or the permissions must change.
PERMANENT_CODES: frozenset[str] = frozenset(
    {
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "FIELD_INTEGRITY_EXCEPTION",
        "ENTITY_IS_DELETED",
        "INVALID_FIELD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "INVALID_TYPE",
        "INVALID_CROSS_REFERENCE_KEY",
        "INVALID_ID_FIELD",
        "MALFORMED_ID",
        "MALFORMED_QUERY",
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
        "STRING_TOO_LONG",
        "REQUIRED_FIELD_MISSING",
        "DUPLICATE_VALUE",
        "DUPLICATES_DETECTED",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "NOT_FOUND",
        "API_DISABLED_FOR_ORG",
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "ENTITY_IS_LOCKED",
        "JSON_PARSER_ERROR",
        "STORAGE_LIMIT_EXCEEDED",
    }
)

_TRANSIENT_STATUSES = frozenset({408, 420, 429, 500, 502, 503, 504})


def classify(status: int | None, error_code: str | None, message: str = "") -> tuple[bool, bool]:
    """Return `(transient, needs_long_backoff)` for a failure.

    The error code wins over the status because Salesforce reuses statuses (403 means both "no
    access" and "API allocation exhausted"). A failure with neither status nor code is a network
    failure, which is transient.
    """
    long_backoff = error_code == "REQUEST_LIMIT_EXCEEDED" and "concurrent" not in message.lower()
    if error_code in TRANSIENT_CODES:
        return True, long_backoff
    if error_code in PERMANENT_CODES:
        return False, False
    if status is None:
        return error_code is None, False
    return status in _TRANSIENT_STATUSES or status >= 500, False


class SalesforceError(Exception):
    """A failed Salesforce call (HTTP error, per-record error, or a network failure).

    `status` is the HTTP status (None for network failures and per-record errors), `error_code`
    Salesforce's `errorCode`/`statusCode`. The message is Salesforce's text; it never contains the
    token because tokens only travel in headers.
    """

    def __init__(
        self,
        status: int | None,
        error_code: str | None,
        message: str,
        fields: Iterable[str] = (),
        *,
        transient: bool | None = None,
        needs_long_backoff: bool | None = None,
        uncertain: bool = False,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields: tuple[str, ...] = tuple(fields)
        auto_transient, auto_long = classify(status, error_code, message)
        self.transient = auto_transient if transient is None else transient
        self.needs_long_backoff = auto_long if needs_long_backoff is None else needs_long_backoff
        #: True when a write may or may not have been applied (timeout / reset after sending).
        self.uncertain = uncertain
        super().__init__(str(self))

    def __str__(self) -> str:
        head = " ".join(p for p in (str(self.status) if self.status else None, self.error_code) if p)
        fields = f" (fields: {', '.join(self.fields)})" if self.fields else ""
        flags = "".join(
            f" [{flag}]"
            for flag, on in (("transient", self.transient), ("uncertain", self.uncertain))
            if on
        )
        return f"{head or 'Salesforce error'}: {self.message}{fields}{flags}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, error_code={self.error_code!r}, "
            f"message={self.message!r}, fields={self.fields!r}, transient={self.transient!r}, "
            f"uncertain={self.uncertain!r})"
        )

    @classmethod
    def from_response_body(cls, status: int, body: Any) -> SalesforceError:
        """Build from a REST error body: normally `[{"message","errorCode","fields"}]`.

        Tolerates a dict, an OAuth-style body, a string or garbage, because proxies and load
        balancers in front of an org answer in their own formats.
        """
        entry: Mapping[str, Any] | None = None
        if isinstance(body, list) and body and isinstance(body[0], Mapping):
            entry = body[0]
        elif isinstance(body, Mapping):
            entry = body
        if entry is None:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
            return cls(status, None, text.strip()[:500] or f"HTTP {status}")
        code = entry.get("errorCode") or entry.get("statusCode") or entry.get("error")
        message = entry.get("message") or entry.get("error_description") or ""
        fields = entry.get("fields") or ()
        return cls(
            status,
            str(code) if code is not None else None,
            str(message),
            [str(f) for f in fields] if isinstance(fields, list) else (),
        )

    @classmethod
    def from_record_error(cls, entry: Mapping[str, Any]) -> SalesforceError:
        """Build from one per-record error of sObject Collections (`statusCode`, not `errorCode`)."""
        code = entry.get("statusCode") or entry.get("errorCode")
        fields = entry.get("fields") or ()
        return cls(
            None,
            str(code) if code is not None else "UNKNOWN",
            str(entry.get("message") or ""),
            [str(f) for f in fields] if isinstance(fields, list) else (),
        )


class UncertainOutcome(SalesforceError):
    """A write failed after it was sent: Salesforce may or may not have applied it.

    Always transient. The caller must check (e.g. look the ContentVersion up by transaction id)
    before writing again, or make the write idempotent.
    """

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
        super().__init__(status, error_code, message, transient=True, uncertain=True)


class AuthError(Exception):
    """An OAuth token request failed.

    Carries only `error` and `error_description` from the token endpoint: never the assertion,
    the secret or the password that was sent.
    """

    def __init__(
        self, status: int | None, error: str, description: str = "", *, transient: bool | None = None,
        fix: str = "",
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.fix = fix  # what the operator should change, when the cause is known (never a secret)
        if transient is None:
            transient = status is None or status >= 500 or status == 429
        self.transient = transient
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f"HTTP {self.status} " if self.status else ""
        desc = f": {self.description}" if self.description else ""
        return f"OAuth token request failed ({status}{self.error}){desc}"

    def __repr__(self) -> str:
        return (
            f"AuthError(status={self.status!r}, error={self.error!r}, "
            f"description={self.description!r}, transient={self.transient!r})"
        )
