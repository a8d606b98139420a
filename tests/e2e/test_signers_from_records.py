"""Who signs (issue 14, part 1), end to end: the signers of a seeded Opportunity and Quote read through the
emulator over HTTPS with the daemon's own client and SOQL, as a minimum-access integration user with the
package's permission set, and the start check `run` refuses on (exit code
3) finding a rule's expiry stage, contact role or counter-signer the org does not have. Sending the envelopes
to the signers found here is tested in test_customer_signing_jobs.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e_support import REP, record_id, run_cli

from sfsign.check import StartupRefused, check_rules, refuse_on_failures
from sfsign.check.org import check_access
from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Settings, SignersConfig, load_rules
from sfsign.emulator.control_client import ControlClient
from sfsign.localpki.pki import DemoPki
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.model import ResolvedSigner, SignerSource
from sfsign.signing.recipients import SignerMissing, read_signers

ACME = "Acme Industries - Platform Renewal 2027"
OPPORTUNITY_SIGNERS = """\
    signers:
      steps:
        - [{contact_role: primary}]
        - [{contact_role: "Technical Buyer"}, {user: lena.hoffmann@northwind.example}]
      on_expiry: {stage: "Closed Lost"}
"""
QUOTE_SIGNERS = """\
    signers:
      steps:
        - {quote_contact: true}
        - [{user: emily.carter@northwind.example}]
      on_expiry: {status: Rejected}
"""


def _rules_with_signers(tmp_path: Path, pki: DemoPki, opportunity: str = OPPORTUNITY_SIGNERS) -> Path:
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    proposal, quote = 'file_name: "Proposal {number} {date}.pdf"\n', 'file_name: "Quote {number} {date}.pdf"\n'
    assert proposal in text and quote in text
    path = tmp_path / "rules-with-signers.yaml"
    path.write_text(text.replace(proposal, proposal + opportunity).replace(quote, quote + QUOTE_SIGNERS))
    return path


async def test_signers_of_a_seeded_opportunity_and_quote_resolve_over_https(
    rest: SalesforceRest, control: ControlClient, settings: Settings, pki: DemoPki, tmp_path: Path
) -> None:
    # As the setup guide has it: Minimum Access - API Only Integrations plus the package's permission set.
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"],
                                                  "revokeFields": [], "readOnlyFields": []})
    rules = load_rules(_rules_with_signers(tmp_path, pki))
    opportunity, quote = (r.signers for r in rules.rules)
    assert isinstance(opportunity, SignersConfig) and isinstance(quote, SignersConfig)
    opp_id = await record_id(control, "Opportunity", ACME)
    [claire] = await control.query("SELECT Id, Name FROM Contact WHERE LastName = 'Lefèvre'")
    [thomas] = await control.query("SELECT Id, Name FROM Contact WHERE LastName = 'Moreau'")
    [lena] = await control.query(f"SELECT Id FROM User WHERE Username = '{REP}'")

    assert await read_signers(rest, opportunity, "Opportunity", opp_id) == [
        ResolvedSigner(1, claire["Name"], "claire.lefevre@acme-industries.example", SignerSource.CONTACT_ROLE,
                       claire["Id"], "Economic Buyer"),
        ResolvedSigner(2, thomas["Name"], "thomas.moreau@acme-industries.example", SignerSource.CONTACT_ROLE,
                       thomas["Id"], "Technical Buyer"),
        ResolvedSigner(2, "Lena Hoffmann", REP, SignerSource.USER, lena["Id"]),
    ]

    quote_id = await record_id(control, "Quote", "Acme Renewal 2027 - Offer")
    [emily] = await control.query("SELECT Id FROM User WHERE Username = 'emily.carter@northwind.example'")
    assert await read_signers(rest, quote, "Quote", quote_id) == [
        ResolvedSigner(1, claire["Name"], "claire.lefevre@acme-industries.example", SignerSource.QUOTE_CONTACT,
                       claire["Id"]),
        ResolvedSigner(2, "Emily Carter", "emily.carter@northwind.example", SignerSource.USER, emily["Id"]),
    ]

    # A new primary contact role takes over: Salesforce keeps one primary per opportunity.
    await control.create("OpportunityContactRole", {"OpportunityId": opp_id, "ContactId": thomas["Id"],
                                                    "Role": "Decision Maker", "IsPrimary": True}, user=REP)
    first = (await read_signers(rest, opportunity, "Opportunity", opp_id))[0]
    assert (first.step, first.email, first.role) == (1, "thomas.moreau@acme-industries.example", "Decision Maker")

    # The seeded opportunity without a contact role: the job would end Error with the fix.
    pilot = await record_id(control, "Opportunity", "Lumière Santé - Pilot")
    with pytest.raises(SignerMissing, match="Opportunity has no primary contact role: add the contact who signs"):
        await read_signers(rest, opportunity, "Opportunity", pilot)

    # The same rules pass the start check against the seeded org, and the permission set grants every read.
    findings = await check_rules(rest, rules)
    assert [(c.name, c.ok) for c in findings if c.name == "rule signers"] == [("rule signers", True)], findings
    access = await check_access(rest, rules, settings.multi_currency)
    assert {"access OpportunityContactRole", "access User"} <= {c.name for c in access}
    assert [c for c in access if not c.ok] == []


async def test_run_refuses_an_expiry_stage_a_role_and_a_user_the_org_lacks(
    rest: SalesforceRest, settings: Settings, pki: DemoPki, tmp_path: Path
) -> None:
    """`run` judges the rules with `check_rules` and exits 3 on `StartupRefused`, with these words."""
    wrong = (OPPORTUNITY_SIGNERS.replace('"Closed Lost"', '"Closed Lots"')
             .replace('"Technical Buyer"', '"Legal Counsel"').replace("lena.hoffmann@", "lena.hofmann@"))
    path = _rules_with_signers(tmp_path, pki, wrong)
    rules = load_rules(path)
    line = rules.line_of

    with pytest.raises(StartupRefused) as refused:
        refuse_on_failures(await check_rules(rest, rules))
    for expected in (
        f"FAIL  rule signers  {line('opportunity-proposal', 'signers.on_expiry.stage')}: rule 'opportunity-proposal': "
        "on_expiry moves the Opportunity to 'Closed Lots', but StageName has no active value 'Closed Lots' in this "
        "org; use one of: 'Prospecting',",
        f"{line('opportunity-proposal', 'signers.steps.1.0')}: rule 'opportunity-proposal': no contact role is "
        "'Legal Counsel' in this org (OpportunityContactRole.Role); use `primary` or one of: 'Business User',",
        f"{line('opportunity-proposal', 'signers.steps.1.1')}: rule 'opportunity-proposal': the counter-signer "
        "'lena.hofmann@northwind.example' is not a user of this org",
        "fix: correct the rules file at the lines named",
    ):
        assert expected in str(refused.value), (expected, str(refused.value))
    assert [c.name for c in refused.value.checks] == ["rule signers"], "the quote rule's signers exist"

    # A relay is set (never reached: the start is refused first), so the refusal is the rules' alone.
    ran = await asyncio.to_thread(run_cli, ["run"], settings, timeout=90.0, SFSIGN_RULES_FILE=str(path),
                                  SFSIGN_SMTP_URL="smtp+insecure://127.0.0.1:9",
                                  SFSIGN_MAIL_FROM="Northwind Contracts <contracts@northwind.example>")
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "sfsign: refusing to start" in ran.stderr and "'Closed Lots'" in ran.stderr, ran.stderr
    assert "mail relay" not in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
