"""URLs as they are shown, logged and kept in records: without their secrets."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_USERINFO = re.compile(r"//[^/?#]*@")


def shown_url(url: str) -> str:
    """`url` as listed, logged and recorded: a password in it (https://user:secret@crm/hook,
    the endpoint's basic auth) and every query value (`?token=...`, `?key=...`, where
    webhook endpoints take their secret) are shown as ***. The path is kept (it names the
    endpoint), so a secret put there is not hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urlsplit reads (stored before the CLI checked)
        head, question, _ = url.partition("?")
        return _USERINFO.sub(f"//{MASK}@", head) + (f"?{MASK}" if question else "")
    if password:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:{MASK}@{host}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = (urlencode([(name, MASK) for name, _ in pairs], safe="*") if pairs
                 else MASK)
        parts = parts._replace(query=query)
    return urlunsplit(parts)
