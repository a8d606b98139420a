"""The cached stamp font engine must draw exactly what pyHanko's own engine draws, embed a proper
subset with a ToUnicode map, and build each subset once."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from pyhanko.pdf_utils.font.api import FontEngineFactory
from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.stamp import TextStamp

from sfsign.documents import appearance
from sfsign.documents.render import RenderedPdf
from sfsign.documents.sign import StampFontFactory
from sfsign.documents.stamp_font import ParsedFont, parsed_font

TEXT = {"ts": "2026-11-27 19:04:58 UTC", "signer": "Zoë Müller-Łukasiewicz", "reason": "Offer approved",
        "location": "Köln"}


def _stamped(pdf: bytes, factory: FontEngineFactory, params: dict[str, str]) -> bytes:
    """`pdf` with the signature stamp drawn on page 1 by `factory`'s font engine."""
    base = appearance.STAMP_STYLE
    style = dataclasses.replace(
        base,
        stamp_text="Digitally signed by %(signer)s\nDate: %(ts)s\nReason: %(reason)s\nLocation: %(location)s",
        text_box_style=dataclasses.replace(base.text_box_style, font=factory),
    )
    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    TextStamp(writer, style, text_params=params, box=None).apply(0, 60, 60)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install -y poppler-utils); CI installs it")
    return path


def test_the_cached_engine_draws_the_stamp_pixel_for_pixel_like_pyhankos_engine(
    rendered_short: RenderedPdf, tmp_path: Path
) -> None:
    pdftoppm = _tool("pdftoppm")
    stock = GlyphAccumulatorFactory(str(appearance.STAMP_FONT), font_size=appearance.STAMP_FONT_SIZE)
    cached = StampFontFactory(appearance.STAMP_FONT, font_size=appearance.STAMP_FONT_SIZE)
    images = []
    for name, factory in (("stock", stock), ("cached", cached), ("cached-again", cached)):
        path = tmp_path / f"{name}.pdf"
        path.write_bytes(_stamped(pdf=rendered_short.pdf, factory=factory, params=TEXT))
        subprocess.run([pdftoppm, "-r", "150", "-f", "1", "-l", "1", "-png", str(path), str(tmp_path / name)],
                       check=True, timeout=120)
        images.append(next(tmp_path.glob(f"{name}-*.png")).read_bytes())
    blank = tmp_path / "blank.pdf"
    blank.write_bytes(rendered_short.pdf)
    subprocess.run([pdftoppm, "-r", "150", "-f", "1", "-l", "1", "-png", str(blank), str(tmp_path / "blank")],
                   check=True, timeout=120)
    assert images[0] != next(tmp_path.glob("blank-*.png")).read_bytes()  # the stamp is drawn at all
    assert images[1] == images[0]
    assert images[2] == images[0]  # from the cached subset this time


def test_the_stamp_font_is_an_embedded_subset_with_a_unicode_map(rendered_short: RenderedPdf, tmp_path: Path) -> None:
    pdffonts, pdftotext = _tool("pdffonts"), _tool("pdftotext")
    path = tmp_path / "stamped.pdf"
    path.write_bytes(_stamped(rendered_short.pdf, StampFontFactory(appearance.STAMP_FONT, 9), TEXT))
    fonts = subprocess.run([pdffonts, str(path)], capture_output=True, text=True, check=True).stdout
    stamp = [line for line in fonts.splitlines() if "sfsignStampSans" in line]
    assert stamp, fonts
    # columns: name type encoding emb sub uni object ID
    assert stamp[0].split()[-5:-2] == ["yes", "yes", "yes"], stamp[0]
    assert stamp[0].split()[0].split("+")[0].isupper()  # a subset tag such as ABCDEF+
    text = subprocess.run([pdftotext, "-f", "1", "-l", "1", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Digitally signed by Zoë Müller-Łukasiewicz" in text
    assert "Date: 2026-11-27 19:04:58 UTC" in text


def test_a_new_time_reuses_the_subset_and_new_letters_make_a_new_one(
    rendered_short: RenderedPdf, monkeypatch: pytest.MonkeyPatch
) -> None:
    font = ParsedFont.load(appearance.STAMP_FONT)
    monkeypatch.setattr("sfsign.documents.stamp_font.parsed_font", lambda path: font)
    factory = StampFontFactory(appearance.STAMP_FONT, 9)
    _stamped(rendered_short.pdf, factory, TEXT)
    _stamped(rendered_short.pdf, factory, {**TEXT, "ts": "2031-04-19 08:36:27 UTC"})
    assert font.subsets_built == 1  # every digit is in every subset
    _stamped(rendered_short.pdf, factory, {**TEXT, "signer": "Ángel Ibáñez"})
    assert font.subsets_built == 2


def test_each_thread_parses_the_font_once() -> None:
    assert parsed_font(appearance.STAMP_FONT) is parsed_font(appearance.STAMP_FONT)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(parsed_font, appearance.STAMP_FONT).result()
    assert other is not parsed_font(appearance.STAMP_FONT)


def test_a_font_without_truetype_outlines_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ttf"
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.t2CharStringPen import T2CharStringPen

    builder = FontBuilder(1000, isTTF=False)
    builder.setupGlyphOrder([".notdef"])
    builder.setupCharacterMap({})
    builder.setupCFF("Bogus", {"FullName": "Bogus"}, {".notdef": T2CharStringPen(500, None).getCharString()}, {})
    builder.setupHorizontalMetrics({".notdef": (500, 0)})
    builder.setupHorizontalHeader()
    builder.setupNameTable({"familyName": "Bogus", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(str(bogus))
    with pytest.raises(ValueError, match="TrueType"):
        ParsedFont.load(bogus)
