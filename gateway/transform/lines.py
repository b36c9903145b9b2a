"""Line endings: CRLF everywhere, decided once, before anything that signs.

A bare CR or LF that reaches a lenient upstream can be read as the end of DATA (SMTP
smuggling, CVE-2023-51764/51765/51766), and DKIM canonicalisation must see the final bytes.
"""

from __future__ import annotations

import re

_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


def normalize_crlf(content: bytes) -> bytes:
    """Every CR, LF or CRLF becomes CRLF. Three C-level counts make the common case free."""
    crlf = content.count(b"\r\n")
    if content.count(b"\r") == crlf and content.count(b"\n") == crlf:
        return content
    return _ANY_LINE_END.sub(b"\r\n", content)


def has_bare_line_end(content: bytes) -> bool:
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf
