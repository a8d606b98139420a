"""The signing pages over real HTTP on 127.0.0.1, against a real outbox file with an envelope made through
the library: each flow as a signer walks it, and each state's page. Checked by what the signer sees (the
page, its status) and what the outbox recorded (recipient and envelope states, the timeline, the mails)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from signing_site import ANNA, CARA, Site, browser, contract_pdf, csrf, signing_site

from sfsign.config import ConfigError
from sfsign.config.settings import load_settings
from sfsign.outbox.async_face import Outbox
from sfsign.outbox.envelope_models import MailState
from sfsign.signing.lifecycle import DAY, EventType
from sfsign.signing.listener import start_listener
from sfsign.signing.model import AuthMethod, EnvelopeState, MailKind, RecipientState
from sfsign.signing.tokens import LinkKeys

UA = "Mozilla/5.0 (X11; Linux x86_64) sfsign-test"


async def _post(client, site: Site, link: str, action: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    async with client.get(site.url + link) as page:
        data = {"csrf": csrf(await page.text()), **data}
    return await client.post(f"{site.url}{link}/{action}", data=data, allow_redirects=False)


async def _authenticate(client, site: Site, name: str = "Anna") -> None:  # type: ignore[no-untyped-def]
    link = site.links[name]
    async with await _post(client, site, link, "code", {}) as sent:
        assert sent.status == 303 and sent.headers["Location"] == link
    async with await _post(client, site, link, "verify", {"code": await site.code(name)}) as checked:
        assert checked.status == 303


async def test_a_signer_reads_asks_for_a_code_types_it_and_signs(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        link = site.links["Anna"]
        async with client.get(site.url + link, headers={"User-Agent": UA}) as first:
            html = await first.text()
        assert first.status == 200
        for shown in ("Nordlicht Software GmbH asks you to sign", "Quote Q-00042", "Rita Rep", "Anna Buyer",
                      "Send me a code"):
            assert shown in html
        assert "<img" not in html and "/pages/" not in html  # no document before the code
        assert (await site.recipient("Anna")).state is RecipientState.VIEWED

        async with await _post(client, site, link, "code", {}) as sent:
            assert sent.status == 303
        async with client.get(site.url + link) as asked:
            assert 'name="code"' in await asked.text()
        async with await _post(client, site, link, "verify", {"code": await site.code("Anna")}) as checked:
            assert checked.status == 303
        async with client.get(site.url + link) as reading:
            html = await reading.text()
        assert f'src="{link}/pages/1.png"' in html and f'src="{link}/pages/2.png"' in html
        assert 'alt="Page 2 of 2"' in html and 'id="consent"' in html
        async with client.get(f"{site.url}{link}/pages/2.png") as image:
            assert image.status == 200 and image.content_type == "image/png"
            assert (await image.read()).startswith(b"\x89PNG")

        async with await _post(client, site, link, "sign", {"name": " Anna  Buyer ", "consent": "yes"}) as signed:
            assert signed.status == 303
        async with client.get(site.url + link) as after:
            assert "You have signed" in await after.text()

        anna = await site.recipient("Anna")
        assert anna.state is RecipientState.SIGNED and anna.signed_name == "Anna Buyer"
        assert anna.ip == "127.0.0.1" and anna.user_agent is not None
        assert (await site.recipient("Cara")).state is RecipientState.INVITED  # the next step, invited once
        events = [e for e in await site.outbox.timeline(site.envelope.id) if e.recipient_id == anna.id]
        assert [e.type for e in events] == [EventType.INVITED, EventType.VIEWED, EventType.CODE_SENT,
                                            EventType.CODE_VERIFIED, EventType.SIGNED]
        assert events[-1].auth_method == AuthMethod.EMAIL_OTP.value


async def test_a_double_posted_signature_records_one(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA,)) as site, browser() as client:
        link = site.links["Anna"]
        await _authenticate(client, site)
        async with client.get(site.url + link) as page:
            token = csrf(await page.text())
        for _ in range(2):
            async with client.post(f"{site.url}{link}/sign", data={"csrf": token, "name": "Anna Buyer",
                                                                    "consent": "yes"}, allow_redirects=False) as r:
                assert r.status == 303
        signed = [e for e in await site.outbox.timeline(site.envelope.id) if e.type is EventType.SIGNED]
        assert len(signed) == 1
        assert (await site.current()).state is EnvelopeState.COMPLETED


async def test_signing_needs_the_typed_name_and_the_ticked_consent(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        await _authenticate(client, site)
        async with await _post(client, site, site.links["Anna"], "sign", {"name": "  "}) as refused:
            html = await refused.text()
        assert refused.status == 400
        assert "Type your full name." in html and "Tick the box to agree to sign electronically." in html
        assert 'role="alert"' in html
        assert (await site.recipient("Anna")).state is RecipientState.VIEWED


async def test_a_wrong_code_says_how_many_tries_are_left_and_five_lock(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        link = site.links["Anna"]
        async with await _post(client, site, link, "code", {}):
            pass
        right = await site.code("Anna")
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        async with await _post(client, site, link, "verify", {"code": wrong}) as first:
            assert first.status == 400 and "4 tries left" in await first.text()
        for _ in range(4):
            async with await _post(client, site, link, "verify", {"code": wrong}) as answer:
                pass
        assert answer.status == 303
        async with client.get(site.url + link) as locked:
            html = await locked.text()
        assert "Too many wrong codes" in html and 'data-state="locked"' in html
        async with client.get(f"{site.url}{link}/pages/1.png") as image:
            assert image.status == 404


async def test_declining_needs_a_reason_and_ends_the_envelope(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        link = site.links["Anna"]
        await _authenticate(client, site)
        async with await _post(client, site, link, "decline", {"reason": " "}) as missing:
            assert missing.status == 400 and "Give a reason for declining." in await missing.text()
        async with await _post(client, site, link, "decline", {"reason": "Prices <b>too</b> high"}) as declined:
            assert declined.status == 303
        async with client.get(site.url + link) as page:
            html = await page.text()
        assert "You declined to sign" in html and "Prices &lt;b&gt;too&lt;/b&gt; high" in html  # escaped
        assert (await site.current()).state is EnvelopeState.REFUSED
        async with client.get(site.url + site.links["Cara"]) as other:
            assert 'data-state="declined"' in await other.text()


async def test_each_state_has_its_page(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        async with client.get(site.url + site.links["Cara"]) as waiting:
            assert waiting.status == 200 and "It is not your turn yet" in await waiting.text()
        site.clock.t += 31 * DAY  # past the expiry, before the scheduler marked it
        async with client.get(site.url + site.links["Anna"]) as expired:
            assert "This signing request has expired" in await expired.text()
        site.clock.t -= 31 * DAY
        await site.outbox.void(site.envelope.transaction_id, "wrong prices", site.clock.now())
        async with client.get(site.url + site.links["Anna"]) as voided:
            assert "This signing request was withdrawn" in await voided.text()
        async with client.post(f"{site.url}{site.links['Anna']}/code", data={}, allow_redirects=False) as code:
            assert code.status == 403  # no session, no CSRF token: refused before anything else


async def test_a_completed_envelope_offers_its_document_for_a_limited_time(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA,), auth=AuthMethod.NONE) as site, \
            browser() as client:
        link = site.links["Anna"]
        async with client.get(site.url + link) as page:  # no code needed: the document at once
            assert "/pages/1.png" in await page.text()
        async with await _post(client, site, link, "sign", {"name": "Anna Buyer", "consent": "yes"}) as signed:
            assert signed.status == 303
        (site.artifacts / f"{site.envelope.transaction_id}.ltv.pdf").write_bytes(b"%PDF-1.7 final")
        async with client.get(site.url + link) as done:
            html = await done.text()
        assert "The document is signed" in html and f'href="{link}/document.pdf"' in html
        async with client.get(f"{site.url}{link}/document.pdf") as pdf:
            assert pdf.status == 200 and await pdf.read() == b"%PDF-1.7 final"
        site.clock.t += 8 * DAY
        async with client.get(site.url + link) as later:
            assert "document.pdf" not in await later.text()
        async with client.get(f"{site.url}{link}/document.pdf") as gone:
            assert gone.status == 404
        mails = await site.outbox.envelope_mails(site.envelope.id)
        assert [m.kind for m in mails if m.state is MailState.PENDING] == [MailKind.COMPLETED]


async def test_pages_speak_the_envelopes_language(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA, CARA), language="de") as site, \
            browser() as client:
        async with client.get(site.url + site.links["Anna"]) as page:
            html = await page.text()
        assert '<html lang="de">' in html and "Code senden" in html
        async with client.get(site.url + site.links["Cara"]) as waiting:
            assert "Sie sind noch nicht an der Reihe" in await waiting.text()


async def test_behind_a_trusted_proxy_the_signers_address_is_the_one_it_saw(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf(), signers=(ANNA,), auth=AuthMethod.NONE, proxy_hops=1) as site, \
            browser() as client:
        link = site.links["Anna"]
        forwarded = {"X-Forwarded-For": "10.9.9.9, 198.51.100.23"}  # the client wrote the first; the proxy the last
        async with client.get(site.url + link, headers=forwarded) as page:
            token = csrf(await page.text())
        async with client.post(f"{site.url}{link}/sign", data={"csrf": token, "name": "Anna Buyer", "consent": "yes"},
                               headers=forwarded, allow_redirects=False) as signed:
            assert signed.status == 303
        assert (await site.recipient("Anna")).ip == "198.51.100.23"


async def test_the_listener_starts_from_the_settings(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    keys = LinkKeys(b"q" * 32)
    try:
        assert await start_listener(outbox, keys, load_settings(signing_port=-1), tmp_path) is None
        listener = await start_listener(outbox, keys, load_settings(signing_port=0), tmp_path)
        assert listener is not None and listener.port
        try:
            async with browser() as client, client.get(f"http://127.0.0.1:{listener.port}/s/x") as unknown:
                assert unknown.status == 404
            with pytest.raises(ConfigError, match="SFSIGN_SIGNING_PORT"):
                await start_listener(outbox, keys, load_settings(signing_port=listener.port), tmp_path)
        finally:
            await listener.stop()
    finally:
        await outbox.close()


class _Tags(HTMLParser):
    """Collects what an accessibility check needs from a page: landmarks, labels, inputs, images' alt text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _accessible(html: str) -> None:
    parser = _Tags()
    parser.feed(html)
    tags = parser.tags
    names = [t for t, _ in tags]
    assert {"header", "main", "footer", "h1"} <= set(names) and names.count("h1") == 1
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in tags
    labelled = {a.get("for") for t, a in tags if t == "label"}
    for tag, attrs in tags:
        if tag in ("input", "textarea") and attrs.get("type") != "hidden":
            assert attrs.get("id") in labelled, attrs
        if tag == "img":
            assert attrs.get("alt")
        assert "tabindex" not in attrs or attrs["tabindex"] in ("-1", "0")  # the natural keyboard order


async def test_every_form_field_has_a_label_and_every_page_its_landmarks(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        link = site.links["Anna"]
        async with client.get(site.url + link) as start:
            _accessible(await start.text())
        await _authenticate(client, site)
        async with client.get(site.url + link) as document:
            _accessible(await document.text())
        async with client.get(site.url + site.links["Cara"]) as waiting:
            _accessible(await waiting.text())


async def test_an_unknown_link_answers_in_the_browsers_language(tmp_path: Path) -> None:
    async with signing_site(tmp_path, contract_pdf()) as site, browser() as client:
        async with client.get(f"{site.url}/s/nothing", headers={"Accept-Language": "de-DE,de;q=0.9"}) as page:
            assert page.status == 404 and "Dieser Link funktioniert nicht" in await page.text()
