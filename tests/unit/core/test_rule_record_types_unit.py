"""Rules limited to record types, below the end-to-end tests: the option, what the daemon reads for it (and
that the permission set covers it), the reconciliation filter, and a skipped job freeing its record."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_text import RULES_PREAMBLE

from sfsign import metadata as md
from sfsign.config import RECORD_TYPE_PATH, ConfigError, Rules, load_rules
from sfsign.emulator.access import Access
from sfsign.emulator.store import OrgStore
from sfsign.outbox import NewJob, OutboxStore
from sfsign.reads import rules_reads
from sfsign.record_types import RecordTypeNotRead, covering_rule, uncovered_reason
from sfsign.salesforce.events import PlatformEvent
from sfsign.salesforce.records import OpportunityRecord, record_type_filter
from sfsign.triggers import decide_sign_request, reissue_rule

RULES = RULES_PREAMBLE + """\
  - name: enterprise
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal
    record_types: [Enterprise, Master]
  - name: renewal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: quote
    profile: seal
    record_types: [Renewal]
  - name: quote
    object: Quote
    field: Status
    values: ["Approved"]
    template: quote
    profile: seal
"""


def _rules(tmp_path: Path, text: str = RULES) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return load_rules(path)


def test_the_record_type_is_read_only_for_objects_whose_rules_name_record_types(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    assert RECORD_TYPE_PATH in rules.fields_for("Opportunity")
    assert RECORD_TYPE_PATH not in rules.fields_for("Quote"), "an org without Quote record types has no field"
    assert rules.lines[("enterprise", "record_types")] == 19


@pytest.mark.parametrize("bad", ["[]", "[Enter prise]", "[1Enterprise]"])
def test_a_malformed_record_types_list_is_refused_at_load_with_the_line(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"rules.yaml:19: rules.0.record_types"):
        _rules(tmp_path, RULES.replace("record_types: [Enterprise, Master]", f"record_types: {bad}"))


def test_coverage_names_the_rules_that_would_sign_the_record(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    enterprise, renewal, _quote = rules.rules

    def record(record_type: str | None) -> OpportunityRecord:
        return OpportunityRecord(id="006000000000001AAA", fields={RECORD_TYPE_PATH: record_type})

    assert uncovered_reason(enterprise, rules, record("Enterprise")) is None
    assert uncovered_reason(enterprise, rules, record(None)) is None, "no record type is Master"
    why = uncovered_reason(enterprise, rules, record("Renewal"))
    assert why is not None and "signs only Opportunity records of record type Enterprise, Master" in why
    assert "Rule 'renewal' covers it" in why
    lone = uncovered_reason(renewal, rules, record("Partner"))
    assert lone is not None and "No rule covers that record type" in lone
    with pytest.raises(RecordTypeNotRead):
        uncovered_reason(enterprise, rules, OpportunityRecord(id="006000000000001AAA"))


def test_a_request_naming_no_rule_takes_the_rule_covering_the_record_type(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    enterprise, renewal, _quote = rules.rules

    def record(record_type: str | None) -> OpportunityRecord:
        return OpportunityRecord(id="006000000000001AAA", fields={RECORD_TYPE_PATH: record_type})

    assert covering_rule(enterprise, rules, record("Renewal")) is renewal
    assert covering_rule(enterprise, rules, record("Enterprise")) is None  # the first rule covers it: kept
    assert covering_rule(enterprise, rules, record("Partner")) is None  # none covers it: the skip note says so


@pytest.mark.parametrize(("rule", "source"), [("", "event-any-rule"), ("enterprise", "event")])
def test_a_request_naming_no_rule_leaves_the_choice_to_the_worker(tmp_path: Path, rule: str, source: str) -> None:
    """The object's first rule is limited to record types: unnamed, the worker picks the rule once it has
    read the record's type; named, the rule stays as the rep named it."""
    event = PlatformEvent(channel="/event/Sign_Request__e", replay_id=1,
                          event_uuid="6f1c1a52-5b57-4f9e-9c55-0d1c0e0c1a01", name="Sign_Request__e",
                          fields={"RecordId__c": "006000000000001AAA", "Rule__c": rule})
    [job] = decide_sign_request(event, _rules(tmp_path), "00D000000000001AAA").jobs
    assert (job.rule, job.source) == ("enterprise", source)


def _request(rule: str, action: str | None = None) -> PlatformEvent:
    fields = {"RecordId__c": "006000000000001AAA", "Rule__c": rule}
    if action is not None:
        fields["Action__c"] = action
    return PlatformEvent(channel="/event/Sign_Request__e", replay_id=1,
                         event_uuid="6f1c1a52-5b57-4f9e-9c55-0d1c0e0c1a01", name="Sign_Request__e", fields=fields)


@pytest.mark.parametrize(("rule", "source"), [("", "reissue-any-rule"), ("renewal", "reissue")])
def test_a_reissue_naming_no_rule_leaves_the_choice_to_intake_and_a_named_one_keeps_its_rule(
    tmp_path: Path, rule: str, source: str
) -> None:
    [job] = decide_sign_request(_request(rule, "Reissue"), _rules(tmp_path), "00D000000000001AAA").jobs
    assert (job.rule, job.source) == (rule or "enterprise", source)


def test_a_reissue_naming_no_rule_takes_the_rule_of_the_records_signed_document(tmp_path: Path) -> None:
    """One rule holds a signed document of the record: the Re-issue becomes a plain Re-issue of that rule,
    with the transaction id derived from its event (a replay still meets it)."""
    [job] = decide_sign_request(_request("", "Reissue"), _rules(tmp_path), "00D000000000001AAA").jobs
    chosen = reissue_rule(job, ["renewal"])
    assert isinstance(chosen, NewJob)
    assert (chosen.rule, chosen.source, chosen.transaction_id) == ("renewal", "reissue", job.transaction_id)


def test_a_reissue_naming_no_rule_of_a_record_never_signed_here_signs_as_an_unnamed_request(
    tmp_path: Path
) -> None:
    [job] = decide_sign_request(_request("", "Reissue"), _rules(tmp_path), "00D000000000001AAA").jobs
    assert reissue_rule(job, []) is job  # the covering rule is taken at fetch, as for Send for Signature


def test_a_reissue_naming_no_rule_of_a_record_signed_by_several_rules_is_refused_asking_for_the_rule(
    tmp_path: Path
) -> None:
    [job] = decide_sign_request(_request("", "Reissue"), _rules(tmp_path), "00D000000000001AAA").jobs
    why = reissue_rule(job, ["enterprise", "renewal"])
    assert why == ("Not re-issued: this Opportunity has signed documents of 2 rules ('enterprise', 'renewal') "
                   "and the Re-issue named none; name the rule to re-issue in Rule__c: 'enterprise' or 'renewal'.")


def test_only_a_reissue_naming_no_rule_has_its_rule_chosen_at_intake(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    for request in (_request(""), _request("renewal", "Reissue")):
        [job] = decide_sign_request(request, rules, "00D000000000001AAA").jobs
        assert reissue_rule(job, ["renewal", "enterprise"]) is job


def test_reconciliation_filter_treats_master_as_no_record_type() -> None:
    assert record_type_filter(["Enterprise"]) == "RecordType.DeveloperName IN ('Enterprise')"
    assert record_type_filter(["Enterprise", "Master"]) == \
        "(RecordType.DeveloperName IN ('Enterprise') OR RecordTypeId = null)"
    assert record_type_filter(["Master"]) == "RecordTypeId = null"
    assert record_type_filter(["O'Brien"]) == "RecordType.DeveloperName IN ('O\\'Brien')"


def test_the_permission_set_covers_the_record_type_reads(tmp_path: Path) -> None:
    """The drift guard for record types: what the daemon reads under such rules, the integration user reads
    (RecordTypeId and RecordType take no field permission in Salesforce)."""
    reads = rules_reads(_rules(tmp_path))
    assert "RecordTypeId" in reads["Opportunity"] and reads["RecordType"] == {"DeveloperName"}
    assert "RecordTypeId" not in reads["Quote"]
    schema = md.load_schema()
    store = OrgStore(schema)
    store.add_record_type("Opportunity", "Enterprise")
    granted = Access.granted_by([schema.permission_sets["sfsign_Integration"]])
    for sobject, name in [("Opportunity", "RecordTypeId"), ("RecordType", "DeveloperName")]:
        obj = store.schema.objects[sobject]
        assert granted.can_read_field(obj, obj.fields[name]), f"{sobject}.{name}"


def test_a_skipped_job_leaves_the_record_free_for_its_next_trigger_and_is_not_retried(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")

    def job(tx: str) -> NewJob:
        return NewJob(transaction_id=tx, rule="r", sobject="Opportunity", record_id="006000000000001AAA",
                      source="cdc")

    first = store.commit_event("/c", 1, [job("tx-1")]).created[0]
    store.mark_skipped(first, "Not signed: record type")
    with pytest.raises(ValueError, match="only error/dead jobs can be retried"):
        store.requeue(first.id)
    again = store.commit_event("/c", 2, [job("tx-2")])
    assert [j.transaction_id for j in again.created] == ["tx-2"]


def test_an_outbox_with_the_previous_unique_index_gets_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    store = OutboxStore(path)
    store.db.execute("DROP INDEX jobs_one_per_record_v4")
    store.db.execute("CREATE UNIQUE INDEX jobs_one_per_record_v2 ON jobs (sobject, record_id, rule) "
                     "WHERE state NOT IN ('error', 'dead') AND source != 'ltv-refresh' AND duplicate_of IS NULL "
                     "AND superseded_by IS NULL")
    store.close()
    reopened = OutboxStore(path)
    names = {i.name for i in reopened.db.table("jobs").indexes}
    assert "jobs_one_per_record_v4" in names and "jobs_one_per_record_v2" not in names
    reopened.close()
