"""Imported once by the process pool's fork server, before it forks the render/sign processes.

With the `forkserver` start method each pool process is forked from one server process that has already
imported the signing stack (pyHanko, cryptography, asn1crypto, pydantic models): the processes share those
pages until one writes to them, instead of each importing its own copy as `spawn` does (measured: a warm
pool process 67 → 42 MiB PSS alone, less the more processes share). `gc.freeze()` keeps the collector from
touching, and so copying, every imported object in each child.

The entry points (`jobs`, `signer_jobs`) import pyHanko only when they run, so that the daemon process,
which imports them to name them, never loads it: the modules they use are imported here by name. That
includes what the first signature would otherwise import in each process: the stamp's font engine
(fontTools and HarfBuzz, ~14 MiB per process: `appearance.StampFontFactory` imports it on first use, so
that the daemon process never does) and the pyHanko modules its PDF writer loads lazily.

Nothing here may start threads or load a Typst compiler or a PKCS#11 library: neither survives fork().
Those are created in each pool process by `jobs.warm_up` and the first document.
"""

from __future__ import annotations

import gc

import pyhanko.pdf_utils.filters  # imported for their pages, see above
import pyhanko.pdf_utils.metadata.xmp_xml  # noqa: F401

# The entry points import the signing stack when they run (see `jobs`): these are what they use.
import sfsign.documents.jobs
import sfsign.documents.ltv
import sfsign.documents.sign
import sfsign.documents.signer_jobs
import sfsign.documents.signer_signature
import sfsign.documents.stamp_font
import sfsign.documents.verify  # noqa: F401

gc.freeze()
