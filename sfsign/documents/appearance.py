"""The visible signature: what the stamp says (`Appearance`) and how it is drawn (font, colours, layout).

Kept apart from the signing so that the look of a signature can change without touching the
cryptography. The stamp uses a pre-subset font rescaled to 1000 units/em shipped in `fonts/` (pitfalls
2 and 3); embedding a font also keeps the incremental update PDF/A-2b compatible, which the
non-embedded Courier default would not. `stamp_font.py` parses it once per thread and embeds cached
subsets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pyhanko.pdf_utils import layout
from pyhanko.pdf_utils.font.api import FontEngine, FontEngineFactory
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.stamp import TextStampStyle

from sfsign.documents.specs import Appearance as Appearance

STAMP_FONT = Path(__file__).resolve().parent / "fonts" / "sfsign-stamp-sans.ttf"
STAMP_FONT_SIZE = 9  # same value for the glyph accumulator and the text box (pitfall 2)
_STAMP_COLOR = (0.12, 0.23, 0.37)


@dataclasses.dataclass(frozen=True)
class StampFontFactory(FontEngineFactory):
    """The stamp's font engine (`stamp_font.py`), a drop-in for pyHanko's `GlyphAccumulatorFactory`.

    The engine module (fontTools, HarfBuzz: ~20 MB) is imported on first use, in the pool processes
    that sign, not in the daemon process that only describes what to sign."""

    font_file: Path
    font_size: int = 10

    def create_font_engine(self, writer: BasePdfFileWriter, obj_stream: Any = None) -> FontEngine:
        from sfsign.documents import stamp_font

        if obj_stream is None and writer.stream_xrefs:
            obj_stream = writer.prepare_object_stream()  # as GlyphAccumulatorFactory does by default
        return stamp_font.StampGlyphAccumulator(writer, stamp_font.parsed_font(self.font_file), self.font_size,
                                                obj_stream)


STAMP_STYLE = TextStampStyle(
    stamp_text="%(ts)s",  # replaced per signature, see stamp_text
    text_box_style=TextBoxStyle(
        font=StampFontFactory(STAMP_FONT, font_size=STAMP_FONT_SIZE),
        font_size=STAMP_FONT_SIZE,
        leading=STAMP_FONT_SIZE + 3,
        text_color=_STAMP_COLOR,
    ),
    border_width=1,
    border_color=_STAMP_COLOR,
    timestamp_format="%Y-%m-%d %H:%M:%S UTC",
    inner_content_layout=layout.SimpleBoxLayoutRule(
        x_align=layout.AxisAlignment.ALIGN_MIN,
        y_align=layout.AxisAlignment.ALIGN_MID,
        margins=layout.Margins.uniform(8),
    ),
)


def stamp_params(appearance: Appearance) -> dict[str, str]:
    """The values `stamp_text`'s placeholders take (pyHanko adds `ts`, the signing time)."""
    return {"signer": appearance.name, "reason": appearance.reason, "location": appearance.location,
            "contact": appearance.contact_info, "statement": appearance.statement}


def stamp_text(appearance: Appearance) -> str:
    """The stamp template holds only our own wording; user data arrives as %-parameters, so a
    '%' in a name cannot break or inject into the template."""
    if appearance.statement:
        # No "Date:" label: the statement is in the document's language, and a UTC time needs no label.
        lines = ["%(signer)s", *(["%(contact)s"] if appearance.contact_info else []), "%(statement)s", "%(ts)s"]
        return "\n".join(lines)
    lines = ["Digitally signed by %(signer)s", "Date: %(ts)s"]
    if appearance.reason:
        lines.append("Reason: %(reason)s")
    if appearance.location:
        lines.append("Location: %(location)s")
    return "\n".join(lines)
