"""Rotation without downtime: a running daemon reloads its rules file (SIGHUP or `request_reload`); the
next job uses the new template, appearance and file name, a job already in flight finishes with the
rules it was claimed with, and an invalid rules file is refused while the old rules stay in force."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import MutableMapping
from io import BytesIO
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, wait_for_status
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.salesforce.rest import SalesforceRest

PROPOSAL = "Proposal/Price Quote"
OLD_REASON = "Offer approved and signed by Northwind Cloud GmbH"
NEW_REASON = "Reloaded and approved by the rotation test"
WAIT_S = 60.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ops_port": 0})


def rewrite_rules(rules: Rules) -> str:
    """The opportunity rule gets another template, file name and signature reason."""
    text = rules.source.read_text()
    new = (text.replace("template: proposal", "template: quote", 1)
               .replace('file_name: "Proposal {number} {date}.pdf"', 'file_name: "Reloaded {number}.pdf"', 1)
               .replace(f"reason: {OLD_REASON}", f"reason: {NEW_REASON}", 1))
    assert new.count("template: quote") == 2 and "Reloaded {number}" in new and NEW_REASON in new, new
    return new


async def signed_document(control: ControlClient, rest: SalesforceRest, opp: str) -> tuple[str, str, str]:
    """(file name, signature reason, PDF title) of the document on the record."""
    record = await wait_for_status(control, "Opportunity", opp, within_s=WAIT_S)
    assert record["Sign_Status__c"] == "Signed", record
    [file] = [f for f in await control.files() if f.get("Sign_Transaction_Id__c") == record["Sign_Transaction_Id__c"]]
    pdf = await rest.download_version_data(str(file["Id"]))
    reader = PdfFileReader(BytesIO(pdf))
    reason = str(reader.embedded_signatures[-1].sig_object["/Reason"])
    title = str(reader.trailer["/Info"]["/Title"])
    return str(file["PathOnClient"]), reason, title


async def until_in_flight(daemon: Daemon, jobs: int) -> None:
    async with asyncio.timeout(WAIT_S):
        while daemon.worker is None or daemon.worker.in_flight != jobs:  # noqa: ASYNC110 - a plain attribute
            await asyncio.sleep(0.02)


async def test_reload_applies_new_rules_to_the_next_job_while_the_job_in_flight_keeps_the_old_ones(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
) -> None:
    first, in_flight, after = [await record_id(control, "Opportunity", n) for n in (
        "Acme Industries - Platform Renewal 2027", "Brandt & Söhne - Premium Support", "Initech - Onboarding Package")]
    async with run_daemon(settings, rules) as daemon:
        await control.update("Opportunity", first, {"StageName": PROPOSAL}, user=REP)
        before = await signed_document(control, rest, first)
        await until_in_flight(daemon, 0)  # the first job has left the worker
        # Hold the next job in its fetch (the record query answers slowly), then reload under it.
        await control.post("/_control/faults/latency", {"prefix": "/services/data/v68.0/query", "ms": 3000})
        await control.update("Opportunity", in_flight, {"StageName": PROPOSAL}, user=REP)
        await until_in_flight(daemon, 1)
        rules.source.write_text(rewrite_rules(rules))
        applied = await daemon.request_reload()
        await control._json("DELETE", "/_control/faults")  # no public call for it
        held = await signed_document(control, rest, in_flight)
        await control.update("Opportunity", after, {"StageName": PROPOSAL}, user=REP)
        reloaded = await signed_document(control, rest, after)
        worker_rules = daemon.worker.rules if daemon.worker else None
        reloads = daemon.metrics.registry.get_sample_value("sfsign_config_reloads_total")

    assert applied is True and reloads == 1
    assert worker_rules is daemon.rules and daemon.rules is not rules
    assert before[0].startswith("Proposal ") and before[1] == OLD_REASON and before[2].startswith("Proposal ")
    assert held[0].startswith("Proposal ") and held[1] == OLD_REASON and held[2].startswith("Proposal "), held
    assert reloaded[0].startswith("Reloaded ") and reloaded[1] == NEW_REASON, reloaded
    assert reloaded[2].startswith("Quote "), reloaded  # the quote template's title


async def test_sighup_with_an_invalid_rules_file_keeps_the_old_rules_and_counts_the_failure(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    logs: list[MutableMapping[str, Any]],
) -> None:
    opp = await record_id(control, "Opportunity", "Acme Industries - API Add-on")
    good = rules.source.read_text()
    broken = good.replace("profile: company-seal", "profile: no-such-profile", 1)
    line = next(n for n, text in enumerate(broken.splitlines(), 1) if "no-such-profile" in text)
    async with run_daemon(settings, rules) as daemon:
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)  # else SIGHUP kills
        rules.source.write_text(broken)
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(WAIT_S):
            while not daemon.metrics.registry.get_sample_value("sfsign_config_reload_failures_total"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        rules.source.write_text(rewrite_rules(rules).replace("template: quote", "template: missing.typ", 1))
        second = await daemon.request_reload()
        kept = daemon.rules
        await control.update("Opportunity", opp, {"StageName": PROPOSAL}, user=REP)
        name, reason, _title = await signed_document(control, rest, opp)
        failures = daemon.metrics.registry.get_sample_value("sfsign_config_reload_failures_total")

    assert second is False and failures == 2
    assert kept is rules and (daemon.worker is None or daemon.worker.rules is rules)
    assert name.startswith("Proposal ") and reason == OLD_REASON  # the old rules signed it
    # The operator's only view of why: the refusal's line, found by its fields (the file and the error).
    refused = [e for e in logs if {"rules_file", "error"} <= e.keys()]
    assert len(refused) == 2 and all(e["log_level"] == "error" for e in refused)
    assert f"{rules.source}:{line}: unknown signing profile 'no-such-profile'" in refused[0]["error"]
    assert "unknown template 'missing.typ'" in refused[1]["error"]
