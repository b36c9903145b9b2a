"""URLs as they are shown, logged and kept in records: without their secrets."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_USERINFO = re.compile(r"//[^/?#]*@")


def shown_url(url: str) -> str:
    """`url` as listed, logged and recorded: a password in it (https://user:secret@crm/hook,
    the endpoint's basic auth; a user without one, which may be a token), every query value
    and a value-less query field (`?token=...`, `?TOKEN`, where webhook endpoints take their
    secret) and the fragment are shown as ***. The path is kept (it names the endpoint), so
    a secret put there is not hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urlsplit reads (stored before the CLI checked)
        head, question, _ = url.partition("?")
        return _USERINFO.sub(f"//{MASK}@", head) + (f"?{MASK}" if question else "")
    user, at, host = parts.netloc.rpartition("@")
    if at:  # a user with a password, or a user alone (a token: https://TOKEN@crm/hook)
        name = user.partition(":")[0]
        parts = parts._replace(netloc=f"{name}:{MASK}@{host}" if password
                               else f"{MASK}@{host}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        # a value-less field may be the secret itself (?TOKEN)
        query = (urlencode([(name if value else MASK, MASK) for name, value in pairs],
                           safe="*") if pairs else MASK)
        parts = parts._replace(query=query)
    if parts.fragment:
        parts = parts._replace(fragment=MASK)
    return urlunsplit(parts)
