"""The demo's rules file: the seller's seal at each PAdES level, and the customer's rule.

Kept as text (what an admin would write in `config/rules.yaml`) rather than built objects, so the demo
proves the rules file's own parser; the tests reuse `RULES_TEMPLATE` for their own orgs.
"""

from __future__ import annotations

from sfsign.localpki.pki import DemoPki

PASSPHRASE_ENV = "SFSIGN_DEMO_SIGNER_PASSPHRASE"

_SELLER = """\
version: 1
seller:
  name: Northwind Cloud GmbH
  street: Friedrichstrasse 68
  postal_code: "10117"
  city: Berlin
  country: Germany
  vat_id: DE 312 456 789
  email: contracts@northwind.example
  phone: +49 30 1234 5678
"""

# The tests' rules: one B-B profile, so most tests need no timestamp authority.
RULES_TEMPLATE = _SELLER + """\
signing_profiles:
  company-seal:
    key:
      pkcs12: {p12}
      passphrase_env: {passphrase_env}
    level: B-B
    trust_roots: [{root}]
    appearance:
      name: Northwind Cloud GmbH
      reason: Offer approved and signed by Northwind Cloud GmbH
      location: Berlin, Germany
rules:
  - name: opportunity-proposal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: company-seal
    file_name: "Proposal {{number}} {{date}}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
      - Payment within 30 days of invoice date.
  - name: quote-approved
    object: Quote
    field: Status
    values: ["Approved"]
    template: quote
    profile: company-seal
    file_name: "Quote {{number}} {{date}}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
"""

_PROFILE = """\
  seal-{slug}:
    key:
      pkcs12: {p12}
      passphrase_env: {passphrase_env}
    level: {level}
{tsa}    eidas_level: AES
    trust_roots: [{root}]
    appearance:
      name: Northwind Cloud GmbH
      reason: Offer approved and signed by Northwind Cloud GmbH
      location: Berlin, Germany
"""

# The demo's rules: one profile per PAdES level, all with the same key and the local TSA.
DEMO_RULES_TAIL = """\
rules:
  - name: opportunity-proposal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal-b-lta
    file_name: "Proposal {number} {date}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
      - Payment within 30 days of invoice date.
  - name: opportunity-negotiation
    object: Opportunity
    field: StageName
    values: ["Negotiation/Review"]
    template: proposal
    profile: seal-b-lt
    file_name: "Final offer {number} {date}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
  - name: opportunity-won
    object: Opportunity
    field: StageName
    values: ["Closed Won"]
    template: order
    profile: seal-b-b
    file_name: "Order confirmation {number} {date}.pdf"
  - name: quote-approved
    object: Quote
    field: Status
    values: ["Approved"]
    template: quote
    profile: seal-b-t
    file_name: "Quote {number} {date}.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
"""


# The demo's sixth document: the customer signs it (issue 14). Only `sfsign demo` adds it: with signers, a
# daemon needs a mail relay, which the tests that reuse the demo's rules do not all start.
DEMO_CUSTOMER_RULE = """\
  - name: quote-presented
    object: Quote
    field: Status
    values: ["Presented"]
    template: quote
    profile: seal-b-lt
    file_name: "Quote {number} {date} for signature.pdf"
    terms:
      - Prices are exclusive of VAT unless stated otherwise.
    signers:
      authentication: email_otp
      steps:
        - [{quote_contact: true}]
"""


def demo_rules_text(pki: DemoPki, tsa_url: str, *, customer: bool = False) -> str:
    profiles = "".join(
        _PROFILE.format(
            slug=level.lower(),
            p12=pki.signer_p12_path,
            passphrase_env=PASSPHRASE_ENV,
            level=level,
            tsa="" if level == "B-B" else f"    tsa:\n      urls: [{tsa_url}]\n",
            root=pki.root_cert_pem_path,
        )
        for level in ("B-B", "B-T", "B-LT", "B-LTA")
    )
    return _SELLER + "signing_profiles:\n" + profiles + DEMO_RULES_TAIL + (DEMO_CUSTOMER_RULE if customer else "")
