"""One-time codes on a real outbox: 10-minute validity, used once, replaced by a new one, five wrong tries lock
the recipient for 15 minutes (the fake clock unlocks), and neither code nor link token is in the file."""

from __future__ import annotations

from pathlib import Path

from envelope_paths import KEYS, T0, code_from_mail, envelope, mails, outbox, people

from sfsign.outbox import OutboxStore
from sfsign.outbox.envelope_models import CodeResult, MailState, Recipient
from sfsign.signing.lifecycle import EventType
from sfsign.signing.model import MailKind
from sfsign.signing.tokens import CODE_LOCK_S, CODE_TTL_S


def _anna(store: OutboxStore) -> Recipient:
    return people(store, envelope(store))["Anna"]


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_code_is_valid_for_ten_minutes(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    assert store.issue_code(anna.id, T0, KEYS).result is CodeResult.SENT
    code = code_from_mail(store, anna)
    assert store.check_code(anna.id, code, T0 + CODE_TTL_S, KEYS).result is CodeResult.EXPIRED
    store.issue_code(anna.id, T0, KEYS)
    code = code_from_mail(store, anna)
    outcome = store.check_code(anna.id, code, T0 + CODE_TTL_S - 1, KEYS)
    assert outcome.result is CodeResult.VERIFIED and outcome.recipient.authenticated_at == T0 + CODE_TTL_S - 1


def test_a_right_code_is_used_up(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    store.issue_code(anna.id, T0, KEYS)
    code = code_from_mail(store, anna)
    assert store.check_code(anna.id, code, T0 + 1, KEYS).result is CodeResult.VERIFIED
    assert store.check_code(anna.id, code, T0 + 2, KEYS).result is CodeResult.EXPIRED


def test_a_new_code_voids_the_old_one_and_its_unsent_mail(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    first = store.issue_code(anna.id, T0, KEYS)
    old = code_from_mail(store, anna)
    second = store.issue_code(anna.id, T0 + 30, KEYS)
    new = code_from_mail(store, anna)
    states = {m.id: m.state for m in mails(store, store.envelopes()[0], MailKind.CODE, None)}
    assert states == {first.mail_id: MailState.CANCELLED, second.mail_id: MailState.PENDING}
    if old != new:  # one chance in a million that both draws agree
        assert store.check_code(anna.id, old, T0 + 40, KEYS).result is CodeResult.WRONG
    assert store.check_code(anna.id, new, T0 + 50, KEYS).result is CodeResult.VERIFIED


def test_five_wrong_codes_lock_for_fifteen_minutes_and_the_clock_unlocks(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    store.issue_code(anna.id, T0, KEYS)
    code = code_from_mail(store, anna)
    results = [store.check_code(anna.id, _wrong(code), T0 + i, KEYS).result for i in range(1, 6)]
    assert results == [CodeResult.WRONG] * 4 + [CodeResult.LOCKED]
    locked_at = T0 + 5
    assert store.check_code(anna.id, code, locked_at + 1, KEYS).result is CodeResult.LOCKED  # even the right one
    refused = store.issue_code(anna.id, locked_at + CODE_LOCK_S - 1, KEYS)
    assert (refused.result, refused.locked_until) == (CodeResult.LOCKED, locked_at + CODE_LOCK_S)
    assert store.issue_code(anna.id, locked_at + CODE_LOCK_S, KEYS).result is CodeResult.SENT
    assert store.check_code(anna.id, code_from_mail(store, anna), locked_at + CODE_LOCK_S + 1,
                            KEYS).result is CodeResult.VERIFIED
    kinds = [e.type for e in store.timeline(anna.envelope_id) if e.recipient_id == anna.id]
    assert kinds.count(EventType.CODE_FAILED) == 4 and kinds.count(EventType.CODE_LOCKED) == 1


def test_asking_for_new_codes_buys_no_extra_tries(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    for i in range(5):
        store.issue_code(anna.id, T0 + i, KEYS)
        result = store.check_code(anna.id, _wrong(code_from_mail(store, anna)), T0 + i, KEYS).result
    assert result is CodeResult.LOCKED


def test_a_malformed_code_is_a_wrong_code(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = _anna(store)
    store.issue_code(anna.id, T0, KEYS)
    for given in ("", "12345", "abcdef", "1" * 1000, "\ud800"):
        assert store.check_code(anna.id, given, T0 + 1, KEYS).result in (CodeResult.WRONG, CodeResult.LOCKED)


def test_only_a_recipient_of_the_current_step_gets_a_code(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    cara = people(store, envelope(store))["Cara"]
    assert store.issue_code(cara.id, T0, KEYS).result is CodeResult.NOT_YOUR_TURN


def test_the_file_holds_neither_token_nor_code_only_their_hashes(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    tokens = [KEYS.link_token(env.transaction_id, r.id, 1) for r in who.values()]
    store.issue_code(who["Anna"].id, T0, KEYS)
    pending_code = code_from_mail(store, who["Anna"])  # sealed in its mail row, not sent yet
    store.issue_code(who["Bert"].id, T0, KEYS)
    used_code = code_from_mail(store, who["Bert"])
    store.mark_mail_sent(mails(store, env, MailKind.CODE)[-1].id, T0)
    assert store.check_code(who["Bert"].id, used_code, T0, KEYS).result is CodeResult.VERIFIED
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite*"))
    assert all(t.encode() not in raw for t in tokens)
    assert pending_code.encode() not in raw and used_code.encode() not in raw
    assert all(store_hash.encode() in raw for store_hash in (r.token_hash or "" for r in who.values()))
