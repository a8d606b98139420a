"""The throw-away PKI (demo CAs, local TSA/OCSP/CRL services, SoftHSM tokens) is for the demo and the
tests only. If production code imported it, a deployment could end up signing or validating against a
demo CA without anyone noticing; so only the commands that exist for trying sfsign may reach it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "sfsign"
# `sfsign demo` runs on it, `sfsign demo-keys` (in the command line module) writes a demo key from it.
ALLOWED = ("localpki/", "commands/demo.py", "cli.py")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_local_pki_is_a_package_of_its_own_beside_the_signing_code() -> None:
    assert {p.name for p in (ROOT / "localpki").glob("*.py")} >= {"pki.py", "pkiserver.py", "softhsm.py"}
    assert not {p.name for p in (ROOT / "documents").glob("*.py")} & {"pki.py", "pkiserver.py", "softhsm.py"}


def test_only_the_demo_commands_import_the_local_pki() -> None:
    importers = set()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(m == "sfsign.localpki" or m.startswith("sfsign.localpki.") for m in _imported_modules(path)):
            importers.add(rel)
    assert importers, "the scan found no importer at all: it no longer sees the demo's imports"
    assert {rel for rel in importers if not rel.startswith(ALLOWED)} == set()
