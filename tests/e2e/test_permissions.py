"""Permissions that cover every read (issue 12, part 1), against the emulator with field-level security.

The integration user is put on the profile the setup guide recommends (Minimum Access - API Only
Integrations: no object, no field) with the package's sfsign_Integration permission set, as deployed from
salesforce-metadata/. The emulator then hides what the set does not grant, as Salesforce does: an
invisible field is `No such column` in SOQL and absent from describe, a read-only one is refused on
write. Before the permission set granted the standard fields the daemon reads (Opportunity.Amount,
Quote.ExpirationDate, Contact.Email, line items...), every contract failed its first fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_cli, run_daemon, running_emulator, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.connections import SalesforceSession
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.salesforce.errors import SalesforceError
from sfsign.salesforce.rest import SalesforceRest
from sfsign.salesforce.stream import SubscriptionFailed

OPPORTUNITY = "Globex - Enterprise Rollout"
QUOTE = "Globex Enterprise Rollout - Proposal"


async def _restrict(control: ControlClient, settings: Settings, *, permission_sets: list[str] | None = None,
                    revoke: list[str] | None = None, read_only: list[str] | None = None) -> None:
    await control.post("/_control/users/access", {
        "user": settings.username, "permissionSets": ["sfsign_Integration"] if permission_sets is None
        else permission_sets, "revokeFields": revoke or [], "readOnlyFields": read_only or []})


def _check(settings: Settings) -> subprocess.CompletedProcess[str]:
    return run_cli(["check"], settings)


async def test_a_minimum_access_integration_user_with_the_permission_set_signs_both_objects(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    await _restrict(control, settings)
    async with run_daemon(settings, rules):
        opportunity = await record_id(control, "Opportunity", OPPORTUNITY)
        quote = await record_id(control, "Quote", QUOTE)
        await control.update("Opportunity", opportunity, {"StageName": "Proposal/Price Quote"}, user=REP)
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        signed_opportunity = await wait_for_status(control, "Opportunity", opportunity)
        signed_quote = await wait_for_status(control, "Quote", quote)
    assert signed_opportunity["Sign_Status__c"] == "Signed", signed_opportunity["Sign_Error__c"]
    assert signed_quote["Sign_Status__c"] == "Signed", signed_quote["Sign_Error__c"]


async def test_check_passes_for_a_minimum_access_user_with_the_permission_set(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    await _restrict(control, settings)
    result = await asyncio.to_thread(_check, settings)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("access Opportunity", "access Quote", "access Contact", "access OpportunityLineItem",
                 "access Signature_Event__c", "access ContentVersion", "object Signature_Event__c"):
        assert f"ok    {name}" in result.stdout, (name, result.stdout)


async def test_check_names_each_field_the_integration_user_cannot_read_or_edit(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """An admin trimmed the permission set: check names every field and the fix, before any contract fails."""
    await _restrict(control, settings, revoke=["Opportunity.Amount", "Quote.ExpirationDate", "Contact.Email",
                                               "OpportunityLineItem.Discount"],
                    read_only=["Opportunity.Sign_Status__c", "Signature_Event__c.Detail__c"])
    result = await asyncio.to_thread(_check, settings)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()

    def row(name: str) -> str:
        return next(line for line in lines if line.startswith(f"FAIL  {name} "))

    assert "cannot read Opportunity.Amount" in row("access Opportunity")
    assert "cannot read Quote.ExpirationDate" in row("access Quote")
    assert "cannot read Contact.Email" in row("access Contact")
    assert "cannot read OpportunityLineItem.Discount" in row("access OpportunityLineItem")
    assert "Sign_Status__c is read-only for the integration user" in row("object Opportunity")
    assert "Detail__c cannot be set by the integration user" in row("object Signature_Event__c")
    assert "fix: assign the sfsign_Integration permission set" in result.stdout


async def test_check_fails_when_the_user_cannot_create_files_or_events(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """The viewer set (read-only, for reps) assigned to the integration user by mistake."""
    await _restrict(control, settings, permission_sets=["sfsign_Viewer"])
    result = await asyncio.to_thread(_check, settings)
    assert result.returncode == 1, result.stdout
    assert "cannot create Signature_Event__c records" in result.stdout
    assert "Sign_Transaction_Id__c cannot be set by the integration user" in result.stdout
    assert "the integration user cannot see Opportunity: 404 NOT_FOUND" in result.stdout


async def test_the_emulator_hides_fields_as_salesforce_does(
    settings: Settings, control: ControlClient, rest: SalesforceRest
) -> None:
    """Salesforce's exact errors for a user without field access, through the real client."""
    await _restrict(control, settings, revoke=["Opportunity.Amount"], read_only=["Opportunity.Sign_Error__c"])
    opportunity = await record_id(control, "Opportunity", OPPORTUNITY)
    with pytest.raises(SalesforceError) as hidden:
        await rest.query(f"SELECT Id, Amount FROM Opportunity WHERE Id = '{opportunity}'")
    assert hidden.value.error_code == "INVALID_FIELD"
    assert ("No such column 'Amount' on entity 'Opportunity'. If you are attempting to use a custom field, be "
            "sure to append the '__c' after the custom field name.") in str(hidden.value)
    described = {f["name"]: f for f in (await rest.describe("Opportunity"))["fields"]}
    assert "Amount" not in described and "CloseDate" in described  # required fields take no permission
    assert described["Sign_Error__c"]["updateable"] is False and described["Sign_Status__c"]["updateable"]
    with pytest.raises(SalesforceError) as read_only:
        await rest.update("Opportunity", opportunity, {"Sign_Error__c": "x"})
    assert read_only.value.error_code == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert "Unable to create/update fields: Sign_Error__c. Please check the security settings" in str(read_only.value)
    with pytest.raises(SalesforceError) as unknown:
        await rest.update("Opportunity", opportunity, {"Amount": 1})
    assert unknown.value.error_code == "INVALID_FIELD"
    await control.post("/_control/users/access", {"user": settings.username, "admin": True})
    assert await rest.query(f"SELECT Id, Amount FROM Opportunity WHERE Id = '{opportunity}'")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    """The e2e emulator with a 1 s Pub/Sub keepalive: a stream from LATEST starts where the server read the
    first FetchRequest, which the client learns only from the first answer (event or keepalive, 270 s by
    default). `_first_change` waits for that answer so the change cannot land before the stream's start."""
    with running_emulator(tmp_path, pubsub_keepalive_s=1.0) as emu:
        yield emu


async def _first_change(settings: Settings, channel: str, change: Any = None) -> dict[str, Any]:
    """Subscribe as the integration user with the real stream client, make `change` and return the first
    event (without a change: return once subscribed). The change is made only once the stream's start is
    fixed (`unconfirmed_starts`; always at once on CometD, after the first keepalive on Pub/Sub)."""
    async with SalesforceSession(settings) as session:
        stream = session.open_stream([channel], replay_source=lambda _c: None)
        messages = stream.messages()
        reader = asyncio.ensure_future(messages.__anext__())
        try:
            async with asyncio.timeout(60):
                while channel not in stream.subscribed_replay or channel in stream.unconfirmed_starts:
                    if reader.done():
                        reader.result()
                    await asyncio.sleep(0.05)
                if change is None:
                    return {}
                await change()
                while "data" not in (message := await reader):  # a keepalive's position message
                    reader = asyncio.ensure_future(messages.__anext__())
                return dict(message)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


async def _first_message(settings: Settings, channel: str) -> dict[str, Any]:
    """The stream's first message, or what it raises. A Pub/Sub `Subscribe` counts as subscribed once it is
    called, before the server has answered (a refusal comes later), so a refusal is awaited, not polled for."""
    async with SalesforceSession(settings) as session:
        stream = session.open_stream([channel], replay_source=lambda _c: None)
        async with asyncio.timeout(60):
            return dict(await anext(aiter(stream.messages())))


async def test_change_events_carry_only_the_fields_the_integration_user_can_read(
    settings: Settings, control: ControlClient
) -> None:
    await _restrict(control, settings, revoke=["Opportunity.Description"])
    opportunity = await record_id(control, "Opportunity", OPPORTUNITY)

    async def change() -> None:
        await control.update("Opportunity", opportunity, {"Description": "secret terms", "Sign_Error__c": "visible"},
                             user=REP)

    event = await _first_change(settings, "/data/OpportunityChangeEvent", change)
    payload = event["data"]["payload"]
    assert "Sign_Error__c" in payload["ChangeEventHeader"]["changedFields"] and payload["Sign_Error__c"] == "visible"
    assert "Description" not in payload and "Description" not in payload["ChangeEventHeader"]["changedFields"]


async def test_a_change_event_subscription_needs_view_all(settings: Settings, control: ControlClient) -> None:
    """The viewer set grants read without View All: Salesforce refuses the CDC subscription, and check says so."""
    await _restrict(control, settings, permission_sets=["sfsign_Viewer", "sfsign_Integration"])
    await _first_change(settings, "/data/QuoteChangeEvent")  # Integration: View All
    await _restrict(control, settings, permission_sets=["sfsign_Viewer"])
    with pytest.raises(SubscriptionFailed) as refused:
        await _first_message(settings, "/data/QuoteChangeEvent")
    refusal = ("User not allowed to subscribe CDC without View All Data permissions" if settings.transport == "cometd"
               else "PERMISSION_DENIED")  # Pub/Sub refuses the topic itself (GetTopic or Subscribe)
    assert refusal in str(refused.value)
    assert "/data/QuoteChangeEvent" in str(refused.value)
