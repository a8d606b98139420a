"""The demo's files, checked exactly as docs/verifying.md tells a recipient, after the demo has ended.

`sfsign demo` runs without `--work-dir`, so its work folder (the PKI, its OCSP/CRL/TSA server) is gone
when the tools run: every revocation URL in the certificates refuses connections, the "years later,
offline" case. The recipient has the PDFs and `demo-root-ca.pem` from ./demo-output, nothing else.
tests/unit/documents/test_documents_recipient_verification.py runs the same tools on freshly signed files
without the emulator and pins why pyHanko needs `--validation-time` offline.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import echo_output

from sfsign.commands.demo import DEMO_ROOT_NAME
from sfsign.documents.verify import validate_signed_pdf

PYHANKO = Path(sys.executable).parent / "pyhanko"


def _run(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SFSIGN_")})
    echo_output(result)
    return result


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """level -> the demo's file at that level, plus "root" -> the root the demo published beside them."""
    cwd = tmp_path_factory.mktemp("recipient-demo")
    result = _run([sys.executable, "-m", "sfsign.cli", "demo"], cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = cwd / "demo-output"
    root = out / DEMO_ROOT_NAME
    assert root.is_file(), sorted(p.name for p in out.iterdir())
    assert "docs/verifying.md" in result.stdout
    files: dict[str, Path] = {"root": root}
    for pdf in sorted(out.glob("*.pdf")):
        files.setdefault(validate_signed_pdf(pdf.read_bytes(), [root]).level, pdf)
    assert {"B-LT", "B-LTA"} <= set(files), files
    return files


@pytest.mark.parametrize("level", ["B-LT", "B-LTA"])
def test_pyhanko_adesverify_trusts_the_demo_file_offline(level: str, demo_output: dict[str, Path],
                                                         tmp_path: Path) -> None:
    assert PYHANKO.exists(), f"{PYHANKO} missing: install the test extras (pip install -e '.[test]')"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = _run([str(PYHANKO), "sign", "adesverify", "--trust", str(demo_output["root"]), "--trust-replace",
                   "--validation-time", now, str(demo_output[level])], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("SellerSignature:")]
    assert ":INTACT:TRUSTED,TIMESTAMP_TOKEN<INTACT:TRUSTED>," in line, line


@pytest.mark.parametrize("level", ["B-LT", "B-LTA"])
def test_pdfsig_trusts_the_demo_file_offline(level: str, demo_output: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("pdfsig") is None or shutil.which("certutil") is None:
        if os.environ.get("CI"):
            pytest.fail("pdfsig/certutil missing in CI: .ci/run must install poppler-utils and libnss3-tools")
        pytest.skip("pdfsig/certutil not installed (apt-get install -y poppler-utils libnss3-tools); CI installs them")
    db = tmp_path / "nssdb"
    db.mkdir()
    assert _run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], cwd=tmp_path).returncode == 0
    added = _run(["certutil", "-A", "-d", f"sql:{db}", "-n", "sfsign demo root", "-t", "C,C,C",
                  "-i", str(demo_output["root"])], cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    out = _run(["pdfsig", "-nssdir", f"sql:{db}", "-no-ocsp", str(demo_output[level])], cwd=tmp_path).stdout
    blocks = re.split(r"^Signature #\d+:$", out, flags=re.M)
    (seller,) = [b for b in blocks if "Signature Field Name: SellerSignature" in b]
    assert "Signature is Valid." in seller and "Certificate is Trusted." in seller, out
    assert "Not total document signed" in seller, out
