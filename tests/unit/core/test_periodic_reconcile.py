"""The pieces of the periodic reconciliation that need no org: its query and the outbox filter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sfsign.outbox import NewJob, OutboxStore, StepAudit
from sfsign.reconcile import reconcile_query


def _job(tx: str, record: str, rule: str = "quote") -> NewJob:
    return NewJob(transaction_id=tx, rule=rule, sobject="Opportunity", record_id=record, source="cdc")


def test_records_with_jobs_counts_every_state_and_only_the_rule_asked(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    done, errored, other_rule = "006000000000001AAA", "006000000000002AAA", "006000000000003AAA"
    store.commit_event("/c", 1, [_job("tx-1", done), _job("tx-2", errored), _job("tx-3", other_rule, "other")])
    first, second = store.by_transaction("tx-1"), store.by_transaction("tx-2")
    assert first is not None and second is not None
    store.mark_done(first, StepAudit())
    store.mark_error(second, "no line items", "NOT_RENDERABLE")
    never = "006000000000004AAA"
    asked = [done, errored, other_rule, never]
    assert store.records_with_jobs("Opportunity", "quote", asked) == {done, errored}
    assert store.records_with_jobs("Quote", "quote", asked) == set()
    assert store.records_with_jobs("Opportunity", "quote", []) == set()


def test_records_with_jobs_takes_a_page_larger_than_sqlites_parameter_limit(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event("/c", 1, [_job("tx-1", "006000000000001AAA")])
    page = [f"006{n:015d}" for n in range(2000)] + ["006000000000001AAA"]
    assert store.records_with_jobs("Opportunity", "quote", page) == {"006000000000001AAA"}


def test_reconcile_query_bounds_last_modified_on_both_sides() -> None:
    since = datetime(2026, 12, 4, 15, 0, 0, 700000, tzinfo=UTC)
    until = datetime(2026, 12, 4, 16, 0, 0, tzinfo=UTC)
    soql = reconcile_query("Opportunity", "StageName", ["Proposal/Price Quote"], since, until)
    assert soql == (
        "SELECT Id, StageName, Sign_Transaction_Id__c FROM Opportunity WHERE StageName IN ('Proposal/Price Quote') "
        "AND Sign_Transaction_Id__c = null AND LastModifiedDate >= 2026-12-04T15:00:00Z "
        "AND LastModifiedDate < 2026-12-04T16:00:00Z ORDER BY LastModifiedDate"
    )
    assert "LastModifiedDate <" not in reconcile_query("Opportunity", "StageName", ["X"], None)
