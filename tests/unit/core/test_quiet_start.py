"""A command starts without library noise on stderr: cryptography 51 warns that DSA is deprecated when pyHanko
imports its DSA key type, on every start of every command and pool process (CI saw it on `sfsign run`)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_signing_stack_prints_no_deprecation_warning() -> None:
    code = "import sfsign.cli, sfsign.documents.pool_preload, pyhanko.sign.signers.pdf_cms"
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert "DSA is deprecated" not in out.stderr, out.stderr
    assert "Warning" not in out.stderr, out.stderr
