"""Issue 14 part 4 asks for signing pages readable by people with low vision: WCAG 2.1 contrast, computed here
from the stylesheet the listener serves (signing.css) rather than trusted from the comment at its top.

Text needs 4.5:1 against what it sits on (success criterion 1.4.3, level AA). A rule that sets a text colour
and a background is checked as that pair; a rule that sets only a text colour may sit on any surface of the page
(a rule with a background and no text colour of its own), so it is checked against each of them; a variant such
as `button.danger` that changes only the background keeps its base rule's text colour (`button`). The focus ring
and the borders of form fields are not text but show where a person is and what to fill in: 3:1 against the
surfaces (criterion 1.4.11). The pages carry no inline style (the CSP forbids it), so this file is all of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sfsign.signing.listener

CSS = Path(sfsign.signing.listener.__file__).with_name("static") / "signing.css"
TEXT_MIN, UI_MIN = 4.5, 3.0

Rules = dict[str, dict[str, str]]
RGB = tuple[int, int, int]


def _rules(css: str) -> Rules:
    """Each single selector with its declarations, later rules (a media query's too) adding to earlier ones:
    a phone sees both, so every colour either of them sets must pass."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules: Rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        declarations = dict((name.strip(), value.strip()) for name, _, value in
                            (d.partition(":") for d in body.split(";") if ":" in d))
        for selector in selectors.split(","):
            rules.setdefault(" ".join(selector.split()), {}).update(declarations)
    return rules


def _colour(value: str | None) -> RGB | None:
    """The first hex colour in a value (`background: #fff`, `outline: 3px solid #e8a000`); None for none."""
    found = re.search(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b", value or "")
    if not found:
        return None
    digits = found.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def _luminance(rgb: RGB) -> float:
    """Relative luminance as WCAG 2.1 defines it (sRGB, linearised)."""
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: RGB, b: RGB) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _background(declarations: dict[str, str]) -> RGB | None:
    return _colour(declarations.get("background-color") or declarations.get("background"))


def _surfaces(rules: Rules) -> dict[str, RGB]:
    """The page's own background and those that inherit the text colour around them: what plain text and
    links can sit on."""
    page = {"html": bg} if (bg := _background(rules["html"])) else {}
    return page | {s: bg for s, d in rules.items()
                   if (bg := _background(d)) and "color" not in d and _base(rules, s) is None}


def _base(rules: Rules, selector: str) -> str | None:
    """The rule a variant builds on (`button.danger` → `button`) when that rule sets the text colour."""
    base = re.split(r"(?<=\w)[.\[:]", selector, maxsplit=1)[0]
    return base if base != selector and "color" in rules.get(base, {}) else None


def text_pairs(rules: Rules) -> list[tuple[str, RGB, RGB]]:
    pairs = []
    surfaces = _surfaces(rules)
    for selector, declarations in rules.items():
        base = _base(rules, selector)
        fg = _colour(declarations.get("color")) or (_colour(rules[base]["color"]) if base else None)
        bg = _background(declarations) or (_background(rules[base]) if base else None)
        if fg and bg:
            pairs.append((selector, fg, bg))
        elif fg:
            pairs += [(f"{selector} on {where}", fg, surface) for where, surface in surfaces.items()]
        elif bg and selector not in surfaces:
            pairs.append((selector, _colour(rules["html"]["color"]) or (0, 0, 0), bg))
    body_text = _colour(rules["html"]["color"]) or (0, 0, 0)
    return pairs + [(f"text on {where}", body_text, bg) for where, bg in surfaces.items() if where != "html"]


def ui_pairs(rules: Rules) -> list[tuple[str, RGB, RGB]]:
    """The focus ring on every surface, and each form field's border against the field."""
    pairs = []
    for selector, declarations in rules.items():
        ring = _colour(declarations.get("outline"))
        if ring and "focus" in selector:
            pairs += [(f"{selector} on {where}", ring, bg) for where, bg in _surfaces(rules).items()]
        border = _colour(declarations.get("border") or declarations.get("border-color"))
        if border and selector.startswith(("input", "textarea")):
            pairs.append((selector, border, _background(declarations) or _background(rules["input[type=\"text\"]"])
                          or (255, 255, 255)))
    return pairs


def test_the_contrast_formula_matches_wcags_own_figures() -> None:
    """Black on white is 21:1 and #767676 on white is the well-known 4.54:1, so a wrong formula cannot pass."""
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((0x76, 0x76, 0x76), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)
    assert contrast((0x77, 0x77, 0x77), (255, 255, 255)) < TEXT_MIN


def test_every_text_colour_on_the_signing_pages_has_at_least_4_5_to_1_contrast() -> None:
    rules = _rules(CSS.read_text(encoding="utf-8"))
    pairs = text_pairs(rules)
    # The parser must see the pages' real pairs, or the test would pass on nothing.
    seen = {selector for selector, _, _ in pairs}
    assert {"html", ".bar", "button", "button.secondary", "button.danger", "a on html", "a on .card",
            ".hint on .notice", "footer on html", ".errors", "text on .notice", "details summary on .card"} <= seen
    failing = [f"{s}: {contrast(fg, bg):.2f}:1" for s, fg, bg in pairs if contrast(fg, bg) < TEXT_MIN]
    assert failing == []


def test_the_focus_ring_and_field_borders_have_at_least_3_to_1_contrast() -> None:
    rules = _rules(CSS.read_text(encoding="utf-8"))
    pairs = ui_pairs(rules)
    assert any(s.startswith(":focus-visible") for s, _, _ in pairs)
    assert any(s.startswith("input") for s, _, _ in pairs)
    failing = [f"{s}: {contrast(fg, bg):.2f}:1" for s, fg, bg in pairs if contrast(fg, bg) < UI_MIN]
    assert failing == []
