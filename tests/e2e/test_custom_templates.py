"""Admins use their own fields: a rule on the org's own custom field, checked against the org at start.

The emulated org here has fields the sfsign package does not ship (`Deal_Desk_Status__c` on Opportunity,
`Legal_Review__c` on Quote), deployed as an admin would deploy them to their org; the daemon talks to it over
real HTTPS.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from e2e_support import REP, record_id, run_daemon, running_emulator, wait_for_status
from pdf_glyphs import pdftotext
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import ConfigError, Rules, Settings, load_rules
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.emulator.server import EmulatorThread
from sfsign.localpki.pki import DemoPki
from sfsign.metadata import default_metadata_dir
from sfsign.salesforce.rest import SalesforceRest

ACME = "Acme Industries - Platform Renewal 2027"
ACME_QUOTE = "Acme Renewal 2027 - Offer"

DEAL_DESK_FIELD = """\
<?xml version="1.0" encoding="UTF-8"?>
<CustomField xmlns="http://soap.sforce.com/2006/04/metadata">
    <fullName>Deal_Desk_Status__c</fullName>
    <label>Deal Desk Status</label>
    <type>Picklist</type>
    <valueSet>
        <restricted>true</restricted>
        <valueSetDefinition>
            <sorted>false</sorted>
            <value><fullName>Draft</fullName><default>false</default><label>Draft</label></value>
            <value><fullName>Cleared</fullName><default>false</default><label>Cleared</label></value>
        </valueSetDefinition>
    </valueSet>
</CustomField>
"""

LEGAL_REVIEW_FIELD = DEAL_DESK_FIELD.replace("Deal_Desk_Status__c", "Legal_Review__c").replace(
    "Deal Desk Status", "Legal Review").replace("Draft", "Open").replace("Cleared", "Passed")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorThread]:
    """An org with the sfsign package and one custom field of the org's own."""
    metadata = tmp_path / "org-metadata"
    shutil.copytree(default_metadata_dir(), metadata)
    fields = metadata / "force-app" / "main" / "default" / "objects" / "Opportunity" / "fields"
    (fields / "Deal_Desk_Status__c.field-meta.xml").write_text(DEAL_DESK_FIELD)
    (fields.parents[1] / "Quote" / "fields").mkdir(parents=True, exist_ok=True)
    (fields.parents[1] / "Quote" / "fields" / "Legal_Review__c.field-meta.xml").write_text(LEGAL_REVIEW_FIELD)
    with running_emulator(tmp_path, metadata_dir=metadata) as emu:
        yield emu


def _rules(tmp_path: Path, pki: DemoPki, *, field: str, value: str, template: str = "template: proposal") -> Rules:
    """The tests' rules with the Opportunity rule watching `field`; `template` replaces its template line
    (and may add more keys to the rule)."""
    path = tmp_path / "rules.yaml"
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    text = text.replace("    field: StageName\n    values: [\"Proposal/Price Quote\"]\n    template: proposal\n",
                        f"    field: {field}\n    values: [\"{value}\"]\n    {template}\n")
    path.write_text(text)
    return load_rules(path)


@pytest.fixture
def rules(tmp_path: Path, pki: DemoPki, pki_passphrase: str, monkeypatch: pytest.MonkeyPatch) -> Rules:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    return _rules(tmp_path, pki, field="Deal_Desk_Status__c", value="Cleared")


async def test_rule_on_the_orgs_own_custom_field_signs_when_a_rep_sets_it(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"Deal_Desk_Status__c": "Cleared"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed", record


def _quote_rule_on(rules: Rules, field: str, value: str) -> Rules:
    """The same rules with the Quote rule watching `field` for `value` instead of Status."""
    rules.source.write_text(rules.source.read_text().replace(
        '    object: Quote\n    field: Status\n    values: ["Approved"]\n',
        f'    object: Quote\n    field: {field}\n    values: ["{value}"]\n'))
    return load_rules(rules.source)


async def test_rule_on_a_quote_custom_field_signs_when_a_rep_sets_it(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """Issue 12 4a names Quote too: a rule on the org's own Quote picklist signs the Quote."""
    rules = _quote_rule_on(rules, "Legal_Review__c", "Passed")
    assert any(r.object == "Quote" and r.field == "Legal_Review__c" for r in rules.rules)
    quote = await record_id(control, "Quote", ACME_QUOTE)
    async with run_daemon(settings, rules):
        await control.update("Quote", quote, {"Legal_Review__c": "Passed"}, user=REP)
        record = await wait_for_status(control, "Quote", quote)
    assert record["Sign_Status__c"] == "Signed", record


@pytest.mark.parametrize(
    ("field", "value", "key", "expected"),
    [
        ("Legal_Reveiw__c", "Passed", "field",
         "rule 'quote-approved' watches Quote.Legal_Reveiw__c, which this org does not have or the integration "
         "user cannot see; check the API name in Setup > Object Manager > Quote"),
        ("Legal_Review__c", "Cleared", "values",
         "rule 'quote-approved': Legal_Review__c has no active value 'Cleared' in this org; "
         "use one of: 'Open', 'Passed'"),
    ],
    ids=["quote-typo", "quote-picklist-value"],
)
async def test_a_quote_rule_on_a_field_or_value_the_org_lacks_refuses_to_start_with_line_and_fix(
    settings: Settings, rules: Rules, field: str, value: str, key: str, expected: str,
) -> None:
    rules = _quote_rule_on(rules, field, value)
    where = f"{rules.source}:{rules.lines.get(('quote-approved', key))}"
    daemon = Daemon(settings, rules)
    with pytest.raises(ConfigError) as caught:
        await daemon.run()
    assert f"{where}: " in str(caught.value) and expected in str(caught.value), str(caught.value)
    assert not daemon.ready.is_set()


@pytest.mark.parametrize(
    ("field", "value", "key", "expected"),
    [
        ("Deal_Desk_Stauts__c", "Cleared", "field",
         "rule 'opportunity-proposal' watches Opportunity.Deal_Desk_Stauts__c, which this org does not have "
         "or the integration user cannot see; check the API name in Setup > Object Manager > Opportunity"),
        ("deal_desk_status__c", "Cleared", "field", "the API name is spelt 'Deal_Desk_Status__c'"),
        ("Deal_Desk_Status__c", "Approved", "values",
         "rule 'opportunity-proposal': Deal_Desk_Status__c has no active value 'Approved' in this org; "
         "use one of: 'Draft', 'Cleared'"),
        ("RecordTypeId", "012000000000000AAA", "field",
         "watches Opportunity.RecordTypeId, which this org does not have"),
        ("Deal_Desk_Status__c", "Cleared", "fields",
         "rule 'opportunity-proposal' lists Opportunity.Deal_Desk_Satus__c for its template, which this org does "
         "not have"),
        ("Deal_Desk_Status__c", "Cleared", "compound",
         "rule 'quote-approved' lists Quote.BillingAddress, a compound field a template cannot print"),
        ("Deal_Desk_Status__c", "Cleared", "",
         "the fields Account.Segment__c listed for the Opportunity rules' templates cannot be read"),
    ],
    ids=["typo", "case", "picklist-value", "no-record-types", "template-field", "compound-field",
         "template-parent-field"],
)
async def test_rule_on_a_field_or_value_the_org_lacks_refuses_to_start_with_line_and_fix(
    settings: Settings, tmp_path: Path, pki: DemoPki, field: str, value: str, key: str, expected: str,
    pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    listed = {"fields": "[Deal_Desk_Satus__c]", "": "[NextStep, Account.Segment__c]"}.get(key)
    template = f"template: proposal\n    fields: {listed}" if listed else "template: proposal"
    rules = _rules(tmp_path, pki, field=field, value=value, template=template)
    if key == "compound":  # the Quote rule lists the Quote's billing address as one field
        rules.source.write_text(rules.source.read_text().replace(
            "    template: quote\n", "    template: quote\n    fields: [BillingAddress]\n"))
        rules = load_rules(rules.source)
        key = "fields"
    line = rules.lines.get(("quote-approved" if "Quote." in expected else "opportunity-proposal", key))
    where = f"{rules.source}:{line}" if key else str(rules.source)
    daemon = Daemon(settings, rules)
    with pytest.raises(ConfigError) as caught:
        await daemon.run()
    message = str(caught.value)
    assert f"{where}: " in message and expected in message, message
    assert not daemon.ready.is_set()


# A template of the admin's own: the built-in layout, plus the org's fields the rule lists.
DEAL_TEMPLATE = """\
#import "common.typ": contract, load-data
#let d = load-data()
#contract(d, kind: "proposal")
#text("Deal desk: " + d.fields.Deal_Desk_Status__c + " / next: " + d.fields.NextStep)
#text(" / account: " + d.fields.at("Account.Name"))
#if d.fields.Sign_Error__c == none { text(" / no error") }
"""


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
async def test_template_receives_the_rules_fields_and_prints_in_the_rules_language(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient, rest: SalesforceRest,
    pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "deal.typ").write_text(DEAL_TEMPLATE)
    from sfsign.documents import render
    shutil.copy(Path(render.__file__).parent / "templates" / "common.typ", templates / "common.typ")
    rules = _rules(
        tmp_path, pki, field="Deal_Desk_Status__c", value="Cleared",
        template="template: templates/deal.typ\n    language: de\n"
                 "    fields: [Deal_Desk_Status__c, NextStep, Account.Name, Sign_Error__c]",
    )
    opp = await record_id(control, "Opportunity", ACME)
    account = (await control.query(f"SELECT Account.Name FROM Opportunity WHERE Id = '{opp}'"))[0]["Account"]["Name"]
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"Deal_Desk_Status__c": "Cleared",
                                                  "NextStep": "Kick-off in März"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed", record
    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None
    pdf = await rest.download_version_data(found.id)
    text = " ".join((await asyncio.to_thread(pdftotext, pdf, tmp_path)).split())
    assert "Deal desk: Cleared / next: Kick-off in März" in text, text
    assert f"/ account: {account}" in text and "/ no error" in text, text
    # German labels, not English ones: the rule's language.
    assert "Projektangebot" in text and "Gesamt" in text and "Unterschriften" in text, text
    assert "Proposal" not in text and "Signatures" not in text, text
    # `sfsign render` previews the same: the listed fields read with the record, the rule's language.
    from e2e_support import run_cli

    target = tmp_path / "preview.pdf"
    result = await asyncio.to_thread(run_cli, ["render", "--record", opp, "-o", str(target)], settings)
    assert result.returncode == 0, result.stderr
    preview = " ".join((await asyncio.to_thread(pdftotext, target.read_bytes(), tmp_path)).split())
    assert "Deal desk: Cleared / next: Kick-off in März" in preview and "Projektangebot" in preview, preview


def _builtin(name: str) -> str:
    from sfsign.documents.render import TEMPLATES_DIR

    return (TEMPLATES_DIR / name).read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
async def test_a_copied_builtin_template_works_without_common_typ_signed_and_in_sfsign_render(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient, rest: SalesforceRest,
    pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/templates.md, step by step: copy proposal.typ alone and change it; or copy common.typ too and
    change the shared layout. Both sign, and `sfsign render` previews both."""
    from e2e_support import run_cli

    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    own = tmp_path / "templates"
    own.mkdir()
    (own / "proposal.typ").write_text(_builtin("proposal.typ") + '\n#text("Our own proposal template")\n')
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "common.typ").write_text(_builtin("common.typ").replace('signatures: "Signatures"',
                                                                       'signatures: "Sign here, please"'))
    (layout / "proposal.typ").write_text(
        _builtin("proposal.typ").replace('"@sfsign/common:1.0.0"', '"common.typ"'))
    rules = _rules(tmp_path, pki, field="Deal_Desk_Status__c", value="Cleared",
                   template="template: templates/proposal.typ")
    extra = rules.source.read_text().replace("rules:\n", """\
rules:
  - name: own-layout
    object: Opportunity
    field: StageName
    values: ["Closed Won"]
    template: layout/proposal.typ
    profile: company-seal
""")
    rules.source.write_text(extra)
    rules = load_rules(rules.source)
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"Deal_Desk_Status__c": "Cleared"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed", record
    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None
    signed = await rest.download_version_data(found.id)
    assert "Our own proposal template" in await asyncio.to_thread(pdftotext, signed, tmp_path)
    for rule, wanted in (("opportunity-proposal", "Our own proposal template"), ("own-layout", "Sign here, please")):
        target = tmp_path / f"{rule}.pdf"
        result = await asyncio.to_thread(run_cli, ["render", "--record", opp, "--rule", rule, "-o", str(target)],
                                         settings)
        assert result.returncode == 0, result.stderr
        assert wanted in " ".join((await asyncio.to_thread(pdftotext, target.read_bytes(), tmp_path)).split())


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
async def test_builtin_order_confirmation_reads_as_one_and_the_transaction_id_never_wraps(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient, rest: SalesforceRest,
    pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's Closed Won rule: the built-in `order` template, and the longest Opportunity name of the
    seed in the footer beside the transaction id."""
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    rules = _rules(tmp_path, pki, field="StageName", value="Closed Won", template="template: order")
    opp = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules):
        await control.update("Opportunity", opp, {"StageName": "Closed Won"}, user=REP)
        record = await wait_for_status(control, "Opportunity", opp)
    assert record["Sign_Status__c"] == "Signed", record
    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None
    raw = await asyncio.to_thread(pdftotext, await rest.download_version_data(found.id), tmp_path)
    text = " ".join(raw.split())
    squeezed = "".join(raw.split())
    assert "ORDERCONFIRMATION" in squeezed and "Thank you for your order. We confirm it as follows." in text, text
    assert "PROPOSAL" not in squeezed.upper().replace("ORDERCONFIRMATION", ""), text
    assert "pleased to submit" not in text and "Valid until" not in text and "Accepted by" not in text, text
    # The transaction id is printed whole, on one line, on every page.
    pages = raw.count("\f") or 1
    assert raw.count(str(record["Sign_Transaction_Id__c"])) >= pages, raw


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
async def test_builtin_quote_reads_as_a_quote_not_a_proposal_or_an_order(
    settings: Settings, tmp_path: Path, pki: DemoPki, control: ControlClient, rest: SalesforceRest,
    pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's Quote rule (Status Approved): the built-in `quote` template, on a quote whose own name says
    neither proposal nor order. Heading, intro and the PDF's title say quote."""
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    rules = _rules(tmp_path, pki, field="StageName", value="Proposal/Price Quote")
    [quote_rule] = rules.for_object("Quote")
    assert quote_rule.template == "quote"
    quote = await record_id(control, "Quote", ACME_QUOTE)
    async with run_daemon(settings, rules):
        await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
        record = await wait_for_status(control, "Quote", quote)
    assert record["Sign_Status__c"] == "Signed", record
    found = await rest.find_content_version(str(record["Sign_Transaction_Id__c"]))
    assert found is not None
    pdf = await rest.download_version_data(found.id)
    raw = await asyncio.to_thread(pdftotext, pdf, tmp_path)
    text = " ".join(raw.split())
    squeezed = "".join(raw.split())
    assert "QUOTE" in squeezed and "We are pleased to quote as follows." in text, text  # the heading, the intro
    assert "Valid until" in text, "a quote is an offer: it says until when"
    assert "PROPOSAL" not in squeezed.upper() and "ORDERCONFIRMATION" not in squeezed.upper(), text
    assert "pleased to submit" not in text and "Thank you for your order" not in text, text
    title = PdfFileReader(BytesIO(pdf)).trailer["/Info"]["/Title"]
    assert str(title).startswith("Quote ") and not {"proposal", "order"} & set(str(title).lower().split()), title


async def test_sfsign_check_reads_the_fields_the_rules_list_with_the_workers_own_query(
    settings: Settings, tmp_path: Path, pki: DemoPki, pki_passphrase: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sfsign.check import run_checks

    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    good = _rules(tmp_path, pki, field="Deal_Desk_Status__c", value="Cleared",
                  template="template: proposal\n    fields: [Deal_Desk_Status__c, Account.Name]")
    checks = {c.name: c for c in await run_checks(settings, good)}
    assert checks["read Opportunity"].ok, checks["read Opportunity"]
    assert checks["object Opportunity"].ok, checks["object Opportunity"]
    bad = _rules(tmp_path, pki, field="Deal_Desk_Status__c", value="Cleared",
                 template="template: proposal\n    fields: [Account.Segment__c]")
    check = {c.name: c for c in await run_checks(settings, bad)}["read Opportunity"]
    assert check.ok is False and "Segment__c" in check.detail, check
