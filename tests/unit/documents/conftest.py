"""Fixtures for the documents layer: generated PKIs (never committed) and a tiny text extractor.

The extractor exists so the rendering tests can check what a reader would see without depending
on poppler: Typst writes each text run as `/fN size Tf [<hex>...] TJ` with Identity-H fonts and a
ToUnicode CMap, which is all it needs to understand.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.documents.model import ContractDocument, sample_contract
from sfsign.documents.pki import DemoPki, create_demo_pki
from sfsign.documents.render import RenderedPdf, render_pdf

PASSPHRASE = "correct horse battery staple"

_BFCHAR = re.compile(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>")
_NUMBER = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)")
_DELIMS = b"()<>[]{}/% \t\r\n\x00\x0c"
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\x0c"}


def _to_unicode(font: Any) -> dict[int, str]:
    cmap: dict[int, str] = {}
    if "/ToUnicode" not in font:
        return cmap
    data = font["/ToUnicode"].get_object().data
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", data, re.S):
        for src, dst in _BFCHAR.findall(block):
            cmap[int(src, 16)] = bytes.fromhex(dst.decode()).decode("utf-16-be")
    return cmap


def _literal(data: bytes, i: int) -> tuple[bytes, int]:
    """Parse a PDF literal string starting after its '('; returns (bytes, index after ')')."""
    out = bytearray()
    depth = 1
    while True:
        c = data[i]
        if c == ord("\\"):
            nxt = data[i + 1]
            if nxt in _ESCAPES:
                out += _ESCAPES[nxt]
                i += 2
            elif ord("0") <= nxt <= ord("7"):
                j = i + 1
                while j < i + 4 and ord("0") <= data[j] <= ord("7"):
                    j += 1
                out.append(int(data[i + 1 : j], 8) & 0xFF)
                i = j
            elif nxt in b"\r\n":
                i += 2
            else:
                out.append(nxt)
                i += 2
            continue
        if c == ord("("):
            depth += 1
        elif c == ord(")"):
            depth -= 1
            if depth == 0:
                return bytes(out), i + 1
        out.append(c)
        i += 1


def _tokens(data: bytes) -> Iterator[tuple[str, Any]]:
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c in b" \t\r\n\x00\x0c":
            i += 1
        elif c == ord("%"):
            while i < n and data[i] not in b"\r\n":
                i += 1
        elif c == ord("("):
            value, i = _literal(data, i + 1)
            yield "str", value
        elif data.startswith(b"<<", i) or data.startswith(b">>", i):
            yield "delim", data[i : i + 2]
            i += 2
        elif c == ord("<"):
            j = data.index(b">", i)
            yield "str", bytes.fromhex(data[i + 1 : j].decode())
            i = j + 1
        elif c in b"[]{}":
            yield "delim", bytes([c])
            i += 1
        else:
            j = i + 1
            while j < n and data[j] not in _DELIMS:
                j += 1
            word = data[i:j]
            if c == ord("/"):
                yield "name", word
            elif _NUMBER.fullmatch(word):
                yield "num", word
            else:
                yield "op", word
            i = j


def _decode(raw: bytes, cmap: dict[int, str]) -> str:
    return "".join(cmap.get(int.from_bytes(raw[i : i + 2], "big"), "\ufffd") for i in range(0, len(raw), 2))


def extract_page_texts(pdf: bytes) -> list[str]:
    """Text per page, one line per text object (BT...ET)."""
    reader = PdfFileReader(BytesIO(pdf))
    pages: list[str] = []
    for index in range(int(reader.root["/Pages"]["/Count"])):
        page = reader.find_page_for_modification(index)[0].get_object()
        fonts = page["/Resources"].get("/Font", {})
        cmaps = {str(name): _to_unicode(ref.get_object()) for name, ref in fonts.items()}
        contents = page["/Contents"]
        streams = [c.get_object() for c in contents] if isinstance(contents, list) else [contents]
        data = b"\n".join(s.data for s in streams)
        lines: list[str] = []
        current: dict[int, str] = {}
        run: list[str] = []
        last_name = ""
        strings: list[bytes] = []
        for kind, value in _tokens(data):
            if kind == "name":
                last_name = value.decode()
            elif kind == "str":
                strings.append(value)
            elif kind == "op":
                if value == b"Tf":
                    current = cmaps.get(last_name, {})
                elif value in (b"TJ", b"Tj", b"'", b'"'):
                    run.extend(_decode(v, current) for v in strings)
                elif value == b"ET" and run:
                    lines.append("".join(run))
                    run = []
                strings = []
        pages.append("\n".join(lines))
    return pages


@pytest.fixture(scope="session")
def page_texts() -> Callable[[bytes], list[str]]:
    return extract_page_texts


@pytest.fixture(scope="session")
def passphrase() -> str:
    return PASSPHRASE


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """RSA-3072 as in production, passphrase-protected."""
    return create_demo_pki(tmp_path_factory.mktemp("rsa-pki"), passphrase=PASSPHRASE)


@pytest.fixture(scope="session")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return create_demo_pki(
        tmp_path_factory.mktemp("ec-pki"), passphrase=PASSPHRASE, key_algorithm="ec-p256", org_name="Other Org"
    )


@pytest.fixture(scope="session")
def eur_quote() -> ContractDocument:
    return sample_contract(kind="quote", currency="EUR", line_count=30, locale="en")


@pytest.fixture(scope="session")
def usd_proposal() -> ContractDocument:
    return sample_contract(kind="proposal", currency="USD", line_count=30, locale="en_US")


@pytest.fixture(scope="session")
def rendered_quote(eur_quote: ContractDocument) -> RenderedPdf:
    return render_pdf(eur_quote, "quote")


@pytest.fixture(scope="session")
def rendered_short(tmp_path_factory: pytest.TempPathFactory) -> RenderedPdf:
    """One page, so signature placement is easy to reason about."""
    return render_pdf(sample_contract(line_count=3), "quote")


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    """A directory with a copy of common.typ, as an admin's config/templates/ would have."""
    from sfsign.documents.render import TEMPLATES_DIR

    shutil.copy(TEMPLATES_DIR / "common.typ", tmp_path / "common.typ")
    return tmp_path
