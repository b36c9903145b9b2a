"""Local delivery into a Maildir: write in tmp/, fsync, rename into new/, fsync new/.

The rename is what makes a message visible, and it happens only once the bytes are on disk; the
fsync of new/ makes the rename itself durable. So once `deliver` returns, the copy survives a
crash, and the 250 the gateway gave for it is never lost.

This Maildir keeps CRLF line ends as the wire has them (and as DKIM signed them) rather than
converting to the local LF convention; most Maildir readers accept either.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from pathlib import Path

from gateway.files import make_private_dirs

DIR_MODE = 0o700
FILE_MODE = 0o600
SUBDIRS = ("tmp", "new", "cur")

# One counter per process, shared by every MaildirDelivery: two instances writing into the same
# root within the same nanosecond still get different names.
_deliveries = itertools.count(1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MaildirDelivery:
    """Delivers copies as files into `root/new`, creating `root/{tmp,new,cur}` on first use."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._hostname = maildir_hostname(socket.gethostname())
        self._prepared = False

    async def deliver(self, mail_from: str, recipient: str, content: bytes) -> str:
        """Write one copy durably; return the file name. OSError when it could not be written."""
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_deliveries)}.{self._hostname}"
        trace = (f"Return-Path: <{_one_line(mail_from)}>\r\n"
                 f"Delivered-To: {_one_line(recipient)}\r\n").encode()
        await asyncio.to_thread(self._write, name, trace + content)
        return name

    def _write(self, name: str, data: bytes) -> None:
        if not self._prepared:
            self._prepare()
        tmp = self.root / "tmp" / name
        new = self.root / "new" / name
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        except FileNotFoundError:  # the Maildir was removed under us: create it again
            self._prepare()
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, new)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            _fsync_dir(new.parent)
        except OSError:
            # The rename may not survive a crash and the caller will retry: take the file back
            # rather than risk a second copy (a reader may already have moved it: no matter).
            with contextlib.suppress(OSError):
                os.unlink(new)
            raise

    def problem(self) -> str | None:
        """Why copies could not be written here, checked at start: None when the Maildir is
        (or could be made) there and is writable."""
        try:
            self._prepare()
        except OSError as exc:
            return exc.strerror or str(exc)
        for sub in ("tmp", "new"):
            if not os.access(self.root / sub, os.W_OK | os.X_OK):
                return f"{self.root / sub} is not writable by this user"
        return None

    def _prepare(self) -> None:
        make_private_dirs(self.root.parent)
        if _make_dir(self.root):
            _fsync_dir(self.root.parent)
        created = [_make_dir(self.root / sub) for sub in SUBDIRS]
        if any(created):
            _fsync_dir(self.root)
        self._prepared = True


def maildir_hostname(hostname: str) -> str:
    """The host part of a unique name: '/' and ':' replaced as the Maildir spec requires."""
    cleaned = _CONTROL.sub("", hostname).replace("/", r"\057").replace(":", r"\072")
    return cleaned or "localhost"


def _one_line(value: str) -> str:
    """No CR, LF, NUL (or other control character) can start a header of its own."""
    return _CONTROL.sub(" ", value).strip()


def _make_dir(path: Path) -> bool:
    """Create `path` owner-only; False when it already exists."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, DIR_MODE)  # mkdir's mode went through the umask
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
