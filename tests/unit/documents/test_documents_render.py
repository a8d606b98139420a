from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import pickle
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from io import BytesIO
from pathlib import Path

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader

from sfsign.documents import render
from sfsign.documents.model import ContractDocument, LineItem, Party, sample_contract
from sfsign.documents.render import (
    POOL_START_METHOD,
    RenderedPdf,
    RenderError,
    SignatureBox,
    build_template_data,
    format_money,
    render_pdf,
    resolve_template,
)

A4_WIDTH, A4_HEIGHT = 595.276, 841.89
Texts = Callable[[bytes], list[str]]


def test_eur_quote_with_30_lines_flows_onto_page_2_with_repeated_table_header(
    rendered_quote: RenderedPdf, page_texts: Texts
) -> None:
    assert rendered_quote.pages == 2
    first, second = page_texts(rendered_quote.pdf)
    for page in (first, second):
        assert "Unit price" in page and "Amount" in page  # header repeated on the continuation page
    assert "PLT-ENT-001" in first and "PLT-SBX-030" in second
    assert "Page 1 of 2" in first and "Page 2 of 2" in second
    assert "Transaction: sfs-demo-0000000000000001" in first
    assert "Transaction: sfs-demo-0000000000000001" in second


def test_eur_amounts_are_formatted_with_symbol_grouping_and_two_decimals(
    eur_quote: ContractDocument, rendered_quote: RenderedPdf, page_texts: Texts
) -> None:
    text = "\n".join(page_texts(rendered_quote.pdf))
    assert "€1,200.00" in text
    assert format_money(eur_quote.totals.total, "EUR") in text.splitlines()
    assert f"\u2212{format_money(eur_quote.totals.discount, 'EUR')}" in text


def test_usd_proposal_renders_with_dollar_amounts_and_proposal_wording(
    usd_proposal: ContractDocument, page_texts: Texts
) -> None:
    rendered = render_pdf(usd_proposal, "proposal")
    text = "\n".join(page_texts(rendered.pdf))
    assert rendered.pages == 2
    assert "PROPOSAL" in text and "Prepared for".upper() in text
    assert "$1,200.00" in text
    assert format_money(usd_proposal.totals.total, "USD") in text
    assert "Total (USD)" in text


def test_german_locale_formats_amounts_dates_and_labels(page_texts: Texts) -> None:
    rendered = render_pdf(sample_contract(line_count=3, locale="de_DE"), "quote")
    text = page_texts(rendered.pdf)[0]
    assert "1.200,00\u00a0€" in text
    assert "27. November 2025" in text
    assert "Einzelpreis" in text and "Seite 1 von 1" in text


def test_seller_signature_box_is_on_the_last_page_inside_the_page(rendered_quote: RenderedPdf) -> None:
    box = rendered_quote.signature_box
    assert box.page == rendered_quote.pages - 1
    assert 0 < box.x1 < box.x2 <= A4_WIDTH
    assert 0 < box.y1 < box.y2 <= A4_HEIGHT
    assert box.height == pytest.approx(2.8 / 2.54 * 72, abs=0.01)  # 2.8 cm, as drawn by common.typ
    assert box.width > 150
    customer = rendered_quote.customer_box
    assert customer is not None and customer.page == box.page
    assert customer.x1 > box.x2  # side by side, no overlap
    assert customer.y1 == pytest.approx(box.y1)


def test_signature_box_position_is_read_back_exactly(template_dir: Path) -> None:
    """A box placed at a known spot must come back at exactly that spot, origin bottom-left."""
    (template_dir / "fixed.typ").write_text(
        '#import "common.typ": signature-field, load-data\n'
        "#let d = load-data()\n"
        '#set page(paper: "a4", margin: 0pt)\n'
        "#d.title\n"
        "#pagebreak()\n"
        '#place(top + left, dx: 100pt, dy: 200pt, box(width: 150pt, signature-field("seller", height: 50pt)))\n',
        encoding="utf-8",
    )
    rendered = render_pdf(sample_contract(line_count=1), template_dir / "fixed.typ")
    assert rendered.pages == 2
    assert rendered.signature_box == SignatureBox(
        page=1, x1=100, y1=round(A4_HEIGHT - 250, 3), x2=250, y2=round(A4_HEIGHT - 200, 3)
    )
    assert rendered.customer_box is None


def test_customer_supplied_markup_is_printed_literally(page_texts: Texts) -> None:
    hostile = [
        '#panic("x")',
        "*bold* _emph_ $x^2$",
        '#import "/etc/passwd"',
        ']#panic("y")[ <label> @ref',
        "= Heading \\ `raw`",
    ]
    base = sample_contract(line_count=1)
    doc = base.model_copy(
        update={
            "customer": Party(name=hostile[0], street=hostile[1]),
            "title": hostile[2],
            "notes": hostile[3],
            "terms": [hostile[4]],
            "lines": [
                LineItem(
                    name=hostile[3],
                    description=hostile[1],
                    quantity=Decimal(1),
                    unit_price=Decimal(1),
                    total=Decimal(1),
                )
            ],
        }
    )
    text = "\n".join(page_texts(render_pdf(doc, "quote").pdf))
    for value in hostile:
        assert value in text


def test_output_declares_pdfa_2b_and_embeds_every_font(rendered_quote: RenderedPdf) -> None:
    reader = PdfFileReader(BytesIO(rendered_quote.pdf))
    xmp = reader.root["/Metadata"].get_object().data
    assert re.search(rb"<pdfaid:part>2</pdfaid:part>", xmp)
    assert re.search(rb"<pdfaid:conformance>B</pdfaid:conformance>", xmp)
    assert reader.root["/OutputIntents"][0].get_object()["/S"] == "/GTS_PDFA1"
    page = reader.find_page_for_modification(0)[0].get_object()
    for font_ref in page["/Resources"]["/Font"].values():
        descendant = font_ref.get_object()["/DescendantFonts"][0].get_object()
        descriptor = descendant["/FontDescriptor"].get_object()
        assert any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3"))


def test_document_metadata_carries_title_author_and_transaction_id(rendered_quote: RenderedPdf) -> None:
    info = PdfFileReader(BytesIO(rendered_quote.pdf)).trailer["/Info"]
    assert info["/Author"] == "Nordlicht Software GmbH"
    assert "Q-2025-00042" in info["/Title"]
    assert info["/Keywords"] == "sfs-demo-0000000000000001"


def test_fixed_timestamp_makes_rendering_reproducible(eur_quote: ContractDocument) -> None:
    when = dt.datetime(2025, 11, 27, 12, 0, tzinfo=dt.UTC)
    assert render_pdf(eur_quote, "quote", timestamp=when).pdf == render_pdf(eur_quote, "quote", timestamp=when).pdf


def test_broken_template_raises_render_error_naming_file_and_location(template_dir: Path) -> None:
    broken = template_dir / "broken.typ"
    broken.write_text('#import "common.typ": load-data\n#let d = load-data()\n#let x = (1, 2\n', encoding="utf-8")
    with pytest.raises(RenderError) as info:
        render_pdf(sample_contract(line_count=1), broken)
    message = str(info.value)
    assert str(broken) in message
    assert "broken.typ:3" in message  # Typst's diagnostic points at the line
    assert info.value.template == str(broken)


def test_template_error_at_runtime_is_reported(template_dir: Path) -> None:
    bad = template_dir / "bad-field.typ"
    bad.write_text('#import "common.typ": load-data\n#let d = load-data()\n#d.no_such_field\n', encoding="utf-8")
    with pytest.raises(RenderError, match="no_such_field"):
        render_pdf(sample_contract(line_count=1), bad)


def test_template_without_seller_box_is_refused(template_dir: Path) -> None:
    plain = template_dir / "plain.typ"
    plain.write_text("Hello\n", encoding="utf-8")
    with pytest.raises(RenderError, match="no seller signature box"):
        render_pdf(sample_contract(line_count=1), plain)


def test_duplicate_seller_box_is_refused(template_dir: Path) -> None:
    twice = template_dir / "twice.typ"
    twice.write_text(
        '#import "common.typ": signature-field\n#signature-field("seller")\n#signature-field("seller")\n',
        encoding="utf-8",
    )
    with pytest.raises(RenderError, match="more than once"):
        render_pdf(sample_contract(line_count=1), twice)


def test_hand_made_metadata_missing_keys_is_reported(template_dir: Path) -> None:
    odd = template_dir / "odd.typ"
    odd.write_text('#metadata((field: "seller", page: 1)) <sfsign-signature-field>\n', encoding="utf-8")
    with pytest.raises(RenderError, match="malformed"):
        render_pdf(sample_contract(line_count=1), odd)


def test_templates_resolve_by_name_with_admin_directory_first(template_dir: Path) -> None:
    assert resolve_template("quote").name == "quote.typ"
    assert resolve_template("proposal").parent.name == "templates"
    override = template_dir / "quote.typ"
    override.write_text("x", encoding="utf-8")
    assert resolve_template("quote", [template_dir]) == override.resolve()
    assert resolve_template(override) == override.resolve()
    with pytest.raises(RenderError, match="no template named 'invoice'"):
        resolve_template("invoice", [template_dir])
    with pytest.raises(RenderError, match="not found"):
        resolve_template(template_dir / "missing.typ")


def test_dict_input_is_validated(eur_quote: ContractDocument) -> None:
    rendered = render_pdf(eur_quote.model_dump(mode="json"), "quote")
    assert rendered.pages == 2
    broken = eur_quote.model_dump(mode="json")
    del broken["currency"]
    with pytest.raises(RenderError, match="invalid contract document"):
        render_pdf(broken, "quote")


def test_template_data_keeps_exact_decimals_and_adds_display_strings(eur_quote: ContractDocument) -> None:
    data = build_template_data(eur_quote)
    assert data["lines"][0]["unit_price"] == "1200.00"
    assert data["lines"][0]["fmt"]["unit_price"] == "€1,200.00"
    assert data["totals"]["fmt"]["total"] == format_money(eur_quote.totals.total, "EUR")
    assert data["fmt"]["lang"] == "en" and data["fmt"]["region"] is None


def test_results_and_errors_survive_pickling(rendered_quote: RenderedPdf) -> None:
    assert pickle.loads(pickle.dumps(rendered_quote)) == rendered_quote
    error = pickle.loads(pickle.dumps(RenderError("x.typ", "error: boom")))
    assert isinstance(error, RenderError) and str(error) == "template x.typ: error: boom"


def test_render_runs_in_a_forkserver_process_pool(eur_quote: ContractDocument) -> None:
    context = multiprocessing.get_context(POOL_START_METHOD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        rendered = pool.submit(render_pdf, eur_quote, "quote").result(timeout=120)
        with pytest.raises(RenderError):
            pool.submit(render_pdf, eur_quote, "no-such-template").result(timeout=120)
    assert rendered.pages == 2 and rendered.pdf.startswith(b"%PDF-")


def test_rendering_in_a_forked_child_fails_fast_with_faked_parent_pid(
    eur_quote: ContractDocument, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork()ed child would hang inside Typst forever; it must get an explanation instead."""
    render_pdf(eur_quote, "quote")
    monkeypatch.setattr(render, "_typst_pid", os.getpid() + 1)  # as seen from a forked child
    with pytest.raises(RenderError, match="forkserver"):
        render_pdf(eur_quote, "quote")


def test_each_template_s_compiler_shares_the_fonts_a_document_loaded() -> None:
    """Typst reads a fallback font into memory when a document first needs it, once per font store: with a
    store per template, text in several scripts cost each pool process ~15 MB more per template. In a fresh
    interpreter (no font loaded yet), the third template's first document must not load them all again."""
    import subprocess
    import sys

    code = (
        "from sfsign.documents.jobs import render_job\n"
        "from sfsign.documents.model import sample_contract\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
        "doc = sample_contract(kind='quote', line_count=1).model_copy(\n"
        "    update={'title': '契約書 见积书 😀 שלום مرحبا สวัสดี 한국어'}).model_dump_json()\n"
        "render_job(doc, 'proposal')\n"
        "before = rss()\n"
        "render_job(doc, 'quote'); render_job(doc, 'order')\n"
        "print(rss() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    grown_kib = int(out.stdout.strip())
    assert grown_kib < 15 * 1024, f"two more templates cost {grown_kib / 1024:.0f} MiB"  # separate stores: ~40
