"""Packages that must stay apart from the daemon's code, pinned by reading the imports (AST).

- `sfsign.localpki`, the throw-away PKI (demo CAs, local TSA/OCSP/CRL services, SoftHSM tokens), is for
  the demo and the tests only. If production code imported it, a deployment could end up signing or
  validating against a demo CA without anyone noticing; so only the commands for trying sfsign reach it.
- `sfsign.localmail`, the embedded SMTP relay, likewise; and it imports nothing of sfsign at all.
- `sfsign.commands` holds the command-line commands that are not the daemon and sit above it (they run
  or reuse the daemon). Only the command line imports them; a helper the daemon needs lives below.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "sfsign"
# `sfsign demo` runs on it, `sfsign demo-keys` (in the command line module) writes a demo key from it.
MAY_IMPORT_LOCALPKI = ("localpki/", "commands/demo", "cli.py")  # the demo command's modules: demo.py, demo_rules.py
MAY_IMPORT_COMMANDS = ("commands/", "cli.py")
# The embedded SMTP relay, like the local PKI: for the demo and the tests only.
MAY_IMPORT_LOCALMAIL = ("localmail/", "commands/demo.py", "commands/demo_customer.py", "cli.py")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _importers_of(package: str) -> set[str]:
    """Modules under sfsign/ (paths relative to it) that import `package` or anything in it."""
    importers = set()
    for path in sorted(ROOT.rglob("*.py")):
        if any(m == package or m.startswith(f"{package}.") for m in _imported_modules(path)):
            importers.add(path.relative_to(ROOT).as_posix())
    return importers


def test_the_local_pki_is_a_package_of_its_own_beside_the_signing_code() -> None:
    assert {p.name for p in (ROOT / "localpki").glob("*.py")} >= {"pki.py", "pkiserver.py", "softhsm.py"}
    assert not {p.name for p in (ROOT / "documents").glob("*.py")} & {"pki.py", "pkiserver.py", "softhsm.py"}


def test_only_the_demo_commands_import_the_local_pki() -> None:
    importers = _importers_of("sfsign.localpki")
    assert importers, "the scan found no importer at all: it no longer sees the demo's imports"
    assert {rel for rel in importers if not rel.startswith(MAY_IMPORT_LOCALPKI)} == set()


def test_the_commands_that_are_not_the_daemon_are_a_package_of_their_own() -> None:
    assert {p.name for p in (ROOT / "commands").glob("*.py")} >= {"demo.py", "status.py", "preview.py", "progress.py"}


def test_only_the_command_line_imports_the_commands() -> None:
    importers = _importers_of("sfsign.commands")
    assert "cli.py" in importers, "the scan no longer sees the command line's imports"
    assert {rel for rel in importers if not rel.startswith(MAY_IMPORT_COMMANDS)} == set()


def test_operations_helpers_do_not_import_the_daemon() -> None:
    """sfsign.ops is what the daemon uses (metrics, ops endpoint, retention, API usage): an arrow back up
    to the daemon is a command that belongs in sfsign.commands."""
    assert {rel for rel in _importers_of("sfsign.daemon") if rel.startswith("ops/")} == set()


def test_only_the_demo_commands_import_the_local_mail_server() -> None:
    importers = _importers_of("sfsign.localmail")
    assert {rel for rel in importers if not rel.startswith(MAY_IMPORT_LOCALMAIL)} == set()


def test_the_local_mail_server_imports_nothing_of_sfsign() -> None:
    """It plays the org's relay: sharing the mailer's code would let the two agree on a mistake."""
    for path in sorted((ROOT / "localmail").glob("*.py")):
        ours = {m for m in _imported_modules(path) if m == "sfsign" or m.startswith("sfsign.")}
        assert {m for m in ours if not m.startswith("sfsign.localmail")} == set(), path.name
