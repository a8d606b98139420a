"""`sfsign envelopes list | show | void | resend` on a real outbox file, as an operator runs them beside the
daemon: states and timeline shown, people by number and Salesforce id (never name or address)."""

from __future__ import annotations

from pathlib import Path

import pytest
from envelope_paths import T0, envelope, outbox, people, sign

from sfsign.cli import main
from sfsign.signing.model import EnvelopeState, MailKind


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SFSIGN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(tmp_path / "no-secrets"))
    store = outbox(tmp_path)
    env = envelope(store)
    sign(store, people(store, env)["Anna"], T0 + 60)
    envelope(store, tx="tx-env-2", record="006000000000002AAA")
    store.close()
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["envelopes", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_each_envelope_with_its_progress(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("tx-env-")}
    assert "partially_signed" in lines["tx-env-1"] and "1 of 3" in lines["tx-env-1"]
    assert " sent " in lines["tx-env-2"] and "0 of 3" in lines["tx-env-2"]
    code, out, _ = _run(capsys, "list", "--state", "partially_signed")
    assert "tx-env-1" in out and "tx-env-2" not in out


def test_show_prints_the_recipients_and_the_timeline_without_names_or_addresses(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "show", "tx-env-1")
    assert code == 0
    assert "envelope tx-env-1: partially_signed" in out and "003000000000001AAA" in out
    for event in ("sent", "invited", "code_sent", "code_verified", "signed"):
        assert f" {event} " in out
    assert "203.0.113.7" in out
    assert not any(private in out for private in ("anna@example.com", "Anna Buyer", "Ada Lovelace"))


def test_void_ends_the_envelope_and_a_second_void_changes_nothing(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "void", "tx-env-2", "--reason", "sent by mistake")
    assert code == 0 and "voided envelope tx-env-2" in out
    code, out, _ = _run(capsys, "void", "tx-env-2", "--reason", "again")
    assert code == 0 and "had ended already (voided)" in out
    store = outbox(data_dir)
    voided = store.envelope("tx-env-2")
    assert voided is not None and (voided.state, voided.reason) == (EnvelopeState.VOIDED, "sent by mistake")
    store.close()


def test_resend_queues_the_invitation_again_and_refuses_what_cannot_be_resent(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = outbox(data_dir)
    env = store.envelope("tx-env-1")
    assert env is not None
    who = people(store, env)
    store.close()
    code, out, _ = _run(capsys, "resend", "tx-env-1", "--recipient", str(who["Bert"].id))
    assert code == 0 and f"recipient #{who['Bert'].id} queued again" in out
    store = outbox(data_dir)
    assert [m.kind for m in store.envelope_mails(env.id) if m.recipient_id == who["Bert"].id][-1] is MailKind.INVITATION
    store.close()
    code, _, err = _run(capsys, "resend", "tx-env-1", "--recipient", str(who["Cara"].id))
    assert code == 1 and "waiting" in err
    code, _, err = _run(capsys, "show", "no-such-transaction")
    assert code == 1 and "no envelope with transaction id 'no-such-transaction'" in err


def test_without_an_outbox_the_operator_is_told_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SFSIGN_DATA_DIR", str(tmp_path / "elsewhere"))
    assert main(["envelopes", "list"]) == 2
    assert "no outbox at" in capsys.readouterr().err
