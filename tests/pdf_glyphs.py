"""Reading a rendered PDF back the way a reader would see it: which glyphs each embedded font drew (glyph 0 is
.notdef, the tofu box), which fonts are embedded, and the text layer (pdftotext). Shared by the unit text
corpus and the end-to-end bad-input text test.

Typst writes text as `/fN size Tf [(..)..] TJ` with two-byte Identity-H glyph codes per CID font and a
bfchar ToUnicode map; Type 3 fonts are its bitmap emoji.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from pyhanko.pdf_utils.reader import PdfFileReader

_TEXT_TOKEN = re.compile(rb"/([A-Za-z0-9]+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\()])*)\)|<([0-9A-Fa-f]*)>", re.S)
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.S)
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _unescape(literal: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8) & 0xFF])
        return _SIMPLE.get(code, code)

    return _ESCAPE.sub(one, literal)


def _pages(pdf: bytes) -> Iterator[Any]:
    reader = PdfFileReader(BytesIO(pdf))
    for index in range(int(reader.root["/Pages"]["/Count"])):
        yield reader.find_page_for_modification(index)[0].get_object()


def _content(page: Any) -> bytes:
    contents = page["/Contents"]
    streams = [c.get_object() for c in contents] if isinstance(contents, list) else [contents.get_object()]
    return b"\n".join(s.data for s in streams)


_BFCHAR = re.compile(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>")


def _to_unicode(font: Any) -> dict[int, str]:
    data = font["/ToUnicode"].get_object().data
    return {
        int(src, 16): bytes.fromhex(dst.decode()).decode("utf-16-be")
        for block in re.findall(rb"beginbfchar(.*?)endbfchar", data, re.S)
        for src, dst in _BFCHAR.findall(block)
    }


def cid_texts(pdf: bytes) -> dict[str, set[str]]:
    """The text (ToUnicode) of each glyph drawn, per embedded CID font: which font drew what."""
    texts: dict[str, set[str]] = {}
    for page in _pages(pdf):
        for ref in page["/Resources"].get("/Font", {}).values():
            font = ref.get_object()
            if font["/Subtype"] == "/Type0":
                texts.setdefault(str(font["/BaseFont"]), set()).update(_to_unicode(font).values())
    drawn = cid_glyphs(pdf)
    return {font: text for font, text in texts.items() if font in drawn}


def cid_glyphs(pdf: bytes) -> dict[str, list[int]]:
    """Glyph ids drawn per embedded CID font (Identity-H: two bytes per glyph), by base font name."""
    drawn: dict[str, list[int]] = {}
    for page in _pages(pdf):
        fonts = {name[1:]: ref.get_object() for name, ref in page["/Resources"].get("/Font", {}).items()}
        current: Any = None
        for match in _TEXT_TOKEN.finditer(_content(page)):
            if match.group(1) is not None:
                current = fonts.get(match.group(1).decode())
                continue
            if current is None or current["/Subtype"] != "/Type0":
                continue
            raw = _unescape(match.group(2)) if match.group(2) is not None else bytes.fromhex(match.group(3).decode())
            glyphs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]
            drawn.setdefault(str(current["/BaseFont"]), []).extend(glyphs)
    return drawn


def font_names(pdf: bytes) -> set[str]:
    """Base font names (subset tag removed), "Type3" for Typst's bitmap-emoji fonts."""
    names = set()
    for page in _pages(pdf):
        for ref in page["/Resources"].get("/Font", {}).values():
            font = ref.get_object()
            if font["/Subtype"] == "/Type3":
                assert "/CharProcs" in font  # a Type 3 font carries its glyphs: embedded by construction
                names.add("Type3")
                continue
            descriptor = font["/DescendantFonts"][0].get_object()["/FontDescriptor"].get_object()
            assert any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3")), font["/BaseFont"]
            names.add(str(font["/BaseFont"]).split("+", 1)[-1].removesuffix("-Identity-H"))
    return names


def pdftotext(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "doc.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout


def visible_characters(value: str) -> set[str]:
    """What a reader must find in the text layer: everything but spaces and format characters."""
    return {c for c in unicodedata.normalize("NFC", value) if not c.isspace() and unicodedata.category(c) != "Cf"}


def assert_no_notdef(pdf: bytes) -> None:
    drawn = cid_glyphs(pdf)
    assert drawn, "no text runs found: the scanner does not understand this PDF"
    tofu = {font: glyphs.count(0) for font, glyphs in drawn.items() if 0 in glyphs}
    assert not tofu, f".notdef (tofu) drawn: {tofu}"
