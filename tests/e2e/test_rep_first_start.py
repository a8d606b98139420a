"""A "Send for signature" click made while sfsign is down is not lost on a fresh install: a platform-event
channel without a stored position is read from the start of retention (-2), and EventUuid (then the File's
transaction id) keeps a replay from signing twice. Real daemon, real SQLite, emulator over HTTPS."""

from __future__ import annotations

import asyncio
import shutil

from e2e_support import REP, record_id, run_daemon, wait_for_status

from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient

CHANNEL = "/event/Sign_Request__e"


async def test_a_click_before_the_first_start_is_signed_and_a_fresh_data_directory_does_not_sign_it_again(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", "Acme Industries - Platform Renewal 2027")
    # The rep clicks before sfsign ever ran against this org: no data directory, no replay position.
    await control.publish("Sign_Request__e", {"RecordId__c": opp, "Reason__c": "before install"}, user=REP)
    assert not (settings.data_dir / "outbox.sqlite").exists()
    async with run_daemon(settings, rules) as daemon:
        assert daemon.stream is not None and daemon.stream.subscribed_replay[CHANNEL] == -2
        assert daemon.stream.subscribed_replay["/data/OpportunityChangeEvent"] == -1  # reconciliation's job
        record = await wait_for_status(control, "Opportunity", opp)
        [job] = await daemon.outbox.call(lambda s: s.jobs())
    assert record["Sign_Status__c"] == "Signed" and job.reason == "before install"
    tx = record["Sign_Transaction_Id__c"]
    # The data directory is lost: the next start reads the retained request again, and signs nothing new.
    shutil.rmtree(settings.data_dir)
    async with run_daemon(settings, rules) as daemon:
        assert daemon.stream is not None and daemon.stream.subscribed_replay[CHANNEL] == -2
        await wait_for_status(control, "Opportunity", opp)
        async with asyncio.timeout(60):
            while True:
                if [j for j in await daemon.outbox.call(lambda s: s.jobs()) if j.state.value == "done"]:
                    break
                await asyncio.sleep(0.1)
        [again] = await daemon.outbox.call(lambda s: s.jobs())
    assert again.transaction_id == tx and again.sha256 is None  # the same trigger, found, not signed
    assert len([f for f in await control.files() if f["Sign_Transaction_Id__c"] == tx]) == 1
