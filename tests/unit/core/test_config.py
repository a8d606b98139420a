"""Rules-file validation: every mistake names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfsign.config import ConfigError, load_rules, load_settings

REPO = Path(__file__).resolve().parents[3]

GOOD = """\
version: 1
seller:
  name: Northwind
signing_profiles:
  seal:
    key:
      pkcs12: keys/s.p12
      passphrase_env: SIGNER_PASS
    appearance:
      name: Northwind
rules:
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
        ("field: StageName", "field: StageNam", r"rules.yaml:14: unknown field 'StageNam' on Opportunity"),
        ("object: Opportunity", "object: Opportunityy", r"rules.yaml:13: unknown object 'Opportunityy'"),
        ("template: proposal", "template: nope.typ", r"rules.yaml:16: unknown template 'nope.typ'"),
        ("profile: seal\n", "profile: other\n", r"rules.yaml:17: unknown signing profile 'other'"),
        ("field: StageName", "field: Sign_Status__c", r"rules.yaml:14: .*sfsign writes itself"),
        ("      pkcs12: keys/s.p12\n", "", r"rules.yaml:6: signing_profiles.seal.key: Value error, give exactly one"),
        ("    values: [\"Proposal/Price Quote\"]\n", "    values: []\n",
         r"rules.yaml:15: rules.0.values: List should have at least 1 item"),
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
