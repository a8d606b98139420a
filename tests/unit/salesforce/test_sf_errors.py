"""Classification of Salesforce failures (pure functions, no fakes needed)."""

from __future__ import annotations

import pytest

from sfsign.salesforce.errors import AuthError, SalesforceError, UncertainOutcome, classify


@pytest.mark.parametrize(
    ("status", "code", "message", "transient", "long_backoff"),
    [
        (503, "SERVER_UNAVAILABLE", "Server Unavailable", True, False),
        (400, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", True, False),
        (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", True, True),
        (403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.", True, False),
        (500, None, "Internal", True, False),
        (502, None, "Edge", True, False),
        (None, None, "connection reset", True, False),
        (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Amount must be positive", False, False),
        (404, "ENTITY_IS_DELETED", "entity is deleted", False, False),
        (400, "INVALID_FIELD", "No such column 'X'", False, False),
        (400, "MALFORMED_ID", "id value of incorrect type", False, False),
        (400, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access", False, False),
        (400, "STRING_TOO_LONG", "too long", False, False),
        (404, "NOT_FOUND", "The requested resource does not exist", False, False),
        (400, "SOME_NEW_CODE", "?", False, False),
        (None, "SOME_NEW_CODE", "per-record", False, False),
    ],
)
def test_classify(status: int | None, code: str | None, message: str, transient: bool, long_backoff: bool) -> None:
    assert classify(status, code, message) == (transient, long_backoff)
    err = SalesforceError(status, code, message)
    assert (err.transient, err.needs_long_backoff, err.uncertain) == (transient, long_backoff, False)


def test_from_response_body_parses_the_documented_error_array() -> None:
    body = [{"fields": ["Id"], "message": "Account ID: id value of incorrect type: 001900K0001pPuOAAU",
             "errorCode": "MALFORMED_ID"}]
    err = SalesforceError.from_response_body(400, body)
    assert (err.status, err.error_code, err.fields, err.transient) == (400, "MALFORMED_ID", ("Id",), False)
    assert "incorrect type" in str(err) and "MALFORMED_ID" in str(err)


@pytest.mark.parametrize("body", ["<html>Bad gateway</html>", b"oops", None, [], {"unexpected": 1}])
def test_from_response_body_tolerates_foreign_bodies(body: object) -> None:
    err = SalesforceError.from_response_body(502, body)
    assert err.status == 502 and err.transient


def test_record_error_uses_status_code_key() -> None:
    err = SalesforceError.from_record_error(
        {"statusCode": "DUPLICATES_DETECTED", "message": "Use one of these records?", "fields": []}
    )
    assert err.error_code == "DUPLICATES_DETECTED" and err.status is None and not err.transient


def test_uncertain_outcome_is_a_transient_salesforce_error() -> None:
    err = UncertainOutcome("read timed out")
    assert isinstance(err, SalesforceError) and err.uncertain and err.transient
    assert "uncertain" in str(err)


def test_auth_error_keeps_only_error_and_description() -> None:
    err = AuthError(400, "invalid_grant", "user hasn't approved this consumer")
    assert str(err) == "OAuth token request failed (HTTP 400 invalid_grant): user hasn't approved this consumer"
    assert not err.transient
    assert AuthError(503, "http_error").transient and AuthError(None, "connection_error").transient
