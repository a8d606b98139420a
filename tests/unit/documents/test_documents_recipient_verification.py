"""A recipient verifies our B-LT and B-LTA files with mainstream tools, offline, with our root only.

The commands are the ones docs/verifying.md gives, run as a recipient would run them (subprocess,
own working directory, nothing of ours imported into the tool): pyHanko's command line
(`pyhanko sign adesverify`) and poppler's `pdfsig` with an NSS database holding only the demo root.
"Offline" is real: the local TSA/OCSP/CRL server that the certificates point at is stopped before
any tool runs, so its URLs refuse connections, as a demo's or a retired CA's URLs do years later.

Why `--validation-time` for pyHanko: validating "now" is current-time validation, for which pyHanko
fetches revocation data from the certificates' OCSP/CRL URLs, and a failed fetch fails the check
before the DSS is consulted; point-in-time validation never fetches and uses what the file carries
(`test_pyhanko_current_time_validation_offline_needs_the_network` pins that behaviour, so the
documentation is revisited if pyHanko changes it). `pdfsig` never reads the DSS: offline it needs
`-no-ocsp`, and it cannot check document timestamps at all (it reports "not yet verified").
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfsign.documents.ltv import upgrade_pdf
from sfsign.documents.render import RenderedPdf
from sfsign.documents.sign import CUSTOMER_FIELD, Appearance, SignatureLevel, sign_pdf_bytes
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import start_demo_pki_services

APPEARANCE = Appearance(name="Northwind Cloud GmbH", reason="Offer approved", location="Berlin")
PYHANKO = Path(sys.executable).parent / "pyhanko"
TOOL_TIMEOUT = 180


@dataclass(frozen=True)
class Offline:
    """Signed files and the demo root, with the PKI's services already stopped."""

    pki: DemoPki
    files: dict[str, Path]  # "B-LT" / "B-LTA" -> signed file


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory, passphrase: str, rendered_short: RenderedPdf) -> Offline:
    directory = tmp_path_factory.mktemp("recipient")
    pki, svc = start_demo_pki_services(
        directory / "pki", passphrase=passphrase, key_algorithm="ec-p256", org_name="Recipient Check"
    )
    try:
        assert rendered_short.customer_box is not None
        signed = sign_pdf_bytes(
            rendered_short.pdf,
            rendered_short.signature_box,
            pki.pem_key_spec(),
            APPEARANCE,
            level=SignatureLevel.B_T,
            tsa_urls=[svc.tsa_url],
            empty_fields=((CUSTOMER_FIELD, rendered_short.customer_box),),
        )
        files: dict[str, Path] = {}
        for level in (SignatureLevel.B_LT, SignatureLevel.B_LTA):
            upgraded = upgrade_pdf(
                signed.pdf, level, trust_roots=[pki.root_cert_pem_path], tsa_urls=[svc.tsa_url]
            )
            files[level.value] = directory / f"signed-{level.value}.pdf"
            files[level.value].write_bytes(upgraded.pdf)
    finally:
        svc.stop()  # from here on every OCSP/CRL/caIssuers URL in the certificates refuses connections
    return Offline(pki=pki, files=files)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


def _pyhanko(offline: Offline, level: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert PYHANKO.exists(), f"{PYHANKO} missing: install the test extras (pip install -e '.[test]')"
    root = str(offline.pki.root_cert_pem_path)
    return _run(
        [str(PYHANKO), "sign", "adesverify", "--trust", root, "--trust-replace", *extra, str(offline.files[level])],
        cwd=tmp_path,  # no pyhanko.yml of anyone's around
    )


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("level", ["B-LT", "B-LTA"])
def test_pyhanko_adesverify_judges_the_file_trusted_offline_with_the_root_only(
    level: str, offline: Offline, tmp_path: Path
) -> None:
    result = _pyhanko(offline, level, tmp_path, "--validation-time", _now_iso())
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("SellerSignature:")]
    assert ":INTACT:TRUSTED," in line, line
    assert "TIMESTAMP_TOKEN<INTACT:TRUSTED>" in line, line
    assert "no revocation information" not in result.stderr


def test_pyhanko_current_time_validation_offline_needs_the_network(offline: Offline, tmp_path: Path) -> None:
    """The tool's design, documented in docs/verifying.md: at the current time it fetches, and a refused
    fetch fails the check although the DSS holds the answer (the same file passes above)."""
    result = _pyhanko(offline, "B-LT", tmp_path)
    assert result.returncode != 0
    assert "INTACT:UNTRUSTED" in result.stdout
    assert "no revocation information could be found" in result.stderr


def test_pyhanko_sign_validate_offline_cannot_trust_the_file_adesverify_trusts(
    offline: Offline, tmp_path: Path
) -> None:
    """Why docs/verifying.md sends recipients of B-LT/B-LTA files to `adesverify`: the older `sign validate`
    checks revocation online only, so offline it cannot trust the same file (passed above)."""
    assert PYHANKO.exists(), f"{PYHANKO} missing: install the test extras (pip install -e '.[test]')"
    result = _run([str(PYHANKO), "sign", "validate", "--trust", str(offline.pki.root_cert_pem_path), "--trust-replace",
                   str(offline.files["B-LT"])], cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("SellerSignature:")]
    assert ":INTACT:UNTRUSTED," in line, line


def _nss_db_with_root(pki: DemoPki, tmp_path: Path) -> str:
    db = tmp_path / "nssdb"
    db.mkdir()
    for args in (
        ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"],
        ["certutil", "-A", "-d", f"sql:{db}", "-n", "sfsign demo root", "-t", "C,C,C", "-i",
         str(pki.root_cert_pem_path)],
    ):
        result = _run(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    return f"sql:{db}"


@pytest.mark.parametrize("level", ["B-LT", "B-LTA"])
def test_pdfsig_trusts_the_seller_signature_offline_with_the_root_only(
    level: str, offline: Offline, tmp_path: Path
) -> None:
    if shutil.which("pdfsig") is None or shutil.which("certutil") is None:
        if os.environ.get("CI"):
            pytest.fail("pdfsig/certutil missing in CI: .ci/run must install poppler-utils and libnss3-tools")
        pytest.skip("pdfsig/certutil not installed (apt-get install -y poppler-utils libnss3-tools); CI installs them")
    nssdir = _nss_db_with_root(offline.pki, tmp_path)
    out = _run(["pdfsig", "-nssdir", nssdir, "-no-ocsp", str(offline.files[level])], cwd=tmp_path).stdout
    blocks = re.split(r"^Signature #\d+:$", out, flags=re.M)
    (seller,) = [b for b in blocks if "Signature Field Name: SellerSignature" in b]
    assert "Signature Validation: Signature is Valid." in seller, out
    assert "Certificate Validation: Certificate is Trusted." in seller, out
    # the upgrade's revisions follow the signature, as docs/verifying.md explains
    assert "Not total document signed" in seller, out
