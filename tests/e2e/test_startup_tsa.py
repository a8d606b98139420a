"""`sfsign check` with rules whose timestamp authorities cannot be reached (no internet: the example rules
name public TSAs) says so, and how to use a TSA this machine reaches. The TSAs here are closed ports on
127.0.0.1, so the test behaves the same with and without internet."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from e2e_support import run_cli

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings
from sfsign.localpki.pki import DemoPki

UNREACHABLE = "[http://127.0.0.1:9/tsa, http://127.0.0.1:9/fallback]"


def _check(settings: Settings, rules_file: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["check"], settings, SFSIGN_RULES_FILE=str(rules_file))


async def test_check_says_no_tsa_is_reachable_and_how_to_use_a_corporate_or_local_one(
    settings: Settings, rules: Rules, pki: DemoPki, tmp_path: Path
) -> None:
    text = RULES_TEMPLATE.replace("    level: B-B\n", f"    level: B-T\n    tsa:\n      urls: {UNREACHABLE}\n")
    path = tmp_path / "offline-rules.yaml"
    path.write_text(text.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV))

    result = await asyncio.to_thread(_check, settings, path)
    assert result.returncode == 1, result.stdout
    assert result.stdout.count("FAIL  timestamp authority") == 2, result.stdout
    assert "none of profile 'company-seal''s 2 TSA(s) answered from this machine" in result.stdout
    assert "fix: every document of profile 'company-seal' (B-T) would end in Error" in result.stdout
    assert "your corporate TSA" in result.stdout and "tsa.urls" in result.stdout
    assert "`level: B-B`" in result.stdout and "on_tsa_failure: downgrade" in result.stdout
