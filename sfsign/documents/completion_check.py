"""The verdict on a completed document: does every signature hold, by two independent validators?

Why two: pyHanko (our own signing library) could share a blind spot with our signing code; poppler's
`pdfsig` is a separate implementation (NSS) that checks each signature's bytes and CMS independently.
pyHanko also answers what a reader cannot see: whether later revisions only filled fields, added
signatures or long-term validation data (`ALLOWED_MODIFICATIONS`), never changed a page.

pdfsig cannot check document timestamps (signing-notes pitfall 9) and, on Debian 12, always doubts the
certificate; only its "Signature is Valid." line per approval signature is used, with `-nocert`.
When pdfsig is not installed the verdict says so and relies on pyHanko unless `require_pdfsig`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: pyHanko's modification levels a completed document may show: form filling covers filling a signature
#: field; LTA_UPDATES the DSS and document timestamps. ANNOTATIONS and OTHER are refused.
ALLOWED_MODIFICATIONS = frozenset({"NONE", "LTA_UPDATES", "FORM_FILLING"})
PDFSIG_TIMEOUT_SECONDS = 30
_PDFSIG_FIELD = re.compile(r"^\s*- Signature Field Name: (?P<name>.+?)\s*$", re.MULTILINE)
_PDFSIG_VALIDATION = re.compile(r"^\s*- Signature Validation: (?P<text>.+?)\s*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class SignatureVerdict:
    """One approval signature, as both validators see it."""

    field_name: str
    intact: bool
    valid: bool
    trusted: bool
    level: str | None
    modification_level: str | None
    pdfsig: str | None  # pdfsig's "Signature Validation" text; None when pdfsig is not installed

    @property
    def ok(self) -> bool:
        pdfsig_ok = self.pdfsig is None or self.pdfsig == "Signature is Valid."
        return (self.intact and self.valid and self.trusted and pdfsig_ok
                and self.modification_level in ALLOWED_MODIFICATIONS)

    def line(self) -> str:
        """e.g. "CustomerSignature: ok, B-LTA, FORM_FILLING, pdfsig valid"."""
        state = "ok" if self.ok else ", ".join(
            w for w, bad in (("MODIFIED", not self.intact), ("INVALID", not self.valid),
                             ("UNTRUSTED", not self.trusted)) if bad) or "not ok"
        pdfsig = "pdfsig absent" if self.pdfsig is None else (
            "pdfsig valid" if self.pdfsig == "Signature is Valid." else f"pdfsig: {self.pdfsig}")
        return f"{self.field_name}: {state}, {self.level or 'not PAdES'}, {self.modification_level}, {pdfsig}"


@dataclasses.dataclass(frozen=True)
class CompletionVerdict:
    signatures: tuple[SignatureVerdict, ...]
    missing: tuple[str, ...]  # expected fields that are unsigned or absent
    level: str | None  # of the newest approval signature, as pyHanko detects it
    document_timestamps: int

    @property
    def ok(self) -> bool:
        return bool(self.signatures) and not self.missing and all(s.ok for s in self.signatures)

    def lines(self) -> tuple[str, ...]:
        missing = (f"not signed: {', '.join(self.missing)}",) if self.missing else ()
        return (*(s.line() for s in self.signatures), *missing)


def pdfsig_results(pdf: bytes) -> dict[str, str] | None:
    """pdfsig's "Signature Validation" text per field name, or None when pdfsig is not installed."""
    binary = shutil.which("pdfsig")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="sfsign-pdfsig-") as directory:
        path = Path(directory) / "document.pdf"
        path.write_bytes(pdf)
        done = subprocess.run([binary, "-nocert", str(path)], capture_output=True, text=True,
                              timeout=PDFSIG_TIMEOUT_SECONDS, check=False)
    results: dict[str, str] = {}
    for block in re.split(r"^Signature #\d+:$", done.stdout, flags=re.MULTILINE)[1:]:
        name, validation = _PDFSIG_FIELD.search(block), _PDFSIG_VALIDATION.search(block)
        if name is not None:
            results[name.group("name")] = validation.group("text") if validation else "no validation line"
    return results


def check_completed(
    pdf: bytes, trust_roots: Sequence[Path], expected_fields: Sequence[str], *, require_pdfsig: bool = False
) -> CompletionVerdict:
    """Validate every approval signature of `pdf` with pyHanko (offline, against `trust_roots`) and pdfsig,
    and check that each of `expected_fields` is signed. Synchronous (runs its own event loop, a subprocess):
    call it in a pool process or an executor."""
    from sfsign.documents.verify import ValidationError, validate_signed_pdf  # pyHanko: pool processes only

    report = validate_signed_pdf(pdf, trust_roots)
    pdfsig = pdfsig_results(pdf)
    if pdfsig is None and require_pdfsig:
        raise ValidationError("pdfsig (poppler-utils) is not installed; install it or do not require it")
    verdicts = tuple(
        SignatureVerdict(
            field_name=r.field_name,
            intact=r.intact,
            valid=r.valid,
            trusted=r.trusted,
            level=r.level,
            modification_level=r.modification_level,
            pdfsig=None if pdfsig is None else pdfsig.get(r.field_name, "not listed by pdfsig"),
        )
        for r in report.signatures
    )
    signed = {v.field_name for v in verdicts}
    return CompletionVerdict(
        signatures=verdicts,
        missing=tuple(f for f in expected_fields if f not in signed),
        level=report.level,
        document_timestamps=report.document_timestamps,
    )
