"""The retention purge of an envelope end to end: a customer declines on a real outbox file, the record mirror
shows it in the emulator and tells the owner, and the daemon's own purge pass (`purge_outbox`, run with the
clock moved past SFSIGN_JOB_RETENTION_DAYS, no sleeps) anonymises the envelope; the record in Salesforce
keeps what it shows, `sfsign envelopes show` says the envelope was purged, its link is an unknown link."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_envelope_record import ANNA, BERT, KEYS, RULE, VISIT, org, until
from test_envelope_record import signing_rules as signing_rules

from sfsign.cli import main
from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.ops.retention import DAY_S, purge_outbox
from sfsign.outbox import NewJob
from sfsign.outbox.envelope_models import SignerEvidence
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import EnvelopePolicy

REASON = "Budget frozen until Q3, ask Bert Legal"
PERSONAL = (ANNA.email, BERT.email, ANNA.name, BERT.name, "203.0.113.7", "Mozilla", "Budget frozen",
            str(ANNA.salesforce_id), str(BERT.salesforce_id))


def _envelope_tables(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return repr([conn.execute(f"SELECT * FROM {t}").fetchall()
                     for t in ("envelopes", "recipients", "envelope_events", "mails")])


async def test_a_declined_envelope_is_anonymised_after_the_retention_and_says_so(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings.model_copy(update={"data_dir": tmp_path, "job_retention_days": 30.0})
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        # As the worker sends one: the job waits on its envelope (`awaiting_signatures`).
        [job] = (await o.outbox.commit_event(None, None, [
            NewJob("tx-retain-1", RULE, "Opportunity", o.opportunity, "event")])).created
        job = await o.outbox.mark_fetched(job, document_json="{}", file_title="Proposal Acme Renewal 2027",
                                          file_name="Proposal.pdf")
        job, envelope = await o.outbox.send_envelope(job, (ANNA, BERT), EnvelopePolicy(), o.clock.now(), KEYS,
                                                     document_sha256="ab" * 32)
        anna, bert = await o.recipient(envelope, "Anna"), await o.recipient(envelope, "Bert")
        await o.outbox.mark_recipient_viewed(anna, o.clock.now(), VISIT)
        await o.authenticate(envelope, "Anna")
        await o.outbox.mark_recipient_signed(anna, SignerEvidence(ANNA.name, True, VISIT), o.clock.now())
        await o.authenticate(envelope, "Bert")
        await o.outbox.mark_recipient_refused(bert, REASON, o.clock.now(), VISIT)
        refused = await o.record(lambda r: r["Sign_Status__c"] == "Refused")
        assert refused["Sign_Decline_Reason__c"] == REASON
        await until(lambda: _notified(o.outbox, "tx-retain-1"))
        ended = (await o.outbox.envelope("tx-retain-1")).ended_at  # type: ignore[union-attr]
        assert ended is not None and (await o.outbox.by_transaction("tx-retain-1")).state.value == "envelope_ended"  # type: ignore[union-attr]
        assert all(p in _envelope_tables(tmp_path / "outbox.sqlite") for p in PERSONAL)
        token = KEYS.link_token("tx-retain-1", anna, 1)
        assert await o.outbox.recipient_by_token(token) is not None

        early = await purge_outbox(o.outbox, settings, now=ended + 29 * DAY_S)
        assert early.envelopes == 0 and await o.outbox.recipient_by_token(token) is not None
        result = await purge_outbox(o.outbox, settings, now=ended + 30 * DAY_S + 1)
        assert result.envelopes == 1
        assert not [p for p in PERSONAL if p in _envelope_tables(tmp_path / "outbox.sqlite")]
        assert await o.outbox.recipient_by_token(token) is None, "the link is an unknown link now"
        purged = await o.outbox.envelope("tx-retain-1")
        assert purged is not None and purged.state.value == "refused" and purged.purged_at == ended + 30 * DAY_S + 1
        assert [r.state.value for r in await o.outbox.recipients(envelope.id)] == ["signed", "refused"]

        # The purge writes nothing to Salesforce: the record keeps what it shows.
        await o.mirror.pass_once()
        after = await o.record(lambda r: True)
        assert (after["Sign_Status__c"], after["Sign_Decline_Reason__c"]) == ("Refused", REASON)

    monkeypatch.setenv("SFSIGN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(tmp_path / "no-secrets"))
    assert main(["envelopes", "show", "tx-retain-1"]) == 0
    out = capsys.readouterr().out
    assert "envelope tx-retain-1: refused" in out and "personal data purged" in out
    assert not [p for p in PERSONAL if p in out]


async def _notified(outbox: object, tx: str) -> bool:
    envelope = await outbox.envelope(tx)  # type: ignore[attr-defined]
    return envelope is not None and envelope.notified_at is not None
