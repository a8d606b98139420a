"""The mail relay's settings: every mistake names the variable and the fix; encryption is not optional."""

from __future__ import annotations

from pathlib import Path

import pytest
from secret_scan import register_secret

from sfsign.config import ConfigError, load_settings
from sfsign.config.smtp import SmtpSecurity
from sfsign.emulator.tls import ensure_tls

FROM = "Northwind Verträge <contracts@northwind.example>"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(tmp_path / "no-secrets"))


def test_no_relay_configured_means_no_mailer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().smtp_relay() is None


@pytest.mark.parametrize(("url", "security", "host", "port"), [
    ("smtp://relay.northwind.example", SmtpSecurity.STARTTLS, "relay.northwind.example", 587),
    ("smtp://relay.northwind.example:2525", SmtpSecurity.STARTTLS, "relay.northwind.example", 2525),
    ("smtps://relay.northwind.example", SmtpSecurity.IMPLICIT_TLS, "relay.northwind.example", 465),
    ("smtp+insecure://127.0.0.1:2525", SmtpSecurity.INSECURE_LOOPBACK, "127.0.0.1", 2525),
    ("smtp+insecure://localhost:25", SmtpSecurity.INSECURE_LOOPBACK, "localhost", 25),
])
def test_relay_urls(monkeypatch: pytest.MonkeyPatch, url: str, security: SmtpSecurity, host: str, port: int) -> None:
    monkeypatch.setenv("SFSIGN_SMTP_URL", url)
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    relay = load_settings().smtp_relay()
    assert relay is not None and (relay.security, relay.host, relay.port) == (security, host, port)
    assert (relay.mail_from.display_name, relay.mail_from.address) == ("Northwind Verträge",
                                                                       "contracts@northwind.example")


@pytest.mark.parametrize(("url", "message"), [
    ("smtp+insecure://relay.northwind.example:25", r"SFSIGN_SMTP_URL: an unencrypted relay is refused on "
                                                   r"relay.northwind.example .*smtps://"),
    ("smtp+insecure://10.0.0.5:25", r"SFSIGN_SMTP_URL: an unencrypted relay is refused"),
    ("http://relay.northwind.example", r"SFSIGN_SMTP_URL: .*no known scheme: set SFSIGN_SMTP_URL to smtp://HOST:587"),
    ("relay.northwind.example:587", r"SFSIGN_SMTP_URL: .*no known scheme"),
    ("smtp://user:pw@relay.northwind.example", r"SFSIGN_SMTP_URL: must not carry credentials: set "
                                               r"SFSIGN_SMTP_USERNAME and SFSIGN_SMTP_PASSWORD"),
    ("smtp://relay.northwind.example/path", r"SFSIGN_SMTP_URL: .*scheme://host\[:port\]"),
])
def test_bad_relay_urls_name_the_setting_and_the_fix(monkeypatch: pytest.MonkeyPatch, url: str, message: str) -> None:
    monkeypatch.setenv("SFSIGN_SMTP_URL", url)
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_credentials_in_the_url_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    register_secret("hunter2-relay-pw")
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtp://sfsign:hunter2-relay-pw@relay.northwind.example")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2-relay-pw" not in str(caught.value)


@pytest.mark.parametrize(("value", "message"), [
    ("contracts@northwind.example", "has no display name"),
    ("Northwind <contracts>", "is not one address"),
    ("Northwind <a@northwind.example>, Other <b@northwind.example>", "is not one address"),
])
def test_bad_from_addresses_name_the_setting(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("SFSIGN_MAIL_FROM", value)
    with pytest.raises(ConfigError, match=f"SFSIGN_MAIL_FROM: .*{message}.*set SFSIGN_MAIL_FROM to"):
        load_settings()


def test_a_relay_needs_a_from_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtps://relay.northwind.example")
    with pytest.raises(ConfigError, match="SFSIGN_MAIL_FROM: is required with SFSIGN_SMTP_URL"):
        load_settings()


def test_username_without_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtps://relay.northwind.example")
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    monkeypatch.setenv("SFSIGN_SMTP_USERNAME", "sfsign")
    with pytest.raises(ConfigError, match="SFSIGN_SMTP_USERNAME, SFSIGN_SMTP_PASSWORD: set both"):
        load_settings()


def test_the_password_comes_from_the_secrets_directory_and_is_never_printed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SFSIGN_SMTP_PASSWORD").write_text("relay-secret-4711\n")
    register_secret("relay-secret-4711")
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtp://relay.northwind.example")
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    monkeypatch.setenv("SFSIGN_SMTP_USERNAME", "sfsign")
    settings = load_settings()
    relay = settings.smtp_relay()
    assert relay is not None and relay.password is not None
    assert relay.password.get_secret_value().rstrip("\n") == "relay-secret-4711"
    assert "relay-secret-4711" not in repr(settings) + repr(relay) + str(relay)


def test_the_relay_ca_bundle_defaults_to_sfsign_ca_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtps://relay.northwind.example")
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    monkeypatch.setenv("SFSIGN_SMTP_CA_BUNDLE", "")
    with pytest.raises(ConfigError, match="SFSIGN_SMTP_CA_BUNDLE: is set but empty: unset SFSIGN_SMTP_CA_BUNDLE"):
        load_settings()
    monkeypatch.setenv("SFSIGN_SMTP_CA_BUNDLE", str(tmp_path / "absent.pem"))
    with pytest.raises(ConfigError, match=r"SFSIGN_SMTP_CA_BUNDLE: .*absent\.pem is not a file"):
        load_settings()
    monkeypatch.delenv("SFSIGN_SMTP_CA_BUNDLE")
    relay = load_settings().smtp_relay()
    assert relay is not None and relay.ca_bundle is None
    proxy_ca, relay_ca = ensure_tls(tmp_path / "proxy").ca_file, ensure_tls(tmp_path / "relay").ca_file
    monkeypatch.setenv("SFSIGN_CA_BUNDLE", str(proxy_ca))
    relay = load_settings().smtp_relay()
    assert relay is not None and relay.ca_bundle == proxy_ca
    monkeypatch.setenv("SFSIGN_SMTP_CA_BUNDLE", str(relay_ca))
    relay = load_settings().smtp_relay()
    assert relay is not None and relay.ca_bundle == relay_ca


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_the_relay_ca_bundle_resolves_as_every_path_setting_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    """README: a path setting is relative to the directory sfsign starts in, fixed at start (the other path
    settings are run both ways through the command line in tests/e2e/test_relative_paths.py)."""
    relay_ca = ensure_tls(tmp_path / "relay").ca_file.resolve()
    monkeypatch.setenv("SFSIGN_SMTP_URL", "smtps://relay.northwind.example")
    monkeypatch.setenv("SFSIGN_MAIL_FROM", FROM)
    monkeypatch.setenv("SFSIGN_SMTP_CA_BUNDLE",
                       str(relay_ca.relative_to(tmp_path.resolve())) if kind == "relative" else str(relay_ca))
    settings = load_settings()  # started in tmp_path (the autouse fixture)
    monkeypatch.chdir(tmp_path / "relay")  # a later change of directory changes nothing
    relay = settings.smtp_relay()
    assert relay is not None and relay.ca_bundle == relay_ca and relay.ca_bundle.is_file()
