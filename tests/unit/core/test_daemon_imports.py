"""The daemon process (`sfsign run`: the command line, the supervisor and its parts) never renders nor draws a
stamp: Typst (an 84 MB library and its caches) and the stamp's font engine (fontTools, HarfBuzz: ~14 MiB)
belong to the pool processes, which get them from the fork server's preload (documents/pool_preload.py).
pyHanko is still imported here, for the signing requests and the key checks the daemon makes (~20 MiB of
the daemon's peak PSS; docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

POOL_ONLY = ("typst", "fontTools", "uharfbuzz")


def test_the_daemon_s_entry_modules_load_no_renderer_and_no_font_engine() -> None:
    code = (
        "import json, sys, sfsign.cli, sfsign.daemon; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(POOL_ONLY)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []
