"""The unsubscribe pages: small, accessible, no script, no external resource, strict CSP."""

from __future__ import annotations

import base64
import hashlib
import html

TEXTS: dict[str, dict[str, str]] = {
    "en": {"title": "Unsubscribe",
           "done_title": "Unsubscribed",
           "question": "Stop receiving messages from {controller} at this address?",
           "button": "Unsubscribe", "done": "Done: {controller} will not write to you again "
           "at this address.", "gone": "This link is not valid.",
           "gone_write": "To stop receiving these messages, write to {dpo_email}.",
           "busy": "Your request could not be recorded just now. Please try again in a "
           "moment."},
    "fr": {"title": "Désabonnement",
           "done_title": "Désabonnement confirmé",
           # "envoyés par": "de {controller}" needs "d'" before a vowel ("d'ACME SAS")
           "question": "Ne plus recevoir à cette adresse les messages envoyés par "
           "{controller} ?",
           "button": "Me désabonner", "done": "C'est fait : {controller} ne vous écrira plus "
           "à cette adresse.", "gone": "Ce lien n'est pas valide.",
           "gone_write": "Pour ne plus recevoir ces messages, écrivez à {dpo_email}.",
           "busy": "Votre demande n'a pas pu être enregistrée à l'instant. Veuillez "
           "réessayer dans un moment."},
    "de": {"title": "Abmelden",
           "done_title": "Abgemeldet",
           "question": "Keine Nachrichten von {controller} mehr an diese Adresse erhalten?",
           "button": "Abmelden", "done": "Erledigt: {controller} schreibt Ihnen an diese "
           "Adresse nicht mehr.", "gone": "Dieser Link ist nicht gültig.",
           "gone_write": "Um diese Nachrichten nicht mehr zu erhalten, schreiben Sie an "
           "{dpo_email}.",
           "busy": "Ihre Anfrage konnte gerade nicht gespeichert werden. Bitte versuchen "
           "Sie es gleich noch einmal."},
    "es": {"title": "Darse de baja",
           "done_title": "Baja confirmada",
           "question": "¿Dejar de recibir mensajes de {controller} en esta dirección?",
           "button": "Darme de baja", "done": "Hecho: {controller} no volverá a escribirle "
           "a esta dirección.", "gone": "Este enlace no es válido.",
           "gone_write": "Para dejar de recibir estos mensajes, escriba a {dpo_email}.",
           "busy": "Su solicitud no se ha podido registrar en este momento. Vuelva a "
           "intentarlo dentro de un momento."},
    "it": {"title": "Annulla iscrizione",
           "done_title": "Iscrizione annullata",
           "question": "Non ricevere più messaggi da {controller} a questo indirizzo?",
           "button": "Annulla iscrizione", "done": "Fatto: {controller} non ti scriverà più "
           "a questo indirizzo.", "gone": "Questo link non è valido.",
           "gone_write": "Per non ricevere più questi messaggi, scrivi a {dpo_email}.",
           "busy": "Non è stato possibile registrare la richiesta in questo momento. "
           "Riprova tra poco."},
}

# a background of its own with the colour (WCAG F24: a user's dark default under #222 text),
# long words wrapped and a smaller heading (a long company name or a large default font
# made the page scroll sideways at 320 px, WCAG 1.4.10)
STYLE = ("html{background:#fff;color:#222}"
         "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
         "line-height:1.5;overflow-wrap:anywhere}h1{font-size:1.6rem}"
         "button{font:inherit;font-size:1.1rem;padding:.6rem 1.2rem;cursor:pointer}")
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# no script, no external resource, no framing, forms only back to us
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY"}


def texts_for(language: str | None, default: str) -> tuple[str, dict[str, str]]:
    for candidate in ((language or "").split("-")[0].lower(), default.lower(), "en"):
        if candidate in TEXTS:
            return candidate, TEXTS[candidate]
    return "en", TEXTS["en"]


def page(language: str, title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="{html.escape(language)}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n")


def confirm_page(language: str, texts: dict[str, str], controller: str) -> str:
    question = html.escape(texts["question"].format(controller=controller))
    return page(language, texts["title"],
                f"<p>{question}</p>"
                '<form method="post"><input type="hidden" name="confirm" value="yes">'
                f'<button type="submit">{html.escape(texts["button"])}</button></form>')


def done_page(language: str, texts: dict[str, str], controller: str) -> str:
    done = html.escape(texts["done"].format(controller=controller))
    return page(language, texts["done_title"], f'<p role="status">{done}</p>')


def not_found_page(language: str, texts: dict[str, str], dpo_email: str = "") -> str:
    """The same neutral answer for every unknown, truncated, forged or foreign token (in the
    controller's language: nothing tells whose the token was), with the address to object
    to in writing: a link that no longer works must not leave the person without a way."""
    body = f"<p>{html.escape(texts['gone'])}</p>"
    if dpo_email:
        link = (f'<a href="mailto:{html.escape(dpo_email)}">{html.escape(dpo_email)}</a>')
        body += "<p>" + html.escape(texts["gone_write"]).replace(
            "{dpo_email}", link) + "</p>"
    return page(language, texts["title"], body)


def busy_page(language: str, texts: dict[str, str]) -> str:
    """The store could not record the objection now (503, Retry-After): said, not "done"."""
    return page(language, texts["title"], f'<p role="alert">{html.escape(texts["busy"])}</p>')
