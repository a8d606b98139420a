"""glibc malloc settings for the daemon and its pool processes.

With default settings glibc gives every thread that allocates its own arena (up to 8 per core) and
raises its mmap threshold after each large free, so the megabyte-sized buffers of a burst (upload
bodies of up to 100 PDFs, documents crossing to the pool) end up scattered over arenas that never
shrink. Measured on the 1,000-record burst (`benchmarks/bench_burst.py`): the daemon process peaked
at 193 MiB with the defaults, 149 MiB with two arenas and a fixed 256 KiB mmap threshold, which
returns each large buffer to the system when it is freed.

`tune_malloc` applies both to this process (`mallopt`, before the daemon starts its threads) and,
through the environment, to the pool processes it spawns. Values already in the environment win, so
ops can change them; on a C library other than glibc (musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import structlog

log = structlog.get_logger("sfsign.ops.memory")

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_M_ARENA_MAX = -8
DEFAULTS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}


def tune_malloc() -> bool:
    """Apply the settings; True when glibc accepted them for this process."""
    for variable, value in DEFAULTS.items():
        os.environ.setdefault(variable, value)  # inherited by the pool processes, read by glibc at their start
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        libc = ctypes.CDLL(library)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    try:
        arenas = int(os.environ["MALLOC_ARENA_MAX"])
        threshold = int(os.environ["MALLOC_MMAP_THRESHOLD_"])
    except ValueError:
        log.warning("MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ are not integers; malloc left as it is")
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1 and mallopt(_M_MMAP_THRESHOLD, threshold) == 1)
