"""Switching SFSIGN_TRANSPORT on a data directory that already holds the other transport's positions.

This is what an upgrade does where the default transport changed, or an org that moves to the Pub/Sub API (or
back, where a proxy blocks gRPC): one transport's replay ids are no position for the other, so each channel
starts afresh (change events from new ones, `Sign_Request__e` from the start of retention, deduplicated by
EventUuid) and its objects are reconciled once. Nothing moved while the daemon was down may be lost, nothing
signed before may be signed again, and the log says what happened and which setting decides.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, settled_jobs, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient

PROPOSAL = "Proposal/Price Quote"
ACME = "Acme Industries - Platform Renewal 2027"
GLOBEX = "Globex - Enterprise Rollout"
INITECH = "Initech - Onboarding Package"
SWITCH_LOG = "the stored replay positions are the other transport's"


@pytest.mark.parametrize(("before", "after"), [("cometd", "pubsub"), ("pubsub", "cometd")])
async def test_switching_transport_signs_what_moved_while_down_once_and_nothing_twice(
    settings: Settings, rules: Rules, control: ControlClient, logs: list[MutableMapping[str, Any]],
    before: str, after: str,
) -> None:
    acme, globex = await record_id(control, "Opportunity", ACME), await record_id(control, "Opportunity", GLOBEX)
    initech = await record_id(control, "Opportunity", INITECH)
    async with run_daemon(settings.model_copy(update={"transport": before}), rules) as daemon:
        await control.update("Opportunity", acme, {"StageName": PROPOSAL}, user=REP)
        await control.publish("Sign_Request__e", {"RecordId__c": globex}, user=REP)
        for record in (acme, globex):
            await wait_for_status(control, "Opportunity", record)
        await settled_jobs(daemon)
        assert daemon.stream is not None
        kinds = {type(daemon.outbox.committed_replay_id(c)) for c in daemon.stream.channels} - {type(None)}
    assert kinds == {int if before == "cometd" else bytes}

    await control.update("Opportunity", initech, {"StageName": PROPOSAL}, user=REP)  # while down
    logs.clear()
    async with run_daemon(settings.model_copy(update={"transport": after}), rules) as daemon:
        signed = await wait_for_status(control, "Opportunity", initech)
        jobs = await settled_jobs(daemon)

    assert signed["Sign_Status__c"] == "Signed"
    assert sorted(j.record_id for j in jobs) == sorted([acme, globex, initech])  # the Sign_Request__e replayed
    files = [f for f in await control.files() if f.get("Sign_Transaction_Id__c")]  # from the start: deduped
    assert len(files) == 3
    [warning] = [e for e in logs if str(e.get("event", "")).startswith(SWITCH_LOG)]
    assert warning["log_level"] == "warning" and "/data/OpportunityChangeEvent" in warning["channels"]
