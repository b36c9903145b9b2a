"""Folders the gateway creates for its secrets and its store: owner-only, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700

log = logging.getLogger("gateway.files")


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and every missing parent owner-only (0700); existing ones are left as
    they are. Path.mkdir(parents=True, mode=...) gives the mode to the last folder only, and
    through the umask: under umask 000 ./var came out world-writable."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: theirs to set
        os.chmod(path, PRIVATE_DIR_MODE)


def owner_only(where: str, path: str | Path, info: os.stat_result | None = None) -> None:
    """A private key (DKIM, TLS) readable by others is made owner-only when it is ours, as the
    store keys are; one of someone else's (a read-only secret volume, a key shared with a group on
    purpose) is left as it is, and said. `info`: the file's stat, when the caller has it."""
    if info is None:
        info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if info.st_uid == os.geteuid():
        try:
            os.chmod(path, mode & 0o700)
        except OSError as exc:  # a read-only file system (a mounted secret)
            log.warning("%s: %s is readable by others (mode %o) and cannot be made "
                        "owner-only: %s", where, path, mode, exc.strerror or exc)
            return
        log.warning("%s: %s was readable by others (mode %o): made owner-only", where, path,
                    mode)
        return
    log.warning("%s: %s is readable by others (mode %o), and not this user's to change",
                where, path, mode)
