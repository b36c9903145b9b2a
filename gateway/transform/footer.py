"""Put the notice into every text/plain and text/html body part that is not an attachment.

The message is edited in place, part by part, by byte offsets (gateway.transform.mime): every
other byte, attachments included, stays as it was. Each edited part is decoded from its
transfer encoding and charset, gets the notice (HTML: before `</body>`, or appended; plain:
after a "-- " separator line), and is encoded back in its own charset and transfer encoding,
or in UTF-8 (and quoted-printable instead of 7bit) when those cannot carry the notice.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections import Counter
from functools import lru_cache

from gateway.model import MessageFacts
from gateway.transform.lines import has_bare_line_end
from gateway.transform.mime import (
    Malformed,
    Part,
    body_text_parts,
    facts_of,
    parse_content_type,
    scan,
    undecorated_alternative,
)
from gateway.transform.notice import Notice

MAX_LINE = 998  # RFC 5322 2.1.1, octets without CRLF
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
# what opens raw text in HTML, where "</body>" is no tag, and what ends it
_RAW_ENDS = {"<!--": "-->", "<script": "</script", "<style": "</style",
             "<title": "</title", "<textarea": "</textarea", "<xmp": "</xmp"}
_ASCII_PROBE = "".join(map(chr, range(32, 127))) + "\r\n"
_TOKEN = re.compile(r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+")  # RFC 2045 5.1
_HEADER_LINE = re.compile(rb"(?m)^[^ \t\r\n][^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


class NoticeError(ValueError):
    """The notice cannot be added safely (the copy must not leave without it)."""


def add_notice(content: bytes, notice: Notice) -> bytes:
    """`content` with `notice` in each text part; NoticeError when there is none to put it in
    or one cannot be decoded (M2/M3 at DATA normally quarantine those first)."""
    try:
        root = scan(content)
        content, root = _without_undecorated_alternatives(content, root)
        content, root = _with_close_delimiters(content, root)
    except Malformed as exc:
        raise NoticeError(str(exc)) from exc
    targets = body_text_parts(root)
    if not targets:
        raise NoticeError("no text/plain or text/html part to put the notice in")
    delimiters = tuple(b"--" + p.params["boundary"].encode("utf-8", "surrogateescape")
                       for p in root.walk() if p.children and "boundary" in p.params)
    for part in sorted(targets, key=lambda p: p.start, reverse=True):
        head, body = _rewrite(content, part, notice, part is root, delimiters)
        if has_bare_line_end(body):  # what DKIM signs must be what the next hop relays
            raise NoticeError("a rewritten text part would carry a bare CR or LF")
        content = content[:part.start] + head + body + content[part.end:]
    return content


def structure_facts(content: bytes) -> MessageFacts:
    """What M2 and M3 need, from ONE scan of the message at DATA: its structure facts, with
    an undecodable text part counted as malformed (so such a message is quarantined under M2
    instead of failing at delivery)."""
    if b"\x00" in content:  # RFC 5322 2.3 (and no BINARYMIME here): many receivers refuse it
        return MessageFacts(has_subject=True, has_text_body=True,
                            malformed="a NUL byte, which no message may contain")
    try:
        root = scan(content)
    except Malformed as exc:
        return MessageFacts(has_subject=True, has_text_body=True, malformed=str(exc))
    facts = facts_of(root)
    if facts.signed_or_encrypted is None:
        problem = _undecodable(content, root)
        if problem is not None:
            facts = dataclasses.replace(facts, malformed=problem)
    return facts


def undecodable_text(content: bytes) -> str | None:
    """Why a text part of `content` could not take the notice, or None."""
    try:
        root = scan(content)
    except Malformed as exc:
        return str(exc)
    return _undecodable(content, root)


def _undecodable(content: bytes, root: Part) -> str | None:
    for part in body_text_parts(root):
        try:
            text = _decode(content, part)[0]
        except NoticeError as exc:
            return str(exc)
        if part.content_type == "text/html" and _has_frameset(text):
            # a document of frames has no body: a reader drops the notice put after it
            return "an HTML body made of frames (<frameset>), where no notice can be shown"
        if any(len(key) + len(_param(value)) + 3 > MAX_LINE  # " k=v;" as _folded writes it
               for key, value in part.params.items()):
            # a rewritten Content-Type (a notice that needs another charset) could not be
            # folded: found here, at DATA (M2), not at delivery after the 250
            return "a Content-Type parameter longer than a header line may be"
    return None


def text_parts_decoded(content: bytes) -> list[tuple[str, str]]:
    """(content type, decoded text) of each text part that decodes (for previews)."""
    try:
        root = scan(content)
    except Malformed:
        return []
    found = []
    for part in sorted(body_text_parts(root), key=lambda p: p.start):
        try:
            found.append((part.content_type, _decode(content, part)[0]))
        except NoticeError:
            continue
    return found


def _without_undecorated_alternatives(content: bytes, root: Part) -> tuple[bytes, Part]:
    """`content` without the text alternatives that cannot carry the notice (AMP, Apple
    Watch, text/enriched, markdown ...: mime.undecorated_alternative) of a
    multipart/alternative that has another: Gmail and Yahoo show the AMP part (a watch its
    part, Apple Mail text/enriched) instead of the HTML one, and no notice is written into
    them. The HTML and plain alternatives, which get the notice, stay; calendar parts too."""
    cuts: list[tuple[int, int]] = []
    for part in root.walk():
        if part.content_type != "multipart/alternative" or len(part.children) < 2 or all(
                undecorated_alternative(child.content_type) for child in part.children):
            continue  # (AMP and watch parts alone: cut, no part at all would be left)
        delimiter = b"--" + part.params["boundary"].encode("utf-8", "surrogateescape")
        for child in part.children:
            if not undecorated_alternative(child.content_type):
                continue
            start = content.rfind(delimiter, part.body_start, child.start)
            if start >= 0 and content.startswith(b"\r\n" + delimiter, child.end):
                cuts.append((start, child.end + 2))  # its delimiter line up to the next one
    if not cuts:
        return content, root
    for start, end in sorted(cuts, reverse=True):
        content = content[:start] + content[end:]
    return content, scan(content)


def _with_close_delimiters(content: bytes, root: Part) -> tuple[bytes, Part]:
    """`content` with the close delimiter ("--boundary--") of each multipart that lacks one
    (its last part ran to the end, which readers take, as the scan does, but flag as a
    defect): a copy the gateway signs is well-formed MIME."""
    missing: list[tuple[int, int, bytes]] = []
    for depth, part in enumerate(root.walk()):  # (walk: a parent before its children)
        if not part.children:
            continue
        close = b"--" + part.params["boundary"].encode("utf-8", "surrogateescape") + b"--"
        if not content.startswith(close, part.body_start) \
                and content.find(b"\r\n" + close, part.body_start, part.end) < 0:
            missing.append((part.end, depth, close))
    if not missing:
        return content, root
    # from the end; at one offset the outer first, so that the inner one lands before it
    for end, _depth, close in sorted(missing, key=lambda m: (-m[0], m[1])):
        last = content[:end].rstrip(b" \t")  # (rare: a copy, only when one is missing)
        if last.endswith(b"\r\n" + close[:-2]):  # "--b" ends it, without its CRLF: that
            # line is the close delimiter short of its "--" (a new part there would be empty)
            content = content[:len(last)] + b"--" + content[len(last):]
            continue
        before = b"" if content[:end].endswith(b"\r\n") else b"\r\n"
        after = b"" if content[end:end + 2] == b"\r\n" else b"\r\n"
        content = content[:end] + before + close + after + content[end:]
    return content, scan(content)


_META_CHARSET = re.compile(
    rb"""<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.IGNORECASE)


def _meta_charset(head: bytes, encoding: str) -> str:
    """The charset an HTML document names in a <meta> of its first 1024 bytes (as decoded
    from `encoding`), lower-cased; "" without one."""
    try:
        if encoding == "base64":
            head = base64.b64decode(b"".join(head.split())[:1368], validate=False)
        elif encoding == "quoted-printable":
            head = binascii.a2b_qp(head)
    except (binascii.Error, ValueError):
        return ""
    found = _META_CHARSET.search(head[:1024])
    return found.group(1).decode("ascii").lower() if found else ""


def _decode(content: bytes, part: Part) -> tuple[str, str, str]:
    """(text, charset, transfer encoding) of a text part; NoticeError when undecodable."""
    encoding = (part.get("content-transfer-encoding") or "7bit").strip().lower()
    charset = part.params.get("charset", "").strip().lower()
    if not charset and part.content_type == "text/html":
        # no charset in the Content-Type: the document's own <meta charset>, as a reader
        # takes it (HTML's prescan, its first 1024 bytes); UTF-8 HTML so was held under M2
        named = _meta_charset(content[part.body_start:min(part.end,
                                                          part.body_start + 4096)],
                              encoding)
        # one this module can decode and write as it reads ASCII, else as before: a <meta>
        # naming an unknown charset or UTF-16 held ASCII HTML that passed before (read again)
        charset = named if named and _ascii_compatible(named) else ""
    charset = charset or "us-ascii"
    try:
        b"".decode(charset)  # unlike codecs.lookup, refuses codecs that are not text
        # encodings (rot13, base64, zlib), which bytes.decode then refuses with LookupError
    except (LookupError, ValueError) as exc:  # ValueError: a NUL, a non-ASCII name
        raise NoticeError(f"unknown charset {charset!r}") from exc
    bad = next((name for name in part.params if _TOKEN.fullmatch(name) is None), None)
    if bad is not None:  # the rewritten Content-Type could not carry it
        raise NoticeError(f"a Content-Type parameter name that is not a token: {bad!r}")
    raw = content[part.body_start:part.end]
    try:
        if encoding == "base64":
            data = base64.b64decode(b"".join(raw.split()), validate=True)
        elif encoding == "quoted-printable":
            data = binascii.a2b_qp(raw)
        elif encoding in ("7bit", "8bit", "binary"):
            data = raw
        else:
            raise NoticeError(f"unknown transfer encoding {encoding!r}")
        text = data.decode(charset)
    except (binascii.Error, ValueError, LookupError) as exc:  # UnicodeDecodeError is a
        # ValueError
        raise NoticeError(f"cannot decode a {part.content_type} part: {exc}") from exc
    return text, charset, encoding


def _rewrite(content: bytes, part: Part, notice: Notice, is_root: bool,
             delimiters: tuple[bytes, ...] = ()) -> tuple[bytes, bytes]:
    """The part's new header block and body. `delimiters`: every "--boundary" of the
    message, which no line of a re-encoded body may start with (RFC 2046 5.1.1)."""
    text, charset, encoding = _decode(content, part)
    newline = "\r\n" if "\r\n" in text or "\n" not in text else "\n"
    if part.content_type == "text/html":
        at = _body_close(text)
        text = text[:at] + _closers(text[:at]) + notice.html + text[at:]
    else:
        flowed = part.params.get("format", "").lower() == "flowed"
        lines = notice.plain.split("\n")
        if flowed:  # RFC 3676 4.4: space-stuff lines that start with a space, ">" or "From "
            lines = [(" " + line if line.startswith((" ", ">", "From ")) and line != "-- "
                      else line) for line in lines]
        stripped = text.rstrip("\r\n")
        text = stripped + newline + (newline if stripped else "") + newline.join(lines) + newline
    try:
        if not _ascii_compatible(charset):
            # UTF-16 and the like: their 0x0A byte is half a character, which QP would
            # turn into a line break; UTF-7, IDNA: no text codec for a whole body
            raise UnicodeError(charset)
        # HTML takes characters its charset lacks as references (&#233;): its charset is
        # kept, so a <meta charset> in the document still agrees with the part's
        data = text.encode(charset, "xmlcharrefreplace" if part.content_type == "text/html"
                           else "strict")
        new_charset = None
    except UnicodeError:
        data, new_charset = text.encode("utf-8"), "utf-8"
    new_encoding = None
    if not data.isascii() and (encoding == "7bit" or (
            encoding == "8bit" and content[part.body_start:part.end].isascii())):
        # 8bit declared over ASCII text (under a multipart said 7bit, RFC 2045 6.4 forbids
        # an 8bit child): the notice does not make a 7-bit clean message 8-bit
        encoding = new_encoding = "quoted-printable"
    if encoding == "base64":
        body = _base64_lines(data)
    elif encoding == "quoted-printable":
        body = _quoted_printable(data)
        if new_encoding and len(body) > _base64_length(len(data)):
            # text mostly beyond ASCII (Cyrillic, Greek, CJK) written 7bit or undeclared:
            # QP took ~3 times its size (an 8 MB part became 24 MB, over the relay's size
            # limit after the 250), base64 takes 4/3
            body, new_encoding = _base64_lines(data), "base64"
    else:
        body = data
        if has_bare_line_end(body) or any(len(line.rstrip(b"\r")) > MAX_LINE
                                          for line in body.split(b"\n")):
            # a bare CR or LF (UTF-7's "+AAo-" decodes to one) cannot go as 7bit or 8bit:
            # the next hop rewrites it after DKIM signed the copy; QP writes it as "=0D" or
            # a line break
            body, new_encoding = _quoted_printable(data), "quoted-printable"
    if "base64" not in (encoding, new_encoding) and _starts_a_line(body, delimiters):
        # a line of the notice (a source's name wrapped onto a line of its own) or a QP soft
        # break (text from the middle of a line at the start of one) that starts with
        # "--boundary" ends the part there: the rest of the notice, the unsubscribe link
        # with it, would be read as the next part's header fields, or as epilogue. Base64
        # has no "-" in its alphabet.
        body, new_encoding = _base64_lines(data), "base64"
    head = content[part.start:part.body_start]
    if part.body_start == part.end and not head.endswith(b"\r\n\r\n"):
        # header fields and no body (a root part: a body part without its blank line is
        # Malformed), or a body part with neither (`--b\r\n--b--`, RFC 2046 5.1.1): the
        # blank line goes before the notice, else it reads as fields; with no fields at all
        # it is the whole header block, and fields added to it go in front of it
        head += b"\r\n" if head.endswith(b"\r\n") or not head else b"\r\n\r\n"
    if new_charset or new_encoding or (is_root and part.get("content-type") is None
                                       and not data.isascii()):
        head = _set_fields(head, part, new_charset or charset, new_encoding, is_root)
    if not body.endswith(b"\r\n") and content[part.end:part.end + 2] != b"\r\n":
        body += b"\r\n"
    return head, body


def _has_frameset(text: str) -> bool:
    """Whether the HTML has a <frameset> element (markup: not in a comment, raw text or
    another tag's attribute). A literal search first: ~1 us for 20 KB without one."""
    low = text.lower()
    at = low.find("<frameset")
    while at >= 0:
        if not _in_raw_text(low, at) and not _inside_a_tag(low, at):
            return True
        at = low.find("<frameset", at + 1)
    return False


def _body_close(text: str) -> int:
    """Where the HTML notice goes: before the last `</body>` tag that is markup (not in a
    comment, a script or a style: HTML's tokenizer ends those only at "-->" and at their own
    end tag), else at the end (a reader puts trailing content in the body). Literal searches
    back from the end over a lower-cased copy (~25 us for 20 KB), not a parse."""
    low = text.lower()
    plaintext = low.find("<plaintext")
    while plaintext >= 0 and (_in_raw_text(low, plaintext) or _inside_a_tag(low, plaintext)):
        plaintext = low.find("<plaintext", plaintext + 1)  # (text, or an attribute's)
    if plaintext >= 0:  # nothing after <plaintext> is ever markup again (HTML 13.2.5.1)
        return plaintext
    at = low.rfind("</body")
    while at >= 0:
        if _BODY_CLOSE.match(text, at) and not _in_raw_text(low, at) \
                and not _inside_a_tag(low, at):
            # (the last test: not in another tag, title="</body>" or alt="a > b </body>",
            # where the notice would become the attribute's value)
            return at
        at = low.rfind("</body", 0, at)
    return len(text)


# what a reader does not parse into elements: comments (also "<!-->", "--!>" ends), and raw or
# escapable raw text, each to its end or to the end of the text
_RAW_SPANS = re.compile(
    r"<!--(?:-?>|.*?(?:--!?>|$))|<(script|style|textarea|title|xmp)\b[^>]*>.*?(?:</\1\s*>|$)",
    re.DOTALL)  # (all three run over the lower-cased text)
_TAG_NAME = re.compile(r"<(/?[a-z][a-z0-9-]*)")  # "div", "/div"
_TAG = re.compile(r"<(/?)([a-z][a-z0-9-]*)\b[^>]*?(/?)>")
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr", "keygen", "frame", "basefont", "bgsound"})
_CLOSES_P = frozenset({"address", "article", "aside", "blockquote", "center", "details",
                       "dialog", "dir", "div", "dl", "fieldset", "figcaption", "figure",
                       "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
                       "main", "menu", "nav", "ol", "p", "pre", "section", "table", "ul"})
_DOCUMENT = frozenset({"html", "head", "body"})


@lru_cache(maxsize=16)  # one message's copies share their HTML before the notice
def _closers(html: str) -> str:
    """End tags for the elements `html` leaves open: the notice goes after them, not inside
    a `<div style="display:none">` or a `<template>` the sender left open (the notice and
    the unsubscribe link were hidden). Counted in C first (~0.25 ms for 20 KB): the stack is
    built only when some element opens more often than it closes. A light stack, not a full
    tree builder: an element closed by HTML's implied rules may be closed again, which a
    reader ignores (a </p> with none open is an empty paragraph). Every scan is linear: no
    pattern looks past the last ">" for one (a 40 KB run of "<a" took 8 s)."""
    if "<" not in html:
        return ""
    low = html.lower()
    end = low.rfind(">") + 1
    innermost = "-->" if "<!--" in low[end:] else ""  # a comment opened after the last ">"
    pieces, last = [], 0
    for found in _RAW_SPANS.finditer(low, 0, end):  # few: comments, scripts, styles
        pieces.append(low[last:found.start()])
        last = found.end()
        token, raw = found[0], found[1]
        if raw is None:
            if not (token.endswith(("-->", "--!>")) or token in ("<!-->", "<!--->")):
                innermost = "-->"
        elif not re.search(rf"</{raw}\s*>$", token):
            innermost = f"</{raw}>"
    pieces.append(low[last:end])
    markup = "".join(pieces)
    tags = Counter(_TAG_NAME.findall(markup))
    if all(count <= tags["/" + name] for name, count in tags.items()
           if name[0] != "/" and name not in _VOID and name not in _DOCUMENT):
        return innermost
    stack: list[str] = []
    for found in _TAG.finditer(markup):
        name = found[2]
        if found[1]:  # an end tag: closes up to its element, if open
            if name in stack:
                del stack[len(stack) - 1 - stack[::-1].index(name):]
        elif name in _VOID or name in _DOCUMENT:
            continue
        elif found[3] and ("svg" in stack or "math" in stack):
            continue  # "/>" closes only foreign elements (and is meaningless on void ones)
        else:
            if name in _CLOSES_P and stack and stack[-1] == "p":
                stack.pop()
            stack.append(name)
    return innermost + "".join(f"</{name}>" for name in reversed(stack))


def _inside_a_tag(low: str, at: int) -> bool:
    """Whether `at` is inside a tag that starts before it (in an attribute's value, quoted
    values with ">" in them included): from the last "<" that starts a tag, the tag's own
    characters are read up to its ">" outside quotes (a quote opens a value after "=" only,
    as HTML's tokenizer has it). Bounded by the tag's length, not the text's."""
    start = at
    while True:
        start = low.rfind("<", 0, start)
        if start < 0:
            return False
        following = low[start + 1:start + 2]
        if following.isalpha() or following in ("/", "!"):
            break
    quote, after_equals = "", False
    for i in range(start + 1, at):
        c = low[i]
        if quote:
            if c == quote:
                quote = ""
        elif c == ">":
            return False
        elif c in "\"'" and after_equals:
            quote = c
        elif c == "=":
            after_equals = True
            continue
        elif c.isspace() and after_equals:
            continue
        after_equals = False
    return True


def _in_raw_text(low: str, at: int) -> bool:
    """Whether the nearest comment, script, style, title, textarea or xmp opened before `at`
    is still open there.
    (A "<!--" inside a script's string reads as an open comment: the notice then goes at the
    end, still in the body.)"""
    for opener, closer in _RAW_ENDS.items():
        start = low.rfind(opener, 0, at)
        if start < 0 or (opener == "<!--" and (
                low.startswith(("<!-->", "<!--->"), start)  # empty comments, closed
                or 0 <= low.find("--!>", start + 4, at))):  # a closer HTML takes too
            continue
        if low.find(closer, start + len(opener), at) < 0:
            return True
    return False


@lru_cache(maxsize=64)
def _ascii_compatible(charset: str) -> bool:
    """Whether `charset` writes printable ASCII, CR and LF as ASCII bytes (what line-based
    transfer encodings and this module's edits assume)."""
    try:
        return _ASCII_PROBE.encode(charset) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def _starts_a_line(body: bytes, delimiters: tuple[bytes, ...]) -> bool:
    return any(body.startswith(d) or b"\r\n" + d in body for d in delimiters)


def _base64_length(size: int) -> int:
    """len(_base64_lines(data)) for `size` bytes of data."""
    encoded = (size + 2) // 3 * 4
    return encoded + (encoded + 75) // 76 * 2


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


def _quoted_printable(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends (binascii works on LF).

    A CR that ends no line (text written CR CR LF, sent as `=0D`) must stay encoded: b2a_qp
    copies it as is, and a bare CR in the copy is rewritten by the next hop after DKIM
    signed it (the body hash fails) and shows as an empty line."""
    text = data.replace(b"\r\n", b"\n")
    if b"\r" not in text:
        return binascii.b2a_qp(text, istext=True).replace(b"\n", b"\r\n")
    return b"\r\n".join(binascii.b2a_qp(line, istext=False).replace(b"=\n", b"=\r\n")
                        for line in text.split(b"\n"))


def _set_fields(head: bytes, part: Part, charset: str, encoding: str | None,
                is_root: bool) -> bytes:
    """The part's header block with Content-Type carrying `charset` and, when given, a new
    Content-Transfer-Encoding; other fields (and their order) unchanged."""
    ctype, params = parse_content_type(part.get("content-type"), part.content_type)
    params["charset"] = charset
    fields = [(b"content-type", _folded("Content-Type: " + ctype,
                                        [f"{k}={_param(v)}" for k, v in params.items()]))]
    if encoding:
        fields.append((b"content-transfer-encoding",
                       b"Content-Transfer-Encoding: " + encoding.encode("ascii") + b"\r\n"))
    for name, line in fields:
        head, replaced = _replace_field(head, name, line)
        if not replaced:
            head = _append_field(head, line)  # a part without that field
    if is_root and not re.search(rb"(?im)^mime-version:", head):
        head = _append_field(head, b"MIME-Version: 1.0\r\n")
    return head


def _append_field(head: bytes, line: bytes) -> bytes:
    """`line` after the last field of a header block ending in its blank line: put in
    front, added fields split the message's trace block (RFC 5322 3.6: the Received fields
    stay together on top)."""
    if head.endswith(b"\r\n\r\n"):
        return head[:-2] + line + b"\r\n"
    return line + head  # no fields at all: b"\r\n"


def _folded(start: str, params: list[str]) -> bytes:
    """`start; p1; p2...` as a header field folded between parameters: lines of at most 78
    characters where a parameter allows it, never over MAX_LINE (the original field was
    folded; rebuilt unfolded, many parameters made one line over 998 octets)."""
    lines, line = [], start
    for param in params:
        if len(line) + 2 + len(param) <= 78:
            line += "; " + param
        else:
            lines.append(line + ";")
            line = " " + param
    lines.append(line)
    folded = "\r\n".join(lines).encode("utf-8", "surrogateescape")  # the header's own bytes
    if any(len(text) > MAX_LINE for text in folded.split(b"\r\n")):
        raise NoticeError("a Content-Type parameter longer than a header line may be")
    return folded + b"\r\n"


def _param(value: str) -> str:
    """A parameter value as a token, or quoted (RFC 2045 5.1) with quotes and backslashes
    escaped; control characters dropped. Characters beyond ASCII are kept as the client
    wrote them (RFC 6532: name="café.txt" lost its é when the charset was rewritten)."""
    value = "".join(c for c in value if c >= " " and c != "\x7f")
    if _TOKEN.fullmatch(value):  # as it may be written (RFC 2231's name*=utf-8''... must)
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _replace_field(head: bytes, name: bytes, line: bytes) -> tuple[bytes, bool]:
    for match in _HEADER_LINE.finditer(head):
        if match.group(0).split(b":", 1)[0].strip().lower() == name:
            return head[:match.start()] + line + head[match.end():], True
    return head, False
