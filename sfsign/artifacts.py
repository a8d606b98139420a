"""A job's files in the data directory, named by transaction id, owner-only.

`signed.pdf` (render and sign, one pool task), `ltv.pdf` (long-term upgrade); `rendered.pdf` and
`boxes.json` only for a job an older version left `rendered`: each step reads what the previous one
wrote, so a restart resumes without signing twice. Once the record
shows the document, Salesforce holds it and the files go: sfsign keeps no customer data on its disk.

Knobs (`WorkerConfig`): `artifacts_dir`; `artifact_grace_s` > 0 keeps a done job's files that long
(`sfsign.ops.retention` deletes them afterwards).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sfsign.private_files import private_dir, write_private

ABOUT = "about.json"  # who sends what, for the signing page: only a job that sends an envelope has one
CERTIFICATE = "certificate.pdf"  # an envelope's certificate of completion
KINDS = ("rendered.pdf", "boxes.json", "signed.pdf", "ltv.pdf", ABOUT, CERTIFICATE)


class Artifacts:
    """File I/O runs in the default executor: the event loop never waits on the disk."""

    def __init__(self, directory: Path, grace_s: float = 0.0) -> None:
        self.directory = directory
        self.grace_s = grace_s
        private_dir(directory)

    def path(self, transaction_id: str, kind: str) -> Path:
        return self.directory / f"{transaction_id}.{kind}"

    async def write(self, transaction_id: str, kind: str, data: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, write_private, self.path(transaction_id, kind), data)

    async def read(self, transaction_id: str, kind: str) -> bytes | None:
        """The file's bytes, or None when it is gone (a wiped or moved data directory)."""
        path = self.path(transaction_id, kind)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, path.read_bytes) if path.exists() else None

    async def remove(self, transaction_id: str) -> None:
        """The job is done and its document in Salesforce: its files go, unless kept for the grace period."""
        if self.grace_s > 0:
            return  # kept for the grace period; sfsign.ops.retention deletes them afterwards
        await asyncio.get_running_loop().run_in_executor(None, self._remove, transaction_id)

    def _remove(self, transaction_id: str) -> None:
        for kind in KINDS:
            self.path(transaction_id, kind).unlink(missing_ok=True)
