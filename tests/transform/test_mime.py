"""The bounded MIME scan: offsets of every part, and hard limits on hostile structure."""

from __future__ import annotations

import time

from gateway.transform.mime import MAX_DEPTH, MAX_PARTS, message_facts, scan

MIXED = (b'From: a@example.com\r\nSubject: hi\r\nContent-Type: multipart/mixed;\r\n'
         b' boundary="outer"\r\n\r\npreamble\r\n--outer\r\n'
         b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
         b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
         b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--inner--\r\n"
         b"--outer\r\nContent-Type: application/pdf\r\n"
         b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\n%PDF-1.4\r\n"
         b"--outer--\r\nepilogue\r\n")


def test_scan_finds_each_part_and_its_exact_body_bytes():
    root = scan(MIXED)
    parts = root.walk()
    assert [p.content_type for p in parts] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html",
        "application/pdf"]
    bodies = [MIXED[p.body_start:p.end] for p in parts[2:]]
    assert bodies == [b"hello", b"<p>hello</p>", b"%PDF-1.4"]
    assert root.params["boundary"] == "outer"  # folded header, quoted parameter
    assert parts[4].is_attachment and not parts[2].is_attachment
    assert parts[2].params["charset"] == "utf-8"


def test_missing_close_delimiter_is_tolerated():
    content = MIXED.replace(b"--outer--\r\nepilogue\r\n", b"")
    assert [p.content_type for p in scan(content).walk()][-1] == "application/pdf"


def test_hostile_structures_are_malformed_within_bounded_time():
    deep = b"Subject: s\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(1000))
    wide = (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 50_000 + b"--b--\r\n")
    huge_header = b"Subject: s\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\nbody\r\n"
    no_boundary = b"Subject: s\r\nContent-Type: multipart/mixed\r\n\r\nbody\r\n"
    injected = b"Subject: s\r\nthis is not a header\r\n\r\nbody\r\n"
    expectations = [(deep, f"deeper than {MAX_DEPTH}"), (wide, f"more than {MAX_PARTS}"),
                    (huge_header, "header block larger"), (no_boundary, "boundary"),
                    (injected, "without a field name")]
    for content, why in expectations:
        started = time.perf_counter()
        facts = message_facts(content)
        assert facts.malformed is not None and why in facts.malformed
        assert time.perf_counter() - started < 0.5
