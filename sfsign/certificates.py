"""The signing certificates' expiry, for the `sfsign_signing_certificate_expiry_days` gauge.

Entry point: `CertificateWatch.run()`, which re-reads the certificates every `CERTIFICATE_REFRESH_S`
(one hour): a key file replaced without SIGHUP still shows its new expiry (`load_signer` reloads a
file whose mtime changed). The daemon also calls `refresh` after a rules reload. Loading keys blocks
(files, a token session) and takes pyHanko, so it runs in the process pool (`pool`; before the pool
runs, e.g. in a test, in an executor thread), and never per scrape: the gauge reads
`ops.metrics.CertificateExpiry`, which this module fills.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules
from sfsign.documents import jobs as doc_jobs
from sfsign.documents.specs import KeySource
from sfsign.ops.metrics import CertificateExpiry
from sfsign.profiles import signing_request

log = structlog.get_logger("sfsign.certificates")

CERTIFICATE_REFRESH_S = 3600.0


class CertificateWatch:
    """Keeps `expiry` up to date with the certificates of the rules in force."""

    def __init__(self, expiry: CertificateExpiry, rules: Callable[[], Rules], stop: asyncio.Event,
                 pool: Callable[[], Executor | None] = lambda: None) -> None:
        self.expiry = expiry
        self.rules = rules
        self.stop = stop
        self.pool = pool  # where keys are loaded: the process pool once it runs (pyHanko stays out of here)

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.refresh(self.rules())
            await wait_any(self.stop, within_s=CERTIFICATE_REFRESH_S)

    async def refresh(self, rules: Rules) -> None:
        """Read the certificates of `rules` now; a failure affects only the gauge and is logged."""
        try:
            self.expiry.set(await self.not_after(rules))
        except Exception as exc:  # only the expiry gauge is affected: never stop the daemon for it
            log.warning("could not read the signing certificates' expiry", error=f"{type(exc).__name__}: {exc}")

    async def not_after(self, rules: Rules) -> dict[str, datetime]:
        """`not_after` of the certificate of each signing profile the rules use, loaded in the pool.

        A profile whose key cannot be loaded is left out (and logged): preflight and the jobs report it.
        """
        keys: dict[str, KeySource] = {}
        unreadable: dict[str, str] = {}
        for name in sorted({r.profile for r in rules.rules}):
            try:
                keys[name] = signing_request(rules.profiles[name]).key
            except Exception as exc:
                unreadable[name] = f"{type(exc).__name__}: {exc}"
        found: dict[str, datetime] = {}
        if keys:
            loop = asyncio.get_running_loop()
            found, failed = await loop.run_in_executor(self.pool(), doc_jobs.certificate_expiry_job, keys)
            unreadable.update(failed)
        for name, error in sorted(unreadable.items()):
            log.warning("signing certificate not readable for the expiry gauge", profile=name, error=error)
        return found
