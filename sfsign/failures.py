"""How a step says it failed: the worker retries a transient failure and reports a permanent one.

Salesforce's own errors (`sfsign.salesforce.errors.SalesforceError`) carry the same distinction in
their `transient` flag; these are for everything else a step finds (a template, a key, a vanished rule).
"""

from __future__ import annotations


class PermanentFailure(Exception):
    """Retrying cannot help; a person must fix the record, the template or the configuration."""

    def __init__(self, reason: str, code: str = "PERMANENT") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientFailure(Exception):
    """Worth retrying later (Salesforce unavailable, row lock, timeout...)."""

    def __init__(self, reason: str, code: str = "TRANSIENT", long_backoff: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.long_backoff = long_backoff
