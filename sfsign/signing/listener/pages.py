"""Which page a link shows, and the pages themselves (jinja2, autoescaped, from files in `templates/`).

`link_state` is pure: the outbox's view of a recipient and their envelope, and the time, say which state
page a link shows, or `live` (the recipient may act: the code page or the document and its forms).
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from sfsign.outbox.envelope_models import TokenMatch
from sfsign.signing.listener.documents import About
from sfsign.signing.listener.i18n import translator
from sfsign.signing.model import EnvelopeState, RecipientState

TEMPLATES = Path(__file__).with_name("templates")


class LinkState(StrEnum):
    LIVE = "live"
    WAITING = "waiting"  # a later step: not their turn yet
    LOCKED = "locked"  # too many wrong codes, for now
    SIGNED = "signed"  # they signed; others have not yet
    YOU_DECLINED = "you_declined"
    COMPLETED = "completed"
    DECLINED = "declined"  # another signer declined
    EXPIRED = "expired"
    VOIDED = "voided"
    UNKNOWN = "unknown"  # no such link (unknown and malformed tokens alike)


_ENDED = {EnvelopeState.REFUSED: LinkState.DECLINED, EnvelopeState.EXPIRED: LinkState.EXPIRED,
          EnvelopeState.VOIDED: LinkState.VOIDED}


def link_state(match: TokenMatch, now: float) -> LinkState:
    """The recipient's own answer first (whatever became of the envelope since), then how the envelope
    ended, then whether it is their turn. An envelope past its expiry counts as expired before the
    scheduler has marked it."""
    recipient, envelope = match.recipient, match.envelope
    if recipient.state is RecipientState.REFUSED:
        return LinkState.YOU_DECLINED
    if envelope.state is EnvelopeState.COMPLETED:
        return LinkState.COMPLETED
    if recipient.state is RecipientState.SIGNED:
        return LinkState.SIGNED
    if envelope.state in _ENDED:
        return _ENDED[envelope.state]
    if envelope.expires_at <= now:
        return LinkState.EXPIRED
    if recipient.state is RecipientState.WAITING or recipient.step != envelope.current_step:
        return LinkState.WAITING
    if recipient.locked_until is not None and recipient.locked_until > now:
        return LinkState.LOCKED
    return LinkState.LIVE


#: The HTTP status of each state page: the unknown link is a 404, every other state a page the link shows.
STATUS = {LinkState.UNKNOWN: 404}


class Pages:
    """Renders the templates with the words of the page's language."""

    def __init__(self) -> None:
        self._env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                                undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def render(self, name: str, lang: str, about: About, **values: Any) -> str:
        values.setdefault("errors", [])
        return self._env.get_template(name).render(t=translator(lang), lang=lang, about=about, **values)

    def message(self, key: str, lang: str, about: About, *, base: str = "", reason: str = "",
                until: float | None = None, download_until: float | None = None, retry: bool = False) -> str:
        """A page with a heading and a sentence (`key`: a `LinkState` value, `session`, `limited`, `error`);
        for a completed envelope, the download link while it lasts."""
        t = translator(lang)
        fmt = t("time_format")
        text = t(f"{key}_text", reason=reason, until=_when(until, fmt)) if key in _WITH_VALUES else t(f"{key}_text")
        download = _when(download_until, fmt) if download_until else ""
        return self.render("message.html", lang, about, state=key, heading=f"{key}_heading", text=text, base=base,
                           download=download, retry=retry)


_WITH_VALUES = {LinkState.YOU_DECLINED.value, LinkState.LOCKED.value}


def _when(at: float | None, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(at or 0))
