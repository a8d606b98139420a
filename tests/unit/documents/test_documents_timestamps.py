"""PAdES B-T: RFC 3161 timestamps from a real HTTP TSA on 127.0.0.1, failover, and failing closed.

The TSA is pyHanko's `DummyTimeStamper` (a genuine RFC 3161 responder signing with a key) behind a
small aiohttp server run by these tests, with a TSA certificate from the demo PKI's issuing CA, so
its tokens chain to the same root as the signature. Nothing here is faked on the client side: the
signing code talks HTTP to it exactly as to a production TSA.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from asn1crypto import tsp
from pydantic import SecretStr
from pyhanko.keys import load_cert_from_pemder, load_private_key_from_pemder
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore
from secret_scan import register_secret

from sfsign.documents import tsa as tsa_module
from sfsign.documents.render import RenderedPdf
from sfsign.documents.sign import (
    Appearance,
    SignatureLevel,
    SignedPdf,
    SigningError,
    TimestampUnavailable,
    TsaAuth,
    async_sign_pdf_bytes,
    sign_pdf_bytes,
)
from sfsign.documents.verify import validate_signed_pdf
from sfsign.localpki.pki import DemoPki

APPEARANCE = Appearance(name="Katrin Albers", reason="Binding offer", location="Hamburg")
TSA_PASSWORD = "tsa-secret-pw"  # a test credential for the local TSA, not a real secret
register_secret(TSA_PASSWORD)


class LocalTsa:
    """RFC 3161 over HTTP on 127.0.0.1 in a background thread; counts the requests it answers."""

    def __init__(self, pki: DemoPki, passphrase: str, *, basic_auth: tuple[str, str] | None = None):
        cert = load_cert_from_pemder(str(pki.tsa_cert_path))
        key = load_private_key_from_pemder(str(pki.tsa_key_path), passphrase.encode())
        issuing = load_cert_from_pemder(str(pki.issuing_cert_pem_path))
        self._stamper = DummyTimeStamper(cert, key, certs_to_embed=SimpleCertificateStore.from_certs([issuing]))
        self._expected_auth = (
            "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode() if basic_auth else None
        )
        self.requests = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        if self._expected_auth and request.headers.get("Authorization") != self._expected_auth:
            self.refused += 1
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="tsa"'})
        req = tsp.TimeStampReq.load(await request.read())
        response = self._stamper.request_tsa_response(req)
        self.requests += 1
        return web.Response(body=response.dump(), content_type="application/timestamp-reply")

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/tsa", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/tsa"

    def start(self) -> LocalTsa:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/tsa"


@pytest.fixture(scope="module")
def local_tsa(rsa_pki: DemoPki, passphrase: str) -> Iterator[LocalTsa]:
    server = LocalTsa(rsa_pki, passphrase).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_tsa(rsa_pki: DemoPki, passphrase: str) -> Iterator[LocalTsa]:
    """A TSA on its own port, so this test's clients are not already in the per-process cache."""
    server = LocalTsa(rsa_pki, passphrase).start()
    yield server
    server.stop()


def _sign(rendered: RenderedPdf, pki: DemoPki, **kwargs: Any) -> SignedPdf:
    return sign_pdf_bytes(rendered.pdf, rendered.signature_box, pki.pkcs12_key_spec(), APPEARANCE, **kwargs)


@pytest.fixture(scope="module")
def signed_b_t(rendered_short: RenderedPdf, rsa_pki: DemoPki, local_tsa: LocalTsa) -> SignedPdf:
    return _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[local_tsa.url])


def test_b_t_signature_validates_intact_trusted_at_level_b_t(signed_b_t: SignedPdf, rsa_pki: DemoPki) -> None:
    report = validate_signed_pdf(signed_b_t.pdf, [rsa_pki.root_cert_pem_path])
    assert report.intact and report.valid and report.trusted, report.summary
    assert report.coverage == "ENTIRE_FILE"
    assert report.level == "B-T" == signed_b_t.level
    assert report.timestamp_trusted is True
    assert signed_b_t.timestamp_time is not None
    assert report.timestamp_time == signed_b_t.timestamp_time
    assert report.timestamp_time.tzinfo is not None
    assert report.signatures[0].timestamp_time == signed_b_t.timestamp_time


def test_b_b_signature_reports_no_timestamp(rendered_short: RenderedPdf, rsa_pki: DemoPki, local_tsa: LocalTsa) -> None:
    before = local_tsa.requests
    signed = _sign(rendered_short, rsa_pki, level=SignatureLevel.B_B, tsa_urls=[local_tsa.url])
    report = validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path])
    assert report.level == "B-B" and signed.timestamp_time is None
    assert report.timestamp_time is None and report.timestamp_trusted is None
    assert local_tsa.requests == before  # B-B never asks a TSA


def test_timestamp_from_a_tsa_chaining_to_an_unknown_root_is_not_trusted(
    signed_b_t: SignedPdf, ec_pki: DemoPki
) -> None:
    report = validate_signed_pdf(signed_b_t.pdf, [ec_pki.root_cert_pem_path])
    assert report.level == "B-T"
    assert report.timestamp_trusted is False and not report.trusted


def test_failover_uses_the_second_tsa_when_the_first_is_down(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, local_tsa: LocalTsa
) -> None:
    before = local_tsa.requests
    signed = _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[_closed_port_url(), local_tsa.url])
    report = validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path])
    assert report.intact and report.trusted and report.level == "B-T", report.summary
    assert local_tsa.requests > before


def test_all_tsas_down_raises_timestamp_unavailable_and_no_pdf(rendered_short: RenderedPdf, rsa_pki: DemoPki) -> None:
    first, second = _closed_port_url(), _closed_port_url()
    result: SignedPdf | None = None
    with pytest.raises(TimestampUnavailable) as info:
        result = _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[first, second])
    assert result is None
    message = str(info.value)
    assert first in message and second in message
    assert message.count("cannot connect") == 2
    assert isinstance(info.value, SigningError)  # the worker's existing handling covers it


def test_failure_message_never_shows_credentials_in_urls_or_auth(rendered_short: RenderedPdf, rsa_pki: DemoPki) -> None:
    down = _closed_port_url().replace("http://", "http://alice:url-password@") + "?apikey=query-secret"
    with pytest.raises(TimestampUnavailable) as info:
        _sign(
            rendered_short,
            rsa_pki,
            level=SignatureLevel.B_T,
            tsa_urls=[down],
            tsa_auth=TsaAuth(username="alice", password=SecretStr(TSA_PASSWORD)),
        )
    message = str(info.value)
    assert "127.0.0.1" in message
    for secret in ("url-password", "query-secret", TSA_PASSWORD):
        assert secret not in message and secret not in repr(info.value)
    assert TSA_PASSWORD not in repr(TsaAuth(username="alice", password=SecretStr(TSA_PASSWORD)))


def test_tsa_credentials_are_sent_and_a_refusal_fails_closed(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, passphrase: str
) -> None:
    server = LocalTsa(rsa_pki, passphrase, basic_auth=("alice", TSA_PASSWORD)).start()
    try:
        with pytest.raises(TimestampUnavailable, match="HTTP 401"):
            _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[server.url])
        assert server.refused >= 1 and server.requests == 0
        auth = TsaAuth(username="alice", password=SecretStr(TSA_PASSWORD))
        signed = _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[server.url], tsa_auth=auth)
        assert signed.level == "B-T" and server.requests >= 1
    finally:
        server.stop()


def test_legacy_tsa_url_parameter_still_works(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, local_tsa: LocalTsa
) -> None:
    signed = _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_url=local_tsa.url)
    assert validate_signed_pdf(signed.pdf, [rsa_pki.root_cert_pem_path]).level == "B-T"


def test_b_t_without_any_tsa_url_is_refused(rendered_short: RenderedPdf, rsa_pki: DemoPki) -> None:
    with pytest.raises(SigningError, match="level B-T requires a TSA URL; not configured"):
        _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T)


def test_timestamper_is_reused_across_documents_in_a_process(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, fresh_tsa: LocalTsa
) -> None:
    """Pitfall 4: the first document pays for pyHanko's size-estimation token, later ones do not."""
    _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[fresh_tsa.url])
    assert fresh_tsa.requests == 2  # dummy token for sizing + the real one
    _sign(rendered_short, rsa_pki, level=SignatureLevel.B_T, tsa_urls=[fresh_tsa.url])
    assert fresh_tsa.requests == 3


async def test_async_signing_on_a_running_loop_reuses_one_client(
    rendered_short: RenderedPdf, rsa_pki: DemoPki, local_tsa: LocalTsa
) -> None:
    try:
        assert tsa_module.get_timestamper([local_tsa.url]) is tsa_module.get_timestamper([local_tsa.url])
        signed = await async_sign_pdf_bytes(
            rendered_short.pdf,
            rendered_short.signature_box,
            rsa_pki.pkcs12_key_spec(),
            APPEARANCE,
            level=SignatureLevel.B_T,
            tsa_urls=[local_tsa.url],
        )
    finally:
        await tsa_module.aclose_timestampers()
    assert signed.level == "B-T" and signed.timestamp_time is not None


def test_pdfsig_reports_the_b_t_signature_valid(signed_b_t: SignedPdf, tmp_path: Path) -> None:
    if shutil.which("pdfsig") is None:
        pytest.skip("pdfsig not installed (apt-get install -y poppler-utils); CI installs it")
    path = tmp_path / "signed-b-t.pdf"
    path.write_bytes(signed_b_t.pdf)
    out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60).stdout
    assert "Signature is Valid." in out
    assert "Total document signed" in out


def test_timestamp_unavailable_survives_the_process_pool_boundary() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(TimestampUnavailable("no timestamp authority answered; tried: x")))
    assert isinstance(error, TimestampUnavailable) and isinstance(error, SigningError)
    assert str(error) == "no timestamp authority answered; tried: x"
