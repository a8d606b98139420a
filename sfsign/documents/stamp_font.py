"""The signature stamp's font engine: the font is parsed once per thread and each subset is built once.

pyHanko's `GlyphAccumulatorFactory` parses the TrueType file again for every signature (name,
cmap, glyf and hmtx tables, a HarfBuzz face) and subsets, re-serialises and compresses it when
the document is written: about 15 ms of the ~40 ms a B-T signature costs, spent on a font that
never changes. `sign.StampFontFactory` hands out engines that share one parsed font per thread (the
signing loop of a pool process is one thread) and embed a cached, already-compressed subset.

The subset always holds the ten digits besides the glyphs the stamp uses, so the date and time,
which change with every signature, do not change the cache key: one subset per appearance text.

The engine is pyHanko's own `GlyphAccumulator` (shaping, widths, ToUnicode map, Type 0 font
dictionaries); only its constructor and its subsetting step are replaced, which touches pyHanko
internals. pyproject pins pyHanko to 0.38.x, and `tests/unit/test_documents_stamp_font.py`
compares the stamp drawn by both engines pixel for pixel.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import uharfbuzz as hb
from fontTools import subset, ttLib
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.font.api import FontEngine
from pyhanko.pdf_utils.font.opentype import CIDFontType2, GlyphAccumulator, _read_ps_name
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import BasePdfFileWriter

# Tables the engine reads while shaping and describing the font; loaded once, up front, so that
# fontTools' lazy loading never runs on a shared object.
_TABLES = ("head", "hhea", "OS/2", "post", "name", "cmap", "maxp", "hmtx", "loca", "glyf")
_MAX_SUBSETS = 64  # distinct appearance texts held per thread; a few per signing profile in practice


@dataclass
class ParsedFont:
    """One TrueType font, parsed, with the subsets made of it so far (compressed font programs)."""

    data: bytes
    tt: ttLib.TTFont
    hb_font: Any
    ps_name: str
    glyph_set: Any
    reverse_cmap: dict[str, int]
    always: frozenset[int]  # glyph ids every subset carries (the digits)
    subsets: dict[frozenset[int], bytes] = field(default_factory=dict)
    subsets_built: int = 0

    @classmethod
    def load(cls, path: Path) -> ParsedFont:
        data = path.read_bytes()
        tt = ttLib.TTFont(BytesIO(data))
        if "glyf" not in tt:
            raise ValueError(f"{path}: the stamp font must be a TrueType (glyf) font")
        for tag in _TABLES:
            tt[tag]  # force fontTools' lazy table loading now
        cmap = tt.getBestCmap()
        digits = frozenset(tt.getGlyphID(cmap[ord(d)]) for d in "0123456789" if ord(d) in cmap)
        return cls(
            data=data,
            tt=tt,
            hb_font=hb.Font(hb.Face(data)),
            ps_name=_read_ps_name(tt),
            glyph_set=tt.getGlyphSet(preferCFF=True),
            reverse_cmap=tt["cmap"].buildReversed(),
            always=digits,
        )

    def font_program(self, gids: frozenset[int]) -> bytes:
        """The zlib-compressed TrueType subset holding `gids` and the digits, glyph ids unchanged."""
        key = gids | self.always
        program = self.subsets.get(key)
        if program is None:
            # pyHanko's subsetting options for TrueType, on a fresh copy (subsetting is destructive).
            options = subset.Options(layout_closure=False)
            options.drop_tables += ["GPOS", "GDEF", "GSUB"]
            options.retain_gids = True  # CIDToGIDMap is /Identity: content streams use the original ids
            subsetter = subset.Subsetter(options=options)
            subsetter.populate(gids=sorted(key))
            font = ttLib.TTFont(BytesIO(self.data))
            subsetter.subset(font)
            out = BytesIO()
            font.save(out)
            program = zlib.compress(out.getvalue())
            if len(self.subsets) >= _MAX_SUBSETS:
                self.subsets.pop(next(iter(self.subsets)))
            self.subsets[key] = program
            self.subsets_built += 1
        return program


class _CachedCIDFontType2(CIDFontType2):
    """Embeds a font program made beforehand instead of serialising the font again."""

    program: bytes = b""

    def set_font_file(self, writer: BasePdfFileWriter) -> generic.IndirectObject:
        stream = generic.StreamObject({pdf_name("/Filter"): pdf_name("/FlateDecode")}, encoded_data=self.program)
        ref = writer.add_object(stream)
        self._font_descriptor[pdf_name("/FontFile2")] = ref
        return ref


class StampGlyphAccumulator(GlyphAccumulator):
    """pyHanko's glyph accumulator over a shared `ParsedFont`.

    The constructor does what `GlyphAccumulator.__init__` does for a TrueType font, minus the
    parsing; `_extract_subset` takes the cached program instead of subsetting the shared font.
    """

    def __init__(self, writer: BasePdfFileWriter, font: ParsedFont, font_size: int, obj_stream: Any = None) -> None:
        self._parsed = font
        self.hb_font = font.hb_font
        self.tt = font.tt
        FontEngine.__init__(self, writer, font.ps_name, embedded_subset=True, obj_stream=obj_stream,
                            font_size=font_size)
        self._font_ref = writer.allocate_placeholder()
        self.cff_charset = None
        self.use_raw_gids = True
        self.cidfont_obj = _CachedCIDFontType2(font.tt, font.ps_name, self.subset_prefix)
        self.features = None
        self.units_per_em = font.tt["head"].unitsPerEm
        self._glyphs = {}
        self._glyph_set = font.glyph_set
        self._cid_to_unicode = {}
        self._GlyphAccumulator__reverse_cmap = font.reverse_cmap
        self.ot_language_tag = None
        self.ot_script_tag = None
        self.writing_direction = None
        self.bcp47_lang_code = None
        self._subset_created = self._write_prepared = False

    def _extract_subset(self, options: subset.Options | None = None) -> None:
        assert isinstance(self.cidfont_obj, _CachedCIDFontType2)
        self.cidfont_obj.program = self._parsed.font_program(frozenset(self._glyphs))


_local = threading.local()


def parsed_font(path: Path) -> ParsedFont:
    """This thread's parse of `path` (HarfBuzz and fontTools objects are not shared across threads)."""
    fonts: dict[Path, ParsedFont] = _local.__dict__.setdefault("fonts", {})
    font = fonts.get(path)
    if font is None:
        font = fonts[path] = ParsedFont.load(path)
    return font
