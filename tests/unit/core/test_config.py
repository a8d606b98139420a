"""Rules-file validation: every mistake names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_text import RULES_PREAMBLE

from sfsign.config import ConfigError, load_rules, load_settings

REPO = Path(__file__).resolve().parents[3]

GOOD = RULES_PREAMBLE + """\
  - name: opp
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def test_shipped_example_rules_file_is_valid() -> None:
    rules = load_rules(REPO / "config" / "rules.yaml")
    assert [r.name for r in rules.rules] == ["opportunity-proposal", "quote-approved"]
    assert rules.channels() == [
        "/data/OpportunityChangeEvent",
        "/data/QuoteChangeEvent",
        "/event/Sign_Request__e",
    ]


def test_key_paths_resolve_relative_to_the_rules_file(tmp_path: Path) -> None:
    rules = load_rules(_write(tmp_path, GOOD))
    assert rules.profiles["seal"].key.pkcs12 == (tmp_path / "keys" / "s.p12").resolve()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("field: StageName", "field: StageNam", r"rules.yaml:15: unknown field 'StageNam' on Opportunity"),
        ("object: Opportunity", "object: Opportunityy", r"rules.yaml:14: unknown object 'Opportunityy'"),
        ("template: proposal", "template: nope.typ", r"rules.yaml:17: unknown template 'nope.typ'"),
        ("profile: seal\n", "profile: other\n", r"rules.yaml:18: unknown signing profile 'other'"),
        ("field: StageName", "field: Sign_Status__c", r"rules.yaml:15: .*sfsign writes itself"),
        ("      pkcs12: keys/s.p12\n", "", r"rules.yaml:6: signing_profiles.seal.key: Value error, give exactly one"),
        ("    values: [\"Proposal/Price Quote\"]\n", "    values: []\n",
         r"rules.yaml:16: rules.0.values: List should have at least 1 item"),
    ],
)
def test_bad_rule_names_file_line_and_fix(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=expected):
        load_rules(_write(tmp_path, GOOD.replace(old, new)))


def test_custom_field_from_the_metadata_package_is_a_known_trigger_field(tmp_path: Path) -> None:
    # Sign_* fields are known (from salesforce-metadata/) but refused for a different reason.
    with pytest.raises(ConfigError, match="re-trigger"):
        load_rules(_write(tmp_path, GOOD.replace("field: StageName", "field: Sign_Level__c")))


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules.yaml:3: not valid YAML"):
        load_rules(_write(tmp_path, "version: 1\nseller:\n  name: a: b\n"))


def test_missing_rules_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SFSIGN_RULES_FILE"):
        load_rules(tmp_path / "absent.yaml")


def test_settings_from_environment_never_print_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_AUTH_FLOW", "client_credentials")
    monkeypatch.setenv("SFSIGN_CONSUMER_KEY", "3MVG9")
    monkeypatch.setenv("SFSIGN_CONSUMER_SECRET", "very-secret-value")
    monkeypatch.setenv("SFSIGN_API_VERSION", "v61.0")
    settings = load_settings()
    assert settings.api_version == "61.0"
    assert settings.missing_credentials() == []
    assert "very-secret-value" not in repr(settings) and "very-secret-value" not in str(settings)


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_LOGIN_URL", "http://login.salesforce.com")
    with pytest.raises(ConfigError, match=r"SFSIGN_LOGIN_URL: .*https://"):
        load_settings()


TSA_PROFILE = """\
    level: B-LTA
    tsa:
      urls: [https://tsa.example/tsr, http://127.0.0.1:8080/tsa]
      username: sfsign
      password_env: TSA_PASS
    eidas_level: QES
    on_tsa_failure: downgrade
    trust_roots: [keys/root.pem]
"""


def test_default_level_is_b_lta_and_needs_a_timestamp_authority(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules.yaml:5: signing_profiles.seal: .*level B-LTA needs a timestamp "
                       r"authority: add `tsa"):
        load_rules(_write(tmp_path, GOOD.replace("    level: B-B\n", "")))


def test_long_term_levels_need_trust_roots(tmp_path: Path) -> None:
    text = GOOD.replace("    level: B-B\n", TSA_PROFILE.replace("    trust_roots: [keys/root.pem]\n", ""))
    with pytest.raises(ConfigError, match=r"level B-LTA embeds revocation data.*trust_roots"):
        load_rules(_write(tmp_path, text))


def test_full_profile_with_tsa_failover_credentials_and_declared_eidas_level(tmp_path: Path) -> None:
    profile = load_rules(_write(tmp_path, GOOD.replace("    level: B-B\n", TSA_PROFILE))).profiles["seal"]
    assert profile.level == "B-LTA" and profile.upgrades
    assert profile.tsa is not None and profile.tsa.urls == ["https://tsa.example/tsr", "http://127.0.0.1:8080/tsa"]
    assert (profile.tsa.username, profile.tsa.password_env) == ("sfsign", "TSA_PASS")
    assert (profile.eidas_level, profile.on_tsa_failure) == ("QES", "downgrade")
    assert profile.trust_roots == [(tmp_path / "keys" / "root.pem").resolve()]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("https://tsa.example/tsr", "ftp://tsa.example", r"tsa.urls: Value error, TSA URL 'ftp://tsa.example' must"),
        ("      password_env: TSA_PASS\n", "", r"give both `username` and `password_env`"),
        ("eidas_level: QES", "eidas_level: qualified", r"eidas_level: Input should be 'SES', 'AES' or 'QES'"),
        ("on_tsa_failure: downgrade", "on_tsa_failure: ignore", r"on_tsa_failure: Input should be 'error' or"),
        ("level: B-LTA", "level: B-LTV", r"level: Input should be 'B-B', 'B-T', 'B-LT' or 'B-LTA'"),
    ],
)
def test_bad_profile_settings_name_the_line_and_the_choices(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = GOOD.replace("    level: B-B\n", TSA_PROFILE)
    assert old in text
    with pytest.raises(ConfigError, match=r"rules.yaml:\d+: .*" + expected):
        load_rules(_write(tmp_path, text.replace(old, new)))


def test_pkcs11_key_source_names_the_pin_variable_never_the_pin(tmp_path: Path) -> None:
    hsm = (
        "      pkcs11:\n        module: /usr/lib/softhsm/libsofthsm2.so\n        token: sfsign\n"
        "        key: signer\n        pin_env: HSM_PIN\n"
    )
    text = GOOD.replace("      pkcs12: keys/s.p12\n      passphrase_env: SIGNER_PASS\n", hsm)
    key = load_rules(_write(tmp_path, text)).profiles["seal"].key
    assert key.pkcs11 is not None and (key.pkcs11.token, key.pkcs11.key, key.pkcs11.pin_env) == (
        "sfsign", "signer", "HSM_PIN")
    with pytest.raises(ConfigError, match=r"pin_env: String should match pattern"):
        load_rules(_write(tmp_path, text.replace("pin_env: HSM_PIN", "pin_env: '1234'")))
    both = text.replace("      pkcs11:\n", "      pkcs12: keys/s.p12\n      pkcs11:\n")
    with pytest.raises(ConfigError, match=r"give exactly one of `pkcs12`, `pem_key` \(\+ `pem_cert`\) or `pkcs11`"):
        load_rules(_write(tmp_path, both))


def test_the_retired_attempt_count_is_refused_with_what_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_MAX_ATTEMPTS", "8")
    with pytest.raises(ConfigError, match=r"SFSIGN_MAX_ATTEMPTS: .*no longer supported.*SFSIGN_RETRY_FOR_H"):
        load_settings()
    monkeypatch.delenv("SFSIGN_MAX_ATTEMPTS")
    monkeypatch.setenv("SFSIGN_RETRY_FOR_H", "0.5")
    assert load_settings().retry_for_h == 0.5
