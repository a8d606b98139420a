"""The signing certificates' expiry, for the `sfsign_signing_certificate_expiry_days` gauge.

Entry point: `CertificateWatch.run()`, which re-reads the certificates every `CERTIFICATE_REFRESH_S`
(one hour): a key file replaced without SIGHUP still shows its new expiry (`load_signer` reloads a
file whose mtime changed). The daemon also calls `refresh` after a rules reload. Loading keys blocks
(files, a token session), so it runs in an executor, and never per scrape: the gauge reads
`ops.metrics.CertificateExpiry`, which this module fills.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog

from sfsign.aio import wait_any
from sfsign.config import Rules
from sfsign.documents.sign import load_signer
from sfsign.ops.metrics import CertificateExpiry
from sfsign.profiles import signing_request

log = structlog.get_logger("sfsign.certificates")

CERTIFICATE_REFRESH_S = 3600.0


def certificate_not_after(rules: Rules) -> dict[str, datetime]:
    """`not_after` of the certificate of each signing profile the rules use (blocking: loads keys).

    A profile whose key cannot be loaded is left out (and logged): preflight and the jobs report it.
    """
    out: dict[str, datetime] = {}
    for name in sorted({r.profile for r in rules.rules}):
        try:
            signer = load_signer(signing_request(rules.profiles[name]).key)
        except Exception as exc:
            log.warning("signing certificate not readable for the expiry gauge", profile=name,
                        error=f"{type(exc).__name__}: {exc}")
            continue
        if signer.signing_cert is not None:
            out[name] = signer.signing_cert["tbs_certificate"]["validity"]["not_after"].native
    return out


class CertificateWatch:
    """Keeps `expiry` up to date with the certificates of the rules in force."""

    def __init__(self, expiry: CertificateExpiry, rules: Callable[[], Rules], stop: asyncio.Event) -> None:
        self.expiry = expiry
        self.rules = rules
        self.stop = stop

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.refresh(self.rules())
            await wait_any(self.stop, within_s=CERTIFICATE_REFRESH_S)

    async def refresh(self, rules: Rules) -> None:
        """Read the certificates of `rules` now; a failure affects only the gauge and is logged."""
        try:
            loop = asyncio.get_running_loop()
            self.expiry.set(await loop.run_in_executor(None, certificate_not_after, rules))
        except Exception as exc:  # only the expiry gauge is affected: never stop the daemon for it
            log.warning("could not read the signing certificates' expiry", error=f"{type(exc).__name__}: {exc}")
