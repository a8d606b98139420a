"""The Salesforce side of customer signing (issue 14 part 6), against the emulator over HTTPS: the custom
notification client, `sfsign check` proving the notification type and the new record fields, and `run`
refusing to start without the type (exit 3, check's words).

Nothing in the daemon sends notifications or writes the new fields yet (the envelope worker comes later):
these tests drive the client and the checks directly, and the CLI as ops would.
"""

from __future__ import annotations

import pytest
from e2e_support import record_id, run_daemon

from sfsign.check import StartupRefused, render_failures
from sfsign.check.org import check_access, check_notification_type, check_org
from sfsign.config import Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.salesforce import names
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
MISSING = "Not_Deployed_Type"


async def _owner(control: ControlClient, opportunity: str) -> str:
    return str((await control.get("Opportunity", opportunity, ["OwnerId"]))["OwnerId"])


async def test_the_record_owner_is_notified_and_the_type_is_looked_up_once(
    settings: Settings, control: ControlClient, rest: SalesforceRest
) -> None:
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"]})
    opportunity = await record_id(control, "Opportunity", ACME)
    owner = await _owner(control, opportunity)
    before = int((await control.api_usage())["used"])
    for title in ("Acme declined to sign", "Acme: signature expired"):
        sent = await rest.send_notification(names.NotificationType.SIGNATURE_OUTCOME, [owner], title,
                                            "Reason: " + "too expensive " * 80, opportunity)
        assert sent.type_id.startswith("0ML") and sent.message
    assert int((await control.api_usage())["used"]) - before == 3, "one type lookup, two sends"
    got = await control.notifications()
    assert [(n["title"], n["deliveredTo"], n["targetId"], n["typeName"]) for n in got] == [
        ("Acme declined to sign", [owner], opportunity, names.NotificationType.SIGNATURE_OUTCOME),
        ("Acme: signature expired", [owner], opportunity, names.NotificationType.SIGNATURE_OUTCOME)]
    assert all(len(n["body"]) == names.NOTIFICATION_BODY_MAX for n in got), "cut to the limit, not refused"


async def test_a_user_without_send_custom_notifications_gets_a_permanent_error(
    settings: Settings, control: ControlClient, rest: SalesforceRest
) -> None:
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Viewer"]})
    opportunity = await record_id(control, "Opportunity", ACME)
    with pytest.raises(SalesforceError) as refused:
        await rest.send_notification(names.NotificationType.SIGNATURE_OUTCOME, [await _owner(control, opportunity)],
                                     "t", "b", opportunity)
    assert refused.value.error_code == "INSUFFICIENT_ACCESS" and not refused.value.transient
    assert await control.notifications() == []


async def test_check_finds_the_type_as_a_minimum_access_integration_user(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"]})
    found = await check_notification_type(rest, names.NotificationType.SIGNATURE_OUTCOME)
    assert found.ok and names.NotificationType.SIGNATURE_OUTCOME in found.detail
    access = {c.name: c for c in await check_access(rest, rules, settings.multi_currency)}
    assert access["access CustomNotificationType"].ok, access["access CustomNotificationType"]


async def test_check_and_run_refuse_a_missing_type_and_check_names_the_new_fields_it_cannot_edit(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """`check` (in-process, the checks against the org) and `run` (the real daemon, in-process: StartupRefused is
    what the command line turns into exit code 3 with these words, see test_refuses_to_start.py)."""
    await control.post("/_control/users/access", {
        "user": settings.username, "permissionSets": ["sfsign_Integration"],
        "readOnlyFields": ["Opportunity.Sign_Progress__c"], "revokeFields": ["Quote.Sign_Decline_Reason__c"]})
    missing = settings.model_copy(update={"notification_type": MISSING})
    async with SalesforceSession(missing) as session:
        checks = {c.name: c for c in await check_org(missing, rules, session)}
    line = f"the org has no custom notification type '{MISSING}'"
    assert checks["notification type"].ok is False and line in checks["notification type"].detail
    assert "Sign_Progress__c is read-only for the integration user" in checks["object Opportunity"].detail
    assert "Sign_Decline_Reason__c is missing (or not visible to the integration user)" in checks[
        "object Quote"].detail
    with pytest.raises(StartupRefused) as refused:
        await Daemon(missing, rules).run()
    assert str(refused.value) == render_failures([checks["notification type"]])
    assert "fix: deploy salesforce-metadata/ (it holds the notification type)" in str(refused.value)
    assert not (settings.data_dir / "artifacts").exists()  # no worker ever started


async def test_an_empty_notification_type_setting_is_not_checked_and_does_not_stop_run(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """The type is checked only when one is configured (issue 12 part 1): an empty SFSIGN_NOTIFICATION_TYPE
    means no notifications, so neither `check` nor `run` looks one up (a lookup of '' would find none and
    refuse to start)."""
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"]})
    none = settings.model_copy(update={"notification_type": ""})
    async with SalesforceSession(none) as session:
        checks = {c.name: c for c in await check_org(none, rules, session)}
    skipped = checks["notification type"]
    assert skipped.ok is None and "SFSIGN_NOTIFICATION_TYPE is empty: no custom notifications" in skipped.detail
    assert not [c for c in checks.values() if c.ok is False], [c for c in checks.values() if c.ok is False]
    async with run_daemon(none, rules) as daemon:
        assert daemon.ready.is_set()
