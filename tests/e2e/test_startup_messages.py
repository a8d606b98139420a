"""Start-up errors that name the problem and the fix: the CA bundle, an untrusted certificate, a wrong
password. Real command line, real emulator over HTTPS; a daemon that retries forever instead of saying
what is wrong runs into `run_cli`'s timeout and fails the test."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from e2e_support import run_cli
from secret_scan import register_secret

from sfsign.config import Rules, Settings
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki

RUN_TIMEOUT_S = 90.0
CA_FIX = "unset SFSIGN_CA_BUNDLE to trust only this machine's CAs, or set it to the PEM file"


def _cli(command: str, settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli([command], settings, timeout=RUN_TIMEOUT_S, **env)


async def test_an_empty_ca_bundle_setting_is_refused_with_the_fix_not_a_login_traceback(
    settings: Settings, rules: Rules
) -> None:
    """Exit 2, as every setting that cannot be loaded (docs/operations.md, "Exit codes"): `check` cannot run
    on it either; 3 is for a configuration that loads and fails against the org (the untrusted certificate
    below)."""
    result = await asyncio.to_thread(_cli, "run", settings, SFSIGN_CA_BUNDLE="")
    assert result.returncode == 2, result.stderr
    assert "SFSIGN_CA_BUNDLE: is set but empty" in result.stderr and CA_FIX in result.stderr
    assert "IsADirectoryError" not in result.stderr and "Traceback" not in result.stderr
    checked = await asyncio.to_thread(_cli, "check", settings, SFSIGN_CA_BUNDLE="  ")
    assert checked.returncode == 2 and "SFSIGN_CA_BUNDLE: is set but empty" in checked.stderr


async def test_a_ca_bundle_naming_no_file_is_refused_with_the_fix(
    settings: Settings, rules: Rules, tmp_path: object
) -> None:
    missing = f"{settings.data_dir}/no-such-ca.pem"
    result = await asyncio.to_thread(_cli, "run", settings, SFSIGN_CA_BUNDLE=missing)
    assert result.returncode == 2, result.stderr
    assert f"SFSIGN_CA_BUNDLE: {missing} is not a file" in result.stderr and CA_FIX in result.stderr


async def test_an_untrusted_server_certificate_stops_run_naming_the_ca_setting(
    settings: Settings, rules: Rules, pki: DemoPki
) -> None:
    """A valid PEM of the wrong CA (a TLS-inspecting proxy's situation): today retried forever as
    "cannot reach Salesforce"."""
    wrong_ca = str(pki.root_cert_pem_path)
    result = await asyncio.to_thread(_cli, "run", settings, SFSIGN_CA_BUNDLE=wrong_ca)
    assert result.returncode == 3, result.stderr
    host = urlsplit(settings.login_url).hostname
    assert f"CERTIFICATE_VERIFY_FAILED: the TLS certificate of {host} is not trusted" in result.stderr
    assert "fix: if this network inspects TLS (a corporate proxy), set SFSIGN_CA_BUNDLE" in result.stderr
    assert "cannot reach Salesforce" not in result.stderr and "Traceback" not in result.stderr
    checked = await asyncio.to_thread(_cli, "check", settings, SFSIGN_CA_BUNDLE=wrong_ca)
    assert checked.returncode == 1
    assert "FAIL  login" in checked.stdout and "CERTIFICATE_VERIFY_FAILED" in checked.stdout
    assert "set SFSIGN_CA_BUNDLE to the PEM file of the proxy's CA" in checked.stdout


async def test_a_password_without_its_security_token_says_the_token_is_appended(
    settings: Settings, rules: Rules, emulator: EmulatorThread
) -> None:
    login = emulator.login
    secret, token = login.consumer_secret.get_secret_value(), login.security_token.get_secret_value()
    register_secret(secret)
    register_secret(token)
    flow = {"SFSIGN_AUTH_FLOW": "password", "SFSIGN_CONSUMER_SECRET": secret, "SFSIGN_USERNAME": login.username}

    result = await asyncio.to_thread(_cli, "run", settings, **flow, SFSIGN_PASSWORD=login.password.get_secret_value())
    assert result.returncode == 3, result.stderr
    assert "invalid_grant" in result.stderr and "authentication failure" in result.stderr
    for named in ("SFSIGN_USERNAME", "SFSIGN_PASSWORD", "SFSIGN_CONSUMER_KEY", "SFSIGN_CONSUMER_SECRET"):
        assert named in result.stderr, (named, result.stderr)
    assert "wants the security token appended to the password" in result.stderr
    assert "SFSIGN_PASSWORD=<password><security token>" in result.stderr

    wrong = await asyncio.to_thread(_cli, "check", settings, **flow, SFSIGN_PASSWORD=login.password.get_secret_value())
    assert "FAIL  login" in wrong.stdout and "security token appended" in wrong.stdout
    right = await asyncio.to_thread(_cli, "check", settings, **flow,
                                    SFSIGN_PASSWORD=login.password.get_secret_value() + token)
    assert "ok    login" in right.stdout, right.stdout  # the same settings with the token log in


def _render(settings: Settings, record: str, target: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["render", "--record", record, "-o", target], settings, timeout=RUN_TIMEOUT_S)


async def test_render_with_a_malformed_or_unknown_record_id_says_so_without_a_traceback(
    settings: Settings, rules: Rules, tmp_path: Path
) -> None:
    target = str(tmp_path / "preview.pdf")
    # Salesforce's own MALFORMED_ID example: the suffix disagrees with the case of the first 15 characters.
    malformed = await asyncio.to_thread(_render, settings, "006900K0001pPuOAAU", target)
    assert malformed.returncode == 1, malformed.stderr
    assert "'006900K0001pPuOAAU': the suffix does not match the case of the first 15 characters" in malformed.stderr
    assert "copy the id from the record's address in Salesforce" in malformed.stderr
    assert "Traceback" not in malformed.stderr

    unknown = await asyncio.to_thread(_render, settings, "006Dn000004C9bHIAS", target)
    assert unknown.returncode == 1, unknown.stderr
    assert "no Opportunity record 006Dn000004C9bHIAS is visible to the integration user" in unknown.stderr
    assert "copy the id from the record's address" in unknown.stderr and "Traceback" not in unknown.stderr
    assert not (tmp_path / "preview.pdf").exists()
