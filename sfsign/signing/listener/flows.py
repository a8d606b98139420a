"""What each request on a signing link does: the link's page, "send me a code", the code, the signature, the
refusal, the page images and the PDF.

Every request starts the same way (`_open`): the client's rate limit, the token looked up by its hash (an
unknown and a malformed token take this one path to the one `unknown` page), the recipient's rate limit and
the browser's session. A form is accepted only with the session's CSRF token; a form that changes something
answers with a redirect to the link (post/redirect/get), whose page then shows the new state, so a reload
or a double click posts nothing twice (and the outbox records a second signature as `already_signed`).
Logs name the recipient by id: never the token, the code, an e-mail address or a name.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web

from sfsign.outbox.async_face import Outbox
from sfsign.outbox.envelope_models import CodeResult, SignerEvidence, TokenMatch, Visit
from sfsign.salesforce.names import REASON_LENGTH
from sfsign.signing.lifecycle import Clock
from sfsign.signing.listener.documents import About, Documents
from sfsign.signing.listener.i18n import from_accept_language, language, translator
from sfsign.signing.listener.limits import Limits, Windows
from sfsign.signing.listener.pages import STATUS, LinkState, Pages, link_state
from sfsign.signing.listener.session import COOKIE, Session, Sessions
from sfsign.signing.model import AuthMethod, RecipientState
from sfsign.signing.tokens import CODE_MAX_FAILURES, LinkKeys

log = structlog.get_logger("sfsign.signing.listener")
NAME_MAX = 120
UA_MAX = 512


@dataclass(frozen=True)
class Link:
    """One request's link: the recipient and envelope, the browser's session, where the link lives."""

    match: TokenMatch
    session: Session | None
    base: str  # /s/<token>
    lang: str
    about: About
    visit: Visit
    now: float

    @property
    def recipient_id(self) -> int:
        return self.match.recipient.id

    @property
    def authenticated(self) -> bool:
        """This browser may see the document: no code needed, or it typed the right one."""
        if self.match.envelope.auth_method is AuthMethod.NONE:
            return True
        return self.session is not None and self.session.authenticated_at is not None \
            and self.match.recipient.authenticated_at is not None


class Flows:
    """The handlers of the signing routes, over the outbox, the documents and the page templates."""

    def __init__(self, outbox: Outbox, keys: LinkKeys, documents: Documents, clock: Clock, *, secure: bool,
                 limits: Limits | None = None, download_s: float = 7 * 86_400.0, sessions: Sessions | None = None,
                 pages: Pages | None = None, proxy_hops: int = 0) -> None:
        self.outbox, self.keys, self.documents, self.clock = outbox, keys, documents, clock
        self.limits = limits or Limits()
        self.windows = Windows()
        self.sessions = sessions or Sessions()
        self.pages = pages or Pages()
        self.download_s = download_s
        self.secure = secure
        self.proxy_hops = proxy_hops

    def client_ip(self, request: web.Request) -> str:
        """The signer's address: the socket's peer, or with `proxy_hops` trusted proxies in front, the address
        the outermost of them saw (each appends its peer to X-Forwarded-For; what a client wrote before them
        is never trusted)."""
        if self.proxy_hops:
            hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
            if len(hops) >= self.proxy_hops and hops[-self.proxy_hops]:
                return hops[-self.proxy_hops][:64]
        return request.remote or "?"

    # --------------------------------------------------------------------------------- the common start

    async def _open(self, request: web.Request) -> Link:
        now = self.clock.now()
        ip = self.client_ip(request)
        if not self.windows.allow(f"ip:{ip}", self.limits.per_ip, now):
            log.info("signing.rate_limited", limit="ip")
            raise self.limited(request)
        token = request.match_info.get("token", "")
        match = await self.outbox.recipient_by_token(token)
        if match is None:
            log.info("signing.unknown_link")
            raise self.unknown(request)
        recipient = match.recipient
        if not self.windows.allow(f"r:{recipient.id}", self.limits.per_recipient, now):
            log.info("signing.rate_limited", limit="recipient", recipient=recipient.id)
            raise self.limited(request, match.envelope.language)
        session = self.sessions.read(request.cookies.get(COOKIE), recipient.id, recipient.token_generation, now)
        visit = Visit(ip=None if ip == "?" else ip, user_agent=request.headers.get("User-Agent", "")[:UA_MAX] or None)
        about = await self.documents.about(match.envelope.transaction_id)
        return Link(match, session, f"/s/{token}", language(match.envelope.language), about, visit, now)

    async def _form(self, request: web.Request, *, codes: bool = False) -> tuple[Link, dict[str, str]]:
        """A posted form's link and fields, once its CSRF token and the recipient's post limits allow it."""
        link = await self._open(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self.sessions.csrf_ok(link.session, form.get("csrf")):
            log.info("signing.csrf_refused", recipient=link.recipient_id)
            html = self.pages.message("session", link.lang, link.about, base=link.base, retry=True)
            raise web.HTTPForbidden(text=html, content_type="text/html")
        limit = self.limits.codes_per_recipient if codes else self.limits.posts_per_recipient
        if not self.windows.allow(f"{'code' if codes else 'post'}:{link.recipient_id}", limit, link.now):
            log.info("signing.rate_limited", limit="codes" if codes else "posts", recipient=link.recipient_id)
            raise self.limited(request, link.lang)
        return link, form

    # ----------------------------------------------------------------------------------------- pages

    async def show(self, request: web.Request) -> web.Response:
        link = await self._open(request)
        state = link_state(link.match, link.now)
        if state is not LinkState.LIVE:
            return self._state_page(link, state)
        recipient = link.match.recipient
        if recipient.state is RecipientState.INVITED:
            await self.outbox.mark_recipient_viewed(recipient.id, link.now, link.visit)
            log.info("signing.viewed", recipient=recipient.id)
        if not link.authenticated:
            path = self.documents.pdf(link.match.envelope.transaction_id)
            if path is not None:
                self.documents.warm(path)  # rendered while the signer reads their mail
            return self._code_page(link)
        return await self._sign_page(link)

    def _state_page(self, link: Link, state: LinkState) -> web.Response:
        recipient, envelope = link.match.recipient, link.match.envelope
        download_until = None
        if state is LinkState.COMPLETED and self._may_download(link):
            download_until = (envelope.completed_at or 0) + self.download_s
        html = self.pages.message(state.value, link.lang, link.about, base=link.base, reason=recipient.reason or "",
                                  until=recipient.locked_until, download_until=download_until)
        return self._page(link, html, STATUS.get(state, 200))

    def _code_page(self, link: Link, errors: list[tuple[str, str]] | None = None, status: int = 200) -> web.Response:
        recipient = link.match.recipient
        sent = recipient.code_expires_at is not None and recipient.code_expires_at > link.now
        session = link.session or self.sessions.new(recipient.id, recipient.token_generation, link.now)
        html = self.pages.render("code.html", link.lang, link.about, base=link.base, csrf=self.sessions.csrf(session),
                                 sent=sent or bool(errors), errors=errors or [], recipient_name=recipient.name)
        return self._page(link, html, status, session)

    async def _sign_page(self, link: Link, form: str = "", errors: list[tuple[str, str]] | None = None,
                         typed_name: str = "", status: int = 200) -> web.Response:
        recipient = link.match.recipient
        session = link.session or self.sessions.new(recipient.id, recipient.token_generation, link.now)
        path = self.documents.pdf(link.match.envelope.transaction_id)
        pages = await self.documents.page_count(path) if path is not None else 0
        html = self.pages.render("sign.html", link.lang, link.about, base=link.base, csrf=self.sessions.csrf(session),
                                 pages=pages, form=form, errors=errors or [], typed_name=typed_name,
                                 reason_max=REASON_LENGTH, recipient_name=recipient.name)
        return self._page(link, html, status, session)

    # ----------------------------------------------------------------------------------------- forms

    async def send_code(self, request: web.Request) -> web.Response:
        link, _ = await self._form(request, codes=True)
        if link_state(link.match, link.now) is LinkState.LIVE:
            outcome = await self.outbox.issue_code(link.recipient_id, link.now, self.keys, link.visit)
            log.info("signing.code_requested", recipient=link.recipient_id, result=outcome.result.value)
        return self._back(link)

    async def check_code(self, request: web.Request) -> web.Response:
        link, form = await self._form(request)
        if link_state(link.match, link.now) is not LinkState.LIVE or link.authenticated:
            return self._back(link)
        t = translator(link.lang)
        code = "".join(form.get("code", "").split())
        if not code:
            return self._code_page(link, [("code", t("code_missing"))], 400)
        outcome = await self.outbox.check_code(link.recipient_id, code, link.now, self.keys, link.visit)
        log.info("signing.code_checked", recipient=link.recipient_id, result=outcome.result.value)
        if outcome.result is CodeResult.VERIFIED:
            session = link.session or self.sessions.new(link.recipient_id, outcome.recipient.token_generation,
                                                        link.now)
            return self._back(link, self.sessions.authenticated(session, link.now))
        if outcome.result is CodeResult.WRONG:
            left = CODE_MAX_FAILURES - outcome.recipient.code_failures
            return self._code_page(link, [("code", t("code_wrong", left=left))], 400)
        if outcome.result is CodeResult.EXPIRED:
            return self._code_page(link, [("code", t("code_expired"))], 400)
        return self._back(link)  # locked, ended, not needed: the link's page says which

    async def sign(self, request: web.Request) -> web.Response:
        link, form = await self._form(request)
        if link_state(link.match, link.now) is not LinkState.LIVE or not link.authenticated:
            return self._back(link)
        t = translator(link.lang)
        name = " ".join(form.get("name", "").split())[:NAME_MAX]
        errors = ([("name", t("name_missing"))] if not name else []) + \
            ([("consent", t("consent_missing"))] if form.get("consent") != "yes" else [])
        if errors:
            return await self._sign_page(link, "sign", errors, name, 400)
        evidence = SignerEvidence(typed_name=name, consent=True, visit=link.visit)
        outcome = await self.outbox.mark_recipient_signed(link.recipient_id, evidence, link.now)
        log.info("signing.signed", recipient=link.recipient_id, result=outcome.result.value,
                 envelope_state=outcome.envelope.state.value)
        return self._back(link)

    async def decline(self, request: web.Request) -> web.Response:
        link, form = await self._form(request)
        if link_state(link.match, link.now) is not LinkState.LIVE or not link.authenticated:
            return self._back(link)
        reason = form.get("reason", "").strip()
        if not reason:
            return await self._sign_page(link, "decline", [("reason", translator(link.lang)("reason_missing"))],
                                         status=400)
        outcome = await self.outbox.mark_recipient_refused(link.recipient_id, reason, link.now, link.visit)
        log.info("signing.declined", recipient=link.recipient_id, result=outcome.result.value)
        return self._back(link)

    # ------------------------------------------------------------------------------------ documents

    async def page_image(self, request: web.Request) -> web.Response:
        link = await self._open(request)
        path = self.documents.pdf(link.match.envelope.transaction_id)
        if link_state(link.match, link.now) is not LinkState.LIVE or not link.authenticated or path is None:
            raise self.unknown(request, link.lang)
        number = int(request.match_info["page"])
        if not 1 <= number <= await self.documents.page_count(path):
            raise self.unknown(request, link.lang)
        png = await self.documents.page_png(path, number)
        return web.Response(body=png, content_type="image/png")

    async def pdf(self, request: web.Request) -> web.Response:
        """The document as a file: while live, to a browser that may see its pages; once completed, the
        signed copy to a recipient who signed, for `download_s` after completion."""
        link = await self._open(request)
        state = link_state(link.match, link.now)
        tx = link.match.envelope.transaction_id
        if state is LinkState.LIVE and link.authenticated:
            path = self.documents.pdf(tx)
        elif state is LinkState.COMPLETED and self._may_download(link):
            path = self.documents.pdf(tx, final=True)
        else:
            path = None
        if path is None:
            raise self.unknown(request, link.lang)
        log.info("signing.document_downloaded", recipient=link.recipient_id, final=state is LinkState.COMPLETED)
        return web.Response(body=await self.documents.read(path), content_type="application/pdf",
                            headers={"Content-Disposition": 'attachment; filename="document.pdf"'})

    def _may_download(self, link: Link) -> bool:
        envelope, recipient = link.match.envelope, link.match.recipient
        return (recipient.state is RecipientState.SIGNED and envelope.completed_at is not None
                and link.now < envelope.completed_at + self.download_s
                and self.documents.pdf(envelope.transaction_id, final=True) is not None)

    # -------------------------------------------------------------------------------------- answers

    def unknown(self, request: web.Request, lang: str | None = None) -> web.HTTPException:
        """The one answer for a link that does not exist, whatever was wrong with it."""
        lang = lang or from_accept_language(request.headers.get("Accept-Language"))
        html = self.pages.message(LinkState.UNKNOWN.value, lang, About())
        return web.HTTPNotFound(text=html, content_type="text/html")

    def limited(self, request: web.Request, lang: str | None = None) -> web.HTTPException:
        lang = lang or from_accept_language(request.headers.get("Accept-Language"))
        html = self.pages.message("limited", lang, About())
        return web.HTTPTooManyRequests(text=html, content_type="text/html",
                                       headers={"Retry-After": "60"})

    def _page(self, link: Link, html: str, status: int = 200, session: Session | None = None) -> web.Response:
        response = web.Response(text=html, status=status, content_type="text/html")
        if session is not None and session is not link.session:
            self._set_cookie(response, link, session)
        return response

    def _back(self, link: Link, session: Session | None = None) -> web.Response:
        response = web.Response(status=303, headers={"Location": link.base})
        if session is not None:
            self._set_cookie(response, link, session)
        return response

    def _set_cookie(self, response: web.StreamResponse, link: Link, session: Session) -> None:
        response.set_cookie(COOKIE, self.sessions.cookie(session), path=link.base, httponly=True, samesite="Lax",
                            secure=self.secure, max_age=int(session.expires_at - link.now))
