"""A job's moves with its envelope, on a real SQLite outbox: sending moves the job with the envelope it makes,
a signature makes the job due, an envelope's end ends the job, each in the envelope step's own transaction
(a failing job write, forced by an SQLite trigger, takes the envelope's change back with it)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from envelope_paths import ANNA, CARA, EVIDENCE, KEYS, SIGNERS, T0, VISIT, job, mails, outbox, people, sign

from sfsign.outbox import Job, JobState, NewJob, Outbox, OutboxStore
from sfsign.outbox.envelope_models import Envelope
from sfsign.signing.lifecycle import DAY, EnvelopePolicy
from sfsign.signing.model import AuthMethod, EnvelopeState, MailKind, RecipientState

NO_CODE = EnvelopePolicy(auth=AuthMethod.NONE)


def _sent(store: OutboxStore, signers: tuple = SIGNERS, policy: EnvelopePolicy = NO_CODE) -> tuple[Job, Envelope]:
    return store.send_envelope(job(store), signers, policy, T0, KEYS, document_sha256="cd" * 32)


def _fail_job_moves_to(store: OutboxStore, state: JobState) -> None:
    """Make SQLite refuse any write that moves a job to `state` (a full disk or a crash, as far as the
    transaction is concerned)."""
    store.db.execute(f"CREATE TRIGGER refuse_{state.value} BEFORE UPDATE OF state ON jobs "
                     f"WHEN NEW.state = '{state.value}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END")


def _audit_types(store: OutboxStore) -> list[str]:
    return [str(r[0]) for r in store.db.execute("SELECT event_type FROM audit ORDER BY id").fetchall()]


def test_sending_makes_the_envelope_and_moves_the_job_to_awaiting_signatures(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    moved, env = _sent(store)
    assert moved.state is JobState.AWAITING_SIGNATURES and moved.envelope_sent_at == T0
    assert env.job_id == moved.id and env.document_sha256_before == "cd" * 32
    assert "awaiting_signatures" in _audit_types(store)
    # Not claimed: nothing to do until a signer acts.
    assert store.claim_due(time.time() + 10 * DAY, 10) == []


def test_sending_again_finds_the_first_envelope(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    first, env = _sent(store)
    again, env2 = store.send_envelope(first, SIGNERS, NO_CODE, T0 + 5, KEYS, document_sha256="cd" * 32)
    assert env2.id == env.id and again.state is JobState.AWAITING_SIGNATURES
    assert store.db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0] == 1
    assert store.db.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == len(SIGNERS)


def test_an_envelope_is_not_made_when_its_job_cannot_move(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    queued = job(store)
    _fail_job_moves_to(store, JobState.AWAITING_SIGNATURES)
    with pytest.raises(sqlite3.IntegrityError, match="refused by test"):
        store.send_envelope(queued, SIGNERS, NO_CODE, T0, KEYS, document_sha256="cd" * 32)
    assert store.envelope(queued.transaction_id) is None
    assert store.db.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM mails").fetchone()[0] == 0
    assert store.get(queued.id).state is JobState.QUEUED


def test_a_signature_makes_the_job_due_now_in_the_same_transaction(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    before = time.time()
    store.mark_recipient_signed(people(store, env)["Anna"].id, EVIDENCE, T0 + 60)
    due = store.get(waiting.id)
    assert due.state is JobState.SIGNATURES_DUE and before <= due.next_attempt_at <= time.time()
    assert [j.id for j in store.claim_due(time.time(), 10)] == [waiting.id]
    assert [r.name for r in store.signed_unapplied(env.transaction_id)] == ["Anna Buyer"]


def test_a_signature_is_not_recorded_when_its_job_cannot_become_due(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    _fail_job_moves_to(store, JobState.SIGNATURES_DUE)
    anna = people(store, env)["Anna"]
    with pytest.raises(sqlite3.IntegrityError, match="refused by test"):
        store.mark_recipient_signed(anna.id, EVIDENCE, T0 + 60)
    assert store.recipients(env.id)[0].state is RecipientState.INVITED
    assert store.get(waiting.id).state is JobState.AWAITING_SIGNATURES
    assert [e.type.value for e in store.timeline(env.id)].count("signed") == 0


def test_a_signature_leaves_a_job_in_another_state_alone(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    store.mark_error(waiting, "broken on purpose", "TEST")
    store.mark_recipient_signed(people(store, env)["Anna"].id, EVIDENCE, T0 + 60)
    assert store.get(waiting.id).state is JobState.ERROR


@pytest.mark.parametrize("end", ["refused", "voided", "expired"])
def test_an_envelope_that_ends_ends_its_job_in_the_same_transaction(tmp_path: Path, end: str) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    anna = people(store, env)["Anna"]
    if end == "refused":
        store.mark_recipient_refused(anna.id, "price too high", T0 + 60, VISIT)
    elif end == "voided":
        store.void(env.transaction_id, "wrong contact", T0 + 60, actor="lena")
    else:
        assert store.run_due(env.id, T0 + 31 * DAY).expired
    ended = store.get(waiting.id)
    assert ended.state is JobState.ENVELOPE_ENDED and ended.done_at is not None
    row = store.db.execute("SELECT detail FROM audit WHERE event_type = 'envelope_ended'").fetchone()
    assert row is not None and str(row[0]).startswith(f"envelope {end}")
    # The slot is free again: the same stage starts a new transaction.
    again = store.commit_event(None, None, [NewJob("tx-env-2", waiting.rule, waiting.sobject, waiting.record_id,
                                                   "cdc")])
    assert [j.transaction_id for j in again.created] == ["tx-env-2"]


def test_a_refusal_is_not_recorded_when_its_job_cannot_end(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    _fail_job_moves_to(store, JobState.ENVELOPE_ENDED)
    with pytest.raises(sqlite3.IntegrityError):
        store.mark_recipient_refused(people(store, env)["Anna"].id, "no", T0 + 60, VISIT)
    assert store.envelope(env.transaction_id).state is EnvelopeState.SENT  # type: ignore[union-attr]
    assert store.get(waiting.id).state is JobState.AWAITING_SIGNATURES


def test_settling_waits_again_stays_due_or_completes_by_what_the_outbox_holds(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store, (ANNA, CARA))  # Anna in step 1, Cara in step 2
    who = people(store, env)
    store.mark_recipient_signed(who["Anna"].id, EVIDENCE, T0 + 60)
    due = store.get(waiting.id)
    assert store.settle_signatures(due) == (due, False)  # Anna's signature is not in the PDF yet
    store.mark_applied(who["Anna"].id, T0 + 61)
    settled, complete = store.settle_signatures(due)
    assert (settled.state, complete) == (JobState.AWAITING_SIGNATURES, False)
    store.mark_recipient_signed(who["Cara"].id, EVIDENCE, T0 + 120)
    assert store.envelope(env.transaction_id).state is EnvelopeState.COMPLETED  # type: ignore[union-attr]
    store.mark_applied(who["Cara"].id, T0 + 121)
    settled, complete = store.settle_signatures(store.get(waiting.id))
    assert (settled.state, complete) == (JobState.SIGNATURES_DUE, True)


def test_applied_marks_once_and_unapplied_signatures_come_in_signing_order(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    who = people(store, env)
    store.mark_recipient_signed(who["Bert"].id, EVIDENCE, T0 + 30)
    store.mark_recipient_signed(who["Anna"].id, EVIDENCE, T0 + 60)
    assert [r.name for r in store.signed_unapplied(env.transaction_id)] == ["Bert Legal", "Anna Buyer"]
    assert store.mark_applied(who["Bert"].id, T0 + 70).applied_at == T0 + 70
    assert store.mark_applied(who["Bert"].id, T0 + 99).applied_at == T0 + 70
    assert [r.name for r in store.signed_unapplied(env.transaction_id)] == ["Anna Buyer"]
    # The signature just made is the job's latest: the record shows it once the envelope completes.
    store.mark_applied(who["Anna"].id, T0 + 80, signed_at="2027-01-15T08:00:00.000Z",
                       timestamp_time="2027-01-15T08:00:01.000Z")
    latest = store.get(waiting.id)
    assert (latest.signed_at, latest.timestamp_time) == ("2027-01-15T08:00:00.000Z", "2027-01-15T08:00:01.000Z")


def test_with_a_code_the_signature_still_makes_the_job_due(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store, policy=EnvelopePolicy())
    sign(store, people(store, env)["Anna"], T0 + 60)
    assert store.get(waiting.id).state is JobState.SIGNATURES_DUE


async def test_the_async_face_wakes_the_worker_after_a_signature_or_an_end(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    await box.open()
    woken: list[str] = []
    box.wake = lambda: woken.append("wake")
    try:
        created = (await box.commit_event(None, None, [NewJob("tx-w", "r", "Opportunity", "006000000000001AAA",
                                                              "cdc")])).created[0]
        _job, env = await box.send_envelope(created, (ANNA, CARA), NO_CODE, T0, KEYS)
        assert woken == []
        anna, cara = await box.recipients(env.id)
        await box.mark_recipient_signed(anna.id, EVIDENCE, T0 + 1)
        assert woken == ["wake"]
        await box.mark_recipient_refused(cara.id, "no", T0 + 2)
        assert woken == ["wake", "wake"]
    finally:
        await box.close()


def test_a_retried_envelope_job_resumes_where_nothing_is_signed_sent_or_uploaded_twice(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    waiting, env = _sent(store)
    store.mark_recipient_signed(people(store, env)["Anna"].id, EVIDENCE, T0 + 60)
    failed = store.mark_error(store.get(waiting.id), "the signature could not be applied", "SIGN_FAILED")
    assert store.requeue(failed.id).state is JobState.SIGNATURES_DUE  # not queued: that would render anew
    completed = store.mark_envelope_completed(store.get(waiting.id), seal=None, sha256="ef" * 32, level="B-LTA",
                                              validation="ok", archive_due=None, certificate_sha256="01" * 32)
    half = store.set_document_version(completed, "068000000000001AAA")  # the PDF is up, the certificate not
    assert store.requeue(store.mark_error(half, "x", "X").id).state is JobState.SIGNED
    uploaded = store.mark_envelope_uploaded(store.get(waiting.id), "068000000000002AAA")
    assert store.requeue(store.mark_error(uploaded, "x", "X").id).state is JobState.UPLOADED


def test_the_completed_copies_fall_due_when_the_final_document_is_recorded(tmp_path: Path) -> None:
    """They were queued with the last signature and wait (backing off) for the final PDF; recording it makes
    them due at once and tells the mail loop, instead of leaving them to their retry time."""
    store = outbox(tmp_path)
    waiting, env = _sent(store, (ANNA,))
    store.mark_recipient_signed(people(store, env)["Anna"].id, EVIDENCE, T0 + 60)
    [copy] = mails(store, env, MailKind.COMPLETED)
    store.mark_mail_failed(copy.id, "waiting: the completed document", time.time(), permanent=False)
    assert store.next_mail(time.time()) is None  # backing off
    seen = store.mails_queued
    store.mark_envelope_completed(store.get(waiting.id), seal=None, sha256="ab" * 32, level="B-LTA",
                                  validation="ok", archive_due=None, certificate_sha256="ef" * 32)
    assert store.mails_queued > seen
    due = store.next_mail(time.time())
    assert due is not None and due.id == copy.id
