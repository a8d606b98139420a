"""malloc settings: applied to this process, passed on to pool processes, overridable by ops."""

from __future__ import annotations

import subprocess
import sys

CHILD = (
    "import os, multiprocessing as mp;"
    "from sfsign.ops.memory import tune_malloc;"
    "ok = tune_malloc();"
    "ctx = mp.get_context('spawn');"
    "q = ctx.Queue();"
    "p = ctx.Process(target=q.put, args=((os.environ['MALLOC_ARENA_MAX'], os.environ['MALLOC_MMAP_THRESHOLD_']),));"
    "p.start(); p.join();"
    "print(ok, *q.get())"
)


def _run(env: dict[str, str]) -> list[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", f"if __name__ == '__main__':\n    exec({CHILD!r})"],
                         env={**base, **env}, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip().splitlines()[-1].split()  # the last line: a warning may come first


def test_the_daemon_tunes_malloc_for_itself_and_its_pool_processes() -> None:
    assert _run({}) == ["True", "2", "262144"]


def test_values_from_the_environment_win() -> None:
    assert _run({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1048576"}) == ["True", "4", "1048576"]


def test_nonsense_values_leave_malloc_alone() -> None:
    assert _run({"MALLOC_ARENA_MAX": "many"})[0] == "False"
