"""`sfsign run` refuses to start what `sfsign check` finds fatal: same words, exit code 3, before any job.

Each case runs the real command line (`python -m sfsign.cli run`) against the emulator over HTTPS. On a
daemon that starts anyway the command would not end; `run_cli`'s timeout then fails the test.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from e2e_support import REP, record_id, run_cli, run_daemon, wait_for_status

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki

RUN_TIMEOUT_S = 90.0
REFUSED = "sfsign: refusing to start"
ACME = "Acme Industries - Platform Renewal 2027"


def _write_rules(tmp_path: Path, pki: DemoPki, text: str | None = None, name: str = "rules-under-test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else RULES_TEMPLATE.format(
        p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV))
    return path


def _run(settings: Settings, rules_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["run"], settings, timeout=RUN_TIMEOUT_S, SFSIGN_RULES_FILE=str(rules_file), **env)


def _check(settings: Settings, rules_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["check"], settings, SFSIGN_RULES_FILE=str(rules_file), **env)


def _assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 3, result.stdout + result.stderr
    assert REFUSED in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert "Traceback" not in result.stderr


async def test_a_rule_value_missing_from_the_picklist_stops_run_as_check_reports_it(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    """A typo ("Qoute") would otherwise start "ready" and never fire."""
    typo = RULES_TEMPLATE.replace('["Proposal/Price Quote"]', '["Proposal/Price Qoute"]').format(
        p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    path = _write_rules(tmp_path, pki, typo)
    problem = "rule 'opportunity-proposal': StageName has no active value 'Proposal/Price Qoute' in this org"

    result = await asyncio.to_thread(_run, settings, path)
    _assert_refused(result, problem, "'Proposal/Price Quote'",
                    "fix: correct the rule's values to the picklist's API values")
    checked = await asyncio.to_thread(_check, settings, path)
    assert checked.returncode == 1 and problem in checked.stdout, checked.stdout
    assert not (settings.data_dir / "artifacts").exists()  # no worker ever started


async def test_a_quote_status_missing_from_the_picklist_stops_run_too(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    """The Quote rule's `Status` values are checked as the Opportunity rule's stages are (`check` reports both
    with the same code, so only `run` is exercised here)."""
    assert '["Approved"]' in RULES_TEMPLATE
    typo = RULES_TEMPLATE.replace('["Approved"]', '["Aproved"]').format(
        p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    path = _write_rules(tmp_path, pki, typo)

    result = await asyncio.to_thread(_run, settings, path)
    _assert_refused(result, "rule 'quote-approved': Status has no active value 'Aproved'", "'Approved'",
                    "fix: correct the rule's values to the picklist's API values")
    assert "StageName has no active value" not in result.stderr
    assert not (settings.data_dir / "artifacts").exists()


async def test_a_template_that_does_not_render_stops_run(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    (tmp_path / "broken.typ").write_text('#let x = (\n= Offer #undefined_function("a")\n')
    text = RULES_TEMPLATE.replace("template: quote", "template: broken.typ").format(
        p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    path = _write_rules(tmp_path, pki, text)

    result = await asyncio.to_thread(_run, settings, path)
    _assert_refused(result, "FAIL  template", "broken.typ", "fix: fix the template (line and message above)")
    checked = await asyncio.to_thread(_check, settings, path)
    assert checked.returncode == 1 and "FAIL  template" in checked.stdout, checked.stdout


async def test_a_data_directory_that_is_not_writable_stops_run_without_a_traceback(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data_dir = blocker / "data"
    path = _write_rules(tmp_path, pki)

    result = await asyncio.to_thread(_run, settings, path, SFSIGN_DATA_DIR=str(data_dir))
    _assert_refused(result, f"FAIL  data directory  {data_dir} is not writable",
                    "set SFSIGN_DATA_DIR to such a directory")
    checked = await asyncio.to_thread(_check, settings, path, SFSIGN_DATA_DIR=str(data_dir))
    assert checked.returncode == 1 and f"{data_dir} is not writable" in checked.stdout, checked.stdout


async def test_b_lt_with_a_chain_naming_no_ocsp_or_crl_stops_run(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    """The session's demo PKI is made without service URLs: no OCSP, no CRL, so B-LT could never be reached."""
    text = RULES_TEMPLATE.replace("    level: B-B\n", "    level: B-LT\n    tsa:\n      urls: [http://127.0.0.1:9/tsa]\n")
    path = _write_rules(tmp_path, pki, text.format(
        p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV))

    result = await asyncio.to_thread(_run, settings, path)
    _assert_refused(result, "FAIL  revocation data", "profile 'company-seal' is level B-LT",
                    "name no OCSP responder and no CRL", "fix: set `level: B-T` in profile 'company-seal'")
    checked = await asyncio.to_thread(_check, settings, path)
    assert checked.returncode == 1, checked.stdout
    assert "FAIL  revocation data" in checked.stdout and "name no OCSP responder and no CRL" in checked.stdout


async def test_a_signing_key_file_that_cannot_be_read_stops_run_with_exit_code_3(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    garbage = tmp_path / "signer.p12"
    garbage.write_bytes(b"this is not a PKCS#12 file")
    text = RULES_TEMPLATE.format(p12=garbage, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    path = _write_rules(tmp_path, pki, text)

    result = await asyncio.to_thread(_run, settings, path)
    _assert_refused(result, "FAIL  signing keys", "signing profile 'company-seal'",
                    "fix: fix the key file, its passphrase variable or the certificate")
    checked = await asyncio.to_thread(_check, settings, path)
    assert checked.returncode == 1 and "FAIL  signing keys" in checked.stdout, checked.stdout


async def test_salesforce_unavailable_during_the_start_check_is_waited_out_not_refused(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """A 503 on the describe says nothing about the rules: refusing would turn a Salesforce blip into a
    crash loop of exit code 3 with a wrong fix ("give the integration user access"). The daemon waits it
    out, then starts and signs."""
    describe = "/services/data/v68.0/sobjects/Opportunity/describe"
    fault = await control.post("/_control/faults/errors", {
        "prefix": describe, "status": 503, "errorCode": "SERVER_UNAVAILABLE", "message": "Server Unavailable",
        "count": 2})
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Proposal/Price Quote"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    hit = [f for f in (await control.faults())["errors"] if f["id"] == fault["id"]]
    assert hit and hit[0]["hits"] == 2, hit  # the start check met both 503s, and went on
    assert record["Sign_Status__c"] == "Signed", record


async def test_check_names_an_outage_as_one_and_asks_to_run_again(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path, control: ControlClient
) -> None:
    """`sfsign check` during an outage fails (it could not prove anything) but says why, not "grant access"."""
    await control.post("/_control/faults/errors", {
        "prefix": "/services/data/v68.0/sobjects/Opportunity/describe", "status": 503,
        "errorCode": "SERVER_UNAVAILABLE", "message": "Server Unavailable"})
    checked = await asyncio.to_thread(_check, settings, _write_rules(tmp_path, pki))
    assert checked.returncode == 1, checked.stdout
    assert "SERVER_UNAVAILABLE" in checked.stdout and "run `sfsign check` again" in checked.stdout, checked.stdout
    assert "give the integration user access to Opportunity" not in checked.stdout, checked.stdout
