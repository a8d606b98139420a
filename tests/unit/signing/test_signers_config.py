"""A rule's `signers:` block (issue 14, part 1): the defaults, and every mistake refused at load with the
file, the line and the fix, like every other mistake in the rules file."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_text import RULES_PREAMBLE

from sfsign.config import ConfigError, Rules, load_rules
from sfsign.config.signers import line_key
from sfsign.signing.model import AuthMethod, SignerSource

HEAD = RULES_PREAMBLE + """\
  - name: proposal
    object: Opportunity
    field: StageName
    values: ["Proposal/Price Quote"]
    template: proposal
    profile: seal
"""
# line 18 is the last line of HEAD; the rule's block starts on line 19
OPPORTUNITY_SIGNERS = """\
    signers:
      order: sequential
      steps:
        - [{contact_role: primary}]
        - [{contact_role: "Decision Maker"}, {user: legal@northwind.example}]
      authentication: email_otp
      expires_after_days: 30
      reminders: {first_after_days: 3, every_days: 2, max: 2}
      on_expiry: {stage: "Closed Lost"}
      seal: after_signing
      attach_completed: false
"""
QUOTE_RULE = """\
  - name: quote
    object: Quote
    field: Status
    values: ["Approved"]
    template: quote
    profile: seal
    language: de
    signers:
      steps:
        - {quote_contact: true}
        - [{user: 005000000000001AAA}]
      on_expiry: {status: Rejected}
"""


def _load(tmp_path: Path, text: str) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return load_rules(path)


def _refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def test_a_rule_without_signers_seals_only_as_before(tmp_path: Path) -> None:
    [rule] = _load(tmp_path, HEAD).rules
    assert rule.signers is None


def test_the_documented_block_loads_with_its_steps_and_terms(tmp_path: Path) -> None:
    rules = _load(tmp_path, HEAD + OPPORTUNITY_SIGNERS + QUOTE_RULE)
    opp, quote = rules.rules
    assert opp.signers is not None and quote.signers is not None
    first, second = opp.signers.steps
    assert [e.source for e in first] == [SignerSource.CONTACT_ROLE] and first[0].is_primary
    assert [(e.contact_role, e.user) for e in second] == [("Decision Maker", None), (None, "legal@northwind.example")]
    assert opp.signers.authentication is AuthMethod.EMAIL_OTP
    assert opp.signers.reminder_days() == [3, 5]
    assert opp.signers.on_expiry is not None and opp.signers.on_expiry.value == "Closed Lost"
    assert (opp.signers.seal, opp.signers.attach_completed) == ("after_signing", False)
    assert opp.signers.users() == ["legal@northwind.example"] and opp.signers.roles() == ["Decision Maker"]
    # a one-signer step may be written without brackets
    assert [[e.source for e in step] for step in quote.signers.steps] == [[SignerSource.QUOTE_CONTACT],
                                                                          [SignerSource.USER]]
    assert quote.language == "de"
    # later checks (against the org) name the lines of the block's keys
    assert rules.line_of("proposal", line_key("on_expiry", "stage")).endswith("rules.yaml:27")
    assert rules.line_of("proposal", line_key("steps", 1, 1)).endswith("rules.yaml:23")
    assert rules.line_of("quote", line_key("on_expiry", "status")).endswith("rules.yaml:41")


def test_the_defaults_are_email_otp_30_days_day_3_and_5_reminders_seal_first(tmp_path: Path) -> None:
    [rule] = _load(tmp_path, HEAD + "    signers:\n      steps: [[{contact_role: primary}]]\n").rules
    signers = rule.signers
    assert signers is not None
    assert (signers.order, signers.authentication, signers.expires_after_days) == ("sequential", AuthMethod.EMAIL_OTP,
                                                                                    30)
    assert signers.reminder_days() == [3, 5]
    assert (signers.on_expiry, signers.seal, signers.attach_completed) == (None, "before_sending", True)


@pytest.mark.parametrize("off", ["off", "'off'", "none", "false"])
def test_reminders_off(tmp_path: Path, off: str) -> None:
    text = HEAD + f"    signers:\n      steps: [[{{contact_role: primary}}]]\n      reminders: {off}\n"
    [rule] = _load(tmp_path, text).rules
    assert rule.signers is not None and rule.signers.reminders is None and rule.signers.reminder_days() == []


def test_authentication_none_only_when_written(tmp_path: Path) -> None:
    text = HEAD + "    signers:\n      steps: [[{contact_role: primary}]]\n      authentication: none\n"
    [rule] = _load(tmp_path, text).rules
    assert rule.signers is not None and rule.signers.authentication is AuthMethod.NONE


def test_no_reminder_is_due_on_or_after_expiry(tmp_path: Path) -> None:
    text = HEAD + ("    signers:\n      steps: [[{contact_role: primary}]]\n      expires_after_days: 6\n"
                   "      reminders: {first_after_days: 3, every_days: 3, max: 5}\n")
    [rule] = _load(tmp_path, text).rules
    assert rule.signers is not None and rule.signers.reminder_days() == [3]


@pytest.mark.parametrize(("block", "line", "words"), [
    ("      steps: [[{contact_role: primary, user: a@b.example}]]\n", 20,
     "a signer is exactly one of {contact_role: primary}"),
    ("      steps: [[{contact: primary}]]\n", 20, "unknown key 'contact'; a signer is exactly one of"),
    ("      steps: [[primary]]\n", 20, "a signer is a mapping, exactly one of {contact_role: primary}"),
    ("      steps: [[]]\n", 20, "step 1 names no signer"),
    ("      steps: []\n", 20, "at least 1 item"),
    ("      steps: [[{user: legal}]]\n", 20, "copy the username from Setup > Users"),
    ("      steps: [[{contact_role: primary}]]\n      authentication: sms\n", 21, "'email_otp' or 'none'"),
    ("      steps: [[{contact_role: primary}]]\n      order: random\n", 21, "'sequential' or 'parallel'"),
    ("      steps: [[{contact_role: primary}]]\n      expires_after_days: 0\n", 21, "greater than or equal to 1"),
    ("      steps: [[{contact_role: primary}]]\n      seal: never\n", 21, "'before_sending' or 'after_signing'"),
    ("      steps: [[{contact_role: primary}]]\n      on_expiry: {stage: Closed Lost, status: Rejected}\n", 21,
     "not both"),
    ("      steps: [[{contact_role: primary}]]\n      expires_after_days: 3\n", 19,
     "the first reminder (day 3) would come on or after expiry (day 3)"),
    ("      steps: [[{quote_contact: false}]]\n", 20, "write `quote_contact: true`, or remove the entry"),
])
def test_a_malformed_block_is_refused_with_the_line(tmp_path: Path, block: str, line: int, words: str) -> None:
    message = _refused(tmp_path, HEAD + "    signers:\n" + block)
    assert f"rules.yaml:{line}: rules.0.signers" in message, message
    assert words in message, message


def test_a_quote_entry_on_an_opportunity_rule_is_refused_with_the_fix(tmp_path: Path) -> None:
    message = _refused(tmp_path, HEAD + "    signers:\n      steps:\n        - [{quote_contact: true}]\n")
    assert "rules.yaml:21: the quote's contact cannot sign an Opportunity" in message, message
    assert "an Opportunity's signers are {contact_role: primary}, {contact_role: <role name>} or {user: ...}" in message


def test_a_contact_role_on_a_quote_rule_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = HEAD + QUOTE_RULE.replace("- {quote_contact: true}", "- [{quote_email: true}, {contact_role: primary}]")
    message = _refused(tmp_path, text)
    assert "rules.yaml:28: the primary contact role cannot sign a Quote" in message, message
    assert "contact roles belong to Opportunities" in message


def test_an_expiry_value_for_the_other_object_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, HEAD + QUOTE_RULE.replace("{status: Rejected}", "{stage: Closed Lost}"))
    assert "rules.yaml:30: a Quote has no stage; write `on_expiry: {status: ...}` with a Status value" in message


def test_an_expiry_stage_the_rule_watches_is_refused_as_it_would_send_again(tmp_path: Path) -> None:
    text = HEAD + '    signers:\n      steps: [[{contact_role: primary}]]\n' \
                  '      on_expiry: {stage: "Proposal/Price Quote"}\n'
    message = _refused(tmp_path, text)
    assert ("rules.yaml:21: on_expiry moves the Opportunity to 'Proposal/Price Quote', which this rule watches"
            in message)


def test_a_signer_listed_twice_is_refused(tmp_path: Path) -> None:
    text = HEAD + "    signers:\n      steps:\n        - [{user: a@b.example}]\n        - [{user: a@b.example}]\n"
    message = _refused(tmp_path, text)
    assert "rules.yaml:22: user 'a@b.example' is listed twice (first in step 1)" in message, message


def test_the_commented_example_in_config_rules_yaml_loads_when_uncommented(tmp_path: Path) -> None:
    """The example admins copy from is the documented block, and valid as written."""
    example = Path(__file__).resolve().parents[3] / "config" / "rules.yaml"
    out, inside = [], False
    for line in example.read_text().splitlines():
        if line.startswith("    # signers:"):
            inside = True
        elif inside and not line.startswith("    #  "):
            inside = False
        out.append(line.replace("    # ", "    ", 1) if inside else line)
    (tmp_path / "keys").mkdir()
    rules = _load(tmp_path, "\n".join(out) + "\n")
    opportunity, quote = (r.signers for r in rules.rules)
    assert opportunity is not None and quote is not None
    assert opportunity.users() == ["legal@northwind.example"] and opportunity.roles() == ["Decision Maker"]
    assert opportunity.reminder_days() == [3, 5] and opportunity.on_expiry is not None
    assert [e.source for step in quote.steps for e in step] == [SignerSource.QUOTE_CONTACT, SignerSource.USER]
