"""The block-wise hex string reader must agree with pyHanko's own, byte for byte and error for error."""

from __future__ import annotations

import random
from io import BytesIO

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.misc import PdfStreamError

from sfsign.documents import hexstrings

CASES = [
    b"<>",
    b"<4E6F762073686D6F7A206B6120706F702E>",
    b"<4e6f76 2073686d\n6f7a\r\n\t206b\x0c\x00>",
    b"<901FA3>",
    b"<901FA>",  # odd: a trailing 0 is implied
    b"<FEFF0048006900>",  # UTF-16 with BOM: a text string
    b"<48 65 6C % a comment, with > in it\n6C 6F>",
    b"<48656Z6C>",  # not a hex digit
    b"<48656C",  # truncated
]


def _read(reader: object, data: bytes) -> tuple[object, int]:
    stream = BytesIO(data + b" /Next 1")
    try:
        value = reader(stream)  # type: ignore[operator]
    except PdfStreamError as exc:
        return ("error", str(exc)), stream.tell()
    return (type(value).__name__, bytes(value.original_bytes)), stream.tell()


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_both_readers_agree(data: bytes) -> None:
    assert _read(hexstrings.read_hex_string_from_stream, data) == _read(hexstrings._original, data)


def test_both_readers_agree_on_signature_sized_strings() -> None:
    rng = random.Random(20261127)
    for _ in range(50):
        raw = rng.randbytes(rng.randint(0, 40_000))
        text = raw.hex().upper() if rng.random() < 0.5 else raw.hex()
        if rng.random() < 0.3:
            text = text[:-1] if text else text
        spaced = "".join(c + (rng.choice(" \n\r\t") if rng.random() < 0.01 else "") for c in text)
        data = b"<" + spaced.encode() + b">"
        assert _read(hexstrings.read_hex_string_from_stream, data) == _read(hexstrings._original, data)


def test_the_modules_that_read_pdfs_install_it_and_the_package_alone_loads_no_pyhanko() -> None:
    """In fresh interpreters: here, some earlier import has installed it already."""
    import subprocess
    import sys

    check = ("from pyhanko.pdf_utils import generic; from sfsign.documents import hexstrings; "
             "print(generic.read_hex_string_from_stream is hexstrings.read_hex_string_from_stream)")
    for module in ("sfsign.documents.sign", "sfsign.documents.verify"):
        out = subprocess.run([sys.executable, "-c", f"import {module}; {check}"], capture_output=True, text=True,
                             check=True, timeout=120)
        assert out.stdout.strip() == "True", module
    alone = "import sys, sfsign.documents, sfsign.documents.model; print('pyhanko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
    assert generic.read_hex_string_from_stream is hexstrings.read_hex_string_from_stream
