"""Imported once by the process pool's fork server, before it forks the render/sign processes.

With the `forkserver` start method each pool process is forked from one server process that has already
imported the signing stack (pyHanko, cryptography, asn1crypto, pydantic models): the processes share those
pages until one writes to them, instead of each importing its own copy as `spawn` does (measured: a warm
pool process 67 → 42 MiB PSS alone, less the more processes share). `gc.freeze()` keeps the collector from
touching, and so copying, every imported object in each child.

That includes what the first signature would otherwise import in each process: the stamp's font engine
(fontTools and HarfBuzz, ~14 MiB per process: `appearance.StampFontFactory` imports it on first use, so
that the daemon process never does) and the pyHanko modules its PDF writer loads lazily.

glibc's malloc keeps what a document freed (Typst's and pyHanko's buffers, ~8 MiB a process in a burst) in
its heaps unless the memory sits at the very top, and raises its mmap threshold after each large free, so
ever larger buffers come from those heaps too. A fixed threshold (`_MMAP_THRESHOLD`) gives large buffers
back when they are freed and a low trim threshold returns the heap's freed top: set here, in the server,
every pool process inherits it (measured: 7 MiB less PSS per warm pool process, no change in CPU per document).

Nothing here may start threads or load a Typst compiler or a PKCS#11 library: neither survives fork().
Those are created in each pool process by `jobs.warm_up` and the first document.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pyhanko.pdf_utils.filters  # imported for its pages, see above
import pyhanko.pdf_utils.metadata.xmp_xml  # noqa: F401

import sfsign.documents.jobs
import sfsign.documents.stamp_font  # noqa: F401

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024  # glibc's default start; fixing it stops the dynamic raise
_TRIM_THRESHOLD = 128 * 1024


def _return_freed_memory() -> None:
    """glibc only: elsewhere (musl, macOS) `mallopt` is missing or does nothing, and that is fine."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


_return_freed_memory()
gc.freeze()
