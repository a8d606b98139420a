"""The demo PKI's HTTP services: OCSP, CRL, caIssuers and TSA answers checked with independent parsers
(cryptography, asn1crypto), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime as dt
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from secret_scan import register_secret

from sfsign.localpki.pki import DemoPki, create_demo_pki
from sfsign.localpki.pkiserver import PkiServices, start_demo_pki_services

TSA_USER, TSA_PASSWORD = "tsa-user", "tsa-test-password"  # a test credential for the local TSA only
register_secret(TSA_PASSWORD)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Iterator[tuple[DemoPki, PkiServices]]:
    pki, svc = start_demo_pki_services(
        tmp_path_factory.mktemp("served-pki"),
        passphrase=passphrase,
        key_algorithm="ec-p256",
        tsa_auth=(TSA_USER, TSA_PASSWORD),
    )
    yield pki, svc
    svc.stop()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ocsp_request(pki: DemoPki, *, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        _cert(pki.signer_cert_path), _cert(pki.issuing_cert_pem_path), hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_certificates_point_at_the_services(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    signer = _cert(pki.signer_cert_path)
    aia = signer.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: d.access_location.value for d in aia}
    assert urls[AuthorityInformationAccessOID.OCSP] == f"{svc.base_url}/ocsp/issuing"
    assert urls[AuthorityInformationAccessOID.CA_ISSUERS] == f"{svc.base_url}/certs/issuing.cer"
    crldp = signer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert crldp[0].full_name is not None and crldp[0].full_name[0].value == f"{svc.base_url}/crl/issuing.crl"
    issuing = _cert(pki.issuing_cert_pem_path)
    aia = issuing.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {f"{svc.base_url}/ocsp/root", f"{svc.base_url}/certs/root.cer"}
    root = _cert(pki.root_cert_pem_path)
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_ocsp_answers_good_with_the_nonce_signed_by_a_delegated_responder(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    before = svc.counts["ocsp"]
    nonce = os.urandom(16)
    status, body = _http(
        f"{svc.base_url}/ocsp/issuing", _ocsp_request(pki, nonce=nonce), {"Content-Type": "application/ocsp-request"}
    )
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == _cert(pki.signer_cert_path).serial_number
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert response.next_update_utc is not None and response.this_update_utc is not None
    assert response.next_update_utc - response.this_update_utc == dt.timedelta(days=7)
    (responder,) = response.certificates
    assert ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    responder.verify_directly_issued_by(_cert(pki.issuing_cert_pem_path))
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert svc.counts["ocsp"] == before + 1


def test_ocsp_get_with_base64_path_and_revoked_serials(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    serial = _cert(pki.signer_cert_path).serial_number
    encoded = base64.b64encode(_ocsp_request(pki)).decode()
    svc.revoked_serials.add(serial)
    try:
        status, body = _http(f"{svc.base_url}/ocsp/issuing/{encoded}")
    finally:
        svc.revoked_serials.discard(serial)
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc is not None and response.revocation_time_utc < dt.datetime.now(dt.UTC)


def test_ocsp_for_a_certificate_the_ca_never_issued_is_unknown(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    status, body = _http(f"{svc.base_url}/ocsp/root", _ocsp_request(pki))  # the signer was not issued by root
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_crl_is_signed_by_the_ca_and_lists_revoked_serials(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    issuing = _cert(pki.issuing_cert_pem_path)
    serial = _cert(pki.tsa_cert_path).serial_number
    status, body = _http(f"{svc.base_url}/crl/issuing.crl")
    assert status == 200
    crl = x509.load_der_x509_crl(body)
    issuing_key = issuing.public_key()
    assert isinstance(issuing_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(issuing_key) and crl.issuer == issuing.subject
    assert crl.get_revoked_certificate_by_serial_number(serial) is None
    svc.revoked_serials.add(serial)
    try:
        crl = x509.load_der_x509_crl(_http(f"{svc.base_url}/crl/issuing.crl")[1])
    finally:
        svc.revoked_serials.discard(serial)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_ca_issuers_serve_der_certificates_and_unknown_names_are_404(served: tuple[DemoPki, PkiServices]) -> None:
    pki, svc = served
    status, body = _http(f"{svc.base_url}/certs/root.cer")
    assert status == 200 and x509.load_der_x509_certificate(body) == _cert(pki.root_cert_pem_path)
    assert _http(f"{svc.base_url}/certs/nobody.cer")[0] == 404
    assert _http(f"{svc.base_url}/crl/nobody.crl")[0] == 404


def _tsa_request() -> bytes:
    req = tsp.TimeStampReq(
        {
            "version": 1,
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": os.urandom(32)},
            "nonce": 12345,
            "cert_req": True,
        }
    )
    return req.dump()


def test_tsa_requires_its_credentials_and_can_be_switched_off(served: tuple[DemoPki, PkiServices]) -> None:
    _pki, svc = served
    headers = {"Content-Type": "application/timestamp-query"}
    assert _http(svc.tsa_url, _tsa_request(), headers)[0] == 401
    auth = {**headers, "Authorization": "Basic " + base64.b64encode(f"{TSA_USER}:{TSA_PASSWORD}".encode()).decode()}
    before = svc.counts["tsa"]
    status, body = _http(svc.tsa_url, _tsa_request(), auth)
    assert status == 200
    response = tsp.TimeStampResp.load(body)
    assert response["status"]["status"].native == "granted"
    token = response["time_stamp_token"]["content"]
    assert token["encap_content_info"]["content"].parsed["nonce"].native == 12345
    assert token["signer_infos"][0]["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    assert svc.counts["tsa"] == before + 1
    svc.tsa_down = True
    try:
        assert _http(svc.tsa_url, _tsa_request(), auth)[0] == 503
    finally:
        svc.tsa_down = False
    assert TSA_PASSWORD not in repr(svc)


def test_stop_closes_the_port(tmp_path: Path, passphrase: str) -> None:
    _pki, svc = start_demo_pki_services(tmp_path / "pki", passphrase=passphrase, key_algorithm="ec-p256")
    with svc:
        assert _http(f"{svc.base_url}/certs/root.cer")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{svc.base_url}/certs/root.cer", timeout=5)


def test_pki_without_services_has_no_revocation_pointers_but_keeps_the_ca_keys(tmp_path: Path, passphrase: str) -> None:
    pki = create_demo_pki(tmp_path / "plain", passphrase=passphrase, key_algorithm="ec-p256")
    with pytest.raises(x509.ExtensionNotFound):
        _cert(pki.signer_cert_path).extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert pki.services_url is None and pki.root_ocsp_cert_path is None
    assert pki.root_key_path is not None and pki.issuing_key_path is not None
    for path in (pki.root_key_path, pki.issuing_key_path):
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes() and (path.stat().st_mode & 0o777) == 0o600
