from __future__ import annotations

import pytest

from gateway.transform.lines import has_bare_line_end, normalize_crlf


@pytest.mark.parametrize("raw, expected", [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n"),
    (b"a\rb\r", b"a\r\nb\r\n"),
    (b"a\n.\nMAIL FROM:<x>\r\n", b"a\r\n.\r\nMAIL FROM:<x>\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb"),
    (b"", b""),
])
def test_normalize_crlf(raw: bytes, expected: bytes):
    assert normalize_crlf(raw) == expected
    assert not has_bare_line_end(normalize_crlf(raw))


def test_already_normal_content_is_returned_as_is():
    content = b"Subject: x\r\n\r\nbody\r\n" * 1000
    assert normalize_crlf(content) is content
