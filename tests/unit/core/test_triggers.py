"""Rule matching and deterministic transaction ids."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sfsign.config import Rules, load_rules
from sfsign.salesforce.events import ChangeEvent, PlatformEvent
from sfsign.triggers import decide_change, decide_current_state, decide_sign_request, transaction_id

REPO = Path(__file__).resolve().parents[3]
ORG = "00D000000000001EAA"
OPP = "0065g00000AbCdEAAV"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules(REPO / "config" / "rules.yaml")


def _change(change_type: str = "UPDATE", changed: tuple[str, ...] = ("StageName", "LastModifiedDate"),
            fields: dict[str, object] | None = None, entity: str = "Opportunity", key: str = "tk-1") -> ChangeEvent:
    return ChangeEvent(
        channel=f"/data/{entity}ChangeEvent", replay_id=10, entity=entity, change_type=change_type,
        record_ids=(OPP,), changed_fields=changed,
        fields=fields if fields is not None else {"StageName": "Proposal/Price Quote"},
        commit_timestamp_ms=1_764_000_000_000, commit_user="005000000000001AAA", transaction_key=key,
        sequence_number=1,
    )


def test_stage_change_into_trigger_value_fires_one_job(rules: Rules) -> None:
    decision = decide_change(_change(), rules, ORG)
    [job] = decision.jobs
    assert (job.rule, job.sobject, job.record_id, job.source) == ("opportunity-proposal", "Opportunity", OPP, "cdc")
    assert job.event_time_ms == 1_764_000_000_000


def test_same_event_gives_the_same_transaction_id_and_another_event_another(rules: Rules) -> None:
    a = decide_change(_change(), rules, ORG).jobs[0].transaction_id
    assert a == decide_change(_change(), rules, ORG).jobs[0].transaction_id
    assert a != decide_change(_change(key="tk-2"), rules, ORG).jobs[0].transaction_id
    assert len(a) <= 64


@pytest.mark.parametrize(
    ("change_type", "changed", "fields"),
    [
        ("UPDATE", ("Amount", "LastModifiedDate"), {"Amount": 10, "StageName": "Proposal/Price Quote"}),
        ("UPDATE", ("StageName", "LastModifiedDate"), {"StageName": "Negotiation/Review"}),
        ("DELETE", (), {}),
    ],
)
def test_events_that_do_not_fire(rules: Rules, change_type: str, changed: tuple[str, ...],
                                 fields: dict[str, object]) -> None:
    assert decide_change(_change(change_type, changed, fields), rules, ORG).jobs == []


def test_create_in_trigger_stage_fires(rules: Rules) -> None:
    assert len(decide_change(_change("CREATE", ()), rules, ORG).jobs) == 1


def test_gap_event_asks_for_a_reread_and_overflow_for_reconciliation(rules: Rules) -> None:
    gap = decide_change(_change("GAP_UPDATE", (), {}), rules, ORG)
    assert gap.jobs == [] and gap.reread == [("Opportunity", OPP)]
    overflow = decide_change(_change("GAP_OVERFLOW", (), {}), rules, ORG)
    assert overflow.reconcile == ["Opportunity"]


def _sign_request(record_id: str, rule: str = "", **more: str) -> PlatformEvent:
    return PlatformEvent(
        channel="/event/Sign_Request__e", replay_id=5, event_uuid="2ec0e371-1395-457f-9275-be1b527a72f7",
        name="Sign_Request__e", fields={"RecordId__c": record_id, "Rule__c": rule, **more},
        created_date=datetime(2026, 11, 27, tzinfo=UTC), created_by_id="005000000000001AAA",
    )


def test_sign_request_picks_the_object_rule_from_the_id_prefix(rules: Rules) -> None:
    [job] = decide_sign_request(_sign_request("0Q05g000000AbCdCAK"), rules, ORG).jobs
    assert (job.rule, job.sobject, job.source) == ("quote-approved", "Quote", "event")


@pytest.mark.parametrize(
    ("record_id", "rule", "why"),
    [
        ("001000000000001AAA", "", "not an Opportunity or Quote id"),
        ("006'; DROP", "", "not an Opportunity or Quote id"),
        (OPP, "quote-approved", "is not a rule for Opportunity"),
    ],
)
def test_bad_sign_requests_are_ignored_with_a_reason(rules: Rules, record_id: str, rule: str, why: str) -> None:
    decision = decide_sign_request(_sign_request(record_id, rule), rules, ORG)
    assert decision.jobs == [] and why in decision.ignored[0]


def test_void_and_resend_ask_about_the_records_envelope_and_queue_no_job(rules: Rules) -> None:
    void = decide_sign_request(_sign_request(OPP, Action__c="Void", Reason__c=" Wrong price list "), rules, ORG)
    [request] = void.envelope_requests
    assert void.jobs == [] and void.refused == []
    assert (request.action, request.sobject, request.record_id, request.rule, request.reason, request.requested_by,
            request.request) == ("Void", "Opportunity", OPP, None, "Wrong price list", "005000000000001AAA",
                                 "pe:2ec0e371-1395-457f-9275-be1b527a72f7")
    resend = decide_sign_request(_sign_request(OPP, "opportunity-proposal", Action__c="Resend"), rules, ORG)
    assert [(r.action, r.rule, r.reason) for r in resend.envelope_requests] == [
        ("Resend", "opportunity-proposal", None)]


@pytest.mark.parametrize(("fields", "why"), [
    ({"Action__c": "Void"}, "Void needs a reason in Reason__c"),
    ({"Action__c": "Void", "Reason__c": "   "}, "Void needs a reason in Reason__c"),
    ({"Action__c": "Cancel"}, "Action__c 'Cancel' is not one of 'Sign', 'Reissue', 'Void', 'Resend'"),
])
def test_a_void_without_reason_or_an_unknown_action_is_refused_on_the_record(
        rules: Rules, fields: dict[str, str], why: str) -> None:
    decision = decide_sign_request(_sign_request(OPP, **fields), rules, ORG)
    assert decision.jobs == [] and decision.envelope_requests == []
    [row] = decision.refused
    assert why in row.detail and row.event_type == "refused" and row.record_id == OPP


def test_reread_never_requeues_a_record_that_already_has_a_transaction(rules: Rules) -> None:
    values = {"StageName": "Proposal/Price Quote", "Sign_Transaction_Id__c": "x"}
    assert decide_current_state("Opportunity", OPP, values, rules, ORG, "gap:tk") == []
    values["Sign_Transaction_Id__c"] = None
    [job] = decide_current_state("Opportunity", OPP, values, rules, ORG, "gap:tk")
    assert job.source == "gap" and job.transaction_id == transaction_id(
        ORG, "Opportunity", OPP, "opportunity-proposal", "gap:tk"
    )
