"""The fork server's preload (sfsign/documents/pool_preload.py) must leave nothing that does not survive
fork(): no thread, no Typst compiler, no PKCS#11 library. And it must freeze what it imported, or every
pool process copies the pages the collector touches."""

from __future__ import annotations

import json
import subprocess
import sys

from sfsign.documents.render import POOL_PRELOAD


def test_the_preload_imports_the_signing_stack_and_starts_nothing_fork_unsafe() -> None:
    code = (
        "import gc, json, sys, threading\n"
        f"import {POOL_PRELOAD}\n"
        "print(json.dumps({'threads': threading.active_count(), 'frozen': gc.get_freeze_count(),"
        " 'typst': 'typst' in sys.modules, 'pyhanko': 'pyhanko.sign.signers' in sys.modules,"
        " 'stamp font': 'fontTools.subset' in sys.modules and 'uharfbuzz' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(out.stdout)
    assert found["threads"] == 1
    assert found["frozen"] > 10_000  # the imported modules' objects are in the permanent generation
    assert not found["typst"]
    assert found["pyhanko"]
    assert found["stamp font"]  # the first signature's font engine, shared rather than imported per process


def test_a_pool_process_forked_from_the_preloaded_server_starts_with_the_stack_loaded() -> None:
    """In a fresh interpreter: the fork server is one per process, so a test that started it earlier (without
    the preload) would decide what this one sees."""
    code = (
        "import gc, json, multiprocessing, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from sfsign.documents.render import POOL_PRELOAD, POOL_START_METHOD\n"
        # eval, a builtin, pickles by name: a function of this `-c` script would not reach the pool process.
        "STATE = \"('pyhanko.sign.signers' in __import__('sys').modules, __import__('gc').get_freeze_count())\"\n"
        "if __name__ == '__main__':\n"
        "    context = multiprocessing.get_context(POOL_START_METHOD)\n"
        "    context.set_forkserver_preload([POOL_PRELOAD])\n"
        "    with ProcessPoolExecutor(1, mp_context=context) as pool:\n"
        "        print(json.dumps(pool.submit(eval, STATE).result(timeout=120)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180)
    loaded, frozen = json.loads(out.stdout)
    assert loaded
    assert frozen > 10_000
