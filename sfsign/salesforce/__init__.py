"""The only code that talks to Salesforce: OAuth, REST, streaming and event parsing.

Everything else in sfsign sees typed records (`records`) and events (`events`), never raw JSON.

Importing the package (which any `sfsign.salesforce.*` import does) loads nothing: the render and
sign pool processes import the vocabulary (`names`) and must not pay for the REST and streaming
clients (requests, simple-salesforce, httpx: about 18 MB and 0.3 s per process). The names below
are loaded on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sfsign.salesforce.auth import AccessToken, AuthConfig, Authenticator, TokenProvider, build_ssl_context
    from sfsign.salesforce.composite import RecordResult
    from sfsign.salesforce.errors import AuthError, SalesforceError, UncertainOutcome
    from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, parse_event
    from sfsign.salesforce.files import ContentVersionRef
    from sfsign.salesforce.record_parsing import fetch_records
    from sfsign.salesforce.records import OpportunityRecord, QuoteRecord, SignableRecord, find_records_in_state
    from sfsign.salesforce.rest import SalesforceRest
    from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient, StreamError, SubscriptionFailed

_HOMES = {
    "auth": ("AccessToken", "AuthConfig", "Authenticator", "TokenProvider", "build_ssl_context"),
    "composite": ("RecordResult",),
    "errors": ("AuthError", "SalesforceError", "UncertainOutcome"),
    "events": ("ChangeEvent", "MalformedEvent", "PlatformEvent", "parse_event"),
    "files": ("ContentVersionRef",),
    "record_parsing": ("fetch_records",),
    "records": ("OpportunityRecord", "QuoteRecord", "SignableRecord", "find_records_in_state"),
    "rest": ("SalesforceRest",),
    "stream": ("ReplayIdInvalid", "StreamClient", "StreamError", "SubscriptionFailed"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AccessToken",
    "AuthConfig",
    "AuthError",
    "Authenticator",
    "ChangeEvent",
    "ContentVersionRef",
    "MalformedEvent",
    "OpportunityRecord",
    "PlatformEvent",
    "QuoteRecord",
    "RecordResult",
    "ReplayIdInvalid",
    "SalesforceError",
    "SalesforceRest",
    "SignableRecord",
    "StreamClient",
    "StreamError",
    "SubscriptionFailed",
    "TokenProvider",
    "UncertainOutcome",
    "build_ssl_context",
    "fetch_records",
    "find_records_in_state",
    "parse_event",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
