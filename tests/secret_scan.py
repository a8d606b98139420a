"""The suite-wide secret scan: every line the tests' code printed or logged is checked for secrets.

pytest captures each test's stdout, stderr and log records (and the CLI helpers echo their
subprocesses' output into that capture). After each test phase the captured text is searched for
(a) the secrets the fixtures created (passphrases, PINs, TSA passwords: `register_secret`) and
(b) anything shaped like a secret: a PEM private key, a Salesforce access token (`00D…!…`), a
bearer header. Any hit fails the session, naming the test and the section.
"""

from __future__ import annotations

import re

_KNOWN: set[str] = set()
_PATTERNS = (
    ("PEM private key", re.compile(r"-----BEGIN (?:ENCRYPTED |RSA |EC )?PRIVATE KEY-----")),
    ("Salesforce access token", re.compile(r"\b00D[A-Za-z0-9]{12}![A-Za-z0-9._]{20,}")),
    ("bearer credential", re.compile(r"\bBearer [A-Za-z0-9._~+/!-]{20,}")),
)


def register_secret(*values: str) -> None:
    """Secrets a fixture made: they must never appear in any captured output."""
    _KNOWN.update(v for v in values if v and len(v) >= 6)


def find_secrets(text: str) -> list[str]:
    """What kinds of secret `text` contains (never the secret itself: this goes to the terminal)."""
    found = [f"registered secret ({len(s)} characters)" for s in _KNOWN if s in text]
    found += [what for what, pattern in _PATTERNS if pattern.search(text)]
    return found
