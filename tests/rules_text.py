"""The smallest valid rules file up to its `rules:` key, shared by the unit tests that write rules files:
each appends its own rules (line numbers in their assertions count from here: this text is 12 lines)."""

RULES_PREAMBLE = """\
version: 1
seller:
  name: Northwind
signing_profiles:
  seal:
    key:
      pkcs12: keys/s.p12
      passphrase_env: SIGNER_PASS
    level: B-B
    appearance:
      name: Northwind
rules:
"""
