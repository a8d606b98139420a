"""The demo PKI's online services on 127.0.0.1: RFC 3161 TSA, OCSP responders, CRLs, CA certificates.

Why it exists: B-T needs a TSA and B-LT/B-LTA need the OCSP/CRL URLs that the certificates name,
answered over real HTTP, for the tests, `sfsign demo` and the benchmarks, without any internet
access. It runs its own event loop on a background thread, so synchronous code, pytest and other
event loops can all talk to it as to a remote service.

Design notes:
- `bind()` takes the port before the PKI exists, because the certificates must carry the URLs
  (`create_demo_pki(services_url=...)`); `start(pki)` then serves that PKI on the bound socket.
- Keys are parsed once at start (signing-notes.md, pitfall 8: re-parsing per response costs
  ~150 ms for RSA-3072); the passphrase is only used for that and is never kept or logged.
- OCSP responses and CRLs are signed by the issuing CA itself (RFC 6960 allows the CA as
  responder), valid for seven days, so point-in-time validation in tests is not time-boxed to
  minutes. `revoked_serials` and `tsa_down` can be changed while running to simulate a revoked
  certificate or a TSA outage; `counts` tells tests which endpoints were asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from pydantic import SecretStr
from pyhanko.keys import load_cert_from_pemder
from pyhanko.keys.internal import translate_pyca_cryptography_key_to_asn1
from pyhanko.sign.general import as_signing_certificate, get_pyca_cryptography_hash, simple_cms_attribute
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

from sfsign.localpki.pki import ISSUING_SLUG, ROOT_SLUG, DemoPki, PrivateKey, create_demo_pki

REVOCATION_INFO_VALIDITY = dt.timedelta(days=7)
_START_TIMEOUT_SECONDS = 30.0


class _PreparedKeyTimeStamper(DummyTimeStamper):
    """pyHanko's DummyTimeStamper with the key parsed once, and ECDSA keys supported as well.

    The stock class re-parses its key for every token (pitfall 8) and signs with RSA only; the
    demo PKI also comes as ec-p256, whose TSA must work too.
    """

    def __init__(self, tsa_cert: asn1_x509.Certificate, key: PrivateKey, issuing: asn1_x509.Certificate) -> None:
        super().__init__(
            tsa_cert,
            translate_pyca_cryptography_key_to_asn1(key),
            certs_to_embed=SimpleCertificateStore.from_certs([issuing]),
        )
        self._key = key

    def _sign_tst_info(
        self, tst_info_data: bytes, md_algorithm: str, dt: dt.datetime
    ) -> tuple[bytes, cms.CMSAttributes]:
        md_spec = get_pyca_cryptography_hash(md_algorithm)
        digest = hashes.Hash(md_spec)
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes(
            [
                simple_cms_attribute("content_type", "tst_info"),
                simple_cms_attribute("signing_time", cms.Time({"utc_time": core.UTCTime(dt)})),
                simple_cms_attribute("signing_certificate", as_signing_certificate(self.tsa_cert)),
                simple_cms_attribute("message_digest", digest.finalize()),
            ]
        )
        if isinstance(self._key, rsa.RSAPrivateKey):
            signature = self._key.sign(signed_attrs.dump(), padding.PKCS1v15(), md_spec)
        else:
            signature = self._key.sign(signed_attrs.dump(), ec.ECDSA(md_spec))
        return signature, signed_attrs

    def _build_signed_data(
        self, tst_info_data: bytes, md_algorithm: str, signature: bytes, signed_attrs: cms.CMSAttributes
    ) -> dict[str, Any]:
        data: dict[str, Any] = super()._build_signed_data(tst_info_data, md_algorithm, signature, signed_attrs)
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            for info in data["signer_infos"]:
                info["signature_algorithm"] = algos.SignedDigestAlgorithm({"algorithm": f"{md_algorithm}_ecdsa"})
        return data


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: PrivateKey
    issued_serials: frozenset[int]
    responder_cert: x509.Certificate  # signs this CA's OCSP answers: a delegated responder or the CA itself
    responder_key: PrivateKey


def _read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _read_key(path: Path | None, password: bytes | None) -> PrivateKey:
    if path is None:
        raise ValueError("this DemoPki has no CA keys on disk; re-create it with the current create_demo_pki")
    key = serialization.load_pem_private_key(path.read_bytes(), password)
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{path}: unsupported key type")
    return key


class PkiServices:
    """TSA, OCSP, CRL and caIssuers endpoints for one `DemoPki`, on 127.0.0.1 (a context manager)."""

    def __init__(self, *, tsa_auth: tuple[str, str] | None = None) -> None:
        self._expected_auth: SecretStr | None = (
            SecretStr("Basic " + base64.b64encode(f"{tsa_auth[0]}:{tsa_auth[1]}".encode()).decode())
            if tsa_auth
            else None
        )
        self.tsa_down = False
        self.revoked_serials: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.base_url = ""
        self._revoked_at: dict[int, dt.datetime] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._issuers: dict[str, _Issuer] = {}
        self._ca_der: dict[str, bytes] = {}
        self._stamper: _PreparedKeyTimeStamper | None = None

    def __repr__(self) -> str:
        return f"PkiServices(base_url={self.base_url!r}, running={self._runner is not None})"

    @property
    def tsa_url(self) -> str:
        return f"{self.base_url}/tsa"

    # -- lifecycle --------------------------------------------------------------------------

    def bind(self) -> str:
        """Reserve 127.0.0.1:<free port> now and return the base URL the certificates should name."""
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self._sock = sock
            self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.base_url

    def start(self, pki: DemoPki, *, passphrase: str | SecretStr | None = None) -> None:
        """Serve `pki` (made with services_url=self.bind()); the passphrase defaults to the PKI's."""
        self.bind()
        secret = passphrase if passphrase is not None else pki.passphrase
        password = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret or "").encode() or None
        self._load(pki, password)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sfsign-pki-services", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=_START_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop listening and close the port: the PKI's URLs then refuse connections."""
        loop, self._loop = self._loop, None
        if loop is not None:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=_START_TIMEOUT_SECONDS)
                self._runner = None
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=_START_TIMEOUT_SECONDS)
            loop.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PkiServices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _load(self, pki: DemoPki, password: bytes | None) -> None:
        root = _read_cert(pki.root_cert_pem_path)
        issuing = _read_cert(pki.issuing_cert_pem_path)
        leaves = [_read_cert(pki.signer_cert_path), _read_cert(pki.tsa_cert_path)]
        root_key = _read_key(pki.root_key_path, password)
        issuing_key = _read_key(pki.issuing_key_path, password)
        root_responder, issuing_responder = (root, root_key), (issuing, issuing_key)
        if pki.root_ocsp_cert_path is not None and pki.issuing_ocsp_cert_path is not None:
            root_responder = (_read_cert(pki.root_ocsp_cert_path), _read_key(pki.root_ocsp_key_path, password))
            issuing_responder = (
                _read_cert(pki.issuing_ocsp_cert_path),
                _read_key(pki.issuing_ocsp_key_path, password),
            )
        self._issuers = {
            ROOT_SLUG: _Issuer(root, root_key, frozenset({issuing.serial_number}), *root_responder),
            ISSUING_SLUG: _Issuer(issuing, issuing_key, frozenset(c.serial_number for c in leaves), *issuing_responder),
        }
        self._ca_der = {
            slug: issuer.cert.public_bytes(serialization.Encoding.DER) for slug, issuer in self._issuers.items()
        }
        self._stamper = _PreparedKeyTimeStamper(
            load_cert_from_pemder(str(pki.tsa_cert_path)),
            _read_key(pki.tsa_key_path, password),
            load_cert_from_pemder(str(pki.issuing_cert_pem_path)),
        )

    async def _serve(self) -> None:
        assert self._sock is not None
        app = web.Application()
        app.router.add_post("/tsa", self._tsa)
        app.router.add_post("/ocsp/{issuer}", self._ocsp_post)
        app.router.add_get("/ocsp/{issuer}/{request:.+}", self._ocsp_get)
        app.router.add_get("/crl/{issuer}.crl", self._crl)
        app.router.add_get("/certs/{issuer}.cer", self._cert)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    # -- endpoints --------------------------------------------------------------------------

    async def _tsa(self, request: web.Request) -> web.Response:
        if self.tsa_down:
            self.counts["tsa_refused"] += 1
            return web.Response(status=503, text="TSA unavailable (simulated outage)")
        if self._expected_auth is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), self._expected_auth.get_secret_value().encode()):
                self.counts["tsa_refused"] += 1
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="tsa"'})
        assert self._stamper is not None
        try:
            req = tsp.TimeStampReq.load(await request.read())
            response = self._stamper.request_tsa_response(req)
        except ValueError:
            return web.Response(status=400, text="not an RFC 3161 request")
        self.counts["tsa"] += 1
        return web.Response(body=response.dump(), content_type="application/timestamp-reply")

    def _issuer(self, request: web.Request) -> _Issuer:
        issuer = self._issuers.get(request.match_info["issuer"])
        if issuer is None:
            raise web.HTTPNotFound()
        return issuer

    async def _ocsp_post(self, request: web.Request) -> web.Response:
        return self._ocsp_answer(self._issuer(request), await request.read())

    async def _ocsp_get(self, request: web.Request) -> web.Response:
        issuer = self._issuer(request)
        try:
            der = base64.b64decode(request.match_info["request"], validate=True)
        except binascii.Error:
            return web.Response(status=400, text="bad base64")
        return self._ocsp_answer(issuer, der)

    def _revocation_time(self, serial: int) -> dt.datetime:
        """When a serial was first seen in `revoked_serials` (minus a minute, so it is in the past)."""
        if serial not in self._revoked_at:
            self._revoked_at[serial] = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
        return self._revoked_at[serial]

    def _ocsp_answer(self, issuer: _Issuer, der: bytes) -> web.Response:
        try:
            req = ocsp.load_der_ocsp_request(der)
        except ValueError:
            self.counts["ocsp_malformed"] += 1
            body = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
            return _der(body.public_bytes(serialization.Encoding.DER), "application/ocsp-response")
        serial = req.serial_number
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        revocation_time: dt.datetime | None = None
        if serial in self.revoked_serials:
            status, revocation_time = ocsp.OCSPCertStatus.REVOKED, self._revocation_time(serial)
        elif serial in issuer.issued_serials:
            status = ocsp.OCSPCertStatus.GOOD
        else:
            status = ocsp.OCSPCertStatus.UNKNOWN
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=req.issuer_name_hash,
                issuer_key_hash=req.issuer_key_hash,
                serial_number=serial,
                algorithm=req.hash_algorithm,
                cert_status=status,
                this_update=now,
                next_update=now + REVOCATION_INFO_VALIDITY,
                revocation_time=revocation_time,
                revocation_reason=x509.ReasonFlags.key_compromise if revocation_time else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.responder_cert)
        )
        if issuer.responder_cert is not issuer.cert:
            builder = builder.certificates([issuer.responder_cert])
        try:
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce)
            builder = builder.add_extension(nonce.value, critical=False)
        except x509.ExtensionNotFound:
            pass
        response = builder.sign(issuer.responder_key, hashes.SHA256())
        self.counts["ocsp"] += 1
        return _der(response.public_bytes(serialization.Encoding.DER), "application/ocsp-response")

    async def _crl(self, request: web.Request) -> web.Response:
        issuer = self._issuer(request)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(now)
            .next_update(now + REVOCATION_INFO_VALIDITY)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        )
        for serial in sorted(self.revoked_serials & issuer.issued_serials):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(self._revocation_time(serial))
                .build()
            )
        crl = builder.sign(issuer.key, hashes.SHA256())
        self.counts["crl"] += 1
        return _der(crl.public_bytes(serialization.Encoding.DER), "application/pkix-crl")

    async def _cert(self, request: web.Request) -> web.Response:
        der = self._ca_der.get(request.match_info["issuer"])
        if der is None:
            raise web.HTTPNotFound()
        self.counts["certs"] += 1
        return _der(der, "application/pkix-cert")


def _der(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, content_type=content_type)


def start_demo_pki_services(
    directory: Path,
    *,
    passphrase: str,
    tsa_auth: tuple[str, str] | None = None,
    **create_demo_pki_kwargs: Any,
) -> tuple[DemoPki, PkiServices]:
    """Bind a port, create a PKI whose certificates point at it, and serve it. Call `stop()` after."""
    services = PkiServices(tsa_auth=tsa_auth)
    base_url = services.bind()
    try:
        pki = create_demo_pki(directory, passphrase=passphrase, services_url=base_url, **create_demo_pki_kwargs)
        services.start(pki)
    except BaseException:
        services.stop()
        raise
    return pki, services
