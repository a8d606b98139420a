"""The signing pages' pure parts: which page a link shows, the session cookie and its CSRF token, the rate
windows, the two languages, and the settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sfsign.config import ConfigError
from sfsign.config.settings import load_settings
from sfsign.outbox.envelope_models import Envelope, Recipient, TokenMatch
from sfsign.signing.listener.i18n import _DE, _EN, from_accept_language, language
from sfsign.signing.listener.limits import Limit, Windows
from sfsign.signing.listener.pages import LinkState, link_state
from sfsign.signing.listener.session import Sessions
from sfsign.signing.model import AuthMethod, EnvelopeState, RecipientState, SignerSource

NOW = 1_800_000_000.0
ENVELOPE = Envelope(1, 1, "tx", "Quote", "0Q0", "quote", EnvelopeState.SENT, 1, 2, "en", AuthMethod.EMAIL_OTP,
                    1.0, 1.0, 0, "d", NOW, NOW + 100)
RECIPIENT = Recipient(1, 1, 1, 0, "A", "a@example.com", SignerSource.CONTACT_ROLE, RecipientState.INVITED)


def state(envelope: dict[str, object] | None = None, recipient: dict[str, object] | None = None,
          now: float = NOW) -> LinkState:
    return link_state(TokenMatch(replace(RECIPIENT, **(recipient or {})), replace(ENVELOPE, **(envelope or {}))),
                      now)


def test_a_link_shows_the_recipients_answer_then_the_envelopes_end_then_the_turn() -> None:
    assert state() is LinkState.LIVE
    assert state(recipient={"state": RecipientState.VIEWED}) is LinkState.LIVE
    assert state(recipient={"state": RecipientState.WAITING, "step": 2}) is LinkState.WAITING
    assert state(recipient={"locked_until": NOW + 1}) is LinkState.LOCKED
    assert state(recipient={"locked_until": NOW}) is LinkState.LIVE  # the lock ran out
    assert state(recipient={"state": RecipientState.SIGNED}) is LinkState.SIGNED
    assert state({"state": EnvelopeState.COMPLETED}, {"state": RecipientState.SIGNED}) is LinkState.COMPLETED
    assert state({"state": EnvelopeState.REFUSED}, {"state": RecipientState.REFUSED}) is LinkState.YOU_DECLINED
    assert state({"state": EnvelopeState.REFUSED}) is LinkState.DECLINED
    assert state({"state": EnvelopeState.VOIDED}, {"state": RecipientState.WAITING}) is LinkState.VOIDED
    assert state({"state": EnvelopeState.EXPIRED}) is LinkState.EXPIRED
    assert state(now=NOW + 100) is LinkState.EXPIRED  # past the expiry before the scheduler marked it


def test_a_session_cookie_is_bound_to_its_recipient_generation_and_time() -> None:
    sessions = Sessions(b"k" * 32)
    session = sessions.new(7, 1, NOW)
    cookie = sessions.cookie(session)
    assert sessions.read(cookie, 7, 1, NOW + 10) == session
    assert sessions.read(cookie, 8, 1, NOW) is None  # another recipient
    assert sessions.read(cookie, 7, 2, NOW) is None  # a link sent again with a new generation
    assert sessions.read(cookie, 7, 1, session.expires_at) is None
    assert Sessions(b"j" * 32).read(cookie, 7, 1, NOW) is None  # another process's key (a restart)
    for forged in ("", "x", cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), "1.1.0.0.n." + "0" * 64, "é" * 300):
        assert sessions.read(forged, 7, 1, NOW) is None
    signed_in = sessions.authenticated(session, NOW + 5)
    assert sessions.read(sessions.cookie(signed_in), 7, 1, NOW + 6) == signed_in
    assert signed_in.authenticated_at == NOW + 5


def test_a_csrf_token_belongs_to_one_session() -> None:
    sessions = Sessions()
    one, two = sessions.new(7, 1, NOW), sessions.new(7, 1, NOW)
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(one, sessions.csrf(two))
    assert not sessions.csrf_ok(one, "") and not sessions.csrf_ok(one, None) and not sessions.csrf_ok(None, "x")
    assert not sessions.csrf_ok(sessions.authenticated(one, NOW), sessions.csrf(one))  # a new nonce after the code


def test_a_window_counts_requests_and_forgets_old_ones() -> None:
    windows, limit = Windows(), Limit(3, 60.0)
    assert [windows.allow("k", limit, NOW + i) for i in range(5)] == [True, True, True, False, False]
    assert windows.allow("other", limit, NOW + 5)
    assert not windows.allow("k", limit, NOW + 61)  # the refused tries counted too
    assert windows.allow("k", limit, NOW + 200)


def test_both_languages_have_every_word() -> None:
    assert _EN.keys() == _DE.keys()
    assert language("de-AT") == "de" and language("fr") == "en" and language(None) == "en"
    assert from_accept_language("fr-CH, de;q=0.8, en;q=0.5") == "de"
    assert from_accept_language(None) == "en"


def test_the_signing_url_must_be_a_base_url() -> None:
    assert load_settings(signing_url="https://sign.example.com/").signing_url == "https://sign.example.com"
    with pytest.raises(ConfigError, match="SFSIGN_SIGNING_URL"):
        load_settings(signing_url="sign.example.com")
    with pytest.raises(ConfigError, match="SFSIGN_SIGNING_URL"):
        load_settings(signing_url="https://sign.example.com/?x=1")
