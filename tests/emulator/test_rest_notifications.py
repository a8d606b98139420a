"""Custom notifications over real HTTPS, as the Actions Developer Guide documents them: the package's
notification type is a `CustomNotificationType` record (0ML id) found by DeveloperName, and
`POST /actions/standard/customNotificationAction` takes `{"inputs": [...]}` and answers one result per
input (`actionName`, `errors`, `isSuccess`, `outputValues.SuccessMessage`), HTTP 400 when one failed.
What the org accepted is visible through the control API; every call counts against the API allocation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sfsign.emulator.server import Emulator
from sfsign.salesforce import names

V = "/services/data/v68.0"
ACTION = f"{V}/actions/standard/customNotificationAction"
SUCCESS = {"actionName": "customNotificationAction", "errors": None, "isSuccess": True,
           "outputValues": {"SuccessMessage": "Your custom notification is processed successfully."}}


@pytest.fixture
def api(http: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {token}"
    return http


async def _type_id(api: httpx.AsyncClient) -> str:
    response = await api.get(f"{V}/query", params={
        "q": "SELECT Id, DeveloperName, CustomNotifTypeName, MasterLabel, Desktop, Mobile FROM CustomNotificationType "
             f"WHERE DeveloperName = '{names.NotificationType.SIGNATURE_OUTCOME}'"})
    assert response.status_code == 200, response.text
    [row] = response.json()["records"]
    assert row["Desktop"] is True and row["Mobile"] is True and row["CustomNotifTypeName"]
    return str(row["Id"])


async def _owner(ctl: Any) -> str:
    [opp] = await ctl.query("SELECT Id, OwnerId FROM Opportunity LIMIT 1")
    return str(opp["OwnerId"])


def _input(type_id: str, owner: str, **over: Any) -> dict[str, Any]:
    return {"customNotifTypeId": type_id, "recipientIds": [owner], "title": "Customer declined",
            "body": "Acme declined: price too high", "targetId": owner, **over}


async def test_the_package_type_is_queryable_and_a_notification_is_received(
        api: httpx.AsyncClient, ctl: Any, emulator: Emulator) -> None:
    type_id = await _type_id(api)
    assert type_id.startswith("0ML") and len(type_id) == 18
    owner = await _owner(ctl)
    used = (await ctl.get("/_control/api-usage"))["used"]
    response = await api.post(ACTION, json={"inputs": [_input(type_id, owner)]})
    assert response.status_code == 200, response.text
    assert response.json() == [SUCCESS]
    assert (await ctl.get("/_control/api-usage"))["used"] == used + 1
    [got] = (await ctl.get("/_control/notifications"))["notifications"]
    assert (got["typeId"], got["typeName"], got["recipientIds"], got["deliveredTo"], got["title"], got["targetId"]) == (
        type_id, names.NotificationType.SIGNATURE_OUTCOME, [owner], [owner], "Customer declined", owner)
    described = (await api.get(ACTION)).json()
    assert {i["name"] for i in described["inputs"] if i["required"]} == {"customNotifTypeId", "recipientIds",
                                                                          "title", "body"}


@pytest.mark.parametrize(("over", "code", "message"), [
    ({"customNotifTypeId": "0MLDn000000000zAAA"}, "INVALID_ID_FIELD", "Invalid custom notification type ID"),
    ({"customNotifTypeId": "not-an-id"}, "INVALID_ID_FIELD", "Invalid custom notification type ID"),
    ({"title": None}, "REQUIRED_FIELD_MISSING", "Missing required input parameter: title"),
    ({"recipientIds": ["003Dn000000000zAAA"]}, "INVALID_ID_FIELD", "Invalid recipient ID"),
    ({"title": "t" * 251}, "STRING_TOO_LONG", "(max length=250)"),
    ({"body": "b" * 751}, "STRING_TOO_LONG", "(max length=750)"),
    ({"targetId": None}, "REQUIRED_FIELD_MISSING", "targetId or a targetPageRef"),
], ids=["unknown-type", "malformed-type", "no-title", "contact-recipient", "long-title", "long-body", "no-target"])
async def test_a_bad_input_fails_with_its_result_and_http_400(api: httpx.AsyncClient, ctl: Any,
                                                              over: dict[str, Any], code: str, message: str) -> None:
    type_id, owner = await _type_id(api), await _owner(ctl)
    good = _input(type_id, owner)
    response = await api.post(ACTION, json={"inputs": [_input(type_id, owner, **over), good]})
    assert response.status_code == 400, response.text
    bad, ok = response.json()
    assert ok == SUCCESS, "each input stands alone"
    assert (bad["actionName"], bad["isSuccess"], bad["outputValues"]) == ("customNotificationAction", False, None)
    [error] = bad["errors"]
    assert error["statusCode"] == code and message in error["message"], error
    assert len((await ctl.get("/_control/notifications"))["notifications"]) == 1


async def test_without_send_custom_notifications_the_action_is_refused(api: httpx.AsyncClient, ctl: Any,
                                                                       emulator: Emulator) -> None:
    type_id, owner = await _type_id(api), await _owner(ctl)
    user = emulator.login.username
    await ctl.post("/_control/users/access", {"user": user, "permissionSets": ["sfsign_Viewer"]})
    refused = await api.post(ACTION, json={"inputs": [_input(type_id, owner)]})
    assert refused.status_code == 400 and refused.json()[0]["errors"][0]["statusCode"] == "INSUFFICIENT_ACCESS"
    await ctl.post("/_control/users/access", {"user": user, "permissionSets": ["sfsign_Integration"]})
    assert (await api.post(ACTION, json={"inputs": [_input(type_id, owner)]})).json() == [SUCCESS]


async def test_a_body_without_inputs_is_a_request_error(api: httpx.AsyncClient) -> None:
    response = await api.post(ACTION, json={"customNotifTypeId": "0MLDn000000000zAAA"})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
