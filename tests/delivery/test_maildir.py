"""Maildir delivery: durable, owner-only, exact content, never a half-written file in new/."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.delivery.maildir import MaildirDelivery, maildir_hostname

CONTENT = b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_delivery_lands_in_new_with_the_trace_headers_and_exact_content(tmp_path: Path):
    root = tmp_path / "outbox"
    name = await MaildirDelivery(root).deliver("a@example.com", "b@example.net", CONTENT)
    assert [p.name for p in (root / "new").iterdir()] == [name]
    assert (root / "new" / name).read_bytes() == (
        b"Return-Path: <a@example.com>\r\nDelivered-To: b@example.net\r\n" + CONTENT)
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "cur").iterdir()) == []


async def test_files_are_0600_and_directories_0700(tmp_path: Path):
    root = tmp_path / "outbox"
    name = await MaildirDelivery(str(root)).deliver("", "b@example.net", CONTENT)
    assert mode(root / "new" / name) == 0o600
    for directory in (root, root / "tmp", root / "new", root / "cur"):
        assert mode(directory) == 0o700


async def test_null_sender_is_written_as_empty_return_path(tmp_path: Path):
    name = await MaildirDelivery(tmp_path).deliver("", "b@example.net", CONTENT)
    assert (tmp_path / "new" / name).read_bytes().startswith(b"Return-Path: <>\r\n")


async def test_two_deliveries_get_distinct_names(tmp_path: Path):
    first, second = MaildirDelivery(tmp_path), MaildirDelivery(tmp_path)
    names = {await first.deliver("a@x", "b@y", CONTENT), await second.deliver("a@x", "b@y", b""),
             await first.deliver("a@x", "b@y", CONTENT)}
    assert len(names) == 3
    assert {p.name for p in (tmp_path / "new").iterdir()} == names


async def test_line_breaks_in_addresses_cannot_add_headers(tmp_path: Path):
    name = await MaildirDelivery(tmp_path).deliver(
        "a@x>\r\nBcc: evil@x", "b@y\r\nX-Injected: 1\n\0", CONTENT)
    data = (tmp_path / "new" / name).read_bytes()
    header_lines = data[: data.index(CONTENT)].split(b"\r\n")
    assert header_lines[:2] == [b"Return-Path: <a@x>  Bcc: evil@x>",
                                b"Delivered-To: b@y  X-Injected: 1"]
    assert b"\0" not in data


async def test_a_root_that_cannot_be_created_raises_oserror(tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        await MaildirDelivery(blocker / "outbox").deliver("a@x", "b@y", CONTENT)


async def test_a_maildir_removed_while_running_is_created_again(tmp_path: Path):
    root = tmp_path / "outbox"
    maildir = MaildirDelivery(root)
    await maildir.deliver("a@x", "b@y", CONTENT)
    for sub in ("tmp", "new", "cur"):
        for f in (root / sub).iterdir():
            f.unlink()
        (root / sub).rmdir()
    root.rmdir()
    name = await maildir.deliver("a@x", "b@y", CONTENT)
    assert (root / "new" / name).exists()
    assert mode(root / "new") == 0o700


def test_hostname_in_names_has_no_slash_or_colon():
    assert maildir_hostname("host/a:b") == r"host\057a\072b"
    assert maildir_hostname("") == "localhost"
