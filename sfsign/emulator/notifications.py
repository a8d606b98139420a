"""Custom notifications in the emulated org: the package's notification types as `CustomNotificationType`
records, and the standard invocable action that sends one (`/actions/standard/customNotificationAction`).

Salesforce's documentation (Actions Developer Guide, "Custom Notification Actions", API 46.0+) gives the
request (`{"inputs": [{"customNotifTypeId", "recipientIds", "title", "body", "targetId"}]}`), the
limits (title 250 characters, body 750, at most 500 recipients, a targetId or a targetPageRef), the
permission (Send Custom Notifications, for REST calls in orgs from Winter '21 on) and the response: a
JSON array with one result per input, `{"actionName", "errors", "isSuccess", "outputValues"}`, whose
success carries `outputValues.SuccessMessage`. The documentation gives no error example: the status
codes and messages of failed inputs below follow what Salesforce answers for other calls (a missing
input's "Missing required input parameter: <name>", STRING_TOO_LONG's "data value too large") and are
marked as inferred. A request with a failed input answers HTTP 400, with every input's result.

What the org received is kept in `Org.notifications` (in memory, for the control API), one entry per
accepted input, with the recipients a real org would deliver to (active users only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sfsign import metadata as md
from sfsign.emulator.errors import ApiError, not_found
from sfsign.emulator.ids import normalize_id

if TYPE_CHECKING:
    from sfsign.emulator.org import Org
    from sfsign.emulator.store import OrgStore

OBJECT = "CustomNotificationType"
ACTION = "customNotificationAction"
SUCCESS_MESSAGE = "Your custom notification is processed successfully."
TITLE_MAX, BODY_MAX, RECIPIENTS_MAX = 250, 750, 500
PERMISSION = "SendCustomNotifications"
#: Who may be a recipient: a user, or the members of an account team, opportunity team, group or queue.
RECIPIENT_PREFIXES = {"005": "User", "001": "Account", "006": "Opportunity", "00G": "Group"}
REQUIRED = ("customNotifTypeId", "recipientIds", "title", "body")


def deploy_notification_types(store: OrgStore, meta: md.Schema) -> list[str]:
    """Create the package's notification types the org lacks (a deploy adds, never removes); their ids."""
    have = {str(r.get("DeveloperName")) for r in store.iter_records(OBJECT)}
    created = []
    for ntype in meta.notification_types.values():
        if ntype.name in have:
            continue
        created.append(store.insert(OBJECT, {
            "DeveloperName": ntype.name, "CustomNotifTypeName": ntype.label, "MasterLabel": ntype.master_label,
            "Description": ntype.description or None, "Desktop": ntype.desktop, "Mobile": ntype.mobile,
            "Language": "en_US",
        }, user_id="", system=True, emit=False))
    return created


def describe_action(version: str) -> dict[str, Any]:
    """`GET .../actions/standard/customNotificationAction`: the action's inputs and outputs."""
    def param(name: str, ptype: str, required: bool, max_length: int = 0) -> dict[str, Any]:
        return {"name": name, "label": name, "type": ptype, "required": required, "maxOccurs": 1,
                "byteLength": 0, "description": None, "sobjectType": None, "picklistValues": None,
                **({"maxLength": max_length} if max_length else {})}

    return {
        "name": ACTION, "label": "Send Custom Notification", "type": "CUSTOM_NOTIFICATION_ACTION",
        "category": None, "description": None, "standard": True,
        "url": f"/services/data/v{version}/actions/standard/{ACTION}",
        "inputs": [param("customNotifTypeId", "REFERENCE", True), param("recipientIds", "REFERENCE", True),
                   param("senderId", "REFERENCE", False), param("title", "STRING", True, TITLE_MAX),
                   param("body", "TEXTAREA", True, BODY_MAX), param("targetId", "REFERENCE", False),
                   param("targetPageRef", "STRING", False)],
        "outputs": [param("SuccessMessage", "STRING", False)],
    }


class _InputError(Exception):
    def __init__(self, status_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _result(error: _InputError | None) -> dict[str, Any]:
    if error is None:
        return {"actionName": ACTION, "errors": None, "isSuccess": True,
                "outputValues": {"SuccessMessage": SUCCESS_MESSAGE}}
    return {"actionName": ACTION, "errors": [{"statusCode": error.status_code, "message": error.message,
                                              "fields": []}],
            "isSuccess": False, "outputValues": None}


def _type_id(store: OrgStore, value: Any) -> dict[str, Any]:
    rid = normalize_id(value) if isinstance(value, str) else None
    record = store.record(rid) if rid else None
    if record is None or not rid or not rid.startswith("0ML"):  # inferred code and message
        raise _InputError("INVALID_ID_FIELD", f"Invalid custom notification type ID: {value}")
    return record


def _recipients(store: OrgStore, value: Any) -> tuple[list[str], list[str]]:
    """The ids as given, and the active users a real org delivers to (team, group and queue members are
    not modelled: those ids are accepted and reach no one here)."""
    ids = value if isinstance(value, list) else [value]
    if not ids or any(not isinstance(i, str) or not i for i in ids):
        raise _InputError("REQUIRED_FIELD_MISSING", "Missing required input parameter: recipientIds")
    if len(ids) > RECIPIENTS_MAX:  # inferred code and message
        raise _InputError("LIMIT_EXCEEDED", f"recipientIds: at most {RECIPIENTS_MAX} values are allowed")
    delivered = []
    for raw in ids:
        rid = normalize_id(raw)
        kind = RECIPIENT_PREFIXES.get(rid[:3]) if rid else None
        record = store.record(rid) if rid else None
        if kind is None or (kind != "Group" and record is None):  # inferred code and message
            raise _InputError("INVALID_ID_FIELD", f"Invalid recipient ID: {raw}")
        if kind == "User" and record is not None and record.get("IsActive", True):
            delivered.append(str(rid))
    return [str(i) for i in ids], delivered


def _text(entry: dict[str, Any], name: str, limit: int) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _InputError("REQUIRED_FIELD_MISSING", f"Missing required input parameter: {name}")
    if len(value) > limit:  # STRING_TOO_LONG as for a field; the wording of this action's is inferred
        raise _InputError("STRING_TOO_LONG", f"{name}: data value too large: {value[:40]}... (max length={limit})")
    return value


def _target(store: OrgStore, entry: dict[str, Any]) -> tuple[str | None, str | None]:
    target_id, page_ref = entry.get("targetId"), entry.get("targetPageRef")
    if not target_id and not page_ref:  # the documented rule; the wording is inferred
        raise _InputError("REQUIRED_FIELD_MISSING", "You must specify either a targetId or a targetPageRef.")
    if target_id:
        rid = normalize_id(target_id) if isinstance(target_id, str) else None
        if rid is None:
            raise _InputError("INVALID_ID_FIELD", f"Invalid target ID: {target_id}")
        target_id = rid
    return target_id or None, page_ref if isinstance(page_ref, str) else None


def _accept(org: Org, entry: Any, user_id: str) -> dict[str, Any]:
    """One input, checked in the order the documentation lists the inputs; what the org received."""
    if not isinstance(entry, dict):
        raise _InputError("INVALID_INPUT", "Each input must be a JSON object")
    for name in REQUIRED:
        if entry.get(name) in (None, "", []):
            raise _InputError("REQUIRED_FIELD_MISSING", f"Missing required input parameter: {name}")
    store = org.store
    ntype = _type_id(store, entry["customNotifTypeId"])
    recipients, delivered = _recipients(store, entry["recipientIds"])
    title, body = _text(entry, "title", TITLE_MAX), _text(entry, "body", BODY_MAX)
    target_id, page_ref = _target(store, entry)
    return {"id": len(org.notifications) + 1, "typeId": ntype["Id"], "typeName": ntype.get("DeveloperName"),
            "recipientIds": recipients, "deliveredTo": delivered, "title": title, "body": body,
            "targetId": target_id, "targetPageRef": page_ref, "senderId": entry.get("senderId"),
            "sentBy": user_id, "at": store.now().isoformat()}


def send(org: Org, body: Any, user_id: str) -> tuple[int, list[dict[str, Any]]]:
    """`POST .../actions/standard/customNotificationAction`: (HTTP status, per-input results)."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs:  # inferred
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body needs a non-empty \"inputs\" list")
    access = org.store.access_for(user_id)
    results = []
    for entry in inputs:
        try:
            if access is not None and not access.has_permission(PERMISSION):  # inferred code and message
                raise _InputError("INSUFFICIENT_ACCESS",
                                  "You don't have permission to send custom notifications.")
            org.notifications.append(_accept(org, entry, user_id))
            results.append(_result(None))
        except _InputError as exc:
            results.append(_result(exc))
    status = 200 if all(r["isSuccess"] for r in results) else 400
    return status, results


def actions_resource(org: Org, method: str, segments: list[str], body: Any, user_id: str,
                     version: str) -> tuple[int, Any]:
    """`/actions`, `/actions/standard` and the custom notification action (the only one emulated)."""
    base = f"/services/data/v{version}/actions"
    if segments == ["actions"] and method == "GET":
        return 200, {"standard": f"{base}/standard", "custom": f"{base}/custom"}
    if segments == ["actions", "standard"] and method == "GET":
        action = describe_action(version)
        return 200, {"actions": [{k: action[k] for k in ("name", "label", "type", "url")}]}
    if segments == ["actions", "standard", ACTION]:
        if method == "GET":
            return 200, describe_action(version)
        if method == "POST":
            return send(org, body, user_id)
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,HEAD,POST")
    raise not_found()
