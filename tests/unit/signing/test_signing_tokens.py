"""Link tokens and one-time codes: 256-bit derived tokens, hash-only lookup, HMAC'd codes compared in constant
time, and the link key's sources (environment or secrets directory, else generated once, owner-only)."""

from __future__ import annotations

import base64
import hmac
import stat
from pathlib import Path

import pytest

from sfsign.signing import tokens
from sfsign.signing.tokens import LINK_KEY_FILE, LinkKeyError, LinkKeys, new_code, token_hash

KEYS = LinkKeys(b"k" * 32)


def test_a_link_token_carries_256_bits_and_is_url_safe() -> None:
    token = KEYS.link_token("tx-1", 7, 1)
    assert len(token) == 43 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(base64.urlsafe_b64decode(token + "=")) * 8 == 256


def test_a_token_is_derived_again_for_a_resend_and_differs_per_recipient_envelope_generation_and_key() -> None:
    token = KEYS.link_token("tx-1", 7, 1)
    assert KEYS.link_token("tx-1", 7, 1) == token  # the same link after a crash or a resend
    others = {KEYS.link_token("tx-1", 8, 1), KEYS.link_token("tx-2", 7, 1), KEYS.link_token("tx-1", 7, 2),
              LinkKeys(b"j" * 32).link_token("tx-1", 7, 1)}
    assert token not in others and len(others) == 4


@pytest.mark.parametrize("given", ["", "not a token", "\ud800", "x" * 100_000, "%00", "ä" * 10])
def test_any_string_hashes_without_raising_so_malformed_and_unknown_tokens_share_a_path(given: str) -> None:
    assert len(token_hash(given)) == 64


def test_codes_are_six_digits_from_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real = tokens.secrets.randbelow

    def spy(n: int) -> int:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(tokens.secrets, "randbelow", spy)
    codes = {new_code() for _ in range(500)}
    assert draws == [10 ** 6] * 500
    assert all(len(c) == 6 and c.isdigit() for c in codes) and len(codes) > 450


def test_a_code_is_kept_as_a_keyed_hmac_bound_to_its_recipient() -> None:
    mac = KEYS.code_mac(7, "123456")
    assert "123456" not in mac and len(mac) == 64
    assert mac != KEYS.code_mac(8, "123456")  # another recipient's code does not match
    assert mac != LinkKeys(b"j" * 32).code_mac(7, "123456")  # not a bare hash: 10^6 tries need the key


def test_codes_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    mac = KEYS.code_mac(7, "123456")
    assert KEYS.code_matches(7, " 123456 ", mac) and not KEYS.code_matches(7, "654321", mac)
    assert not KEYS.code_matches(7, "not digits at all", mac)
    assert len(compared) == 3


def test_a_sealed_secret_opens_only_for_its_own_mail() -> None:
    sealed = KEYS.seal("123456", "<a@x>")
    assert "123456" not in sealed and KEYS.unseal(sealed, "<a@x>") == "123456"
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag: another row's context
        KEYS.unseal(sealed, "<b@x>")


def test_the_configured_key_wins_and_a_short_one_is_refused_without_showing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_LINK_KEY", "c" * 40)
    assert LinkKeys.load(tmp_path).link_token("t", 1, 1) == LinkKeys(b"c" * 40).link_token("t", 1, 1)
    assert not (tmp_path / LINK_KEY_FILE).exists()
    monkeypatch.setenv("SFSIGN_LINK_KEY", "short-secret")
    with pytest.raises(LinkKeyError) as refused:
        LinkKeys.load(tmp_path)
    assert "short-secret" not in str(refused.value) and "SFSIGN_LINK_KEY" in str(refused.value)


def test_the_key_can_come_from_the_secrets_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "SFSIGN_LINK_KEY").write_text("s" * 48 + "\n")
    monkeypatch.delenv("SFSIGN_LINK_KEY", raising=False)
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(secrets_dir))
    assert LinkKeys.load(tmp_path / "data").link_token("t", 1, 1) == LinkKeys(b"s" * 48).link_token("t", 1, 1)


def test_without_a_configured_key_one_is_generated_once_owner_only(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFSIGN_LINK_KEY", raising=False)
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(tmp_path / "none"))
    first = LinkKeys.load(tmp_path / "data").link_token("t", 1, 1)
    key_file = tmp_path / "data" / LINK_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    assert LinkKeys.load(tmp_path / "data").link_token("t", 1, 1) == first  # links survive a restart
    assert sorted(p.name for p in key_file.parent.iterdir()) == [LINK_KEY_FILE]  # no temporary left behind
    key_file.write_bytes(b"cut")
    with pytest.raises(LinkKeyError):
        LinkKeys.load(tmp_path / "data")


def test_the_keys_never_show_in_a_repr() -> None:
    assert "k" * 8 not in repr(KEYS) and repr(KEYS) == "LinkKeys(<secret>)"
