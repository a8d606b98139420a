"""The signing pages' words in English and German, by key. The envelope's language picks them (its rule's
`language`); a page that knows no envelope (an unknown link) follows the browser's Accept-Language."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("en", "de")

_EN: dict[str, str] = {
    "title": "Sign a document",
    "skip": "Skip to content",
    "footer": "Signing service of {sender}. Your link is personal: do not forward it.",
    "footer_plain": "Signing service. Your link is personal: do not forward it.",
    "intro_heading": "{sender} asks you to sign",
    "intro_heading_plain": "You are asked to sign a document",
    "document": "Document",
    "from": "From",
    "contact": "Your contact",
    "for": "For",
    "code_heading": "Confirm it is you",
    "code_explain": "We send a one-time code to your e-mail address. You can read the document once you have typed it.",
    "send_code": "Send me a code",
    "send_again": "Send a new code",
    "code_sent": "We sent a code to your e-mail address. It is valid for 10 minutes.",
    "code_label": "Code from the e-mail (6 digits)",
    "check_code": "Confirm code",
    "code_wrong": "That code is not right. {left} tries left.",
    "code_expired": "That code has expired or was replaced by a newer one. Ask for a new code.",
    "code_missing": "Type the 6-digit code from the e-mail.",
    "read_heading": "Read the document",
    "page_alt": "Page {n} of {total}",
    "download_pdf": "Download the document (PDF)",
    "sign_heading": "Sign",
    "name_label": "Your full name",
    "name_missing": "Type your full name.",
    "consent_label": "I agree to sign this document electronically, and that my typed name is my signature.",
    "consent_missing": "Tick the box to agree to sign electronically.",
    "sign": "Sign",
    "decline_heading": "Decline",
    "decline_explain": "If you do not want to sign, tell the sender why. This ends the signing for everyone.",
    "reason_label": "Reason for declining",
    "reason_missing": "Give a reason for declining.",
    "decline": "Decline to sign",
    "form_errors": "Please correct the following:",
    "signed_heading": "You have signed",
    "signed_text": "Thank you. The others are still signing; you will receive the completed document by e-mail.",
    "completed_heading": "The document is signed",
    "completed_text": "Everyone has signed. The completed document was sent to you by e-mail.",
    "completed_download": "Download the signed document (PDF)",
    "completed_until": "The download is available until {until}.",
    "you_declined_heading": "You declined to sign",
    "you_declined_text": "The sender has been told. Your reason: {reason}",
    "declined_heading": "Signing was declined",
    "declined_text": "Another signer declined to sign this document, so it can no longer be signed.",
    "expired_heading": "This signing request has expired",
    "expired_text": "The deadline passed. Ask the sender for a new request if you still want to sign.",
    "voided_heading": "This signing request was withdrawn",
    "voided_text": "The sender withdrew the document. Nothing more is needed from you.",
    "waiting_heading": "It is not your turn yet",
    "waiting_text": "Others sign first. We will e-mail you when it is your turn.",
    "locked_heading": "Too many wrong codes",
    "locked_text": "For your security, codes are blocked until {until}. Then ask for a new code.",
    "unknown_heading": "This link does not work",
    "unknown_text": "Check that you opened the whole link from the e-mail. If it still does not work, ask the sender.",
    "session_heading": "Your session has expired",
    "session_text": "For your security, the form was not accepted. Open the link from the e-mail again.",
    "session_retry": "Back to the document",
    "limited_heading": "Too many requests",
    "limited_text": "Please wait a minute, then try again.",
    "error_heading": "Something went wrong",
    "error_text": "Please try again in a few minutes.",
    "time_format": "%d %B %Y, %H:%M UTC",
}

_DE: dict[str, str] = {
    "title": "Dokument unterschreiben",
    "skip": "Zum Inhalt springen",
    "footer": "Signaturdienst von {sender}. Ihr Link ist persönlich: Bitte leiten Sie ihn nicht weiter.",
    "footer_plain": "Signaturdienst. Ihr Link ist persönlich: Bitte leiten Sie ihn nicht weiter.",
    "intro_heading": "{sender} bittet Sie um Ihre Unterschrift",
    "intro_heading_plain": "Sie werden gebeten, ein Dokument zu unterschreiben",
    "document": "Dokument",
    "from": "Von",
    "contact": "Ihr Ansprechpartner",
    "for": "Für",
    "code_heading": "Bestätigen Sie, dass Sie es sind",
    "code_explain": "Wir senden Ihnen einen Einmalcode per E-Mail. Danach können Sie das Dokument lesen.",
    "send_code": "Code senden",
    "send_again": "Neuen Code senden",
    "code_sent": "Wir haben Ihnen einen Code per E-Mail gesendet. Er ist 10 Minuten gültig.",
    "code_label": "Code aus der E-Mail (6 Ziffern)",
    "check_code": "Code bestätigen",
    "code_wrong": "Dieser Code ist falsch. Noch {left} Versuche.",
    "code_expired": "Dieser Code ist abgelaufen oder wurde durch einen neueren ersetzt. Fordern Sie einen neuen an.",
    "code_missing": "Geben Sie den 6-stelligen Code aus der E-Mail ein.",
    "read_heading": "Dokument lesen",
    "page_alt": "Seite {n} von {total}",
    "download_pdf": "Dokument herunterladen (PDF)",
    "sign_heading": "Unterschreiben",
    "name_label": "Ihr vollständiger Name",
    "name_missing": "Geben Sie Ihren vollständigen Namen ein.",
    "consent_label": "Ich stimme zu, dieses Dokument elektronisch zu unterschreiben; mein eingegebener Name gilt als "
                     "meine Unterschrift.",
    "consent_missing": "Setzen Sie das Häkchen, um der elektronischen Unterschrift zuzustimmen.",
    "sign": "Unterschreiben",
    "decline_heading": "Ablehnen",
    "decline_explain": "Wenn Sie nicht unterschreiben möchten, nennen Sie dem Absender den Grund. Damit endet die "
                       "Unterzeichnung für alle.",
    "reason_label": "Grund der Ablehnung",
    "reason_missing": "Geben Sie einen Grund für die Ablehnung an.",
    "decline": "Unterschrift ablehnen",
    "form_errors": "Bitte korrigieren Sie:",
    "signed_heading": "Sie haben unterschrieben",
    "signed_text": "Vielen Dank. Die anderen unterschreiben noch; Sie erhalten das fertige Dokument per E-Mail.",
    "completed_heading": "Das Dokument ist unterschrieben",
    "completed_text": "Alle haben unterschrieben. Das fertige Dokument wurde Ihnen per E-Mail gesendet.",
    "completed_download": "Unterschriebenes Dokument herunterladen (PDF)",
    "completed_until": "Der Download ist bis {until} verfügbar.",
    "you_declined_heading": "Sie haben die Unterschrift abgelehnt",
    "you_declined_text": "Der Absender wurde informiert. Ihr Grund: {reason}",
    "declined_heading": "Die Unterschrift wurde abgelehnt",
    "declined_text": "Ein anderer Unterzeichner hat abgelehnt; das Dokument kann nicht mehr unterschrieben werden.",
    "expired_heading": "Diese Anfrage ist abgelaufen",
    "expired_text": "Die Frist ist verstrichen. Bitten Sie den Absender um eine neue Anfrage.",
    "voided_heading": "Diese Anfrage wurde zurückgezogen",
    "voided_text": "Der Absender hat das Dokument zurückgezogen. Sie müssen nichts weiter tun.",
    "waiting_heading": "Sie sind noch nicht an der Reihe",
    "waiting_text": "Andere unterschreiben zuerst. Wir schreiben Ihnen, sobald Sie an der Reihe sind.",
    "locked_heading": "Zu viele falsche Codes",
    "locked_text": "Zu Ihrer Sicherheit sind Codes bis {until} gesperrt. Fordern Sie danach einen neuen Code an.",
    "unknown_heading": "Dieser Link funktioniert nicht",
    "unknown_text": "Prüfen Sie, ob Sie den ganzen Link aus der E-Mail geöffnet haben. Sonst wenden Sie sich an den "
                    "Absender.",
    "session_heading": "Ihre Sitzung ist abgelaufen",
    "session_text": "Zu Ihrer Sicherheit wurde das Formular nicht angenommen. Öffnen Sie den Link aus der E-Mail "
                    "erneut.",
    "session_retry": "Zurück zum Dokument",
    "limited_heading": "Zu viele Anfragen",
    "limited_text": "Bitte warten Sie eine Minute und versuchen Sie es dann erneut.",
    "error_heading": "Etwas ist schiefgelaufen",
    "error_text": "Bitte versuchen Sie es in einigen Minuten erneut.",
    "time_format": "%d.%m.%Y, %H:%M UTC",
}

_STRINGS = {"en": _EN, "de": _DE}


def language(code: str | None) -> str:
    """A supported language for `code` (`de`, `de-AT`, …), English otherwise."""
    base = (code or "en").split("-")[0].strip().lower()
    return base if base in _STRINGS else "en"


def from_accept_language(header: str | None) -> str:
    """The first supported language the browser asks for (weights ignored: browsers list by preference)."""
    for part in (header or "").split(","):
        code = part.split(";")[0].strip().lower()
        if code and code.split("-")[0] in _STRINGS:
            return code.split("-")[0]
    return "en"


def translator(lang: str) -> Callable[..., str]:
    strings = _STRINGS[language(lang)]

    def t(key: str, **values: object) -> str:
        text = strings[key]
        return text.format(**values) if values else text

    return t
