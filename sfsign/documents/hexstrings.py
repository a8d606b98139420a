"""A faster reader for PDF hex strings, installed into pyHanko's parser.

pyHanko reads a hex string one byte at a time through a generator (`read_hex_string_from_stream`).
A signature's `/Contents` is such a string of 16,000-25,000 hex digits, so each time a signed file
is read (validation for the record's verdict, LTV upgrades) that loop costs ~6 ms: about half of
validating a B-T document. This reader finds the closing `>` in blocks and decodes with
`binascii`; anything unusual (a comment, a stray character, a truncated file) is handed back to
pyHanko's own reader from the same position, so results and errors stay pyHanko's.

`install()` is idempotent and runs when a module that reads PDFs with pyHanko is imported (`sign`,
`verify`, and so everything built on them; `render` before it counts pages). pyproject pins pyHanko to
0.38.x; tests/unit/documents/test_documents_hexstrings.py checks both readers agree.
"""

from __future__ import annotations

import binascii
import os
import re
from typing import Any, BinaryIO

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.misc import PDF_WHITESPACE

_BLOCK = 16384
_HEX = re.compile(rb"[0-9A-Fa-f]*")
_original = generic.read_hex_string_from_stream


def read_hex_string_from_stream(stream: BinaryIO) -> Any:
    """pyHanko's `read_hex_string_from_stream`, block-wise (same result, same stream position)."""
    start = stream.tell()
    stream.read(1)  # the opening '<'
    chunks = []
    while True:
        block = stream.read(_BLOCK)
        if not block:  # truncated: let pyHanko raise its own error
            stream.seek(start)
            return _original(stream)
        end = block.find(b">")
        if end >= 0:
            chunks.append(block[:end])
            stream.seek(end + 1 - len(block), os.SEEK_CUR)
            break
        chunks.append(block)
    digits = b"".join(chunks).translate(None, PDF_WHITESPACE)
    if not _HEX.fullmatch(digits):  # a comment or an invalid character: pyHanko's reader decides
        stream.seek(start)
        return _original(stream)
    if len(digits) % 2:
        digits += b"0"
    return generic.pdf_string(binascii.unhexlify(digits))


def install() -> None:
    generic.read_hex_string_from_stream = read_hex_string_from_stream
