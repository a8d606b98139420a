"""A key on a PKCS#11 token signs through the real daemon process, configured as ops would.

`sfsign run` runs as its own process with `SOFTHSM2_CONF` and the PIN's variable in its environment
(SoftHSM2 reads its configuration once per process, so a subprocess is also the faithful setup). The
token is provisioned from keys generated now; the signed file is checked by pyHanko and pdfsig.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REP, cli_env, pdfsig_required, record_id
from secret_scan import register_secret

from sfsign.commands.demo_rules import RULES_TEMPLATE
from sfsign.config import Settings
from sfsign.documents.verify import validate_signed_pdf
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.softhsm import find_softhsm_module, provision_softhsm_token
from sfsign.salesforce.rest import SalesforceRest

HSM_PIN = "e2e-user-pin-2718"  # PIN of a throw-away test token, not a real secret
register_secret(HSM_PIN)


def _softhsm_module() -> Path:
    module = find_softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        reason = "SoftHSM2 not installed (apt-get install -y softhsm2)"
        if os.environ.get("SFSIGN_REQUIRE_SOFTHSM") == "1":
            pytest.fail(f"{reason}, but SFSIGN_REQUIRE_SOFTHSM=1")
        pytest.skip(reason)
    return module


async def test_pkcs11_token_key_signs_through_the_daemon_process(
    settings: Settings, pki: DemoPki, pki_passphrase: str, control: ControlClient, rest: SalesforceRest,
    tmp_path: Path,
) -> None:
    module = _softhsm_module()
    token = await asyncio.to_thread(
        provision_softhsm_token, tmp_path / "softhsm", token_label="sfsign", pin=HSM_PIN, so_pin="e2e-so-pin-2718",
        key_pem_path=pki.signer_key_path, key_passphrase=pki_passphrase, cert_path=pki.signer_cert_path,
        label="seal", chain_paths=pki.chain_paths, module_path=module,
    )
    rules_file = tmp_path / "hsm-rules.yaml"
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env="UNUSED")
    text = text.replace(
        f"      pkcs12: {pki.signer_p12_path}\n      passphrase_env: UNUSED\n",
        f"      pkcs11:\n        module: {module}\n        token: sfsign\n        key: seal\n"
        "        pin_env: SFSIGN_HSM_PIN\n",
    )
    rules_file.write_text(text)
    env = cli_env(settings, SFSIGN_RULES_FILE=str(rules_file), SFSIGN_HSM_PIN=HSM_PIN,
                  SOFTHSM2_CONF=str(token.conf_path), SFSIGN_LOG_FORMAT="json", SFSIGN_CPU_WORKERS="1")
    check = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sfsign.cli", "check"], env=env,
                                    capture_output=True, text=True, timeout=120, check=False)
    assert "Document Signing" in check.stdout and HSM_PIN not in check.stdout + check.stderr, check.stdout

    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfsign.cli", "run", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert daemon.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not any("ready: subscribed" in line for line in lines):
                line = (await daemon.stdout.readline()).decode()
                assert line, "the daemon exited before it was ready:\n" + "".join(lines)
                lines.append(line)
        rid = await record_id(control, "Opportunity", "Globex - Enterprise Rollout")
        await control.update("Opportunity", rid, {"StageName": "Proposal/Price Quote"}, user=REP)
        async with asyncio.timeout(90):
            while True:
                record = await control.get("Opportunity", rid, ["Sign_Status__c", "Sign_Document_Hash__c",
                                                                 "Sign_Error__c", "Sign_Signer__c"])
                if record["Sign_Status__c"] in ("Signed", "Error"):
                    break
                await asyncio.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        rest_of_output, _ = await asyncio.wait_for(daemon.communicate(), 60)
    output = "".join(lines) + rest_of_output.decode()
    print(output)  # into pytest's capture, for the suite-wide secret scan
    assert record["Sign_Status__c"] == "Signed", (record, output[-3000:])
    assert HSM_PIN not in output
    versions = await rest.query(f"SELECT Id FROM ContentVersion WHERE FirstPublishLocationId = '{rid}'")
    assert len(versions) == 1
    pdf = await rest.download_version_data(str(versions[0]["Id"]))
    report = await asyncio.to_thread(validate_signed_pdf, pdf, [pki.root_cert_pem_path])
    assert report.trusted and report.intact and report.level == "B-B", report
    assert "Document Signing" in str(record["Sign_Signer__c"])
    if pdfsig_required():
        path = tmp_path / "hsm.pdf"
        path.write_bytes(pdf)
        out = (await asyncio.to_thread(
            subprocess.run, ["pdfsig", str(path)], capture_output=True, text=True, check=False
        )).stdout
        assert "Signature is Valid." in out, out
