"""Custom notifications: the bell (and the mobile app) of a Salesforce user, sent through the REST custom
notification action.

A notification type's id (0ML…) differs in every org, so the type is named by its DeveloperName (the
package's `sfsign_Signature_Outcome`, or the one the settings name) and its id looked up once per
client, then cached. The action answers one result per input; a failed input becomes a
`SalesforceError` like any other call's, so whether to retry is decided as for every other call: a
permanent error (unknown type, a recipient that is not a user, no Send Custom Notifications permission)
is not retried, an outage is. A send that fails after it went out is an `UncertainOutcome`: the
notification may have been delivered, and sending it again may show it twice (the action has no
idempotency key).

Title and body are cut to the action's limits (250 and 750 characters) rather than refused: a long
decline reason must not turn a notification into a permanent failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simple_salesforce
from simple_salesforce.exceptions import SalesforceError as SimpleSalesforceError

from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.names import (
    CUSTOM_NOTIFICATION_ACTION,
    NOTIFICATION_BODY_MAX,
    NOTIFICATION_RECIPIENTS_MAX,
    NOTIFICATION_TITLE_MAX,
    NotificationType,
)
from sfsign.salesforce.session import RestSession, dump_json
from sfsign.salesforce.soql import soql_quote, validate_api_name, validate_id

ACTION_PATH = f"actions/standard/{CUSTOM_NOTIFICATION_ACTION}"
ELLIPSIS = "…"


@dataclass(frozen=True)
class NotificationTypeRef:
    """A notification type as the org has it: its id and the names an admin sees."""

    id: str
    developer_name: str
    label: str


@dataclass(frozen=True)
class NotificationSent:
    """The org accepted the notification (it delivers to active users only, which it does not report)."""

    type_id: str
    recipient_ids: tuple[str, ...]
    target_id: str
    message: str  # Salesforce's `SuccessMessage`


class NotificationTypeMissing(SalesforceError):
    """The org has no notification type of that DeveloperName: never retried, the admin must deploy it."""

    def __init__(self, developer_name: str) -> None:
        super().__init__(None, "NOTIFICATION_TYPE_MISSING", missing_type_message(developer_name), transient=False)
        self.developer_name = developer_name


def missing_type_message(developer_name: str) -> str:
    """What `check`, `run` and a failed send say when the type is not in the org."""
    return (f"the org has no custom notification type {developer_name!r} (Setup > Custom Notifications); "
            "deploy salesforce-metadata/ or set SFSIGN_NOTIFICATION_TYPE to the DeveloperName of an existing type")


def notification_type_query(developer_name: str) -> str:
    """The SOQL that finds a type's id by its DeveloperName (the only query on CustomNotificationType)."""
    return (f"SELECT Id, {NotificationType.DEVELOPER_NAME}, {NotificationType.LABEL} FROM {NotificationType.NAME} "
            f"WHERE {NotificationType.DEVELOPER_NAME} = {soql_quote(developer_name)} LIMIT 1")


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def action_input(type_id: str, recipient_ids: Sequence[str], title: str, body: str,
                 target_id: str) -> dict[str, Any]:
    """One input of the action, as the Actions Developer Guide documents it."""
    if not recipient_ids or len(recipient_ids) > NOTIFICATION_RECIPIENTS_MAX:
        raise ValueError(f"a notification goes to 1 to {NOTIFICATION_RECIPIENTS_MAX} recipients")
    return {"customNotifTypeId": validate_id(type_id), "recipientIds": [validate_id(r) for r in recipient_ids],
            "title": cut(title, NOTIFICATION_TITLE_MAX), "body": cut(body, NOTIFICATION_BODY_MAX),
            "targetId": validate_id(target_id)}


def result_error(status: int | None, results: Any) -> SalesforceError | None:
    """The first failed input of an action's answer as a SalesforceError; None when every input succeeded."""
    if not isinstance(results, list) or not results:
        return SalesforceError(status, "UNEXPECTED_RESPONSE", f"the notification action answered {results!r}"[:300])
    for result in results:
        if not isinstance(result, Mapping):
            return SalesforceError(status, "UNEXPECTED_RESPONSE", "the notification action answered a non-object")
        if result.get("isSuccess") is True:
            continue
        errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
        first = errors[0] if errors else {}
        code = str(first.get("statusCode") or first.get("errorCode") or "UNKNOWN")
        return SalesforceError(status, code, str(first.get("message") or "the notification was not sent"),
                               [str(f) for f in first.get("fields") or []])
    return None


class NotificationCalls(RestSession):
    """The notification calls of `SalesforceRest`."""

    def _notification_types(self) -> dict[str, NotificationTypeRef]:
        cache: dict[str, NotificationTypeRef] | None = self.__dict__.get("_notification_type_cache")
        if cache is None:
            cache = self.__dict__["_notification_type_cache"] = {}
        return cache

    async def notification_type(self, developer_name: str) -> NotificationTypeRef:
        """The type of that DeveloperName, queried once per client; `NotificationTypeMissing` if none."""
        cache = self._notification_types()
        if developer_name not in cache:
            rows = await self.query(notification_type_query(validate_api_name(developer_name)))
            if not rows:
                raise NotificationTypeMissing(developer_name)
            row = rows[0]
            cache[developer_name] = NotificationTypeRef(str(row["Id"]), developer_name,
                                                        str(row.get(NotificationType.LABEL) or developer_name))
        return cache[developer_name]

    async def send_notification(self, developer_name: str, recipient_ids: Sequence[str], title: str, body: str,
                                target_id: str) -> NotificationSent:
        """Notify `recipient_ids` (users) about the record `target_id`; one action call."""
        ntype = await self.notification_type(developer_name)
        payload = dump_json({"inputs": [action_input(ntype.id, recipient_ids, title, body, target_id)]})

        def run(sf: simple_salesforce.Salesforce) -> tuple[int, Any]:
            try:
                response = self._raw(sf, "POST", ACTION_PATH, data=payload)
            except SimpleSalesforceError as exc:
                if exc.status == 400 and _are_results(exc.content):
                    return 400, exc.content  # per-input results: judged below, as a 200's are
                raise  # the session maps it (and refreshes an expired token) as for every call
            return response.status_code, _json_or_none(response)

        status, results = await self._call(run, write=True)
        error = result_error(status, results)
        if error is not None:
            raise error
        outputs = results[0].get("outputValues") or {}
        return NotificationSent(ntype.id, tuple(recipient_ids), target_id, str(outputs.get("SuccessMessage") or ""))


def _are_results(body: Any) -> bool:
    return isinstance(body, list) and bool(body) and isinstance(body[0], Mapping) and "isSuccess" in body[0]


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
