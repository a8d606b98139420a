"""The daemon process (`sfsign run`: the command line, the supervisor, its parts and the start check) never
renders, draws a stamp, signs nor parses a key: Typst (an 84 MB library and its caches), the stamp's font
engine (fontTools, HarfBuzz) and the signing stack (pyHanko, its certificate validator, asn1crypto, the
PKCS#11 binding: ~20 MiB) belong to the pool processes, which get them from the fork server's preload
(documents/pool_preload.py). The daemon describes signatures as plain data (`documents.specs`) and names
the pool's entry points (`documents.jobs`, `documents.signer_jobs`), whose heavy imports are inside them."""

from __future__ import annotations

import json
import subprocess
import sys

POOL_ONLY = ("typst", "fontTools", "uharfbuzz", "pyhanko", "pyhanko_certvalidator", "asn1crypto", "pkcs11")


def test_the_daemon_s_entry_modules_load_no_renderer_no_font_engine_and_no_signing_stack() -> None:
    code = (
        "import json, sys, sfsign.cli, sfsign.daemon, sfsign.check, sfsign.signing.service; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(POOL_ONLY)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []
