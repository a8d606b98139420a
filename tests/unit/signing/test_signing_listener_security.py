"""The web rules of issue 14 part 7 on the signing pages, one test each, over real HTTP against a real outbox:
CSRF on every form, the security headers, rate limits per client and per recipient, the same answer for
unknown and malformed links, nothing without a valid link and no document before the code, and logs that
name recipients by id only."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from signing_site import ABOUT, ANNA, KEYS, Site, browser, contract_pdf, csrf, signing_site
from structlog.testing import LogCapture

from sfsign.signing.listener import Limit, Limits
from sfsign.signing.model import MailKind, RecipientState

FORMS = ("code", "verify", "sign", "decline")


async def _code_mails(site: Site) -> int:
    return len([m for m in await site.outbox.envelope_mails(site.envelope.id) if m.kind is MailKind.CODE])


async def _signed_in(client, site: Site) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Anna's browser after the right code; returns its CSRF token and the code it typed."""
    link = site.links["Anna"]
    async with client.get(site.url + link) as page:
        token = csrf(await page.text())
    async with client.post(f"{site.url}{link}/code", data={"csrf": token}, allow_redirects=False):
        pass
    code = await site.code("Anna")
    async with client.post(f"{site.url}{link}/verify", data={"csrf": token, "code": code},
                           allow_redirects=False) as verified:
        assert verified.status == 303
    async with client.get(site.url + link) as page:
        return csrf(await page.text()), code


async def test_no_form_is_accepted_without_the_sessions_csrf_token(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as anna, browser() as other:
        link = site.links["Anna"]
        async with anna.get(site.url + link):
            pass  # Anna's browser has a session
        async with other.get(site.url + link) as page:
            foreign = csrf(await page.text())  # a token of another session
        for form in FORMS:
            for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": foreign}):
                async with anna.post(f"{site.url}{link}/{form}", data={**data, "code": "123456", "name": "X",
                                                                        "consent": "yes", "reason": "r"},
                                     allow_redirects=False) as refused:
                    assert refused.status == 403, (form, data)
                    assert "Your session has expired" in await refused.text()
        assert await _code_mails(site) == 0
        assert (await site.recipient("Anna")).state is RecipientState.VIEWED


async def test_a_csrf_token_of_one_link_does_not_work_on_another(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA, ANNA.__class__(
            1, "Bea Buyer", "bea@example.com", ANNA.source))) as site, browser() as client:
        async with client.get(site.url + site.links["Anna"]) as page:
            token = csrf(await page.text())
        async with client.get(site.url + site.links["Bea"]):
            pass
        async with client.post(f"{site.url}{site.links['Bea']}/code", data={"csrf": token},
                               allow_redirects=False) as refused:
            assert refused.status == 403


async def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        await _signed_in(client, site)
        link = site.links["Anna"]
        answers = []
        for path in (link, f"{link}/pages/1.png", f"{link}/document.pdf", "/s/unknown", "/nowhere"):
            async with client.get(site.url + path) as answer:
                answers.append((path, answer.status, answer.headers))
        async with client.post(f"{site.url}{link}/code", data={}, allow_redirects=False) as refused:
            answers.append(("post", refused.status, refused.headers))
    assert [status for _, status, _ in answers] == [200, 200, 200, 404, 404, 403]
    for path, _, headers in answers:
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store", path


async def test_pages_have_no_inline_script_or_style(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        await _signed_in(client, site)
        async with client.get(site.url + site.links["Anna"]) as page:
            html = await page.text()
    assert "<script" not in html and "<style" not in html and " style=" not in html and "javascript:" not in html
    assert 'href="/static/signing.css"' in html and "http://" not in html and "https://" not in html


async def test_unknown_and_malformed_links_get_the_same_answer(tmp_path: Path) -> None:
    unknown = KEYS.link_token("tx-sign-1", 999, 1)  # well formed, never issued
    tokens = [unknown, secrets.token_urlsafe(32), "", "not-a-token", "x" * 400, "%C3%A9%00%FF", "..%2F..%2Fetc"]
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        answers = set()
        for token in tokens:
            async with client.get(f"{site.url}/s/{token}") as answer:
                answers.add((answer.status, await answer.text()))
        for token in tokens[:2]:
            for suffix in ("/pages/1.png", "/document.pdf"):
                async with client.get(f"{site.url}/s/{token}{suffix}") as answer:
                    answers.add((answer.status, await answer.text()))
    assert len(answers) == 1
    status, html = answers.pop()
    assert status == 404 and "This link does not work" in html


async def test_no_document_before_the_code_and_not_for_a_forwarded_link(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as anna, browser() as forwarded:
        link = site.links["Anna"]
        for path in (f"{link}/pages/1.png", f"{link}/document.pdf"):
            async with anna.get(site.url + path) as before:
                assert before.status == 404
        await _signed_in(anna, site)
        async with anna.get(f"{site.url}{link}/pages/1.png") as image:
            assert image.status == 200
        # the same link in another browser (a forwarded mail): the code page, no document
        async with forwarded.get(site.url + link) as page:
            html = await page.text()
        assert "Send me a code" in html and "/pages/" not in html
        for path in (f"{link}/pages/1.png", f"{link}/document.pdf"):
            async with forwarded.get(site.url + path) as image:
                assert image.status == 404
        async with forwarded.post(f"{site.url}{link}/sign", data={"csrf": csrf(html), "name": "Mallory",
                                                                   "consent": "yes"}, allow_redirects=False) as r:
            assert r.status == 303
        assert (await site.recipient("Anna")).state is RecipientState.VIEWED  # not signed by the forwarded link


async def test_too_many_requests_from_one_address_get_the_429_page(tmp_path: Path) -> None:
    limits = Limits(per_ip=Limit(5, 60.0))
    async with signing_site(tmp_path, contract_pdf(), limits=limits) as site, browser() as client:
        statuses = []
        for _ in range(7):
            async with client.get(f"{site.url}/s/{secrets.token_urlsafe(32)}") as answer:
                statuses.append(answer.status)
                last = (await answer.text(), answer.headers)
        assert statuses == [404] * 5 + [429] * 2
        assert "Too many requests" in last[0] and last[1]["Retry-After"] == "60"
        async with client.get(site.url + site.links["Anna"]) as valid:
            assert valid.status == 429  # the address is limited, whatever link it opens
        site.clock.t += 61
        async with client.get(site.url + site.links["Anna"]) as later:
            assert later.status == 200


async def test_a_recipient_cannot_be_flooded_with_codes(tmp_path: Path) -> None:
    limits = Limits(codes_per_recipient=Limit(2, 900.0))
    async with signing_site(tmp_path, contract_pdf(), limits=limits) as site, browser() as client:
        link = site.links["Anna"]
        async with client.get(site.url + link) as page:
            token = csrf(await page.text())
        statuses = []
        for _ in range(3):
            async with client.post(f"{site.url}{link}/code", data={"csrf": token}, allow_redirects=False) as r:
                statuses.append(r.status)
        assert statuses == [303, 303, 429]
        assert await _code_mails(site) == 2


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    previous = structlog.get_config()
    capture = LogCapture()
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.configure(**previous)


async def test_logs_name_recipients_by_id_only(tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA,)) as site, browser() as client:
        token, code = await _signed_in(client, site)
        link = site.links["Anna"]
        async with client.post(f"{site.url}{link}/sign", data={"csrf": token, "name": "Anna Buyer",
                                                                "consent": "yes"}, allow_redirects=False):
            pass
        async with client.get(f"{site.url}/s/{secrets.token_urlsafe(32)}"):
            pass
    events = {e["event"] for e in logs}
    assert {"signing.viewed", "signing.code_requested", "signing.code_checked", "signing.signed",
            "signing.unknown_link"} <= events
    assert all(e["recipient"] == 1 for e in logs if e["event"] in events - {"signing.unknown_link",
                                                                             "signing pages listening"})
    text = repr(logs)
    for secret in (link.removeprefix("/s/"), code, ANNA.email, ANNA.name, "Anna", ABOUT.rep_email, token):
        assert secret not in text
