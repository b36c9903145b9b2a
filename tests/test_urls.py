"""URLs as shown and recorded: no secret in them."""

from __future__ import annotations

import pytest

from gateway.urls import shown_url


@pytest.mark.parametrize("url, shown", [
    ("https://crm.example.com/unsub", "https://crm.example.com/unsub"),
    ("https://hook:S3CRET@crm.example.com/unsub", "https://hook:***@crm.example.com/unsub"),
    ("https://crm.example.com/h?token=S3CRET&v=2", "https://crm.example.com/h?token=***&v=***"),
    ("https://u:p%40ss@crm.example.com:8443/h?key=S3CRET#frag",
     "https://u:***@crm.example.com:8443/h?key=***#***"),
    ("https://crm.example.com/h?S3CRET", "https://crm.example.com/h?***=***"),
    ("https://crm.example.com/h?=S3CRET", "https://crm.example.com/h?=***"),
    ("https://S3CRET@crm.example.com/h", "https://***@crm.example.com/h"),  # a token as user
    ("https://sk_live_S3CRET:@crm.example.com/h", "https://***@crm.example.com/h"),
    ("https://crm.example.com/h#token=S3CRET", "https://crm.example.com/h#***"),
    # unreadable for urlsplit (stored before the CLI checked): masked all the same
    ("http://u:S3CRET@[::1/x?token=S3CRET", "http://***@[::1/x?***"),
])
def test_passwords_and_query_values_are_masked(url: str, shown: str):
    assert shown_url(url) == shown
