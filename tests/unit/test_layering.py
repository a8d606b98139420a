"""The import directions of sfsign, pinned by reading every module's imports (stdlib `ast`).

`ls sfsign` is meant to show the architecture; this keeps it true. Each module is placed in a layer by
name pattern (the `LAYERS` table); a module may import from lower layers only, and freely inside its
own part (the modules one pattern places, e.g. a package). An arrow up or sideways is a design change:
make it here, on purpose, with a comment, not by accident in a module. Both top-level and lazy
(function-level) imports count, `if TYPE_CHECKING:` ones too: a lazy import is still a dependency.

Reading the table top to bottom is the one-paragraph architecture:
the command line → the commands → the daemon (supervisor) → the start check and the read list →
the runners (intake, worker, reconcile, audit, archive) → the connection factory → profiles and the
Salesforce gateway → the rules-and-records helpers → the daemon's state and operations (outbox, ops,
governor, batching) → settings → the client libraries (Salesforce, documents) → the foundation
(vocabulary, metadata reader, asyncio helpers, private files).
The tools for trying sfsign (the emulator, the local PKI) sit just under the commands, so only the
command line and its commands can reach them; the emulator itself imports only the metadata reader.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "sfsign"

#: Module name pattern → rank; higher ranks may import lower ones. A pattern ending in `.*` places a
#: package and everything in it; when several patterns match, the longest wins. Modules the other
#: issue 13 helpers are creating are placed already (connections, intake, reconcile, audit, certificates,
#: profiles, gateway, pending, steps, worker_config, failures, artifacts, the archive scheduler).
LAYERS: dict[str, int] = {
    "sfsign.cli": 100,
    # `sfsign status/preview/progress/demo`: they run or reuse the daemon's parts.
    "sfsign.commands.*": 90,
    # Tools for trying sfsign, never for production: only the command line and the demo reach them.
    "sfsign.emulator.*": 80,
    "sfsign.localpki.*": 80,
    "sfsign.localmail.*": 80,  # the embedded SMTP sink (demo and tests), as the local PKI is for signing
    # The supervisor: builds the parts, starts and stops them.
    "sfsign.daemon": 70,
    "sfsign.parts": 69,  # its model of a part (run, stop order, drain, close)
    # The start check (run by the daemon and by `sfsign check`) needs the read list, which is derived
    # from the SOQL of the parts below, so both sit above those parts.
    "sfsign.check.*": 60,  # the package: local checks, checks against the org, the report
    "sfsign.reads": 55,
    # The runners, siblings: each is a loop the supervisor starts; they talk through the outbox.
    "sfsign.intake": 50,
    "sfsign.worker": 50,
    "sfsign.reconcile": 50,
    "sfsign.audit": 50,
    "sfsign.archive*": 50,  # archive.py and its scheduler beside it
    "sfsign.certificates": 50,  # the signing certificates' expiry watcher
    "sfsign.envelope_*": 50,  # customer signing's record mirror and reminder/expiry scheduler
    # Settings → an authenticated session (REST, stream, governor), for the runners and the commands.
    "sfsign.connections": 45,
    # The worker's steps, one per job state, over the gateway, the profiles and the Pending notes.
    "sfsign.steps": 45,
    "sfsign.envelope_steps": 46,  # a rule with signers: its own steps, beside (and reusing) the seal-only ones
    "sfsign.adoption": 44,  # what a trigger's File found in Salesforce shows (the fetch step's, for both kinds)
    "sfsign.profiles": 40,
    "sfsign.gateway*": 40,
    "sfsign.pending": 40,  # the worker's Pending announcements
    # Rules and records: what fires, what a record maps to, whether a rule covers a record.
    # Customer signing (issue 14): envelopes, the mailer, the signing listener; they read and write the
    # outbox and never reach up to the runners. Parts that must sit higher get their own line.
    "sfsign.signing.*": 38,
    "sfsign.triggers": 35,
    "sfsign.mapping": 35,
    "sfsign.record_types": 35,
    "sfsign.rule_fields": 35,
    # The operations helpers read the outbox (metrics, API usage, retention), never the reverse.
    "sfsign.ops.*": 32,
    "sfsign.outbox*": 30,  # outbox.py, or the package it becomes
    "sfsign.governor": 30,
    "sfsign.batching": 30,
    # Shared by the worker's parts: its knobs, how a step fails, a job's files.
    "sfsign.worker_config": 30,
    "sfsign.failures": 30,
    "sfsign.artifacts": 30,
    # Link tokens and codes: below the outbox, which keeps their hashes; above settings, whose secrets
    # directory holds the link key.
    "sfsign.signing.tokens": 25,
    "sfsign.config.*": 20,  # the package: settings, the rules file model, loading the rules file
    # Client libraries: they know Salesforce or PDF, nothing of sfsign's settings or state, so settings
    # may use their types (the document model) and they never import settings.
    "sfsign.salesforce.*": 15,
    "sfsign.documents.*": 15,
    "sfsign.signing.lifecycle": 12,  # an envelope's transition rules and due times, pure, over the vocabulary
    # The foundation: the vocabulary, the metadata reader shared with the emulator, small helpers.
    "sfsign.salesforce.names": 10,
    "sfsign.signing.model": 10,  # envelope and recipient states, shared by rules, outbox, mailer, listener
    "sfsign.metadata": 10,
    "sfsign.pubsub_proto.*": 10,  # Salesforce's Pub/Sub proto and its generated stubs, shared with the emulator
    "sfsign.aio": 10,
    "sfsign.private_files": 10,
    "sfsign": 10,  # the package itself: __version__
}

#: Parts that may import only the listed modules of sfsign (besides their own).
ONLY_IMPORTS: dict[str, frozenset[str]] = {
    # The emulator plays Salesforce; sharing the daemon's code would let the two agree on a mistake.
    # Salesforce's own Pub/Sub contract (the proto and its stubs) is the wire, not our code.
    "sfsign.emulator.*": frozenset({"sfsign.metadata", "sfsign.pubsub_proto", "sfsign.pubsub_proto.pubsub_api_pb2",
                                    "sfsign.pubsub_proto.pubsub_api_pb2_grpc"}),
}

#: Sideways arrows between parts of one rank, allowed on purpose: (importer's pattern, imported pattern).
SIDEWAYS: frozenset[tuple[str, str]] = frozenset({
    # A Sign_Request__e without a rule name takes the rule that covers the record's type (issue 12).
    ("sfsign.triggers", "sfsign.record_types"),
    # Intake asks the reconciler for a pass when the stream cannot say what was missed (overflow, gap,
    # a channel without a position); the reconciler never calls intake.
    ("sfsign.intake", "sfsign.reconcile"),
})

#: Upward arrows tolerated while a refactoring removes them (importer module, imported module); empty since
#: the issue 13 split. `test_every_known_upward_arrow_still_exists` says which entries a change made stale.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Arrow:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} → {self.imported} (line {self.line})"


def placement(module: str) -> str | None:
    """The pattern that places `module` (the longest that matches), None when nobody placed it."""
    matches = [p for p in LAYERS if fnmatchcase(module, p) or (p.endswith(".*") and module == p[:-2])]
    return max(matches, key=len, default=None)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def arrows(module: str, source: str, known: frozenset[str] = frozenset(), is_package: bool = False) -> list[Arrow]:
    """Every sfsign module `source` imports, wherever the import statement sits; `from a import b`
    counts as importing `a.b` when that is one of the `known` modules, else `a`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Arrow] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [Arrow(module, t, node.lineno) for t in targets if t == "sfsign" or t.startswith("sfsign.")]
    return list(dict.fromkeys(found))


def problems(arrow: Arrow) -> str | None:
    """Why `arrow` is not allowed, None when it is."""
    for module in (arrow.importer, arrow.imported):
        if placement(module) is None:
            return f"put {module} in a layer (LAYERS in {Path(__file__).name}), imported at {arrow}"
    source, target = placement(arrow.importer), placement(arrow.imported)
    assert source is not None and target is not None
    if source == target:
        return None
    if source in ONLY_IMPORTS and arrow.imported not in ONLY_IMPORTS[source]:
        return f"{source} may import only {sorted(ONLY_IMPORTS[source])} of sfsign: {arrow}"
    if LAYERS[source] > LAYERS[target] or (source, target) in SIDEWAYS:
        return None
    direction = "sideways" if LAYERS[source] == LAYERS[target] else "upward"
    return f"{direction} import {arrow} ({source} at {LAYERS[source]}, {target} at {LAYERS[target]})"


def sfsign_arrows() -> list[Arrow]:
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return [a for p in paths for a in arrows(module_name(p), p.read_text(), frozenset(known), p.name == "__init__.py")]


def test_every_import_in_sfsign_goes_down_the_layers() -> None:
    found = sfsign_arrows()
    assert len(found) > 100, "the scan found too few imports: it no longer reads the modules"
    wrong = [f"{p}" for a in found if (p := problems(a)) and (a.importer, a.imported) not in KNOWN_UPWARD]
    assert wrong == []


def test_every_module_in_sfsign_is_in_a_layer() -> None:
    assert [m for m in map(module_name, ROOT.rglob("*.py")) if placement(m) is None] == []


def test_every_known_upward_arrow_still_exists() -> None:
    """An entry the refactoring removed must leave the list, or it would let the arrow come back."""
    present = {(a.importer, a.imported) for a in sfsign_arrows() if problems(a)}
    assert sorted(KNOWN_UPWARD - present) == []


# The checker itself, on synthetic modules: each rule must be able to fail.

def _problems_of(module: str, source: str) -> list[str]:
    return [p for a in arrows(module, source, frozenset({"sfsign.salesforce.names"})) if (p := problems(a))]


def test_an_upward_import_is_reported_top_level_or_lazy() -> None:
    assert _problems_of("sfsign.outbox", "from sfsign.worker import Worker\n") == [
        "upward import sfsign.outbox → sfsign.worker (line 1) (sfsign.outbox* at 30, sfsign.worker at 50)"]
    lazy = "def f() -> None:\n    from sfsign.daemon import Daemon\n"
    assert len(_problems_of("sfsign.salesforce.rest", lazy)) == 1
    assert len(_problems_of("sfsign.salesforce.rest", "import sfsign.config\n")) == 1


def test_a_relative_import_is_resolved_before_it_is_judged() -> None:
    assert len(_problems_of("sfsign.ops.metrics", "from ..daemon import Daemon\n")) == 1
    assert _problems_of("sfsign.ops.metrics", "from . import logging\nfrom ..outbox import Job\n") == []


def test_a_sideways_import_between_runners_is_reported() -> None:
    assert ["sideways" in p for p in _problems_of("sfsign.intake", "from sfsign.worker import Worker\n")] == [True]


def test_the_vocabulary_is_below_the_salesforce_client_that_shares_its_package() -> None:
    assert _problems_of("sfsign.salesforce.rest", "from sfsign.salesforce import names\n") == []
    assert len(_problems_of("sfsign.salesforce.names", "from sfsign.salesforce.rest import SalesforceRest\n")) == 1


def test_the_emulator_may_import_only_the_metadata_reader() -> None:
    assert _problems_of("sfsign.emulator.org", "from sfsign.metadata import load_schema\n") == []
    assert len(_problems_of("sfsign.emulator.org", "from sfsign.salesforce.names import Record\n")) == 1


def test_production_code_cannot_reach_the_tools_for_trying_sfsign() -> None:
    assert len(_problems_of("sfsign.daemon", "from sfsign.localpki.pki import create_demo_pki\n")) == 1
    assert _problems_of("sfsign.commands.demo", "from sfsign.localpki.pki import create_demo_pki\n") == []


def test_a_module_nobody_placed_is_named() -> None:
    assert _problems_of("sfsign.newthing", "from sfsign.config import Settings\n") == [
        f"put sfsign.newthing in a layer (LAYERS in {Path(__file__).name}), imported at "
        "sfsign.newthing → sfsign.config (line 1)"]
