"""The error Salesforce's REST API returns, in its two wire shapes.

A single REST call answers with a JSON *array* of `{message, errorCode, fields}` (clients such as
simple-salesforce index `[0]`), while sObject Collections and composite per-record results use
`statusCode` instead of `errorCode`. One exception type carries both so the store can raise it and each
REST resource renders the form its endpoint uses.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A Salesforce REST error: rendered as HTTP `status` with body [{"message","errorCode","fields"}]."""

    def __init__(self, status: int, error_code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(f"{error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields: list[str] = list(fields or [])
        # Salesforce omits `fields` from some REST errors (NOT_FOUND, query errors): None means omit it.
        self._fields_given = fields is not None

    def body(self) -> list[dict[str, Any]]:
        """REST form: `[{"message":..,"errorCode":..,"fields":[..]}]` (`fields` only when given)."""
        item: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self._fields_given:
            item["fields"] = list(self.fields)
        return [item]

    def collection_error(self) -> dict[str, Any]:
        """Per-record form used by sObject Collections and composite results."""
        return {"statusCode": self.error_code, "message": self.message, "fields": list(self.fields)}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.error_code!r}, {self.message!r}, {self.fields!r})"


def not_found() -> ApiError:
    """The body Salesforce sends for an unknown resource or record."""
    return ApiError(404, "NOT_FOUND", "The requested resource does not exist")
