"""The only code that talks to Salesforce: OAuth, REST, streaming and event parsing.

Everything else in sfsign sees typed records (`records`) and events (`events`), never raw JSON.
"""

from sfsign.salesforce.auth import AccessToken, AuthConfig, Authenticator, TokenProvider, build_ssl_context
from sfsign.salesforce.errors import AuthError, SalesforceError, UncertainOutcome
from sfsign.salesforce.events import ChangeEvent, MalformedEvent, PlatformEvent, parse_event
from sfsign.salesforce.records import (
    OpportunityRecord,
    QuoteRecord,
    SignableRecord,
    fetch_records,
    find_records_in_state,
)
from sfsign.salesforce.rest import ContentVersionRef, RecordResult, SalesforceRest
from sfsign.salesforce.stream import ReplayIdInvalid, StreamClient, StreamError, SubscriptionFailed

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
