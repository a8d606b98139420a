"""What each failure of a Pub/Sub call means for the subscription: retry, re-authenticate, reconcile, stop.

Salesforce ends a long-lived `Subscribe` on any error and expects the client to start a new one ("Retry
Long-Lived RPC Calls After an Error Occurs"); the gRPC status alone is not enough, the `error-code` trailer
says why ("Handle Errors": e.g. `INVALID_ARGUMENT` with
`sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted`). The RPC id Salesforce appends to the
details (`rpcId: …`) stays in the message, for Salesforce support. The decisions, by error code first
(suffix after `sfdc.platform.eventbus.grpc.`), then by status:

error code (after `sfdc.platform.eventbus.grpc.`) / gRPC status → action: why

- `subscription.fetch.replayid.corrupted`, `subscription.fetch.replayid.validation.failed` → **reconcile**:
  the stored replay id is invalid or past the 72 h retention; `ReplayIdInvalid`, intake reconciles the
  channel's objects and the channel starts afresh.
- `service.auth.error`, `service.auth.headers.invalid`, status `UNAUTHENTICATED` → **re-authenticate**:
  token expired or revoked (also across Salesforce releases); one refresh through the shared
  Authenticator, then a new subscription (again after a backoff if it fails again).
- `subscription.limit.exceeded` → **long wait**: the org's 24 h event delivery allocation is spent;
  retrying fixes nothing, events stay retained 72 h (`long_backoff_s`, as CometD's daily limit).
- `concurrent.client.limit.exceeded` → **long wait**: too many clients on the org; loud, no tight loop.
- `service.protection.*`, `service.unavailable`, `topic.api.unavailable`, `schema.api.unavailable`,
  `subscription.internal.error`, `subscription.fetch.replay.repeated` → **retry**: transient, or a stream
  to restart; backoff, then a new subscription from the committed replay id.
- `topic.not.found`, `topic.validation.empty`, status `NOT_FOUND` → **stop** (`SubscriptionFailed`): no such
  channel (CDC not enabled for the object, the platform event not deployed).
- `subscription.topic.cannot.subscribe`, `topic.meta.permission`, `schema.meta.permission`,
  `service.tenant.license`, status `PERMISSION_DENIED` → **stop**: the integration user may not read the
  channel, or the org has no Pub/Sub licence.
- any other `INVALID_ARGUMENT`, `UNIMPLEMENTED`, `ALREADY_EXISTS` → **stop**: a request this client got
  wrong, or the wrong endpoint; repeating it cannot help.
- `UNAVAILABLE` (e.g. `RST_STREAM closed stream`), `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `ABORTED`,
  `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `DATA_LOSS`, `CANCELLED` by the server →
  **retry**: network, server or overload; capped exponential backoff with jitter.
- the server ends the stream (`OK`) → **retry at once**: e.g. idle with nothing requested for 60 s.
- no `FetchResponse` within 270 s + margin while events are requested → **retry at once**: a half-open
  connection (Salesforce sends a keepalive within 270 s while events are pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import grpc

ERROR_PREFIX = "sfdc.platform.eventbus.grpc."

Action = Literal["retry", "auth", "reconcile", "long", "stop"]

_BY_CODE: dict[str, Action] = {
    "subscription.fetch.replayid.corrupted": "reconcile",
    "subscription.fetch.replayid.validation.failed": "reconcile",
    "service.auth.error": "auth",
    "service.auth.headers.invalid": "auth",
    "subscription.limit.exceeded": "long",
    "concurrent.client.limit.exceeded": "long",
    "service.unavailable": "retry",
    "topic.api.unavailable": "retry",
    "schema.api.unavailable": "retry",
    "subscription.internal.error": "retry",
    "subscription.fetch.replay.repeated": "retry",
    "topic.not.found": "stop",
    "topic.validation.empty": "stop",
    "subscription.topic.cannot.subscribe": "stop",
    "topic.meta.permission": "stop",
    "schema.meta.permission": "stop",
    "service.tenant.license": "stop",
}

_BY_STATUS: dict[grpc.StatusCode, Action] = {
    grpc.StatusCode.UNAUTHENTICATED: "auth",
    grpc.StatusCode.NOT_FOUND: "stop",
    grpc.StatusCode.PERMISSION_DENIED: "stop",
    grpc.StatusCode.INVALID_ARGUMENT: "stop",
    grpc.StatusCode.UNIMPLEMENTED: "stop",
    grpc.StatusCode.ALREADY_EXISTS: "stop",
}


@dataclass(frozen=True)
class CallFailure:
    """A failed Pub/Sub call as Salesforce reported it, and what to do about it."""

    status: grpc.StatusCode
    error_code: str  # the `error-code` trailer, "" when there is none
    details: str
    action: Action

    def __str__(self) -> str:
        code = f" [{self.error_code}]" if self.error_code else ""
        return f"{self.status.name}{code}: {self.details}"


def classify(status: grpc.StatusCode, error_code: str, details: str) -> CallFailure:
    """The action for a status and its `error-code` trailer (see the module's table)."""
    suffix = error_code.removeprefix(ERROR_PREFIX)
    action = _BY_CODE.get(suffix)
    if action is None and suffix.startswith("service.protection."):
        action = "retry"
    if action is None:
        action = _BY_STATUS.get(status, "retry")
    return CallFailure(status, error_code, details, action)


def failure_of(exc: grpc.aio.AioRpcError) -> CallFailure:
    """Read status, `error-code` trailer and details off a failed call."""
    error_code = ""
    trailers = exc.trailing_metadata()
    for key, value in trailers or ():
        if key == "error-code":
            error_code = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return classify(exc.code(), error_code, exc.details() or "")
