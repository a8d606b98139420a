"""The start check of the rules' signers (issue 14, part 1), below the end-to-end test: an expiry stage or
status the picklist lacks, a contact role name the org does not have, a counter-signer who is not an active
user, each with the rules file's line and the names the org has. The describes are built here as
Salesforce returns them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rules_text import RULES_PREAMBLE

from sfsign.check.signers import contact_role_problems, expiry_problems, user_problems
from sfsign.config import Rules, load_rules
from sfsign.salesforce.signer_records import UserRow

RULES = RULES_PREAMBLE + """\
  - name: proposal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal
    signers:
      steps:
        - [{contact_role: primary}, {contact_role: "Decision Maker"}]
        - [{contact_role: Legal Counsel}, {user: legal@northwind.example}, {user: 005000000000007AAA}]
      on_expiry: {stage: "Closed Lots"}
  - name: quote
    object: Quote
    field: Status
    values: ["Approved"]
    template: quote
    profile: seal
    signers:
      steps: [[{quote_contact: true}]]
      on_expiry: {status: Rejected}
"""


def _rules(tmp_path: Path) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules(path)


def _describe(field: str, values: list[str], inactive: tuple[str, ...] = ()) -> dict[str, Any]:
    picklist = [{"value": v, "label": v, "active": True} for v in values]
    picklist += [{"value": v, "label": v, "active": False} for v in inactive]
    return {"fields": [{"name": "Id", "type": "id"}, {"name": field, "type": "picklist", "picklistValues": picklist}]}


def test_an_expiry_stage_the_picklist_lacks_is_named_with_its_line_and_the_values(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    describes = {"Opportunity": _describe("StageName", ["Prospecting", "Closed Won", "Closed Lost"]),
                 "Quote": _describe("Status", ["Draft", "Approved", "Accepted"], inactive=("Rejected",))}
    assert expiry_problems(rules, describes) == [
        f"{rules.source}:23: rule 'proposal': on_expiry moves the Opportunity to 'Closed Lots', but StageName has no "
        "active value 'Closed Lots' in this org; use one of: 'Prospecting', 'Closed Won', 'Closed Lost' (the API "
        "names, as Setup > Object Manager shows them)",
        f"{rules.source}:32: rule 'quote': on_expiry moves the Quote to 'Rejected', but Status has no active value "
        "'Rejected' in this org; use one of: 'Draft', 'Approved', 'Accepted' (the API names, as Setup > Object "
        "Manager shows them)",
    ]
    describes["Opportunity"] = _describe("StageName", ["Closed Lots"])
    describes["Quote"] = _describe("Status", ["Rejected"])
    assert expiry_problems(rules, describes) == []


def test_a_contact_role_name_the_org_lacks_is_named(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    found = contact_role_problems(rules, _describe("Role", ["Decision Maker", "Economic Buyer"]))
    assert found == [f"{rules.source}:22: rule 'proposal': no contact role is 'Legal Counsel' in this org "
                     "(OpportunityContactRole.Role); use `primary` or one of: 'Decision Maker', 'Economic Buyer'"]


def test_a_counter_signer_who_is_missing_or_inactive_is_named(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    legal = UserRow("005000000000001AAA", "Legal@Northwind.example", "Northwind Legal", "legal@northwind.example", True)
    gone = UserRow("005000000000007AAA", "old@northwind.example", "Old Signer", "old@northwind.example", False)
    assert user_problems(rules, [legal, gone]) == [
        f"{rules.source}:22: rule 'proposal': the counter-signer '005000000000007AAA' (Old Signer) is an inactive "
        "user; activate them in Setup > Users, or name another user"]
    assert user_problems(rules, [gone])[0] == (
        f"{rules.source}:22: rule 'proposal': the counter-signer 'legal@northwind.example' is not a user of this "
        "org; use the Username (or the 005 id) of an active user from Setup > Users")
