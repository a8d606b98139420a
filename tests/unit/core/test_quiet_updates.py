"""`triggers.quiet_update`: intake passes over a CDC update that changed no watched field (sfsign's own
write-back) without building the event, and over nothing else: every message it lets through would have
decided nothing, and every message it declines goes the full way (parsed, decided, parked if malformed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sfsign.config import Rules, load_rules
from sfsign.salesforce.events import MalformedEvent, parse_event
from sfsign.triggers import decide_change, quiet_update

REPO = Path(__file__).resolve().parents[3]
ORG = "00D000000000001EAA"
OPP = "0065g00000AbCdEAAV"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules(REPO / "config" / "rules.yaml")


def _message(changed: list[str], change_type: str = "UPDATE", **header: Any) -> dict[str, Any]:
    """A change event as CometD delivers it: sfsign's write-back changes the Sign_* fields."""
    return {"channel": "/data/OpportunityChangeEvent", "data": {
        "schema": "s-1", "event": {"replayId": 42},
        "payload": {"ChangeEventHeader": {
            "entityName": "Opportunity", "changeType": change_type, "recordIds": [OPP], "changedFields": changed,
            "commitTimestamp": 1_764_000_000_000, "commitUser": "005000000000001AAA", "transactionKey": "tk-9",
            "sequenceNumber": 1, "changeOrigin": "com/salesforce/api/rest/62.0", **header},
            "Sign_Status__c": "Signed", "StageName": "Proposal/Price Quote"}}}


def test_a_write_back_is_passed_over_and_would_have_decided_nothing(rules: Rules) -> None:
    message = _message(["Sign_Status__c", "Sign_Transaction_Id__c", "LastModifiedDate"])
    quiet = quiet_update(message, rules)
    assert quiet is not None
    assert (quiet.channel, quiet.replay_id, quiet.entity, quiet.commit_timestamp_ms) == (
        "/data/OpportunityChangeEvent", 42, "Opportunity", 1_764_000_000_000)
    event = parse_event(message)
    decision = decide_change(event, rules, ORG)  # type: ignore[arg-type]
    assert (decision.jobs, decision.reread, decision.reconcile, decision.ignored) == ([], [], [], [])


@pytest.mark.parametrize("message", [
    _message(["StageName", "LastModifiedDate"]),  # a rep's stage change: a rule may fire
    _message(["Sign_Status__c"], change_type="CREATE"),
    _message(["Sign_Status__c"], change_type="GAP_UPDATE"),
    _message(["Sign_Status__c"], entityName="Account"),  # no rule for the object: intake logs it
    _message(["Sign_Status__c"], recordIds=["not-an-id"]),  # malformed: parked by the full way
    _message(["Sign_Status__c"], commitTimestamp="soon"),
    _message(["Sign_Status__c"], changedFields="Sign_Status__c"),
])
def test_anything_else_goes_the_full_way(rules: Rules, message: dict[str, Any]) -> None:
    assert quiet_update(message, rules) is None


def test_a_message_without_a_replay_id_goes_the_full_way_and_is_malformed(rules: Rules) -> None:
    message = copy.deepcopy(_message(["Sign_Status__c"]))
    message["data"]["event"] = {}
    assert quiet_update(message, rules) is None
    with pytest.raises(MalformedEvent):
        parse_event(message)
