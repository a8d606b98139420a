"""The custom-notification calls of SalesforceRest over a fake requests transport (no network): the type id
looked up once, the documented request, and every way the action fails mapped to sfsign's error classes."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sf_fakes import FakeAuth
from test_sf_rest import Reply, body_json, make_rest, path_of, soql_of

from sfsign.salesforce import names
from sfsign.salesforce.errors import SalesforceError, UncertainOutcome
from sfsign.salesforce.notifications import NotificationTypeMissing, cut

TYPE_ID = "0ML000000000001AAA"
OWNER = "005000000000001AAA"
OPP = "006000000000001AAA"
ACTION = "/services/data/v68.0/actions/standard/customNotificationAction"
SUCCESS = [{"actionName": "customNotificationAction", "errors": None, "isSuccess": True,
            "outputValues": {"SuccessMessage": "Your custom notification is processed successfully."}}]


def _failed(code: str, message: str) -> list[dict[str, Any]]:
    return [{"actionName": "customNotificationAction", "isSuccess": False, "outputValues": None,
             "errors": [{"statusCode": code, "message": message, "fields": []}]}]


def _org(action_reply: Reply, *, types: int = 1) -> Any:
    def handler(request: requests.PreparedRequest) -> Reply:
        if path_of(request).endswith("/query/"):
            records = [{"Id": TYPE_ID, "DeveloperName": "sfsign_Signature_Outcome",
                        "CustomNotifTypeName": "sfsign Signature Outcome"}][:types]
            return 200, {"totalSize": len(records), "done": True, "records": records}
        assert path_of(request) == ACTION and request.method == "POST"
        return action_reply

    return handler


async def test_the_type_is_looked_up_once_and_the_documented_input_is_sent(fake_auth: FakeAuth) -> None:
    rest, adapter = make_rest(fake_auth, _org((200, SUCCESS)))
    for _ in range(2):
        sent = await rest.send_notification(names.NotificationType.SIGNATURE_OUTCOME, [OWNER], "Declined",
                                            "x" * 900, OPP)
    await rest.close()
    assert (sent.type_id, sent.recipient_ids, sent.target_id) == (TYPE_ID, (OWNER,), OPP)
    assert sent.message == "Your custom notification is processed successfully."
    queries = [r for r in adapter.requests if path_of(r).endswith("/query/")]
    assert len(queries) == 1, "the 0ML id is cached per client"
    assert "FROM CustomNotificationType WHERE DeveloperName = 'sfsign_Signature_Outcome'" in soql_of(queries[0])
    [body] = body_json(adapter.requests[-1])["inputs"]
    assert body == {"customNotifTypeId": TYPE_ID, "recipientIds": [OWNER], "title": "Declined",
                    "body": "x" * (names.NOTIFICATION_BODY_MAX - 1) + "…", "targetId": OPP}


async def test_a_missing_type_is_permanent_and_names_the_fix(fake_auth: FakeAuth) -> None:
    rest, _ = make_rest(fake_auth, _org((200, SUCCESS), types=0))
    with pytest.raises(NotificationTypeMissing) as caught:
        await rest.send_notification("Not_There", [OWNER], "t", "b", OPP)
    await rest.close()
    assert not caught.value.transient
    assert "Not_There" in str(caught.value) and "SFSIGN_NOTIFICATION_TYPE" in str(caught.value)


@pytest.mark.parametrize(("reply", "code", "transient"), [
    ((400, _failed("INVALID_ID_FIELD", "Invalid recipient ID: 005")), "INVALID_ID_FIELD", False),
    ((400, _failed("INSUFFICIENT_ACCESS", "no permission")), "INSUFFICIENT_ACCESS", False),
    ((200, _failed("UNKNOWN_EXCEPTION", "odd")), "UNKNOWN_EXCEPTION", False),
    ((503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}]), "SERVER_UNAVAILABLE", True),
    ((403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]),
     "REQUEST_LIMIT_EXCEEDED", True),
], ids=["bad-recipient", "no-permission", "failed-in-a-200", "outage", "api-limit"])
async def test_failures_are_salesforce_errors_classified_as_any_call(fake_auth: FakeAuth, reply: Reply, code: str,
                                                                    transient: bool) -> None:
    rest, _ = make_rest(fake_auth, _org(reply))
    with pytest.raises(SalesforceError) as caught:
        await rest.send_notification(names.NotificationType.SIGNATURE_OUTCOME, [OWNER], "t", "b", OPP)
    await rest.close()
    assert (caught.value.error_code, caught.value.transient) == (code, transient)


async def test_a_send_cut_off_after_it_went_out_is_uncertain(fake_auth: FakeAuth) -> None:
    rest, _ = make_rest(fake_auth, _org(requests.exceptions.ReadTimeout("read timed out")))
    with pytest.raises(UncertainOutcome):
        await rest.send_notification(names.NotificationType.SIGNATURE_OUTCOME, [OWNER], "t", "b", OPP)
    await rest.close()


def test_texts_are_cut_to_the_limits_not_refused() -> None:
    assert cut("short", 250) == "short"
    long = cut("y" * 300, names.NOTIFICATION_TITLE_MAX)
    assert len(long) == names.NOTIFICATION_TITLE_MAX and long.endswith("…")
