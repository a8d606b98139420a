"""The command line as an operator meets it: `sfsign demo` end to end, and a bad rules file at start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import echo_output, pdfsig_required

BAD_RULES = """\
version: 1
seller:
  name: Northwind
signing_profiles:
  seal:
    key:
      pkcs12: keys/s.p12
    level: B-B
    appearance:
      name: Northwind
rules:
  - name: opp
    object: Opportunity
    field: Stage
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal
"""


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sfsign.cli", *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False,
    )
    echo_output(result)
    return result


def test_demo_signs_six_documents_one_per_level_one_by_the_customer_each_valid(tmp_path: Path) -> None:
    from sfsign.documents.verify import validate_signed_pdf

    work = tmp_path / "work"  # kept, so the demo PKI's root can validate the files afterwards
    result = _run(["demo", "--work-dir", str(work)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    pdfs = sorted((tmp_path / "demo-output").glob("*.pdf"))
    assert len(pdfs) == 7, result.stdout  # six documents and the customer's certificate of completion
    assert result.stdout.count(" Signed ") == 5 and result.stdout.count(" Completed ") == 1, result.stdout
    assert "6 of 6 documents signed (1 of them by the customer too)" in result.stdout
    # The customer's timeline, as the demo played them over HTTP from the embedded mailbox.
    for event in ("invited", "viewed", "code_verified", "signed", "completed"):
        assert re.search(rf"^  \d\d:\d\d:\d\d\.\d{{3}}  {event}\b", result.stdout, re.M), (event, result.stdout)
    assert len(list((work / "daemon" / "mailbox").glob("*.eml"))) == 3  # invitation, code, completed copy
    levels = {}
    for pdf in pdfs:
        report = validate_signed_pdf(pdf.read_bytes(), [work / "pki" / "root-ca.pem"])
        assert report.trusted and report.intact and report.pdfa == "2B", (pdf, report)
        levels[pdf.name] = report.level
        if pdfsig_required():
            out = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True, check=False).stdout
            assert "Signature is Valid." in out, (pdf, out)
            # B-LT/B-LTA add revisions (validation data, document timestamp) after the seller's signature.
            whole = "Total document signed" if report.level in ("B-B", "B-T") else "Not total document signed"
            assert whole in out, (pdf, out)
    assert set(levels.values()) == {"B-B", "B-T", "B-LT", "B-LTA"}, levels


def test_run_with_an_unknown_field_fails_at_start_with_file_line_and_fix(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BAD_RULES)
    env = {"SFSIGN_CONSUMER_KEY": "x", "SFSIGN_USERNAME": "u@example.com",
           "SFSIGN_PRIVATE_KEY_FILE": str(tmp_path / "k.pem"), "SFSIGN_RULES_FILE": str(rules),
           "SFSIGN_OPS_PORT": "0"}
    result = _run(["run"], cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2
    assert f"{rules}:14: unknown field 'Stage' on Opportunity; use one of:" in result.stderr
    assert "StageName" in result.stderr and "Traceback" not in result.stderr


def test_run_without_credentials_names_the_missing_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_")}
    result = subprocess.run([sys.executable, "-m", "sfsign.cli", "run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "SFSIGN_CONSUMER_KEY" in result.stderr and "SFSIGN_PRIVATE_KEY_FILE" in result.stderr


@pytest.mark.parametrize("args", [["version"], ["--help"]])
def test_cli_basics(tmp_path: Path, args: list[str]) -> None:
    result = _run(args, cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and "sfsign" in result.stdout
