"""The notice every allowed copy carries (COMPLIANCE.md section 4.2), rendered per recipient.

Pure: templates come in as values (gateway.notice_templates loads them). Every value taken from the
ledger or the config is cleaned of control characters (no CR/LF, no terminal escapes) and, in
the HTML version, escaped; links are only http(s) or mailto.
"""

from __future__ import annotations

import html
import re
import textwrap
from dataclasses import dataclass

WIDTH = 76
SEPARATOR = "-- "  # the usual signature separator: readers and format=flowed know it
# control characters, and the invisible ones that reorder or hide text (bidi overrides and
# isolates, zero-width, BOM): a source name holding U+202E turned the rest of its line around;
# and the private-use area, whose U+E000 is NoticeCache's stand-in for the unsubscribe link (a
# source name of them showed the person's own link as where the address came from)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029"
                      r"\u2060-\u2069\ue000-\uf8ff\ufeff]")
_LINK_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029"
                           r"\u2060-\u2069\ufeff]")  # the link may be the cache's stand-in
_LINE_BREAKS = re.compile(r"[ \t]*[\r\n]+[ \t]*")
_LINK = re.compile(r"^(https?://|mailto:)[^\s<>\"']+$")
URL_FIELDS = ("privacy_url", "unsubscribe_url", "controller_address")
LINES = ("intro", "controller", "why", "source", "retention", "rights", "privacy",
         "unsubscribe")
WHY = {"R5": "why_R5", "R6": "why_R6", "R7": "why_R7", "R8": "why_R8", "T1": "why_T1"}


@dataclass(frozen=True)
class NoticeTemplate:
    language: str
    version: str
    texts: dict[str, str]


@dataclass(frozen=True)
class NoticeFacts:
    """What one recipient's notice says."""

    controller: str
    controller_address: str
    privacy_url: str
    dpo_email: str
    retention_years: int
    unsubscribe_url: str
    rule: str  # the rule that allowed the copy: the notice says why in plain words
    consent_date: str | None = None  # ISO date, for R6
    sources: tuple[str, ...] = ()  # named when the data was not collected from the person
    full: bool = False  # first message to a person not asked directly: GDPR 14 in full


@dataclass(frozen=True)
class Notice:
    language: str
    version: str
    plain: str  # lines joined with "\n", no trailing newline
    html: str


def clean(text: str) -> str:
    """One line of plain text: control characters (CR, LF, ESC ...) become spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def choose(templates: dict[str, NoticeTemplate], language: str | None,
           default: str) -> NoticeTemplate:
    """The contact's language (the whole tag, e.g. a pt-br template, then its primary
    subtag), else the controller's likewise, else English. Tags compare in lower case, as
    the templates are keyed."""
    found = find_template(templates, language) or find_template(templates, default)
    return found or templates.get("en") or next(iter(templates.values()))


def find_template(templates: dict[str, NoticeTemplate],
                  language: str | None) -> NoticeTemplate | None:
    """The template for `language`: its whole tag, else its primary subtag; None."""
    tag = (language or "").lower()
    return templates.get(tag) or templates.get(tag.split("-")[0]) if tag else None


def render(template: NoticeTemplate, facts: NoticeFacts) -> Notice:
    texts = template.texts
    values = {
        "controller": clean(facts.controller),
        "controller_address": clean(facts.controller_address),
        "privacy_url": clean(facts.privacy_url), "dpo_email": clean(facts.dpo_email),
        "retention_years": str(facts.retention_years),
        "unsubscribe_url": " ".join(_LINK_CONTROL.sub(" ", facts.unsubscribe_url).split()),
        "consent_date": clean(facts.consent_date or ""),
        "sources": ", ".join(clean(s) for s in facts.sources),
    }
    chosen: list[str] = []
    for key in LINES:
        if key == "why":
            key = WHY.get(facts.rule, "why_other")
            if key == "why_R6" and not facts.consent_date:
                key = "why_other"
        if key == "source" and not facts.sources:
            continue
        if key == "retention" and facts.retention_years == 1 and "retention_one" in texts:
            key = "retention_one"  # "1 years", "1 ans" otherwise
        chosen.append(texts[key])
    if facts.full:
        chosen.append(texts["full"])
        # GDPR 14(1)(c), 14(2)(b) and (d): the legal basis actually used, and how to
        # withdraw or object (a template of the operator's without these lines says it in
        # its own words)
        basis = "basis_consent" if facts.rule == "R6" else "basis_interest"
        if basis in texts:
            chosen.append(texts[basis])
    plain_lines: list[str] = [SEPARATOR]
    html_parts: list[str] = []
    html_values = {k: _html_value(k, v) for k, v in values.items()}
    for text in chosen:
        line = text.format_map(values)
        plain_lines.extend(textwrap.wrap(line, WIDTH, break_long_words=False,
                                         break_on_hyphens=False) or [""])
        html_parts.append(f'<p style="{_P_STYLE}">'
                          f"{html.escape(text, quote=False).format_map(html_values)}</p>")
    block = '<div lang="{lang}" style="{style}">{body}</div>'.format(
        lang=html.escape(template.language), style=_DIV_STYLE, body="".join(html_parts))
    # a line break in a template or a value (a TOML multi-line string, a controller address
    # on two lines) is a space in HTML, and must not reach the copy as a bare line end
    block = _LINE_BREAKS.sub(" ", block)
    return Notice(template.language, template.version, "\n".join(plain_lines), block)


# The notice and its links must show whatever the message's own stylesheet says: a
# `div[lang]{display:none}` or `a[href*="/u/"]{display:none}` in the tool's HTML hid them
# (compliance audit, headless Chromium). A declaration in a style attribute marked
# !important wins over any stylesheet's (CSS Cascade 4, 6.1); the div is also positioned
# above a page-covering overlay, on a background of its own.
_SHOWN = ("visibility:visible !important;opacity:1 !important;clip:auto !important;"
          "clip-path:none !important;transform:none !important;filter:none !important;"
          "height:auto !important;max-height:none !important;overflow:visible !important;"
          "text-indent:0 !important;font-size:12px !important;line-height:1.4 !important;")
_DIV_STYLE = (f"display:block !important;{_SHOWN}position:relative !important;"
              "z-index:2147483647 !important;background:#fff !important;color:#555 !important;"
              "margin-top:24px;padding-top:8px;border-top:1px solid #ccc")
_P_STYLE = f"display:block !important;{_SHOWN}color:#555 !important;margin:0 0 6px 0"
_A_STYLE = f"display:inline !important;{_SHOWN}color:#1155cc !important"


def _html_value(key: str, value: str) -> str:
    escaped = html.escape(value)
    if key in URL_FIELDS and _LINK.match(value):
        return f'<a href="{escaped}" style="{_A_STYLE}">{escaped}</a>'
    if key == "dpo_email" and "@" in value and _LINK.match("mailto:" + value):
        return f'<a href="mailto:{escaped}" style="{_A_STYLE}">{escaped}</a>'
    return escaped


class NoticeCache:
    """`render`, remembered. Of a copy's facts only the unsubscribe URL is new each time, and
    its token has a fixed length: the notice is rendered once with a stand-in URL of the same
    length (so every line breaks where it would), and the real URL replaces the stand-in.
    ~95 us per copy become a dict lookup and two replaces. A URL that cleaning or escaping
    would change is rendered directly."""

    def __init__(self, limit: int = 4096) -> None:
        self._notices: dict[tuple[object, ...], Notice] = {}
        self._limit = limit

    def render(self, template: NoticeTemplate, facts: NoticeFacts) -> Notice:
        url = facts.unsubscribe_url
        scheme = _LINK.match(url)
        if scheme is None or clean(url) != url or html.escape(url) != url:
            return render(template, facts)
        stand_in = scheme.group(1) + _STAND_IN * (len(url) - len(scheme.group(1)))
        key = (template.language, template.version, id(template.texts), facts.controller,
               facts.controller_address, facts.privacy_url, facts.dpo_email,
               facts.retention_years, stand_in, facts.rule, facts.consent_date, facts.sources,
               facts.full)
        notice = self._notices.get(key)
        if notice is None:
            if len(self._notices) >= self._limit:
                self._notices.clear()
            notice = self._notices[key] = render(template, NoticeFacts(
                facts.controller, facts.controller_address, facts.privacy_url,
                facts.dpo_email, facts.retention_years, stand_in, facts.rule,
                facts.consent_date, facts.sources, facts.full))
        return Notice(notice.language, notice.version, notice.plain.replace(stand_in, url),
                      notice.html.replace(stand_in, url))


_STAND_IN = "\ue000"  # a private-use character: no template, config value or URL holds it
