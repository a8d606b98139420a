"""The daemon process describes documents; pool processes render and sign them. Typst, fontTools and
HarfBuzz (~20 MB) belong in the pool only: the daemon's own memory is what the burst benchmark's
memory target is about (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("typst", "fontTools", "uharfbuzz")


def test_the_daemon_process_does_not_load_the_renderer_or_the_font_tools() -> None:
    code = (
        "import sys, sfsign.cli, sfsign.daemon, sfsign.worker;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "none"


def test_rendering_and_signing_load_them_when_first_used() -> None:
    code = (
        "import sys;"
        "from sfsign.documents.model import sample_contract;"
        "from sfsign.documents.jobs import render_job;"
        "render_job(sample_contract(line_count=1).model_dump_json(), 'quote');"
        "from sfsign.documents.appearance import STAMP_STYLE;"
        "from pyhanko.pdf_utils.writer import PdfFileWriter;"
        "STAMP_STYLE.text_box_style.font.create_font_engine(PdfFileWriter());"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == ",".join(HEAVY)


def test_importing_the_command_line_module_loads_no_salesforce_client_outbox_or_settings() -> None:
    """Every pool process imports the parent's main module again (multiprocessing's spawn does): for
    `sfsign run` that is `sfsign.cli`, which must therefore stay light at import time."""
    unwanted = ("simple_salesforce", "zeep", "lxml", "sqlite_utils", "pydantic_settings", "sfsign.daemon",
                "sfsign.outbox", "sfsign.salesforce")
    code = f"import sys, sfsign.cli; print(','.join(m for m in {unwanted!r} if m in sys.modules) or 'none')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "none"


def test_the_daemon_process_does_not_load_the_signing_stack() -> None:
    """Nor pyHanko, its certificate validator, asn1crypto or the PKCS#11 binding (~10 MiB of the daemon's
    PSS): it describes signatures as plain data (`documents.specs`) and names the pool's entry points
    (`documents.jobs`, `documents.signer_jobs`), which import the signing stack when they run in a pool
    process (the fork server has it preloaded). The start check and the signing service included."""
    stack = ("pyhanko", "pyhanko_certvalidator", "asn1crypto", "pkcs11")
    code = (
        "import sys, sfsign.cli, sfsign.daemon, sfsign.worker, sfsign.check, sfsign.signing.service;"
        f"print(','.join(m for m in {stack!r} if m in sys.modules) or 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "none"
