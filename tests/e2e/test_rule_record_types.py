"""Rules limited to record types (issue 12, part 4), end to end against the emulator over real HTTPS.

The org gets two Opportunity record types, as an admin creates them in Setup; the Opportunity rule signs
only `Enterprise` records. A stage change on a `Renewal` record ends quietly (no document, no write on
the record, an audit event), a rep's Send for Signature on it gets a note, reconciliation leaves it out,
and a rules file naming a record type the org lacks refuses to start with the line and the fix. With a second
rule for `Renewal` records, a request naming no rule takes the covering rule, and a Re-issue naming none
takes the rule that signed the record (or is refused when two did).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import ConfigError, Rules, Settings, load_rules
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.outbox import JobState, OutboxStore
from sfsign.reconcile import reconcile_once
from sfsign.salesforce.rest import SalesforceRest

ENTERPRISE_DEAL = "Acme Industries - Platform Renewal 2027"
RENEWAL_DEAL = "Acme Industries - API Add-on"
TRIGGER = {"StageName": "Proposal/Price Quote"}
OPP_RULE = "    template: proposal\n    profile: company-seal\n"


def _rules(tmp_path: Path, pki: DemoPki, record_types: str | None) -> Rules:
    """The tests' rules with the Opportunity rule limited to `record_types` (YAML), if given."""
    path = tmp_path / "rules.yaml"
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    assert OPP_RULE in text
    if record_types is not None:
        text = text.replace(OPP_RULE, f"{OPP_RULE}    record_types: {record_types}\n", 1)
    path.write_text(text)
    return load_rules(path)


@pytest.fixture
def rules(tmp_path: Path, pki: DemoPki, pki_passphrase: str, monkeypatch: pytest.MonkeyPatch) -> Rules:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    return _rules(tmp_path, pki, "[Enterprise]")


async def _typed_deals(control: ControlClient) -> tuple[str, str]:
    """Two record types, as an admin creates them; one deal of each. (enterprise deal, renewal deal)"""
    enterprise = await control.add_record_type("Opportunity", "Enterprise", "Enterprise Deal")
    renewal = await control.add_record_type("Opportunity", "Renewal", "Renewal")
    a = await record_id(control, "Opportunity", ENTERPRISE_DEAL)
    b = await record_id(control, "Opportunity", RENEWAL_DEAL)
    await control.update("Opportunity", a, {"RecordTypeId": enterprise}, user=REP)
    await control.update("Opportunity", b, {"RecordTypeId": renewal}, user=REP)
    return a, b


async def _audit(rest: SalesforceRest, opp: str, wanted: str, within_s: float = 30.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(within_s):
        while True:
            events = await rest.query(
                "SELECT Event_Type__c, Transaction_Id__c, Detail__c FROM Signature_Event__c "
                f"WHERE Opportunity__c = '{opp}' ORDER BY Name")
            if any(e["Event_Type__c"] == wanted for e in events):
                return events
            await asyncio.sleep(0.1)


async def _note(control: ControlClient, opp: str, within_s: float = 60.0) -> str:
    """The record's Sign_Error__c, once there is one."""
    async with asyncio.timeout(within_s):
        while True:
            note = (await control.get("Opportunity", opp, ["Sign_Error__c"])).get("Sign_Error__c")
            if note:
                return str(note)
            await asyncio.sleep(0.1)


async def _files_of(control: ControlClient, opp: str) -> list[dict[str, Any]]:
    return [f for f in await control.files() if f.get("FirstPublishLocationId") == opp]


async def test_a_rule_limited_to_a_record_type_signs_its_records_and_quietly_skips_others(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest
) -> None:
    a, b = await _typed_deals(control)
    quick = settings.model_copy(update={"audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", b, TRIGGER, user=REP)
        await control.update("Opportunity", a, TRIGGER, user=REP)
        signed = await wait_for_status(control, "Opportunity", a)
        events = await _audit(rest, b, "skipped")
        jobs = {j.record_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}
    assert signed["Sign_Status__c"] == "Signed", signed
    assert len(await _files_of(control, a)) == 1
    assert jobs[b].state is JobState.SKIPPED
    assert await _files_of(control, b) == []
    record = await control.get("Opportunity", b, ["Sign_Status__c", "Sign_Transaction_Id__c", "Sign_Error__c"])
    assert record["Sign_Status__c"] is None and record["Sign_Transaction_Id__c"] is None, record
    assert record["Sign_Error__c"] is None, "a stage change on a record the rule is not for writes nothing on it"
    [skipped] = [e for e in events if e["Event_Type__c"] == "skipped"]
    assert "rule 'opportunity-proposal' signs only Opportunity records of record type Enterprise" in skipped[
        "Detail__c"]
    assert "this record's type is Renewal" in skipped["Detail__c"]


async def test_send_for_signature_on_a_record_of_another_type_gets_a_note_naming_the_covered_types(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    _a, b = await _typed_deals(control)
    async with run_daemon(settings, rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": b}, user=REP)
        note = await _note(control, b)
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    assert note.startswith("Not signed: rule 'opportunity-proposal' signs only Opportunity records of record "
                           "type Enterprise; this record's type is Renewal."), note
    assert [j.state for j in jobs] == [JobState.SKIPPED]
    assert await _files_of(control, b) == []


async def test_reconciliation_queues_only_records_of_the_rules_record_types(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    a, b = await _typed_deals(control)
    await control.update("Opportunity", a, TRIGGER, user=REP)
    await control.update("Opportunity", b, TRIGGER, user=REP)
    created = await reconcile_once(settings, rules)
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        queued = {j.record_id for j in store.jobs()}
    finally:
        store.close()
    assert created == 1 and queued == {a}


@pytest.mark.parametrize(
    ("record_types", "org", "expected"),
    [
        ("[Enterprize]", "typed",
         "rule 'opportunity-proposal' lists record type 'Enterprize': Opportunity record type 'Enterprize' does "
         "not exist in this org; use the Record Type Name (API name) from Setup > Object Manager > Opportunity > "
         "Record Types: one of 'Enterprise', 'Renewal'"),
        ("[enterprise]", "typed", "the API name is spelt 'Enterprise' (record type names in the rules file are "
                                  "case-sensitive)"),
        ("[Enterprise, Legacy]", "typed",
         "Opportunity record type 'Legacy' is inactive, so no record can be given it; activate it in Setup > "
         "Object Manager > Opportunity > Record Types, or remove it from the rule"),
        ("[Enterprise]", "untyped",
         "rule 'opportunity-proposal' is limited to record types 'Enterprise', but Opportunity has no record "
         "types in this org (only Master); remove `record_types` from the rule"),
    ],
    ids=["typo", "case", "inactive", "org-without-record-types"],
)
async def test_a_record_type_the_org_lacks_refuses_to_start_with_line_and_fix(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient, record_types: str, org: str,
    expected: str,
) -> None:
    if org == "typed":
        await _typed_deals(control)
        await control.add_record_type("Opportunity", "Legacy", active=False)
    rules = _rules(tmp_path, pki, record_types)
    where = f"{rules.source}:{rules.lines[('opportunity-proposal', 'record_types')]}: "
    daemon = Daemon(settings, rules)
    with pytest.raises(ConfigError) as caught:
        await daemon.run()
    message = str(caught.value)
    assert where in message and expected in message, message
    assert not daemon.ready.is_set()


async def test_sfsign_check_reports_an_unknown_record_type_and_passes_a_known_one(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient
) -> None:
    from sfsign.check import check_rules
    from sfsign.connections import SalesforceSession

    await _typed_deals(control)
    async with SalesforceSession(settings) as session:
        good = [c for c in await check_rules(session.rest, _rules(tmp_path, pki, "[Enterprise, Renewal]"))
                if c.name == "record types Opportunity"]
        bad = [c for c in await check_rules(session.rest, _rules(tmp_path, pki, "[Enterprize]"))
               if c.name == "record types Opportunity"]
    assert [c.ok for c in good] == [True] and "Enterprise, Renewal" in good[0].detail
    assert [c.ok for c in bad] == [False] and "'Enterprize' does not exist in this org" in bad[0].detail
    assert "rules.yaml:" in bad[0].detail


async def test_a_reload_naming_a_record_type_the_org_lacks_is_refused_and_the_old_rules_stay(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    await _typed_deals(control)
    async with run_daemon(settings, rules) as daemon:
        rules.source.write_text(rules.source.read_text().replace("record_types: [Enterprise]",
                                                                 "record_types: [Enterprize]"))
        applied = await daemon.request_reload()
        kept = daemon.rules
        rules.source.write_text(rules.source.read_text().replace("record_types: [Enterprize]",
                                                                 "record_types: [Renewal]"))
        fixed = await daemon.request_reload()
        now = daemon.rules
    assert applied is False and kept is rules
    assert fixed is True and now.rules[0].record_types == ["Renewal"]



RENEWAL_RULE = """\
  - name: opportunity-renewal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: company-seal
    record_types: [Renewal]
"""


def _two_typed_rules(tmp_path: Path, pki: DemoPki) -> Rules:
    """The Opportunity's first rule signs only Enterprise records, its second only Renewal ones."""
    rules = _rules(tmp_path, pki, "[Enterprise]")
    text = rules.source.read_text()
    rules.source.write_text(text.replace("  - name: quote-approved\n", RENEWAL_RULE + "  - name: quote-approved\n"))
    rules = load_rules(rules.source)
    assert [r.name for r in rules.for_object("Opportunity")] == ["opportunity-proposal", "opportunity-renewal"]
    return rules


async def test_send_for_signature_without_a_rule_name_takes_the_rule_covering_the_record_type(
    settings: Settings, tmp_path: Path, pki: DemoPki, pki_passphrase: str, control: ControlClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object's first rule signs only Enterprise records; a second signs Renewal ones. A rep's Send for
    Signature naming no rule on a Renewal deal is signed by the second, not skipped by the first."""
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    rules = _two_typed_rules(tmp_path, pki)
    _a, b = await _typed_deals(control)
    async with run_daemon(settings.model_copy(update={"rules_file": rules.source}), rules) as daemon:
        await control.publish("Sign_Request__e", {"RecordId__c": b}, user=REP)
        signed = await wait_for_status(control, "Opportunity", b)
        [job] = await daemon.outbox.call(lambda s: s.jobs())
    assert signed["Sign_Status__c"] == "Signed" and signed["Sign_Error__c"] is None, signed
    assert job.rule == "opportunity-renewal" and job.transaction_id == signed["Sign_Transaction_Id__c"]
    assert len(await _files_of(control, b)) == 1


async def test_a_reissue_without_a_rule_name_signs_a_new_version_with_the_rule_that_signed_the_record(
    settings: Settings, tmp_path: Path, pki: DemoPki, pki_passphrase: str, control: ControlClient,
    rest: SalesforceRest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Renewal deal is signed by the object's second rule; a Re-issue naming no rule means "a new version of
    that document": the second rule signs it and supersedes the first version (the object's first rule, which
    does not cover Renewal records, is not asked)."""
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    rules = _two_typed_rules(tmp_path, pki)
    _a, b = await _typed_deals(control)
    reason = "Customer changed the billing address"
    quick = settings.model_copy(update={"rules_file": rules.source, "audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", b, TRIGGER, user=REP)
        first = await wait_for_status(control, "Opportunity", b)
        old_tx = first["Sign_Transaction_Id__c"]
        await control.publish("Sign_Request__e", {"RecordId__c": b, "Action__c": "Reissue", "Reason__c": reason},
                              user=REP)
        async with asyncio.timeout(60):
            while True:
                second = await wait_for_status(control, "Opportunity", b)
                if second["Sign_Transaction_Id__c"] != old_tx:
                    break
                await asyncio.sleep(0.1)
        new_tx = second["Sign_Transaction_Id__c"]
        async with asyncio.timeout(30):
            while True:
                events = await _audit(rest, b, "superseded")
                if any(e["Event_Type__c"] == "done" and e["Transaction_Id__c"] == new_tx for e in events):
                    break
                await asyncio.sleep(0.1)
        jobs = {j.transaction_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}
    assert first["Sign_Status__c"] == "Signed" and jobs[old_tx].rule == "opportunity-renewal"
    assert second["Sign_Status__c"] == "Signed" and second["Sign_Error__c"] is None, second
    assert second["Signed_Document_Id__c"] != first["Signed_Document_Id__c"]
    assert jobs[new_tx].rule == "opportunity-renewal" and jobs[new_tx].state is JobState.DONE
    assert jobs[old_tx].superseded_by == new_tx
    assert sorted(f["Sign_Transaction_Id__c"] for f in await _files_of(control, b)) == sorted([old_tx, new_tx])
    [superseded] = [e for e in events if e["Event_Type__c"] == "superseded"]
    assert superseded["Transaction_Id__c"] == old_tx and new_tx in superseded["Detail__c"]
    assert reason in superseded["Detail__c"]
    [queued] = [e for e in events if e["Event_Type__c"] == "queued" and e["Transaction_Id__c"] == new_tx]
    assert queued["Detail__c"].startswith("source: reissue, rule: opportunity-renewal, ")
    assert f"supersedes transaction {old_tx}" in queued["Detail__c"]


async def test_a_reissue_without_a_rule_name_of_a_record_signed_by_two_rules_is_refused_asking_for_the_rule(
    settings: Settings, tmp_path: Path, pki: DemoPki, pki_passphrase: str, control: ControlClient,
    rest: SalesforceRest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Enterprise deal signed by the first rule becomes a Renewal deal and is signed by the second: a
    Re-issue naming no rule cannot say which document it replaces, so nothing is signed or superseded and
    the rep is asked, on the record and in its trail, to name the rule."""
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    rules = _two_typed_rules(tmp_path, pki)
    a, b = await _typed_deals(control)
    renewal = (await control.get("Opportunity", b, ["RecordTypeId"]))["RecordTypeId"]
    quick = settings.model_copy(update={"rules_file": rules.source, "audit_flush_s": 0.1})
    async with run_daemon(quick, rules) as daemon:
        await control.update("Opportunity", a, TRIGGER, user=REP)
        first = await wait_for_status(control, "Opportunity", a)
        await control.update("Opportunity", a, {"RecordTypeId": renewal}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": a, "Rule__c": "opportunity-renewal"}, user=REP)
        async with asyncio.timeout(60):
            while True:
                second = await wait_for_status(control, "Opportunity", a)
                if second["Sign_Transaction_Id__c"] != first["Sign_Transaction_Id__c"]:
                    break
                await asyncio.sleep(0.1)
        await control.publish("Sign_Request__e", {"RecordId__c": a, "Action__c": "Reissue"}, user=REP)
        note = await _note(control, a)
        events = await _audit(rest, a, "refused")
        jobs = await daemon.outbox.call(lambda s: s.jobs())
    ask = "name the rule to re-issue in Rule__c: 'opportunity-proposal' or 'opportunity-renewal'."
    assert note.startswith("Not re-issued: this Opportunity has signed documents of 2 rules") and note.endswith(ask)
    [refused] = [e for e in events if e["Event_Type__c"] == "refused"]
    assert refused["Detail__c"] == f"Sign_Request__e refused: {note}"
    assert not any(e["Event_Type__c"] == "superseded" for e in events)
    assert sorted(j.rule for j in jobs if j.state is JobState.DONE) == ["opportunity-proposal", "opportunity-renewal"]
    assert all(j.superseded_by is None for j in jobs) and len(await _files_of(control, a)) == 2
    record = await control.get("Opportunity", a, ["Sign_Status__c", "Sign_Transaction_Id__c"])
    assert (record["Sign_Status__c"], record["Sign_Transaction_Id__c"]) == ("Signed", second["Sign_Transaction_Id__c"])
