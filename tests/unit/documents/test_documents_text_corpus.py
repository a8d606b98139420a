"""Whatever text a customer record holds renders with real glyphs: emoji and their sequences, combining
marks, right-to-left scripts, CJK, very long words. Before the fallback fonts, each of these failed the
PDF/A export ("could not be displayed with font") and the record showed Error.

"Real glyphs" is checked on the PDF itself: no text run of an embedded CID font uses glyph 0 (.notdef,
the tofu box), every font is embedded, and the characters are in the text layer (pdftotext).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pdf_glyphs import assert_no_notdef, cid_texts, font_names, pdftotext, visible_characters
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.documents.model import ContractDocument, sample_contract
from sfsign.documents.render import FALLBACK_FONTS_DIR, TEMPLATES_DIR, RenderedPdf, render_pdf
from sfsign.documents.sign import Appearance, sign_pdf_bytes
from sfsign.documents.verify import validate_signed_pdf
from sfsign.localpki.pki import DemoPki

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man, woman, girl joined by ZWJ
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # tag sequence flag
ZALGO = "Z\u0336\u0353\u0330a\u0337\u031b\u0354\u0301l\u0335\u0308\u0323g\u0334\u030a\u0316o\u0338\u0352"

# name -> (value, a font the PDF must use for it, or None where Libertinus itself has the glyphs)
CORPUS: dict[str, tuple[str, str | None]] = {
    "emoji": ("Caf\u00e9 \u2615 \U0001f600 \U0001f680 \u2764\ufe0f", "Type3"),
    "zwj-family": (f"Family {FAMILY} and \U0001f469\u200d\U0001f4bb", "Type3"),
    "flags": ("\U0001f1e9\U0001f1ea \U0001f1ef\U0001f1f5 \U0001f1e7\U0001f1f7 " + ENGLAND, "Type3"),
    "skin-tones": ("\U0001f44d\U0001f3fd \U0001f44b\U0001f3ff \U0001f9d1\U0001f3fb\u200d\U0001f692", "Type3"),
    "keycap": ("Press 1\ufe0f\u20e3 or #\ufe0f\u20e3", "Type3"),
    "combining": ("Jose\u0301 Mu\u0308ller n\u0303 a\u030a", None),
    "zalgo": (ZALGO, None),
    "arabic-numbers": ("\u0634\u0631\u0643\u0629 \u0627\u0644\u0623\u0645\u0644 "
                       "\u0644\u0644\u062a\u062c\u0627\u0631\u0629 \u0662\u0660\u0662\u0665 - 2025 (No. 42)",
                       "NotoSansArabic"),
    "hebrew-numbers": ("\u05d7\u05d1\u05e8\u05ea \u05e9\u05dc\u05d5\u05dd "
                       "\u05d1\u05e2\u05f4\u05de 456 \u05e9\u05f4\u05d7", None),
    "thai": ("\u0e1a\u0e23\u0e34\u0e29\u0e31\u0e17 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \u0e08\u0e33\u0e01\u0e31\u0e14",
             "NotoSansThai"),
    "cjk": ("\u682a\u5f0f\u4f1a\u793e\u3072\u3089\u304c\u306a \u30ab\u30bf\u30ab\u30ca "
            "\u4e2d\u6587\u6709\u9650\u516c\u53f8", "DroidSansFallback"),
    "korean": ("\uc8fc\uc2dd\ud68c\uc0ac \ud55c\uad6d \u3131\u314f \ub0a0\uc528 2025", "NotoSansCJKkr"),
    "greek-cyrillic": ("\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u0130stanbul", None),
    "symbols": ("\u2605 \u2713 \u2192 \u260e \u267b \u00a9 \u2122 \u20ac \u2116", None),
    "long-word": ("Donaudampfschifffahrtsgesellschaftskapit\u00e4nsm\u00fctze" * 4, None),
}


def _document(value: str) -> ContractDocument:
    """The value where record text lands: customer name, line name and description, notes."""
    base = sample_contract(line_count=2)
    lines = [base.lines[0].model_copy(update={"name": value, "description": value}), base.lines[1]]
    return base.model_copy(
        update={"customer": base.customer.model_copy(update={"name": value}), "lines": lines, "notes": value}
    )


needs_pdftotext = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def rendered_corpus() -> dict[str, RenderedPdf]:
    return {name: render_pdf(_document(value), "quote") for name, (value, _font) in CORPUS.items()}


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_value_renders_with_real_glyphs(name: str, rendered_corpus: dict[str, RenderedPdf]) -> None:
    rendered = rendered_corpus[name]
    assert rendered.notes == ()  # nothing had to be replaced: some bundled font has every character
    assert_no_notdef(rendered.pdf)
    font = CORPUS[name][1]
    if font is not None:
        assert any(used.startswith(font) for used in font_names(rendered.pdf)), font_names(rendered.pdf)
    if font == "Type3":
        # Each emoji, sequence or not, comes whole from the colour emoji font: no part of one (the
        # computer of 👩‍💻, the keycap of 1️⃣) drawn in black and white by a text or symbol font.
        pictographs = {c for c in CORPUS[name][0] if unicodedata.category(c) in ("So", "Sk", "Me")}
        for text_font, texts in cid_texts(rendered.pdf).items():
            assert not pictographs & set("".join(texts)), text_font


@needs_pdftotext
@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_value_is_in_the_text_layer(name: str, rendered_corpus: dict[str, RenderedPdf],
                                           tmp_path: Path) -> None:
    text = unicodedata.normalize("NFC", pdftotext(rendered_corpus[name].pdf, tmp_path))
    missing = visible_characters(CORPUS[name][0]) - set(text)
    assert not missing, [f"U+{ord(c):04X}" for c in sorted(missing)]


def test_long_word_breaks_inside_its_column_instead_of_running_over_the_amounts(
    rendered_corpus: dict[str, RenderedPdf],
) -> None:
    """The 200-character word must not push the line's amounts off the page or cover them."""
    reader = PdfFileReader(BytesIO(rendered_corpus["long-word"].pdf))
    width = float(reader.root["/Pages"]["/Kids"][0].get_object()["/MediaBox"][2])
    ok = render_pdf(_document("Short name"), "quote")
    # The long word wraps onto several lines, so the document grows rather than widens: same page width,
    # and the first page holds the (wrapped) word; amounts follow on the same or the next page.
    assert width == float(PdfFileReader(BytesIO(ok.pdf)).root["/Pages"]["/Kids"][0].get_object()["/MediaBox"][2])
    assert rendered_corpus["long-word"].pages >= ok.pages


@needs_pdftotext
def test_long_word_lines_stay_within_the_page(rendered_corpus: dict[str, RenderedPdf], tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    path.write_bytes(rendered_corpus["long-word"].pdf)
    bbox = subprocess.run(["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True, check=True).stdout
    page_width = float(re.search(r'<page width="([\d.]+)"', bbox).group(1))  # type: ignore[union-attr]
    right_edges = [float(x) for x in re.findall(r'<word xMin="[\d.]+" yMin="[\d.]+" xMax="([\d.]+)"', bbox)]
    assert right_edges and max(right_edges) <= page_width - 50  # inside the 2 cm margin, give or take


def test_whole_corpus_in_one_document_is_pdfa_and_signs_and_validates(rsa_pki: DemoPki) -> None:
    everything = " ".join(value for value, _font in CORPUS.values())
    rendered = render_pdf(_document(everything), "quote")
    assert_no_notdef(rendered.pdf)
    xmp = PdfFileReader(BytesIO(rendered.pdf)).root["/Metadata"].get_object().data
    assert b"<pdfaid:part>2</pdfaid:part>" in xmp and b"<pdfaid:conformance>B</pdfaid:conformance>" in xmp
    signed = sign_pdf_bytes(rendered.pdf, rendered.signature_box, rsa_pki.pkcs12_key_spec(),
                            Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg"))
    report = validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted and report.coverage == "ENTIRE_FILE"
    assert report.pdfa == "2B"


@needs_pdftotext
def test_character_no_font_has_prints_as_replacement_and_is_noted_by_field(tmp_path: Path) -> None:
    """Unassigned or private-use code points exist in no font: U+FFFD instead of an Error record."""
    doc = sample_contract(line_count=1)
    doc = doc.model_copy(update={"customer": doc.customer.model_copy(update={"name": "Acme \u0378 \U000f0001 AG"})})
    rendered = render_pdf(doc, "quote")
    assert_no_notdef(rendered.pdf)
    assert len(rendered.notes) == 1
    assert "2 distinct character(s)" in rendered.notes[0] and "customer.name" in rendered.notes[0]
    assert "\u0378" not in rendered.notes[0]  # the job log names fields, never values
    text = pdftotext(rendered.pdf, tmp_path)
    assert "Acme \ufffd \ufffd AG" in text


def test_template_literal_no_font_has_is_still_a_render_error(tmp_path: Path) -> None:
    """Only data is replaced: a template author's own undisplayable text still fails, with Typst's reason."""
    from sfsign.documents.render import RenderError

    odd = tmp_path / "odd.typ"
    odd.write_text('#import "common.typ": contract, load-data\n\u0378\n#contract(load-data())\n', encoding="utf-8")
    (tmp_path / "common.typ").write_text((TEMPLATES_DIR / "common.typ").read_text(encoding="utf-8"),
                                         encoding="utf-8")
    with pytest.raises(RenderError, match="could not be displayed"):
        render_pdf(sample_contract(line_count=1), odd)


def test_notdef_scanner_sees_tofu_when_typst_is_allowed_to_draw_it() -> None:
    """The check above can fail: outside PDF/A, Typst draws glyph 0 for a character no font has."""
    import typst

    source = b'#set text(font: "Libertinus Serif", fallback: false)\nA \xcd\xb8 B'  # U+0378
    pdf = typst.compile(source, format="pdf", font_paths=[str(FALLBACK_FONTS_DIR)], ignore_system_fonts=True)
    assert isinstance(pdf, bytes)
    with pytest.raises(AssertionError, match="notdef"):
        assert_no_notdef(pdf)


def test_fallback_fonts_ship_with_their_licence() -> None:
    fonts = sorted(p.name for p in FALLBACK_FONTS_DIR.iterdir() if p.suffix in (".ttf", ".otf"))
    licence = (FALLBACK_FONTS_DIR / "LICENSE.txt").read_text(encoding="utf-8")
    assert "NotoColorEmoji.ttf" in fonts and "SIL OPEN FONT LICENSE Version 1.1" in licence
    for font in fonts:
        assert font in licence


def test_undisplayable_texts_reads_typst_rust_escapes_with_fake_error() -> None:
    """Typst prints the refused text as a Rust string literal; anything but that error means no retry."""
    from types import SimpleNamespace

    from sfsign.documents.render import undisplayable_texts

    def error(*messages: str) -> Any:
        return SimpleNamespace(diagnostic="\n\n".join(f"error: {m}\n  = hint: try using a different font"
                                                     for m in messages), hints=[])

    refused = 'PDF/A-2b error: the text `"{}"` could not be displayed with font `"Libertinus Serif"`'
    assert undisplayable_texts(error(refused.format("\\u{378}"), refused.format("\\u{f0001}x"))) == {
        "\u0378", "\U000f0001x"}
    assert undisplayable_texts(error(refused.format('a\\"b\\\\c\\n'))) == {'a"b\\c\n'}
    assert undisplayable_texts(error(refused.format("\\u{378}"), "unknown variable: foo")) == frozenset()
    assert undisplayable_texts(error("unknown variable: foo")) == frozenset()
