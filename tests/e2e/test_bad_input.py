"""The bad-input corpus: each case gets a clear error (on the record where there is one), the daemon stays
up, and nothing is lost — the good record sent after the bad ones is always signed."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, both_transports, record_id, replay_position, run_cli, run_daemon, wait_for_status

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings, load_rules
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki, create_demo_pki
from sfsign.outbox import JobState
from sfsign.profiles import preflight_profiles

ACME = "Acme Industries - Platform Renewal 2027"
GOOD = "Globex - Enterprise Rollout"


async def _sign_good_record_last(control: ControlClient) -> None:
    """Nothing lost: after the bad input, an ordinary record is still signed."""
    good = await record_id(control, "Opportunity", GOOD)
    await control.update("Opportunity", good, {"StageName": "Proposal/Price Quote"}, user=REP)
    assert (await wait_for_status(control, "Opportunity", good))["Sign_Status__c"] == "Signed"


async def _jobs(daemon: Daemon) -> dict[str, Any]:
    return {j.record_id: j for j in await daemon.outbox.call(lambda s: s.jobs())}


# ------------------------------------------------------------------------------- events and records


@pytest.mark.parametrize(
    ("channel", "data"),
    [
        ("/data/OpportunityChangeEvent", {"schema": "x", "payload": {"no": "header"}}),
        ("/data/OpportunityChangeEvent", {"payload": {"ChangeEventHeader": {"entityName": "Opportunity"}}}),
        ("/data/OpportunityChangeEvent", {"payload": "not an object"}),
        ("/data/QuoteChangeEvent", {"payload": {"ChangeEventHeader": {"changeType": "UPDATE", "recordIds": 7}}}),
        ("/event/Sign_Request__e", {"payload": None}),
        ("/event/Sign_Request__e", {"payload": {"RecordId__c": {"nested": "object"}}}),
    ],
)
@both_transports
async def test_malformed_events_are_skipped(
    settings: Settings, rules: Rules, control: ControlClient, channel: str, data: dict[str, Any]
) -> None:
    async with run_daemon(settings, rules) as daemon:
        injected = await control.post("/_control/streaming/raw", {"channel": channel, "data": data})
        await _sign_good_record_last(control)
        assert len(await _jobs(daemon)) == 1
        async with asyncio.timeout(10):
            while True:
                if replay_position(daemon.outbox.committed_replay_id(channel)) >= injected["replayId"]:
                    break
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "fields",
    [
        {"RecordId__c": "001Dn000000000AAA"},  # an account, not an opportunity or quote
        {"RecordId__c": "006'; DELETE"},  # not an id at all
        {"RecordId__c": "006Dn00000000zzIAA"},  # well-formed, but no such opportunity
        {"RecordId__c": "006", "Reason__c": "truncated id"},
    ],
)
@both_transports
async def test_bad_sign_requests_are_skipped_or_fail_cleanly(
    settings: Settings, rules: Rules, control: ControlClient, fields: dict[str, str]
) -> None:
    async with run_daemon(settings, rules) as daemon:
        await control.publish("Sign_Request__e", fields, user=REP)
        await _sign_good_record_last(control)
        jobs = await _jobs(daemon)
    unknown = fields["RecordId__c"] == "006Dn00000000zzIAA"
    if unknown:  # queued (the id looks right), then failed permanently: the record does not exist
        assert jobs[fields["RecordId__c"]].state is JobState.ERROR
        assert jobs[fields["RecordId__c"]].error_code == "NOT_FOUND"
    assert len(jobs) == (2 if unknown else 1)


async def test_record_deleted_before_the_daemon_reads_it(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        await control.post("/_control/faults/latency", {"prefix": "/services/data/v68.0/query", "ms": 800})
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        async with asyncio.timeout(30):  # the job is queued: its read of the record is to come or held up
            while True:
                if opp in await _jobs(daemon):
                    break
                await asyncio.sleep(0.05)
        await control._json("DELETE", f"/_control/records/Opportunity/{opp}", {"user": REP})
        async with asyncio.timeout(30):
            while True:
                job = (await _jobs(daemon)).get(opp)
                if job is not None and job.state is JobState.ERROR:
                    break
                await asyncio.sleep(0.05)
        await control._json("DELETE", "/_control/faults")
        await _sign_good_record_last(control)
    assert job.error_code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Hanse Logistik - Data Migration", "no products"),
        ("Lumière Santé - Pilot", "no primary contact"),
    ],
)
async def test_records_missing_data_show_what_to_fix(
    settings: Settings, rules: Rules, control: ControlClient, name: str, reason: str
) -> None:
    opp = await record_id(control, "Opportunity", name)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        await _sign_good_record_last(control)
    assert record["Sign_Status__c"] == "Error" and reason in str(record["Sign_Error__c"])


async def test_quote_without_contact_shows_what_to_fix(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    quote = await record_id(control, "Quote", "Globex Enterprise Rollout - Proposal")
    await control.update("Quote", quote, {"ContactId": None}, user=REP)
    async with run_daemon(settings, rules):
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        record = await wait_for_status(control, "Quote", quote)
        await _sign_good_record_last(control)
    assert record["Sign_Status__c"] == "Error" and "no contact" in str(record["Sign_Error__c"])


async def test_values_with_soql_and_markup_metacharacters_are_signed_verbatim(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    tricky = "O'Brien \\ \"Deal\" %_ #panic(\"x\") *bold* <b>"
    await control.update("Opportunity", opp, {"Name": tricky}, user=REP)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed", record["Sign_Error__c"]
    [file] = [f for f in await control.files() if f["Sign_Transaction_Id__c"] == record["Sign_Transaction_Id__c"]]
    assert "/" not in file["PathOnClient"] and "O'Brien" in file["Title"]


async def test_template_error_is_reported_on_the_record(
    settings: Settings, control: ControlClient, tmp_path: Path, pki: DemoPki, pki_passphrase: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    (tmp_path / "broken.typ").write_text('#let data = json(bytes(sys.inputs.data))\n#data.no_such_field.x\n')
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path,
                                 passphrase_env=PASSPHRASE_ENV).replace("template: proposal", "template: broken.typ")
    (tmp_path / "rules.yaml").write_text(text)
    rules = load_rules(tmp_path / "rules.yaml")
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
        quote = await record_id(control, "Quote", "Globex Enterprise Rollout - Proposal")
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        assert (await wait_for_status(control, "Quote", quote))["Sign_Status__c"] == "Signed"
    assert record["Sign_Status__c"] == "Error"
    assert "could not render" in str(record["Sign_Error__c"]) and "broken.typ" in str(record["Sign_Error__c"])


# ---------------------------------------------------------------------------- start-up and secrets


def _rules_with(tmp_path: Path, pki: DemoPki) -> Rules:
    path = tmp_path / "r.yaml"
    path.write_text(RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path,
                                          passphrase_env=PASSPHRASE_ENV))
    return load_rules(path)


def test_missing_key_file_wrong_passphrase_and_missing_secret_fail_before_any_signature(
    tmp_path: Path, pki: DemoPki, pki_passphrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = _rules_with(tmp_path, pki)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    assert f"define {PASSPHRASE_ENV}" in preflight_profiles(rules)[0]
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-passphrase")
    [problem] = preflight_profiles(rules)
    assert "company-seal" in problem and "not-the-passphrase" not in problem
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    assert preflight_profiles(rules) == []
    pki.signer_p12_path.rename(tmp_path / "moved.p12")
    try:
        assert "does not exist" in preflight_profiles(rules)[0]
    finally:
        (tmp_path / "moved.p12").rename(pki.signer_p12_path)


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_expired_or_future_signing_certificate_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    window = ((now - dt.timedelta(days=400), now - dt.timedelta(days=1)) if when == "expired"
              else (now + dt.timedelta(days=1), now + dt.timedelta(days=400)))
    pki = create_demo_pki(tmp_path / "pki", passphrase="pw-for-this-test", signer_not_before=window[0],
                          signer_not_after=window[1])
    monkeypatch.setenv(PASSPHRASE_ENV, "pw-for-this-test")
    [problem] = preflight_profiles(_rules_with(tmp_path, pki))
    assert ("has expired" if when == "expired" else "is not yet valid") in problem


def _run_cli(settings: Settings, **overrides: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["run"], settings, timeout=60, **overrides)


async def test_wrong_credentials_end_the_daemon_with_a_clear_message(
    settings: Settings, emulator: EmulatorThread
) -> None:
    result = await asyncio.to_thread(_run_cli, settings, SFSIGN_CONSUMER_KEY="3MVG9-not-a-registered-app")
    assert result.returncode == 3, result.stderr
    assert "Salesforce refused the login" in result.stderr and "invalid_client" in result.stderr
    assert "Traceback" not in result.stderr
    other = await asyncio.to_thread(_run_cli, settings, SFSIGN_USERNAME="nobody@northwind.example")
    assert other.returncode == 3 and "invalid_grant" in other.stderr


async def test_unreachable_login_url_keeps_retrying_and_stops_cleanly(
    settings: Settings, rules: Rules, logs: list[MutableMapping[str, Any]]
) -> None:
    daemon = Daemon(settings.model_copy(update={"login_url": "https://localhost:9"}), rules)
    task = asyncio.create_task(daemon.run())
    async with asyncio.timeout(30):  # the operator's log: each failed login says why and when the next comes
        while True:
            if task.done() or len([e for e in logs if e.get("error") and "retry_in_s" in e]) >= 2:
                break
            await asyncio.sleep(0.05)
    assert not task.done() and not daemon.health.authenticated  # waiting, not crashed
    daemon.request_stop()
    await asyncio.wait_for(task, 10)


@both_transports
async def test_a_channel_the_org_does_not_offer_ends_the_daemon_with_the_fix(
    settings: Settings, control: ControlClient
) -> None:
    await control.post("/_control/streaming/cdc-entities", {"entities": ["Opportunity"]})
    result = await asyncio.to_thread(_run_cli, settings)
    assert result.returncode == 3, result.stderr
    assert "/data/QuoteChangeEvent" in result.stderr and "Change Data Capture" in result.stderr
    assert "Traceback" not in result.stderr
