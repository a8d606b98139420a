"""ContractDocument -> PDF/A-2b with Typst, plus where the template drew the seller's signature box.

Why Typst: 20-odd ms per document, PDF/A built in, fonts bundled, and data goes in as JSON via
`sys.inputs` so nothing a customer types can become template code. The template marks its
signature boxes with labelled `metadata` carrying `here().position()`; a query reads them back
so the signer can put the visible signature exactly on the drawn box.

`render_pdf` is a plain function with picklable arguments and result so the daemon can run it in a
`ProcessPoolExecutor`; the Typst compiler (fonts parsed, files cached) is kept per process. The pool
must not fork from a process that has rendered (Typst's runtime does not survive fork()): create
it with `multiprocessing.get_context(POOL_START_METHOD)` ("forkserver"), or "spawn".
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from sfsign.documents.formatting import (
    CURRENCY_SYMBOLS,
    format_date,
    format_money,
    format_percent,
    format_quantity,
    lang_region,
)
from sfsign.documents.model import ContractDocument

if TYPE_CHECKING:
    import typst  # imported when first rendering: the daemon process itself never renders

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Noto (emoji, Arabic, Hebrew, Thai, symbols, Hangul) and Droid Sans Fallback (CJK), always loaded beside
# Typst's own fonts so customer text in any common script renders; fonts/fallback/LICENSE.txt.
FALLBACK_FONTS_DIR = Path(__file__).resolve().parent / "fonts" / "fallback"
REPLACEMENT_CHARACTER = "\ufffd"
BUILTIN_TEMPLATES = ("proposal", "quote", "order")
PDF_STANDARD: Final = "a-2b"
SIGNATURE_FIELD_LABEL = "<sfsign-signature-field>"
TEMPLATE_DATA_SCHEMA = 1
# The shared layout (templates/common.typ) as a Typst package, so a copy of a built-in template works
# anywhere (`#import "@sfsign/common:1.0.0": contract, load-data`) without copying common.typ too.
COMMON_PACKAGE = "@sfsign/common:1.0.0"


class RenderError(Exception):
    """A template could not be turned into a PDF; says which template and what Typst reported.

    Both parts are passed to `Exception.__init__` so the error survives pickling across a process
    pool boundary unchanged.
    """

    def __init__(self, template: str, diagnostic: str) -> None:
        super().__init__(template, diagnostic)
        self.template = template
        self.diagnostic = diagnostic

    def __str__(self) -> str:
        return f"template {self.template}: {self.diagnostic}"


class SignatureBox(BaseModel):
    """A rectangle on a page, in PDF points with the origin at the page's bottom-left corner.

    (Not to be confused with `model.Signatory`, which says *who* signs.)
    """

    model_config = ConfigDict(frozen=True)

    page: int  # 0-based
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class RenderedPdf(BaseModel):
    model_config = ConfigDict(frozen=True)

    pdf: bytes
    signature_box: SignatureBox  # where the seller signs
    pages: int
    customer_box: SignatureBox | None = None  # the first signer's box (`customer_boxes[0]`), if any
    customer_boxes: tuple[SignatureBox, ...] = ()  # one per signer, in signing order ("customer", "customer-2", ...)
    warnings: tuple[str, ...] = ()  # Typst warnings, worth showing to template authors
    notes: tuple[str, ...] = ()  # what rendering changed in the data (characters no font has), for the job log


# ---------------------------------------------------------------------------------------------
# Template lookup
# ---------------------------------------------------------------------------------------------


def resolve_template(template: str | Path, template_dirs: Sequence[Path] = ()) -> Path:
    """Find a template by path, or by name in `template_dirs` (admin overrides) then the package.

    A bare name such as "quote" is looked up as `<dir>/quote.typ`; anything with a suffix or a
    directory part is taken as a path.
    """
    candidate = Path(template)
    is_name = candidate.suffix == "" and len(candidate.parts) == 1
    if not is_name:
        if candidate.is_file():
            return candidate.resolve()
        raise RenderError(str(template), "template file not found")
    for directory in (*template_dirs, TEMPLATES_DIR):
        path = directory / f"{candidate.name}.typ"
        if path.is_file():
            return path.resolve()
    searched = ", ".join(str(d) for d in (*template_dirs, TEMPLATES_DIR))
    raise RenderError(
        str(template),
        f"no template named {candidate.name!r} in {searched} (built-in: {', '.join(BUILTIN_TEMPLATES)})",
    )


def build_template_data(doc: ContractDocument) -> dict[str, Any]:
    """The JSON a template receives: the model's fields plus display strings under `fmt`."""
    data: dict[str, Any] = doc.model_dump(mode="json")
    loc = doc.locale
    lang, region = lang_region(loc)
    for raw, line in zip(data["lines"], doc.lines, strict=True):
        raw["fmt"] = {
            "quantity": format_quantity(line.quantity, loc),
            "unit_price": format_money(line.unit_price, doc.currency, loc),
            "discount_percent": format_percent(line.discount_percent, loc),
            "total": format_money(line.total, doc.currency, loc),
        }
    totals = doc.totals
    data["totals"]["fmt"] = {
        "subtotal": format_money(totals.subtotal, doc.currency, loc),
        "discount": format_money(-totals.discount, doc.currency, loc),
        "tax": format_money(totals.tax, doc.currency, loc),
        "total": format_money(totals.total, doc.currency, loc),
    }
    data["fmt"] = {
        "issue_date": format_date(doc.issue_date, loc),
        "valid_until": format_date(doc.valid_until, loc) if doc.valid_until else None,
        "currency_symbol": CURRENCY_SYMBOLS.get(doc.currency.upper(), doc.currency.upper()),
        "lang": lang,
        "region": region,
    }
    data["schema"] = TEMPLATE_DATA_SCHEMA
    return data


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------

_compilers: dict[tuple[Path, tuple[Path, ...]], tuple[typst.Compiler, threading.Lock]] = {}
# One font store per font folders, shared by every template's compiler: Typst reads a font file into memory
# when a document first needs it, once per store, so a store per compiler held the fallback fonts (CJK,
# emoji: 15 MB) once per template in each pool process (measured with three templates and text in
# several scripts: 156 → 118 MiB RSS per process).
_fonts: dict[tuple[Path, ...], typst.Fonts] = {}
_compilers_lock = threading.Lock()
# Process that first ran Typst. Typst's Rust side keeps global thread pools and locks that do not
# survive fork(): a child forked after the parent rendered hangs forever, even with a new compiler.
_typst_pid: int | None = None
# Use this multiprocessing start method for render pools (Python 3.11 defaults to "fork").
POOL_START_METHOD = "forkserver"
#: What the fork server imports before it forks pool processes (a name: importing it freezes the GC).
POOL_PRELOAD = "sfsign.documents.pool_preload"


def _check_not_forked(template: Path) -> None:
    global _typst_pid
    pid = os.getpid()
    if _typst_pid is None:
        _typst_pid = pid
    elif _typst_pid != pid:
        raise RenderError(
            str(template),
            "Typst was already used in the parent of this forked process and would hang here; "
            f"create the process pool with multiprocessing.get_context({POOL_START_METHOD!r})",
        )


_package_dir: Path | None = None


def _package_path() -> Path:
    """A private directory (this process's, removed at exit) holding `COMMON_PACKAGE`: Typst reads local
    packages from `{path}/{namespace}/{name}/{version}/`, and a package cannot reach outside its own
    folder, so common.typ is copied there rather than linked. Call with `_compilers_lock` held."""
    global _package_dir
    if _package_dir is None:
        base = Path(tempfile.mkdtemp(prefix="sfsign-typst-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        namespace, rest = COMMON_PACKAGE.removeprefix("@").split("/")
        name, version = rest.split(":")
        package = base / namespace / name / version
        package.mkdir(parents=True)
        shutil.copy(TEMPLATES_DIR / "common.typ", package / "common.typ")
        (package / "typst.toml").write_text(
            f'[package]\nname = "{name}"\nversion = "{version}"\nentrypoint = "common.typ"\n', encoding="utf-8"
        )
        _package_dir = base
    return _package_dir


def _compiler_for(template: Path, font_dirs: tuple[Path, ...]) -> tuple[typst.Compiler, threading.Lock]:
    """One compiler per (template, fonts) per process over one font store per fonts (`_fonts`): fonts are
    parsed once and Typst's incremental caches make the next document of the same template cheap. Typst
    re-reads files on every compile, so edited templates are picked up without a restart."""
    import typst

    key = (template, font_dirs)
    with _compilers_lock:
        entry = _compilers.get(key)
        if entry is None:
            fonts = _fonts.get(font_dirs)
            if fonts is None:
                paths = [str(p) for p in (*font_dirs, FALLBACK_FONTS_DIR)]
                fonts = _fonts[font_dirs] = typst.Fonts(include_system_fonts=False, font_paths=paths)
            compiler = typst.Compiler(template, root=template.parent, font_paths=fonts, ignore_system_fonts=True,
                                      package_path=_package_path())
            entry = _compilers[key] = (compiler, threading.Lock())
        return entry


def _diagnostic(exc: typst.TypstError | typst.TypstWarning) -> str:
    text = (getattr(exc, "diagnostic", "") or getattr(exc, "message", "") or str(exc)).strip()
    hints = getattr(exc, "hints", None) or []
    return "\n".join([text, *(f"hint: {h}" for h in hints)])


# Typst's PDF/A check names each glyph no font has, as a Rust string literal: `"\\u{378}"`.
_UNDISPLAYABLE = re.compile(r'the text `"((?:[^"\\]|\\.)*)"` could not be displayed with font')
_ERROR_LINE = re.compile(r"^error: ", re.MULTILINE)
_RUST_ESCAPE = re.compile(r"\\(u\{([0-9a-fA-F]{1,6})\}|.)")
_RUST_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}


def _unescape_rust(literal: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(2):
            return chr(int(match.group(2), 16))
        char = match.group(1)
        return _RUST_SIMPLE_ESCAPES.get(char, char)

    return _RUST_ESCAPE.sub(one, literal)


def undisplayable_texts(exc: typst.TypstError) -> frozenset[str]:
    """The texts Typst refused because no available font has a glyph for them (PDF/A forbids the
    .notdef box), or an empty set when the error is anything else as well."""
    diagnostic = _diagnostic(exc)
    found = _UNDISPLAYABLE.findall(diagnostic)
    errors = len(_ERROR_LINE.findall(diagnostic)) or 1
    return frozenset(_unescape_rust(m) for m in found) if len(found) == errors else frozenset()


def _replace_texts(value: Any, texts: frozenset[str], path: str = "", changed: set[str] | None = None) -> Any:
    """`value` (template data) with every occurrence of `texts` replaced by U+FFFD; the paths of the
    strings that changed go into `changed`."""
    if isinstance(value, str):
        new = value
        for text in sorted(texts, key=len, reverse=True):
            new = new.replace(text, REPLACEMENT_CHARACTER)
        if new != value and changed is not None:
            changed.add(path)
        return new
    if isinstance(value, list):
        return [_replace_texts(v, texts, f"{path}[{i}]", changed) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _replace_texts(v, texts, f"{path}.{k}" if path else k, changed) for k, v in value.items()}
    return value


def _page_count(pdf: bytes) -> int:
    from pyhanko.pdf_utils.reader import PdfFileReader

    from sfsign.documents import hexstrings

    hexstrings.install()

    reader = PdfFileReader(BytesIO(pdf))
    return int(reader.root["/Pages"]["/Count"])


def _signature_boxes(raw: str, template: Path) -> dict[str, SignatureBox]:
    """Typst reports positions from the page's top-left corner; PDF wants bottom-left."""
    boxes: dict[str, SignatureBox] = {}
    for item in json.loads(raw):
        try:
            name = str(item["field"])
            page_height = float(item["page-height"])
            x, y = float(item["x"]), float(item["y"])
            width, height = float(item["width"]), float(item["height"])
            page = int(item["page"]) - 1
        except (KeyError, TypeError, ValueError):
            raise RenderError(
                str(template),
                f"malformed {SIGNATURE_FIELD_LABEL} metadata {item!r}: expected field, page, x, y, "
                "width, height and page-height (use signature-field() from common.typ)",
            ) from None
        if name in boxes:
            raise RenderError(str(template), f"signature field {name!r} is marked more than once")
        boxes[name] = SignatureBox(
            page=page,
            x1=round(x, 3),
            y1=round(page_height - y - height, 3),
            x2=round(x + width, 3),
            y2=round(page_height - y, 3),
        )
    return boxes


def render_pdf(
    doc: ContractDocument | dict[str, Any],
    template: str | Path,
    *,
    template_dirs: Sequence[Path] = (),
    font_dirs: Sequence[Path] = (),
    timestamp: dt.datetime | None = None,
) -> RenderedPdf:
    """Render `doc` with `template` (name or path) to PDF/A-2b.

    `font_dirs` adds fonts to Typst's own (Libertinus, New Computer Modern, DejaVu Sans Mono) and
    the fallbacks in `FALLBACK_FONTS_DIR`; system fonts are ignored so output does not depend on
    the host. A character none of them has is printed as U+FFFD and listed in `notes` rather than
    failing the document. `timestamp` fixes the PDF creation date (reproducible output); by
    default it is the current time.
    """
    path = resolve_template(template, template_dirs)
    if not isinstance(doc, ContractDocument):
        try:
            doc = ContractDocument.model_validate(doc)
        except ValidationError as exc:  # pydantic errors do not pickle; keep the text
            raise RenderError(str(path), f"invalid contract document: {exc}") from None
    pdf, boxes, warnings, notes = compile_template(path, build_template_data(doc), font_dirs, timestamp)
    seller = boxes.get("seller")
    if seller is None:
        raise RenderError(
            str(path),
            'the template marks no seller signature box: use signature-field("seller") from common.typ '
            f'or a metadata((field: "seller", ...)) {SIGNATURE_FIELD_LABEL}',
        )
    names = ("customer", *(f"customer-{i}" for i in range(2, len(boxes) + 1)))  # the signers' boxes, in order
    customers = tuple(boxes[n] for n in names if n in boxes)
    return RenderedPdf(
        pdf=pdf,
        signature_box=seller,
        customer_box=customers[0] if customers else None,
        customer_boxes=customers,
        pages=_page_count(pdf),
        warnings=warnings,
        notes=notes,
    )


def compile_template(path: Path, template_data: dict[str, Any], font_dirs: Sequence[Path] = (),
                     timestamp: dt.datetime | None = None
                     ) -> tuple[bytes, dict[str, SignatureBox], tuple[str, ...], tuple[str, ...]]:
    """Any template at `path` with `template_data` as `sys.inputs.data` to PDF/A-2b, with the same
    compiler cache, fonts and U+FFFD fallback as a contract (the certificate of completion uses it):
    the PDF, its signature boxes by name, Typst's warnings and the notes for the job log."""
    _check_not_forked(path)
    compiler, lock = _compiler_for(path, tuple(Path(p).resolve() for p in font_dirs))
    with lock:
        pdf, warnings, raw_boxes, notes = _compile_printing_what_no_font_has(compiler, template_data, timestamp, path)
    if not isinstance(pdf, bytes):
        raise RenderError(str(path), "Typst returned no PDF")
    return pdf, _signature_boxes(raw_boxes, path), tuple(_diagnostic(w) for w in warnings), tuple(notes)


def _compile_printing_what_no_font_has(
    compiler: typst.Compiler, template_data: dict[str, Any], timestamp: dt.datetime | None, path: Path
) -> tuple[Any, list[Any], str, list[str]]:
    """`_compile`, and the notes for the job log. A character no font has (unassigned, private use, a
    script nobody ships) must not cost the contract: it is printed as U+FFFD in its place, once, and
    noted; any other Typst error is the template's, raised as `RenderError`."""
    import typst  # loaded by _compiler_for

    try:
        pdf, warnings, raw_boxes = _compile(compiler, template_data, timestamp)
        return pdf, warnings, raw_boxes, []
    except typst.TypstError as exc:
        missing = undisplayable_texts(exc)
        if not missing:
            raise RenderError(str(path), _diagnostic(exc)) from None
    changed: set[str] = set()
    try:
        replaced = _replace_texts(template_data, missing, changed=changed)
        pdf, warnings, raw_boxes = _compile(compiler, replaced, timestamp)
    except typst.TypstError as again:
        raise RenderError(str(path), _diagnostic(again)) from None
    # Field names only: the characters themselves are customer data.
    note = (f"{len(missing)} distinct character(s) no bundled font can display were printed as U+FFFD "
            f"in {', '.join(sorted(changed))}")
    return pdf, warnings, raw_boxes, [note]


def _compile(
    compiler: typst.Compiler, template_data: dict[str, Any], timestamp: dt.datetime | None
) -> tuple[Any, list[Any], str]:
    pdf, warnings = compiler.compile_with_warnings(
        sys_inputs={"data": json.dumps(template_data, ensure_ascii=False)},
        format="pdf",
        pdf_standards=[PDF_STANDARD],
        timestamp=(timestamp or dt.datetime.now(dt.UTC)).replace(microsecond=0),
    )
    return pdf, list(warnings), compiler.query(SIGNATURE_FIELD_LABEL, field="value")
