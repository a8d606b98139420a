"""Generate the signature-stamp font shipped next to this script.

Why a generated font: pyHanko 0.38 embeds stamp fonts itself and writes glyph widths in font
units, so a font whose unitsPerEm is not 1000 is drawn letter-spaced and its /W array disagrees
with the font program (a PDF/A violation). Parsing a full 750 KB font per signature also costs
~120 ms. So we ship DejaVu Sans once, subset to the scripts a signer name is likely to use
(Latin, Greek, Cyrillic, common punctuation and currency signs) and rescaled to 1000 upem.

Licence: DejaVu fonts are under the Bitstream Vera licence (DejaVu changes are public domain).
It allows modified copies provided they are not named "Bitstream" or "Vera"; we also rename the
family to "sfsign Stamp Sans" so nobody mistakes the subset for the full font. The licence text
travels with the font (LICENSE-DejaVu.txt, written by this script from the font's licence record).

Run: python sfsign/documents/fonts/make_stamp_font.py [/path/to/DejaVuSans.ttf]
(Debian: apt-get install fonts-dejavu-core). Output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont
from fontTools.ttLib.scaleUpem import scale_upem

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
OUTPUT = HERE / "sfsign-stamp-sans.ttf"
LICENSE_OUTPUT = HERE / "LICENSE-DejaVu.txt"
FAMILY = "sfsign Stamp Sans"
POSTSCRIPT_NAME = "sfsignStampSans"
TARGET_UPEM = 1000
# Fixed so the generated file is reproducible (2024-01-01T00:00:00Z in seconds since 1904).
FIXED_TIMESTAMP = 3786825600

UNICODE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0020, 0x007E),  # Basic Latin
    (0x00A0, 0x00FF),  # Latin-1 Supplement
    (0x0100, 0x017F),  # Latin Extended-A
    (0x0180, 0x024F),  # Latin Extended-B
    (0x0300, 0x036F),  # combining diacritics (decomposed names)
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x1E00, 0x1EFF),  # Latin Extended Additional (Vietnamese etc.)
    (0x2010, 0x2027),  # dashes, quotes, bullets, ellipsis
    (0x2030, 0x203A),  # per mille, primes, guillemets
    (0x20A0, 0x20BF),  # currency signs
    (0x2116, 0x2122),  # numero, trade mark
)


def _unicodes() -> list[int]:
    return [cp for start, end in UNICODE_RANGES for cp in range(start, end + 1)]


def _rename(font: TTFont) -> None:
    name_table = font["name"]
    replacements = {
        1: FAMILY,
        2: "Regular",
        3: f"{POSTSCRIPT_NAME}-Regular",
        4: f"{FAMILY} Regular",
        6: POSTSCRIPT_NAME,
        16: FAMILY,
        17: "Regular",
    }
    keep = {0, 5, 7, 8, 9, 11, 12, 13, 14}
    for record in list(name_table.names):
        if record.nameID not in keep and record.nameID not in replacements:
            name_table.removeNames(nameID=record.nameID)
    for name_id, value in replacements.items():
        name_table.setName(value, name_id, 3, 1, 0x409)
        name_table.setName(value, name_id, 1, 0, 0)
    note = (
        "Subset of DejaVu Sans rescaled to 1000 units per em for sfsign signature stamps. "
        "Bitstream Vera licence, see LICENSE-DejaVu.txt."
    )
    name_table.setName(note, 10, 3, 1, 0x409)


def build(source: Path, output: Path = OUTPUT) -> Path:
    options = subset.Options()
    # No OpenType layout tables: pyHanko subsets the font again for every signature, and
    # decompiling DejaVu's GPOS dominated that (~80 ms). Kerning comes from the legacy 'kern'
    # table instead; precomposed accented letters cover names without mark positioning.
    options.layout_features = []
    options.legacy_kern = True
    options.hinting = False  # smaller; hinting is irrelevant for PDF rendering
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.notdef_outline = True
    options.recalc_timestamp = False
    # FFTM: FontForge build stamp (not subsettable); MATH: formula layout, useless in a stamp.
    options.drop_tables = [*options.drop_tables, "FFTM", "MATH", "GSUB", "GPOS", "GDEF"]
    font = TTFont(source, recalcTimestamp=False)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=_unicodes())
    subsetter.subset(font)
    scale_upem(font, TARGET_UPEM)
    _rename(font)
    font["head"].created = FIXED_TIMESTAMP
    font["head"].modified = FIXED_TIMESTAMP
    font.save(output)
    # The upstream licence text is in name ID 13; ship it as a file so it is visible in the package.
    licence = font["name"].getDebugName(13) or ""
    output.with_name(LICENSE_OUTPUT.name).write_text(licence.rstrip() + "\n", encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"source font not found: {args.source} (apt-get install fonts-dejavu-core)", file=sys.stderr)
        return 2
    out = build(args.source, args.output)
    check = TTFont(out)
    print(
        f"wrote {out} ({out.stat().st_size} bytes, {len(check.getGlyphOrder())} glyphs, "
        f"upem {check['head'].unitsPerEm})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
