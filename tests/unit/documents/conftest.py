"""Fixtures for the documents layer: generated PKIs (never committed) and a tiny text extractor.

The extractor exists so the rendering tests can check what a reader would see without depending
on poppler: Typst writes each text run as `/fN size Tf [<hex>...] TJ` with Identity-H fonts and a
ToUnicode CMap, which is all it needs to understand.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pyhanko.pdf_utils.reader import PdfFileReader
from secret_scan import register_secret

from sfsign.documents.model import ContractDocument, sample_contract
from sfsign.documents.render import RenderedPdf, render_pdf
from sfsign.documents.sign import Pkcs11KeySpec
from sfsign.localpki.pki import DemoPki, create_demo_pki
from sfsign.localpki.softhsm import find_softhsm_module, provision_softhsm_token

PASSPHRASE = "correct horse battery staple"
SOFTHSM_PIN = "4711-user-pin"  # PINs of a throw-away test token, not real secrets
SOFTHSM_SO_PIN = "4711-so-pin"
register_secret(PASSPHRASE, SOFTHSM_PIN, SOFTHSM_SO_PIN)

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


@dataclass(frozen=True)
class SoftHsm:
    """SoftHSM2 tokens provisioned for this test session.

    Token `token_label` holds key + certificate 'signer' (the `ec_pki` signer, with its CA
    certificates on the token) and 'expired' (an expired certificate); `other_token_label` exists
    so error messages can be checked to list every token.
    """

    module_path: Path
    conf_path: Path
    token_label: str
    other_token_label: str
    pki: DemoPki
    expired_pki: DemoPki

    def spec(self, key_label: str = "signer", **changes: object) -> Pkcs11KeySpec:
        base = Pkcs11KeySpec(
            module_path=self.module_path, token_label=self.token_label, key_label=key_label, pin=SecretStr(SOFTHSM_PIN)
        )
        return base.model_copy(update=changes) if changes else base


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory, ec_pki: DemoPki) -> Iterator[SoftHsm]:
    """Real SoftHSM2 tokens; skipped when SoftHSM2 is missing, unless SFSIGN_REQUIRE_SOFTHSM=1 (CI).

    Session-scoped on purpose: SoftHSM2 reads SOFTHSM2_CONF only when the process first loads the
    module, so every test of the session must use this one token directory.
    """
    from sfsign.documents.pkcs11 import close_pkcs11_sessions

    module = find_softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        reason = "SoftHSM2 not installed (apt-get install -y softhsm2)"
        if os.environ.get("SFSIGN_REQUIRE_SOFTHSM") == "1":
            pytest.fail(f"{reason}, but SFSIGN_REQUIRE_SOFTHSM=1")
        pytest.skip(reason)
    module_path: Path = module
    directory = tmp_path_factory.mktemp("softhsm")
    now = dt.datetime.now(dt.UTC)
    expired = create_demo_pki(
        tmp_path_factory.mktemp("expired-pki"),
        key_algorithm="ec-p256",
        org_name="Expired Org",
        signer_not_before=now - dt.timedelta(days=400),
        signer_not_after=now - dt.timedelta(days=30),
    )

    def provision(token_label: str, label: str, pki: DemoPki, passphrase: str | None, chain: tuple[Path, ...]) -> Path:
        return provision_softhsm_token(
            directory,
            token_label=token_label,
            pin=SOFTHSM_PIN,
            so_pin=SOFTHSM_SO_PIN,
            key_pem_path=pki.signer_key_path,
            key_passphrase=passphrase,
            cert_path=pki.signer_cert_path,
            label=label,
            chain_paths=chain,
            module_path=module_path,
        ).conf_path

    conf = provision("sfsign-test", "signer", ec_pki, PASSPHRASE, ec_pki.chain_paths)
    provision("sfsign-test", "expired", expired, None, ())
    provision("sfsign-other", "spare", expired, None, ())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        yield SoftHsm(module, conf, "sfsign-test", "sfsign-other", ec_pki, expired)
        close_pkcs11_sessions()
