"""The DATA fast path gives exactly what aiosmtplib's own helpers give, for every shape."""

from __future__ import annotations

import re

import aiosmtplib.protocol
import pytest

from gateway.delivery import fastdata

ORIGINAL_PERIOD = re.compile(rb"(?m)^\.")

SAMPLES = [
    b"Subject: x\r\n\r\nbody\r\n",
    b"Subject: x\r\n\r\nno final line end",
    b".leading dot\r\n",
    b"Subject: x\r\n\r\n.hidden\r\n..two\r\n",
    b"bare\nlf\r\nand bare\rcr\r\n",
    b"",
    b"\r\n",
    b"\n.\n",
    b"a\r\n.\r\nb\r\n",
]


@pytest.mark.parametrize("message", SAMPLES)
def test_fast_helpers_match_the_library_byte_for_byte(message: bytes):
    assert fastdata.install()
    fast_normalize = aiosmtplib.protocol.normalize_message_line_endings
    original = fast_normalize.__wrapped__
    assert fast_normalize(message) == original(message)
    normalized = original(message)
    assert aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", normalized) == \
        ORIGINAL_PERIOD.sub(b"..", normalized)


def test_install_is_idempotent_and_clean_content_is_returned_as_is():
    assert fastdata.install() and fastdata.install()
    content = b"Subject: x\r\n\r\n" + b"y" * 76 * 300 + b"\r\n"
    assert aiosmtplib.protocol.normalize_message_line_endings(content) is content
    assert aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", content) is content
    assert not hasattr(aiosmtplib.protocol.normalize_message_line_endings.__wrapped__,
                       "__wrapped__")  # wrapped once, not twice
