"""`sfsign check`, `run` and a reload judge the rules against the org with one function (`check_rules`):
what `run` refuses to start on, `check` reports, in the same words. Real command line, emulator over HTTPS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from e2e_support import run_cli

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Settings, load_rules
from sfsign.localpki.pki import DemoPki


def _rules_file(tmp_path: Path, pki: DemoPki, old: str, new: str) -> Path:
    path = tmp_path / "rules-checked.yaml"
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


async def test_check_reports_a_template_field_the_org_lacks_as_run_does_with_file_and_line(
    settings: Settings, pki: DemoPki, tmp_path: Path
) -> None:
    path = _rules_file(tmp_path, pki, "    template: proposal\n",
                       "    template: proposal\n    fields: [NextStep, Deal_Desk_Satus__c]\n")
    line = load_rules(path).lines[("opportunity-proposal", "fields")]
    expected = (f"{path}:{line}: rule 'opportunity-proposal' lists Opportunity.Deal_Desk_Satus__c for its template, "
                "which this org does not have or the integration user cannot see")
    checked = await asyncio.to_thread(run_cli, ["check"], settings, SFSIGN_RULES_FILE=str(path))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert expected in checked.stdout, checked.stdout
    assert "fix: correct the rules file at the lines named, or deploy the fields" in checked.stdout


async def test_check_reports_a_rule_value_the_picklist_lacks_once_not_per_check(
    settings: Settings, pki: DemoPki, tmp_path: Path
) -> None:
    path = _rules_file(tmp_path, pki, '["Proposal/Price Quote"]', '["Proposal/Price Qoute"]')
    checked = await asyncio.to_thread(run_cli, ["check"], settings, SFSIGN_RULES_FILE=str(path))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    line = load_rules(path).lines[("opportunity-proposal", "values")]
    problem = (f"{path}:{line}: rule 'opportunity-proposal': StageName has no active value 'Proposal/Price Qoute' "
               "in this org; use one of: ")
    assert problem in checked.stdout, checked.stdout
    # One judgement of the watched field and its values (sfsign.rule_fields.watch_problems), one line: the
    # typo is named once in all of check's output, under the rules of its object, not again as a rule field.
    assert checked.stdout.count("'Proposal/Price Qoute'") == 1, checked.stdout
    assert "FAIL  rules on Opportunity" in checked.stdout and "FAIL  rule fields" not in checked.stdout
