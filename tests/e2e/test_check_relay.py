"""`sfsign check`'s session with the mail relay (connect, EHLO, STARTTLS or implicit TLS, AUTH, MAIL FROM, RSET,
QUIT; no mail sent) against the embedded relay over real TLS with the local PKI's certificate: reachable, a
wrong port, a wrong or missing login, an untrusted certificate; and `run` refusing to start on a relay that
refuses sfsign's settings (exit code 3, `check`'s words) while it starts past a relay it cannot reach."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import run_cli
from secret_scan import register_secret
from test_envelope_record import SIGNERS

from sfsign.check.relay import FIX_UNREACHABLE, check_relay_connection, relay_startup_finding
from sfsign.commands.demo import free_port
from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localmail.server import LocalMailServer, ServerCredentials, ServerSecurity
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.tls_server import TlsServerFiles, issue_tls_server

SENDER = "Northwind Contracts <contracts@northwind.example>"
LOGIN = "sfsign@northwind.example"


@pytest.fixture(scope="module")
def password() -> str:
    value = secrets.token_urlsafe(16)
    register_secret(value)
    return value


@pytest.fixture(scope="module")
def tls(pki: DemoPki, tmp_path_factory: pytest.TempPathFactory) -> TlsServerFiles:
    return issue_tls_server(pki, tmp_path_factory.mktemp("relay-tls"))


@pytest.fixture(scope="module")
def submission(tls: TlsServerFiles, password: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[LocalMailServer]:
    """STARTTLS, login required: the usual submission relay."""
    with LocalMailServer(tmp_path_factory.mktemp("mailbox"), security=ServerSecurity.STARTTLS,
                         cert_file=tls.cert_file, key_file=tls.key_file,
                         credentials=ServerCredentials(LOGIN, password)) as server:
        yield server


@pytest.fixture(scope="module")
def implicit(tls: TlsServerFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMailServer]:
    with LocalMailServer(tmp_path_factory.mktemp("mailbox-465"), security=ServerSecurity.IMPLICIT_TLS,
                         cert_file=tls.cert_file, key_file=tls.key_file) as server:
        yield server


def _settings(tmp_path: Path, url: str, *, ca: Path | None, username: str | None = None,
              password: str | None = None) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "smtp_url": url, "mail_from": SENDER, "smtp_ca_bundle": ca,
                                 "smtp_timeout_s": 5.0}
    if username is not None:
        values.update(smtp_username=username, smtp_password=password)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def test_a_reachable_relay_passes_with_its_login_and_no_mail_is_sent(
        submission: LocalMailServer, implicit: LocalMailServer, tls: TlsServerFiles, password: str,
        tmp_path: Path) -> None:
    [line] = await check_relay_connection(_settings(tmp_path, submission.url, ca=tls.ca_file, username=LOGIN,
                                                    password=password))
    assert line.ok is True, line
    assert line.detail == (f"{submission.url}: STARTTLS, logged in as {LOGIN}, sender contracts@northwind.example "
                           "accepted; no mail sent")
    [line] = await check_relay_connection(_settings(tmp_path, implicit.url, ca=tls.ca_file))
    assert line.ok is True and "implicit TLS, no login" in line.detail, line
    assert Mailbox(submission.directory).messages() == Mailbox(implicit.directory).messages() == []


async def test_a_wrong_port_names_the_url_to_fix(tls: TlsServerFiles, tmp_path: Path) -> None:
    url = f"smtp://127.0.0.1:{free_port()}"
    [line] = await check_relay_connection(_settings(tmp_path, url, ca=tls.ca_file))
    assert line.ok is False and line.detail.startswith(f"{url} cannot be reached: "), line
    assert line.fix == FIX_UNREACHABLE and "SFSIGN_SMTP_URL" in line.fix


async def test_a_wrong_or_missing_login_names_the_credentials(
        submission: LocalMailServer, tls: TlsServerFiles, password: str, tmp_path: Path) -> None:
    wrong = f"{password}-not"
    register_secret(wrong)
    [bad] = await check_relay_connection(_settings(tmp_path, submission.url, ca=tls.ca_file, username=LOGIN,
                                                   password=wrong))
    assert bad.ok is False and "535" in bad.detail and "refuses sfsign's settings" in bad.detail, bad
    assert "SFSIGN_SMTP_PASSWORD" in bad.fix and "secrets directory" in bad.fix
    assert wrong not in bad.detail + bad.fix and password not in bad.detail + bad.fix
    [none] = await check_relay_connection(_settings(tmp_path, submission.url, ca=tls.ca_file))
    assert none.ok is False and "530" in none.detail and "SFSIGN_SMTP_USERNAME" in none.fix, none


async def test_an_untrusted_certificate_names_the_ca_bundle(
        submission: LocalMailServer, password: str, tmp_path: Path) -> None:
    [line] = await check_relay_connection(_settings(tmp_path, submission.url, ca=None, username=LOGIN,
                                                    password=password))
    assert line.ok is False and "SFSIGN_SMTP_CA_BUNDLE" in line.fix, line


async def test_run_refuses_a_relay_that_refuses_its_settings_and_waits_out_one_it_cannot_reach(
        submission: LocalMailServer, tls: TlsServerFiles, password: str, tmp_path: Path) -> None:
    wrong = _settings(tmp_path, submission.url, ca=tls.ca_file, username=LOGIN, password=f"{password}-x")
    relay = wrong.smtp_relay()
    assert relay is not None
    finding, fatal = await relay_startup_finding(relay)
    assert fatal and finding.ok is False and "SFSIGN_SMTP_PASSWORD" in finding.fix
    down = _settings(tmp_path, f"smtp://127.0.0.1:{free_port()}", ca=tls.ca_file).smtp_relay()
    assert down is not None
    finding, fatal = await relay_startup_finding(down)
    assert not fatal and finding.ok is False, "a relay that is down is waited out by the mail queue"


async def test_run_and_check_refuse_a_wrong_relay_login_with_the_same_words(
        settings: Settings, control: ControlClient, pki: DemoPki, pki_passphrase: str,
        submission: LocalMailServer, tls: TlsServerFiles, password: str, tmp_path: Path) -> None:
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"]})
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    anchor = 'file_name: "Proposal {number} {date}.pdf"\n'
    rules_file = tmp_path / "rules-signers.yaml"
    rules_file.write_text(text.replace(anchor, anchor + SIGNERS))
    wrong = f"{password}-wrong"
    register_secret(wrong)
    env = {"SFSIGN_RULES_FILE": str(rules_file), PASSPHRASE_ENV: pki_passphrase, "SFSIGN_SMTP_URL": submission.url,
           "SFSIGN_MAIL_FROM": SENDER, "SFSIGN_SMTP_USERNAME": LOGIN, "SFSIGN_SMTP_PASSWORD": wrong,
           "SFSIGN_SMTP_CA_BUNDLE": str(tls.ca_file), "SFSIGN_SMTP_TIMEOUT_S": "5"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), settings, timeout=90.0, **env)

    started = await asyncio.to_thread(run, "run")
    assert started.returncode == 3, started.stdout + started.stderr
    assert "mail relay connection" in started.stderr and "SFSIGN_SMTP_PASSWORD" in started.stderr
    assert wrong not in started.stdout + started.stderr and "Traceback" not in started.stderr
    checked = await asyncio.to_thread(run, "check")
    assert checked.returncode == 1
    assert "FAIL  mail relay connection" in checked.stdout and "SFSIGN_SMTP_PASSWORD" in checked.stdout
    assert wrong not in checked.stdout + checked.stderr
